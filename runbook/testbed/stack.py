"""The local testbed: biscayne's moving parts on one machine, from real programs.

``Testbed(env).up()`` brings up, in order: storage (btrfs in a loop image when root, else reflink or
copy), green's ledger on a dataset, the DoubleZero identity file, a network namespace standing in for
the host network (where doublezero0 and its routes live), supervisord, the cluster-tip reference, Caddy
from the production template, and the green Deployment (doublezerod native sidecar + validator) through
the local kubelet. ``down()`` removes every process, mount, loop device and namespace it made, and also
works after a crash (it reads what to remove from the state directory, not from memory).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from runbook.adapters.base import Dataset, Storage
from runbook.adapters.base import Progress as StorageProgress
from runbook.adapters.rpc import RpcClient
from runbook.adapters.storage import make_storage
from runbook.baseline import Baseline, LocalExtras
from runbook.env import PROJECT_ROOT, Env
from runbook.errors import AdapterError, PortInUse, TestbedError
from runbook.manifests import render_deployment
from runbook.testbed import caddy, chain, keypair, loopfs, netns, prodshape, systemd
from runbook.testbed.kubelet import LocalWorkloads
from runbook.testbed.nodenet import NodeNetwork
from runbook.testbed.supervisor import TESTBED_MARK, Supervisor
from runbook.wait import wait_for

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def check_ports(env: Env) -> None:
    """Every port the env binds must be free; name the port, the setting and the program holding it."""
    busy = []
    listeners: dict[int, int | None] = {}
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                listeners.setdefault(conn.laddr.port, conn.pid)
    except psutil.Error:  # pragma: no cover - no permission to list sockets
        listeners = {}
    for setting, port in env.port_settings():
        if setting == "ingress.url" and env.ingress.port in (80, 443):
            continue
        if port in listeners:
            pid = listeners[port]
            who = "another program"
            if pid:
                try:
                    p = psutil.Process(pid)
                    who = f"pid {pid} ({' '.join(p.cmdline())[:120] or p.name()})"
                except psutil.Error:
                    who = f"pid {pid}"
            busy.append(f"port {port} (set by {setting} in {env.source}) is already in use by {who}")
    if busy:
        raise PortInUse("cannot start the testbed: " + "; ".join(busy), env=env.name)


class HostPathStorage:
    """The testbed's storage, with copy_tree taking host paths (``/srv/solana/ramdisk/accounts``) as on
    biscayne and mapping them into the state directory like the local kubelet maps hostPath volumes."""

    def __init__(self, inner: Storage, host_path: Callable[[str], Path],
                 to_host: Callable[[str | None], str | None] = lambda p: p) -> None:
        self.inner = inner
        self.backend = inner.backend
        self._host_path = host_path
        self._to_host = to_host  # a local path back to the host path mapped onto it (mounted_at answers those)

    def ensure_dataset(self, name: str) -> Dataset:
        return self.inner.ensure_dataset(name)

    def path(self, name: str) -> str:
        return self.inner.path(name)

    def datasets(self) -> list[Dataset]:
        return self.inner.datasets()

    def snapshot(self, dataset: str, snap: str, *, recursive: bool = False) -> str:
        return self.inner.snapshot(dataset, snap, recursive=recursive)

    def clone(self, snapshot: str, target: str) -> Dataset:
        return self.inner.clone(snapshot, target)

    def destroy(self, name: str, *, recursive: bool = False) -> None:
        self.inner.destroy(name, recursive=recursive)

    def rollback(self, snapshot: str, *, destroy_newer: bool = False) -> None:
        self.inner.rollback(snapshot, destroy_newer=destroy_newer)

    def promote(self, clone: str) -> None:
        self.inner.promote(clone)

    def copy_tree(self, src: str, dst: str, *, progress: StorageProgress | None = None) -> int:
        return self.inner.copy_tree(str(self._host_path(src)), str(self._host_path(dst)), progress=progress)

    def mount(self, name: str, path: str) -> None:
        self.inner.mount(name, str(self._host_path(path)))

    def unmount(self, name: str) -> None:
        self.inner.unmount(name)

    def mounted_at(self, name: str) -> str | None:
        return self._to_host(self.inner.mounted_at(name))

    def free_bytes(self, name: str) -> int:
        return self.inner.free_bytes(name)

    def used_bytes(self, name: str) -> int:
        return self.inner.used_bytes(name)

    def identity(self, name: str) -> dict[str, str | int]:
        return self.inner.identity(name)

    def plan(self, op: str, *args: str, **options: bool) -> list[str]:
        return self.inner.plan(op, *args, **options)


class Testbed:
    """One local testbed, keyed by its env's state directory."""

    __test__ = False

    def __init__(self, env: Env) -> None:
        if env.testbed is None:
            raise TestbedError(f"env {env.name} has no testbed section", env=env.name)
        self.env = env
        self.tb = env.testbed
        sd = Path(self.tb.state_dir)
        self.state_dir = (sd if sd.is_absolute() else PROJECT_ROOT / sd).resolve()
        self.supervisor = Supervisor(state_dir=self.state_dir, port=self.tb.supervisor_port)
        self._state_file = self.state_dir / "testbed.json"

    # -- recorded state (survives the process that brought the testbed up) -------------------
    def _state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _save(self, **kv: Any) -> None:
        state = {**self._state(), **kv}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps(state, indent=1))

    @property
    def netns(self) -> str | None:
        return self._state().get("netns")

    @property
    def storage_backend(self) -> tuple[str, str]:
        s = self._state()
        return s.get("backend", "?"), s.get("backend_reason", "")

    @property
    def storage(self) -> Storage:
        s = self._state()
        if not s.get("backend"):
            raise TestbedError(f"the testbed in {self.state_dir} is not up", env=self.env.name)
        return HostPathStorage(make_storage(s["backend"], Path(s["storage_root"])), self.host_path,
                               lambda p: prodshape.to_host(self, p))

    @property
    def workloads(self) -> LocalWorkloads:
        return LocalWorkloads(env=self.env, supervisor=self.supervisor, state_dir=self.state_dir, netns=self.netns)

    def running(self) -> bool:
        return self._state().get("up") is True and self.supervisor.alive()

    @property
    def host_bin(self) -> Path:
        """The testbed host's own programs (its ``systemctl``), first on the host port's PATH here only."""
        return systemd.bin_dir(self.state_dir)

    def host_path(self, path: str) -> Path:
        return self.workloads._host_path(path)

    # -- up ----------------------------------------------------------------------------------
    def up(self, *, progress: Progress = _quiet) -> None:
        if self.running():
            progress(f"already up in {self.state_dir}")
            return
        if self._state():
            progress("cleaning up what a previous testbed left")
            self.down(progress=progress)
        check_ports(self.env)
        for stale in ("kube", "containers", "journal", "programs", "systemd", "prometheus"):  # nothing old remembered
            shutil.rmtree(self.state_dir / stale, ignore_errors=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._save(env=self.env.name, up=False)

        if self.tb.sshd:
            prodshape.up_sshd(self, progress)
        backend, reason = self._up_storage(progress)
        progress(f"storage backend: {backend} ({reason})")
        prodshape.up_ramdisks(self, progress)
        self._seed_green_data(progress)
        self._up_netns(progress)

        progress("starting supervisord")
        self.supervisor.start()
        py = sys.executable
        self.supervisor.add("kubelet-events", [py, "-m", "runbook.testbed.kubelet_events", str(self.state_dir)],
                            eventlistener="PROCESS_STATE", startsecs=0, autorestart=True)
        self.supervisor.add("cluster", self.in_node([py, "-m", "runbook.testbed.cluster", "--port",
                                                    str(self.tb.cluster_port), "--rate-limit",
                                                    str(self.tb.cluster_rate_limit)]), env=self._chain_env())
        systemd.up(self, progress)  # the host's service manager: systemctl and the host's doublezerod unit
        self._up_caddy(progress)

        progress("deploying green (doublezerod sidecar, then validator)")
        green = self.env.deployments.green
        self.workloads.apply_deployment(self.green_manifest())
        self.workloads.wait_rollout(green.name, timeout=self.env.timeouts.rollout)
        self._wait_serving(progress)
        self._save(up=True)
        progress(f"up: {self.env.ingress.url} -> green :{green.rpc_port}; state in {self.state_dir}")

    def green_manifest(self) -> dict[str, Any]:
        """Green as the testbed deploys it: the baseline every mutating scenario starts from."""
        green = self.env.deployments.green
        mount = Path(green.mount or self.storage.path(green.data))
        return render_deployment(self.env, "green", image=green.image,
                                 host_paths={"ledger": str(mount / "ledger"), "snapshots": str(mount / "snapshots")})

    def baseline_extras(self) -> LocalExtras:
        """What only this testbed can do for the baseline (:mod:`runbook.baseline`): green's manifest when
        nothing is deployed yet, and re-seeding green's data after a scenario destroyed it."""
        return LocalExtras(green_manifest=self.green_manifest, reseed_green_data=self._seed_green_data)

    def reset_to_baseline(self, *, progress: Progress = _quiet, baseline: Baseline | None = None) -> list[str]:
        """Put the testbed back to ``baseline`` (captured now when not given): green serving alone, Caddy's
        config as captured, no blue, no clone, no pre-upgrade snapshot, no journal. The same reset as on
        kind (:func:`runbook.baseline.restore`, through the ports). Returns what it had to fix."""
        from runbook import baseline as bl
        from runbook.adapters.factory import connect

        adapters, extras = connect(self.env, self), self.baseline_extras()
        return bl.restore(adapters, baseline or bl.capture(adapters, extras=extras), extras=extras, progress=progress)

    def _chain_env(self) -> dict[str, str]:
        return {**chain.ChainParams.from_testbed(self.tb).to_env(), "PYTHONPATH": str(PROJECT_ROOT)}

    def _up_storage(self, progress: Progress) -> tuple[str, str]:
        from runbook.adapters.storage import choose_backend

        root = self.state_dir / "storage"
        root.mkdir(parents=True, exist_ok=True)
        backend, reason = choose_backend(self.env.storage.backend, root)
        if backend == "btrfs":
            progress(f"creating a {self.tb.storage_size} btrfs loop image")
            loopfs.up(image=self.state_dir / "storage.img", mountpoint=root, size=self.tb.storage_size)
        if backend == "zvol":
            progress(f"creating a {self.tb.storage_size} zvol pool (reflink XFS on zram)")
            root = prodshape.up_pool(self.state_dir, self.tb.storage_size)
        self._save(backend=backend, backend_reason=reason, storage_root=str(root))
        return backend, reason

    def _seed_green_data(self, progress: Progress) -> None:
        green = self.env.deployments.green
        if green.mount and self.storage.backend == "zvol":  # a volume mounted at green's mount, as on biscayne
            prodshape.ensure_green_volume(self, progress)
        ds = self.storage.ensure_dataset(green.data)
        ledger = Path(ds.path) / "ledger"
        if not (ledger / chain.PROGRESS_FILE).exists():
            params = chain.ChainParams.from_testbed(self.tb)
            progress(f"initialising green's ledger at the cluster tip ({ledger})")
            chain.init_ledger(ledger, slot=params.tip(), size_mb=8)
        accounts = self.host_path(green.accounts)
        accounts.mkdir(parents=True, exist_ok=True)
        for i in range(self.tb.accounts_mb // 4):  # the accounts "ramdisk": copied by upgrades, with progress
            f = accounts / f"accounts-{i:04d}.bin"
            if not f.exists():
                f.write_bytes(os.urandom(4 * 2**20))
        dz_dir = self.host_path("/srv/deployments/agave/data/doublezero-config")
        dz_dir.mkdir(parents=True, exist_ok=True)
        keypair.write_keypair(dz_dir / "id.json", bytes.fromhex(self.tb.identity_seed))
        (Path(ds.path) / "snapshots").mkdir(exist_ok=True)
        for colour in ("green", "blue"):  # each colour's own validator identity, as an operator provisions them
            path = self.env.deployments.colour(colour).identity
            if path and not self.host_path(path).is_file():
                keypair.write_keypair(self.host_path(path), keypair.colour_seed(bytes.fromhex(self.tb.identity_seed),
                                                                                colour))

    def _up_netns(self, progress: Progress) -> None:
        ok, why = netns.has_net_admin()
        if not ok:
            progress(f"no node network namespace: {why}; everything runs in this one, doublezero route checks skip")
            self._save(netns=None, netns_reason=why)
            return
        name = self._node_name()
        node = NodeNetwork(name)
        self._save(netns=name, netns_reason="")  # recorded first: down() cleans up a half-made node
        ports = [port for setting, port in self.env.port_settings()
                 if setting != "testbed.supervisor_port"
                 and not setting.startswith(("canary.", "release.", "hardfork."))]  # the kube-proxy's: in this netns
        progress(f"node network namespace {name}, ports {sorted(set(ports))} mapped from this loopback")
        node.up(ports)

    def _node_name(self) -> str:
        return f"rbtb-{self.env.name}-{self.tb.supervisor_port}"

    def in_node(self, argv: list[str]) -> list[str]:
        """``argv`` run on the node: in its network namespace (when there is one)."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def _up_caddy(self, progress: Progress) -> None:
        template = PROJECT_ROOT / self.env.ingress.template
        conf = self.state_dir / "Caddyfile"
        conf.write_text(caddy.render(template, self.env, **prodshape.caddy_overrides(self)))
        progress(f"starting Caddy from {template.relative_to(PROJECT_ROOT)}")
        self.supervisor.add("caddy", self.in_node(caddy.run_argv(conf)), env=caddy.run_env(self.state_dir))
        wait_for(lambda: httpx.get(self.env.ingress.admin + "/config/", timeout=1.0).status_code, lambda s: s == 200,
                 timeout=20, interval=0.1, what=f"Caddy admin API at {self.env.ingress.admin}",
                 tolerate=(httpx.HTTPError,), env=self.env.name)

    def _wait_serving(self, progress: Progress) -> None:
        public = RpcClient(url=self.env.ingress.url)
        progress("waiting until green answers `ok` through Caddy")
        wait_for(lambda: public.health().body, lambda b: b == "ok", timeout=self.env.timeouts.healthy,
                 interval=0.2, what=f"{self.env.ingress.url}/health to answer ok",
                 tolerate=(AdapterError,), env=self.env.name)

    # -- down --------------------------------------------------------------------------------
    def down(self, *, progress: Progress = _quiet) -> None:
        state = self._state()
        progress("stopping every program under supervisord")
        self.supervisor.shutdown()
        self._kill_strays()
        ns = state.get("netns") or self._node_name()  # the name is derived: found without testbed.json too
        if ns in netns.list_names() or NodeNetwork(ns).leftovers():
            progress(f"deleting network namespace {ns} and its port mappings")
            NodeNetwork(ns).down()
            netns.delete(ns)
        if state.get("backend") == "btrfs" or (self.state_dir / "storage.img").exists():
            progress("unmounting the storage image and detaching its loop device")
            loopfs.down(image=self.state_dir / "storage.img", mountpoint=self.state_dir / "storage")
        prodshape.down(self, progress)  # volumes, pool, ramdisks, sshd (found without records)
        self._state_file.unlink(missing_ok=True)
        left = self.leftovers()
        if left:
            raise TestbedError("testbed down left things behind: " + "; ".join(left), env=self.env.name)

    def _processes(self) -> list[psutil.Process]:
        """Live processes of this testbed: supervisord and its programs carry RUNBOOK_TESTBED=<state dir> in
        their environment (containers do not: a shim's children, found under the shims), plus descendants."""
        mark = f"{TESTBED_MARK}={self.state_dir}".encode()
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["pid"]):
            if p.info["pid"] == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{p.info['pid']}/environ").read_bytes()
            except OSError:
                continue
            if mark in environ.split(b"\0"):
                found[p.pid] = p
                with contextlib.suppress(psutil.Error):
                    found.update({c.pid: c for c in p.children(recursive=True)})
        return list(found.values())

    def _kill_strays(self) -> None:
        """Processes of this testbed that outlived supervisord (e.g. after a SIGKILL)."""
        for p in self._processes():
            try:
                p.kill()
                p.wait(timeout=5)
            except psutil.Error:
                pass

    def leftovers(self) -> list[str]:
        """Everything of this testbed still alive: processes, namespaces, mounts, loop devices."""
        out = []
        sup = self.supervisor.pid()
        if sup:
            out.append(f"supervisord pid {sup}")
        for p in self._processes():
            try:
                out.append(f"process {p.pid}: {' '.join(p.cmdline())[:100]}")
            except psutil.Error:
                continue
        prefix = self._node_name()
        out += [f"network namespace {n}" for n in netns.list_names() if n == prefix]
        out += NodeNetwork(prefix).leftovers()
        out += loopfs.leftovers(self.state_dir)
        out += prodshape.leftovers(self)
        return out

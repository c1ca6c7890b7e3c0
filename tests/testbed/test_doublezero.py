"""The stand-in doublezerod and doublezero CLI, run as real processes; the tunnel read from the kernel."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import base58
import psutil
import pytest
from nacl.signing import SigningKey

from runbook.testbed import netns
from runbook.testbed.doublezero_cli import DaemonUnreachable, query
from runbook.testbed.keypair import read_pubkey, write_keypair
from runbook.wait import wait_for

SEED = bytes.fromhex("49ff73a5302136aa018dd9059cadc96d1f6f3f309b97fd876eca2526672dffa0")
OTHER_SEED = bytes(range(32))
DEVICE = "laconic-mia-sw01"

needs_net_admin = pytest.mark.skipif(
    not netns.has_net_admin(), reason=f"needs CAP_NET_ADMIN for network namespaces: {netns.net_admin_reason()}"
)


def _pubkey(seed: bytes) -> str:
    """Independent of the module under test: pynacl + base58 directly."""
    return base58.b58encode(bytes(SigningKey(seed).verify_key)).decode()


@pytest.fixture
def config_dir() -> Iterator[Path]:
    # Short path under /tmp: a unix socket path must fit in 107 bytes.
    d = Path(tempfile.mkdtemp(prefix="rbdz-", dir="/tmp"))
    write_keypair(d / "id.json", SEED)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _env(config_dir: Path, version: str = "0.6.0") -> dict[str, str]:
    """Only what the daemon's container gets: the image's version and (for the harness) its config dir."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DOUBLEZERO_CONFIG_DIR": str(config_dir),
            "RUNBOOK_IMAGE_VERSION": version, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}


def cli(config_dir: Path, *args: str, version: str = "0.6.0", sock: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    """`doublezero ...` as exec'd in the daemon's container; ``sock``: that container's daemon socket."""
    argv = [sys.executable, "-m", "runbook.testbed.doublezero_cli",
            *(["--socket", str(sock or config_dir / "doublezerod.sock")] if args[:1] == ("status",) else []), *args]
    return subprocess.run(argv, env=_env(config_dir, version), capture_output=True, text=True, timeout=20)


Starter = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def ns_name() -> Iterator[str]:
    name = f"rbtest-{uuid.uuid4().hex[:10]}"
    if netns.has_net_admin():
        netns.create(name)
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture
def start_daemon(config_dir: Path, ns_name: str) -> Iterator[Starter]:
    """A daemon as a host-network pod runs it: in the node's network namespace (the test's own namespace,
    ``ns_name``, never the runner's), its socket where ``sock`` says (a container's private /var/run)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, version: str = "0.6.0", sock: Path | None = None, ns: str | None = None
              ) -> subprocess.Popen[bytes]:
        env = _env(config_dir, version) | {"RUNBOOK_DZ_DEVICE": DEVICE}
        argv = [sys.executable, "-m", "runbook.testbed.doublezerod", "--session-delay", "0.3",
                "--socket", str(sock or config_dir / "doublezerod.sock"), *args]
        if netns.has_net_admin():
            argv = ["ip", "netns", "exec", ns or ns_name, *argv]
        log = open(config_dir / f"doublezerod-{len(procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_session_up(config_dir: Path, proc: subprocess.Popen[bytes], sock: Path | None = None) -> dict[str, object]:
    """Poll the daemon's /info until this process reports the session up (logs: the fixture's config dir)."""

    def observe() -> dict[str, object]:
        if proc.poll() is not None:
            raise AssertionError(f"doublezerod exited {proc.returncode}: {_logs(config_dir)}")
        info = query(sock or config_dir / "doublezerod.sock", "/info", timeout=2.0)
        assert isinstance(info, dict)
        return info

    return wait_for(
        observe,
        lambda info: info["pid"] == proc.pid and info["session"]["state"] == "BGP Session Up",  # type: ignore[index]
        timeout=10,
        interval=0.05,
        what="doublezerod's BGP session",
        tolerate=(DaemonUnreachable,),
    )


def _logs(config_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(config_dir.glob("doublezerod-*.log")))


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=5)


def _row(status_stdout: str) -> dict[str, str]:
    """Parse the real CLI's table (header line + one row) into column -> cell."""
    header, row, *_ = status_stdout.splitlines()
    return dict(zip([h.strip() for h in header.split("|")], [c.strip() for c in row.split("|")], strict=True))


# --------------------------------------------------------------------------- identity


def test_address_is_the_public_key_of_the_seed(config_dir: Path) -> None:
    res = cli(config_dir, "address")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == _pubkey(SEED) == "DkNx7RQDpQiL7tqoZsCfwgBUYsywKuuwehJXFjSgQS9N"


def test_keypair_file_is_solana_format_with_mode_0600(config_dir: Path) -> None:
    path = config_dir / "id.json"
    data = json.loads(path.read_text())
    assert len(data) == 64 and bytes(data[:32]) == SEED
    assert base58.b58encode(bytes(data[32:])).decode() == _pubkey(SEED)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_pubkey(path) == _pubkey(SEED)


def _malformed(kind: str) -> str:
    good = list(SEED) + list(SigningKey(SEED).verify_key.encode())
    other_pub = list(SigningKey(OTHER_SEED).verify_key.encode())
    return {
        "truncated": json.dumps(good[:63]),
        "mismatched": json.dumps(list(SEED) + other_pub),
        "out-of-range": json.dumps([*good[:10], 256, *good[11:]]),
        "not-json": ",".join(map(str, good)) + "]",
        "object": json.dumps({"secret": good}),
    }[kind]


@pytest.mark.parametrize("kind", ["truncated", "mismatched", "out-of-range", "not-json", "object"])
def test_malformed_id_json_fails_without_printing_key_bytes(config_dir: Path, kind: str) -> None:
    (config_dir / "id.json").write_text(_malformed(kind))
    res = cli(config_dir, "address")
    assert res.returncode != 0
    assert "keypair file" in res.stderr and res.stdout == ""
    output = res.stdout + res.stderr
    leaks = [
        ",".join(map(str, SEED[:4])),
        ", ".join(map(str, SEED[:4])),
        SEED.hex(),
        SEED[:8].hex(),
        base58.b58encode(SEED).decode(),
    ]
    assert not [leak for leak in leaks if leak in output], output


def test_daemon_refuses_to_start_without_an_identity(config_dir: Path, start_daemon: Starter) -> None:
    (config_dir / "id.json").unlink()
    proc = start_daemon()
    assert proc.wait(timeout=10) == 1
    logs = _logs(config_dir)
    assert "cannot start" in logs and "does not exist" in logs
    assert not (config_dir / "doublezerod.sock").exists()


# --------------------------------------------------------------------------- status and version


def test_version_in_the_real_cli_format(config_dir: Path) -> None:
    assert cli(config_dir, "--version", version="v0.6.3").stdout == "DoubleZero 0.6.3\n"
    assert cli(config_dir, "--cli-version", "0.7.1", "--version").stdout == "DoubleZero 0.7.1\n"


@pytest.mark.netadmin
@needs_net_admin
def test_status_shows_session_up_and_device_then_fails_when_daemon_stops(
    config_dir: Path, start_daemon: Starter, ns_name: str
) -> None:
    proc = start_daemon()
    info = wait_session_up(config_dir, proc)
    assert info["tunnel"]["present"] and info["tunnel"]["managed"]  # type: ignore[index]
    assert info["tunnel"]["netns"] is None  # its own namespace: no side channel names one  # type: ignore[index]

    res = cli(config_dir, "status")
    assert res.returncode == 0, res.stderr
    row = _row(res.stdout)
    assert row["Tunnel status"] == "BGP Session Up"
    assert row["Current Device"] == DEVICE
    assert row["Tunnel Name"] == "doublezero0"
    assert res.stdout.splitlines()[0].split("|")[0].strip() == "Tunnel status"

    as_json = json.loads(cli(config_dir, "status", "--json").stdout)
    assert as_json[0]["response"]["doublezero_status"]["session_status"] == "BGP Session Up"

    assert _stop(proc) == 0
    down = cli(config_dir, "status")
    assert down.returncode == 1
    assert "doublezero service is not accessible" in down.stderr
    assert "BGP Session Up" not in down.stdout


def test_the_default_socket_is_the_real_daemons_private_path() -> None:
    from runbook.testbed.doublezerod import default_socket

    assert str(default_socket()) == "/var/run/doublezerod/doublezerod.sock"


def test_status_reports_connection_failure_on_a_stale_socket(config_dir: Path) -> None:
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(config_dir / "doublezerod.sock"))  # bound, never listening: connection refused
    try:
        res = cli(config_dir, "status")
    finally:
        stale.close()
    assert res.returncode == 1
    assert "Unable to connect to doublezero daemon" in res.stderr


@pytest.mark.netadmin
@needs_net_admin
def test_a_second_daemon_with_the_same_identity_on_the_host_breaks_the_first(
    config_dir: Path, start_daemon: Starter
) -> None:
    """Design trap 10: one tunnel and one BGP session per identity per host. Blue's sidecar started beside
    green's (no lock) is refused, and green's session is reset by the attempt: the DZ check must fail."""
    green = start_daemon(sock=config_dir / "green.sock")
    first = wait_session_up(config_dir, green, sock=config_dir / "green.sock")
    blue = start_daemon(sock=config_dir / "blue.sock")
    assert blue.wait(timeout=10) == 1
    assert "already held by another doublezerod" in _logs(config_dir)
    info = query(config_dir / "green.sock", "/info", timeout=2.0)
    assert isinstance(info, dict)
    assert len(info["session_resets"]) == 1 and "same identity" in info["session_resets"][0]["why"]
    after = wait_session_up(config_dir, green, sock=config_dir / "green.sock")  # it comes back, later
    assert after["session"]["since"] > first["session"]["since"]  # type: ignore[index]


@pytest.mark.netadmin
@needs_net_admin
def test_the_same_identity_in_two_network_namespaces_is_two_hosts(config_dir: Path, start_daemon: Starter) -> None:
    other = f"rbtest-{uuid.uuid4().hex[:10]}"
    netns.create(other)
    try:
        a = start_daemon(sock=config_dir / "a.sock")
        b = start_daemon(sock=config_dir / "b.sock", ns=other)
        wait_session_up(config_dir, a, sock=config_dir / "a.sock")
        wait_session_up(config_dir, b, sock=config_dir / "b.sock")
        info = query(config_dir / "a.sock", "/info", timeout=2.0)
        assert isinstance(info, dict) and info["session_resets"] == []
    finally:
        subprocess.run(["ip", "netns", "del", other], capture_output=True, check=False)


def _manifest_sidecar(config_dir: Path, ns: str) -> list[str]:
    """The doublezerod container's argv exactly as deploy/k8s gives it (command + args), its lock and
    config dir pointed at this test's, run in the node namespace ``ns``."""
    from runbook.env import load_env
    from runbook.manifests import render_deployment

    pod = render_deployment(load_env("local"), "blue")["spec"]["template"]["spec"]
    c = pod["initContainers"][0]
    mount = c["volumeMounts"][0]["mountPath"]
    argv = [str(a).replace(mount, str(config_dir)) for a in c["command"] + c["args"]]
    (config_dir / "bin").mkdir(exist_ok=True)
    exe = config_dir / "bin" / "doublezerod"  # the image's binary
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -m runbook.testbed.doublezerod --session-delay 0.3 \"$@\"\n")
    exe.chmod(0o755)
    return ["ip", "netns", "exec", ns, *argv]


def locked_env(config_dir: Path) -> dict[str, str]:
    env = _env(config_dir) | {"RUNBOOK_DZ_DEVICE": DEVICE}
    return env | {"PATH": f"{config_dir / 'bin'}:{env['PATH']}"}


@pytest.mark.netadmin
@needs_net_admin
def test_a_sidecar_waiting_for_the_identity_stops_at_once_on_sigterm(config_dir: Path, ns_name: str) -> None:
    """PID 1 of a container ignores SIGTERM without a handler: the manifest's waiting shell must not."""
    locked = _manifest_sidecar(config_dir, ns_name)
    lock = config_dir / "identity.lock"
    holder = subprocess.Popen(["flock", str(lock), "sleep", "30"])
    try:
        wait_for(lambda: subprocess.run(["flock", "-n", str(lock), "true"]).returncode, lambda rc: rc != 0,
                 timeout=5, interval=0.05, what="the lock to be held")
        waiting = subprocess.Popen([*locked, "--socket", str(config_dir / "w.sock")], env=locked_env(config_dir))
        wait_for(lambda: [c.name() for c in psutil.Process(waiting.pid).children()], lambda names: "sleep" in names,
                 timeout=5, interval=0.05, what="the sidecar to be waiting in its lock loop")
        waiting.terminate()
        assert waiting.wait(timeout=3) == 143
        assert not (config_dir / "w.sock").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.netadmin
@needs_net_admin
def test_the_manifests_identity_lock_hands_the_tunnel_over_without_a_reset(
    config_dir: Path, start_daemon: Starter, ns_name: str
) -> None:
    """The fix deploy/k8s uses: each sidecar takes the identity's lock (flock on the shared config dir)
    before the daemon starts. Blue's waits while green's runs; green's session is never reset; when green
    stops, blue's takes over and finds doublezero0 and its routes untouched."""
    locked = _manifest_sidecar(config_dir, ns_name)
    g = subprocess.Popen([*locked, "--socket", str(config_dir / "green.sock")], env=locked_env(config_dir),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b: subprocess.Popen[bytes] | None = None
    try:
        wait_session_up(config_dir, g, sock=config_dir / "green.sock")  # green holds it before blue starts
        b = subprocess.Popen([*locked, "--socket", str(config_dir / "blue.sock")], env=locked_env(config_dir),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: [c.name() for c in psutil.Process(b.pid).children()], lambda names: "sleep" in names,
                 timeout=5, interval=0.05, what="blue's sidecar to be waiting for the identity")
        routes, link = netns.routes(ns_name, "doublezero0"), netns.interface(ns_name, "doublezero0")
        assert routes and link is not None
        assert b.poll() is None and not (config_dir / "blue.sock").exists()  # waiting on the lock, not running
        info = query(config_dir / "green.sock", "/info", timeout=2.0)
        assert isinstance(info, dict) and info["session_resets"] == []
        g.terminate()
        assert g.wait(timeout=5) == 0
        assert netns.routes(ns_name, "doublezero0") == routes  # nothing runs, the kernel keeps them
        wait_session_up(config_dir, b, sock=config_dir / "blue.sock")
        assert netns.routes(ns_name, "doublezero0") == routes
        after = netns.interface(ns_name, "doublezero0")
        assert after is not None and after.ifindex == link.ifindex
    finally:
        for p in (g, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------- the tunnel survives a restart


@pytest.mark.netadmin
@needs_net_admin
def test_tunnel_and_routes_survive_a_daemon_restart(config_dir: Path, start_daemon: Starter, ns_name: str) -> None:
    first = start_daemon(version="0.6.0")
    wait_session_up(config_dir, first)
    before = netns.interface(ns_name, "doublezero0")
    routes_before = netns.routes(ns_name, "doublezero0")
    assert before is not None and before.up
    assert {"192.0.2.10/32", "192.0.2.11/32", "198.51.100.20/32"} <= set(routes_before)

    assert _stop(first) == 0
    # Daemon gone: the kernel still has the link and every route, like the GRE tunnel on biscayne.
    during = netns.interface(ns_name, "doublezero0")
    assert during is not None and during.ifindex == before.ifindex
    assert netns.routes(ns_name, "doublezero0") == routes_before

    second = start_daemon(version="0.6.3")
    info = wait_session_up(config_dir, second)
    after = netns.interface(ns_name, "doublezero0")
    assert after is not None and after.ifindex == before.ifindex
    assert netns.routes(ns_name, "doublezero0") == routes_before
    assert info["version"] == "0.6.3" and info["tunnel"]["ifindex"] == before.ifindex  # type: ignore[index]
    assert "already present, kept" in _logs(config_dir)

    row = _row(cli(config_dir, "status", version="0.6.3").stdout)
    assert (row["Tunnel status"], row["Tunnel Name"], row["Current Device"]) == (
        "BGP Session Up",
        "doublezero0",
        DEVICE,
    )


@pytest.mark.netadmin
@needs_net_admin
def test_session_reads_down_when_the_kernel_link_is_gone(config_dir: Path, start_daemon: Starter, ns_name: str) -> None:
    proc = start_daemon()
    wait_session_up(config_dir, proc)
    subprocess.run(["ip", "-n", ns_name, "link", "del", "doublezero0"], check=True)
    row = _row(cli(config_dir, "status").stdout)
    assert row["Tunnel status"] == "BGP Session Down"
    assert row["Tunnel Name"] == ""

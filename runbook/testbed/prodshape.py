"""biscayne's shape on the local testbed: what ``Testbed.up`` adds for an env like envs/biscayne-testbed.yaml.

- **zvol storage** (``storage.backend: zvol``): the pool (:mod:`runbook.testbed.zvolpool`, a reflink XFS on
  zram) is the testbed's storage root. Green's data is a volume (an XFS image on a loop device) of
  ``testbed.volume_size`` mounted at ``deployments.green.mount`` (mapped through ``testbed.host_paths``), as
  biscayne's ledger zvol is mounted at /srv/solana. With ``storage.snapshot_root``, the parent is a directory
  dataset (``biscayne/DATA``), holding ``<root>/volumes`` and a config dataset ``<root>/deployments``
  bind-mounted at /srv/deployments (validator and DZ keypairs: the recursive snapshot takes them, as the
  seed's ``zfs snapshot -r biscayne/DATA`` does).
- **ramdisks** (``testbed.ramdisk_size``): each colour's accounts parent (/srv/solana/ramdisk) is its own
  zram device with ext4 (:mod:`runbook.testbed.ramdisk`).
- **sshd** (``testbed.sshd``): the env's host is the testbed's own sshd (:mod:`runbook.testbed.sshd`, state in
  ``<state_dir>/sshd``): the runner reaches the host as a non-root user with sudo, as an operator reaches
  biscayne.
- **Caddy's upstreams** as ``localhost:<port>`` (``testbed.caddy_upstream_host``), as the seed's site has them.

:func:`down` and :func:`leftovers` work from the kernel's tables and the state directory alone (after a crash).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runbook.adapters import blockdev
from runbook.env import Env, project_path
from runbook.errors import TestbedError
from runbook.testbed import ramdisk, zvolpool
from runbook.testbed.loopfs import run_local
from runbook.testbed.sshd import Sshd

if TYPE_CHECKING:
    from runbook.testbed.stack import Testbed

Progress = Callable[[str], None]
CONFIG_PATH = "/srv/deployments"  # validator-config and doublezero-config, as on biscayne


def up_pool(state_dir: Path, size: str) -> Path:
    """The zvol pool of ``state_dir`` (the testbed's storage root)."""
    return zvolpool.up(state_dir, size).mountpoint


def config_dataset(env: Env) -> str | None:
    root = env.storage.snapshot_root
    return f"{root}/deployments" if root else None


def ensure_green_volume(tb: Testbed, progress: Progress) -> None:
    """Parent and config datasets, green's ledger volume, mounted where green's manifest reads them (converges)."""
    from runbook.adapters.storage_zvol import ZvolStorage

    env, green = tb.env, tb.env.deployments.green
    st = tb.storage
    inner = getattr(st, "inner", None)
    assert isinstance(inner, ZvolStorage) and green.mount
    up_shared_parents(tb)
    if (root := env.storage.snapshot_root) is not None:
        for name in (root, posixpath.dirname(green.data)):
            if name == root or name.startswith(root + "/"):
                inner.ensure_dataset(name)
        config = config_dataset(env)
        assert config is not None
        inner.ensure_dataset(config)
        if inner.mounted_at(config) is None:
            st.mount(config, CONFIG_PATH)
    if green.data not in {d.name for d in inner.datasets()}:
        progress(f"creating green's ledger volume {green.data} ({tb.tb.volume_size}, XFS)")
    inner.ensure_volume(green.data, tb.tb.volume_size)
    if inner.mounted_at(green.data) is None:
        progress(f"mounting {green.data} at {green.mount} ({tb.host_path(green.mount)})")
        st.mount(green.data, green.mount)


def up_ramdisks(tb: Testbed, progress: Progress) -> None:
    size = tb.tb.ramdisk_size
    if not size:
        return
    for i, colour in enumerate(("green", "blue")):
        parent = posixpath.dirname(tb.env.deployments.colour(colour).accounts)
        dev = ramdisk.up(tb.state_dir, i, size, tb.host_path(parent))
        progress(f"{colour}'s accounts ramdisk: {dev} ({size}, ext4) at {parent} ({tb.host_path(parent)})")


def sshd_of(state_dir: Path) -> Sshd:
    return Sshd(state_dir / "sshd")


def up_sshd(tb: Testbed, progress: Progress) -> None:
    sshd = sshd_of(tb.state_dir)
    given = tb.env.host_target.option("ssh_config")
    if tb.env.host_target.scheme != "ssh" or given is None or project_path(given).resolve() != sshd.ssh_config:
        raise TestbedError(f"testbed.sshd is set, so the env's host must be this testbed's sshd: "
                           f"{sshd.host_url(sudo=True)} (got {tb.env.host})", env=tb.env.name)
    sshd.up()
    progress(f"sshd on 127.0.0.1:{sshd.port} for {sshd.user} (passwordless sudo): host {tb.env.host_target.display}")


def caddy_overrides(tb: Testbed) -> dict[str, str]:
    host = tb.tb.caddy_upstream_host
    if host == "127.0.0.1":
        return {}
    g, b = tb.env.deployments.green.rpc_port, tb.env.deployments.blue.rpc_port
    return {"upstreams": f"{host}:{g} {host}:{b}", "upstreams_blue_first": f"{host}:{b} {host}:{g}"}


def shared_parents(tb: Testbed) -> list[str]:
    """The directories holding the colours' mounts (``<state_dir>/srv``): each a shared bind mount of itself."""
    deps = (tb.env.deployments.green, tb.env.deployments.blue)
    return sorted({str(tb.host_path(d.mount).parent.resolve()) for d in deps if d.mount})


def up_shared_parents(tb: Testbed) -> None:
    """Make the mounts' parent directory a shared bind mount (as a kubelet's host has ``/`` shared): a volume
    mounted under it later is then seen by a container's slave namespace (HostToContainer), and its unmount
    too, so a container started while a volume was mounted does not keep the loop device busy."""
    for parent in shared_parents(tb):
        Path(parent).mkdir(parents=True, exist_ok=True)
        if not any(m.target == parent for m in blockdev.mounts()):
            run_local(["mount", "--bind", parent, parent], timeout=60)
        run_local(["mount", "--make-shared", parent], timeout=60)


def down(tb: Testbed, progress: Progress) -> None:
    """Volume mounts, loop devices, the pool, the shared parents, the ramdisks and the sshd (idempotent)."""
    state_dir = tb.state_dir
    if zvolpool.leftovers(state_dir):
        progress("unmounting the zvol pool's volumes, detaching their loop devices, removing the pool")
        zvolpool.down(state_dir, timeout=30)
    for parent in shared_parents(tb):
        if any(m.target == parent for m in blockdev.mounts()):
            zvolpool._umount(parent, 30)
    if ramdisk.devices(state_dir):
        progress("unmounting and removing the accounts ramdisks")
        ramdisk.down(state_dir, timeout=30)
    if (done := sshd_of(state_dir).down()):
        progress("sshd: removed " + ", ".join(done))


def leftovers(tb: Testbed) -> list[str]:
    sd, parents = tb.state_dir, shared_parents(tb)
    binds = [f"bind mount: {m.target}" for m in blockdev.mounts() if m.target in parents]
    return zvolpool.leftovers(sd) + binds + ramdisk.leftovers(sd) + sshd_of(sd).leftovers()


def to_host(tb: Testbed, local: str | None) -> str | None:
    """A local path back to the host path that ``testbed.host_paths`` maps onto it (longest match)."""
    if local is None:
        return None
    best: tuple[int, str] | None = None
    for prefix, rel in tb.tb.host_paths.items():
        base = str((Path(rel) if Path(rel).is_absolute() else tb.state_dir / rel).resolve())
        if (local == base or local.startswith(base + "/")) and (best is None or len(base) > best[0]):
            best = (len(base), prefix.rstrip("/") + local[len(base):])
    return best[1] if best else local

"""The zvol model on real devices: a reflink XFS pool on zram, XFS volume images on loop devices.

Everything here is the kernel's: mounts, ``nouuid``, loop devices, reflink copies, FIEMAP. Each test gets
its own pool and removes it (zram device, loop devices, mounts) even when it fails; skipped, with the
reason, where the pool cannot work (not root, no zram/XFS/loop, no xfsprogs).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.adapters import blockdev
from runbook.adapters.base import Storage
from runbook.adapters.storage import NoSuchDataset, StorageRefused, ZvolStorage, choose_backend, make_storage
from runbook.errors import AdapterError, CommandFailed, TestbedError
from runbook.testbed import zvolpool
from runbook.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
DATA = "biscayne/DATA"
GREEN = "biscayne/DATA/volumes/solana"
BLUE = "biscayne/DATA/volumes/solana-blue"
VOLSIZE = "320M"  # mkfs.xfs needs 300 MiB; sparse, so it costs what is written
MiB = 1024 * 1024


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Path]:
    ok, why = zvolpool.available()
    if not ok:
        pytest.skip(f"zvol pool unavailable: {why}")
    state = tmp_path / "state"
    try:
        yield zvolpool.up(state, "1G").mountpoint
    finally:  # patient: a testbed container started meanwhile holds a private copy of our mounts until it exits
        zvolpool.down(state, timeout=60)
        assert zvolpool.leftovers(state) == []


@pytest.fixture
def st(pool: Path) -> ZvolStorage:
    return ZvolStorage(pool)


def write(path: Path, name: str, data: bytes) -> None:
    (path / name).write_bytes(data)
    subprocess.run(["sync", "-f", str(path)], check=True)


def green_mounted(st: ZvolStorage, where: Path) -> Path:
    st.ensure_volume(GREEN, VOLSIZE)
    mnt = where / "srv-solana"
    st.mount(GREEN, str(mnt))
    write(mnt, "ledger.bin", b"slot-100\n" * 100_000)
    return mnt


def test_the_model_satisfies_the_protocol_and_is_selectable(pool: Path) -> None:
    st = make_storage("zvol", pool)
    assert isinstance(st, Storage) and isinstance(st, ZvolStorage) and st.backend == "zvol"
    assert choose_backend("zvol", pool)[0] == "zvol"


def test_snapshot_clone_mount_nouuid_unmount_destroy(st: ZvolStorage, tmp_path: Path) -> None:
    green = green_mounted(st, tmp_path)
    assert st.path(GREEN) == str(green) and st.mounted_at(GREEN) == str(green)
    snap = st.snapshot(GREEN, "pre")  # green mounted: xfs_freeze -f, reflink copy, xfs_freeze -u
    blue = st.clone(snap, BLUE)
    assert blue.origin == snap and blue.path == ""  # a volume: nothing to read until mounted
    with pytest.raises(AdapterError, match="not mounted"):
        st.path(BLUE)

    bmnt = tmp_path / "srv-solana-blue"
    st.mount(BLUE, str(bmnt))  # beside its origin: needs nouuid, which mount() passes
    st.mount(BLUE, str(bmnt))  # converges
    assert (bmnt / "ledger.bin").read_bytes() == (green / "ledger.bin").read_bytes()
    device = next(m.source for m in blockdev.mounts() if m.target == str(bmnt))
    assert device.startswith("/dev/loop") and blockdev.loops_of(st.image(BLUE)) == [device]

    write(bmnt, "ledger.bin", b"blue replays\n")  # blue's writes stay blue's
    assert (green / "ledger.bin").read_bytes().startswith(b"slot-100")
    with pytest.raises(StorageRefused, match="already mounted"):
        st.mount(BLUE, str(tmp_path / "elsewhere"))

    st.unmount(BLUE)
    assert st.mounted_at(BLUE) is None and blockdev.loops_of(st.image(BLUE)) == []  # detached, not lazily
    assert str(bmnt) not in {m.target for m in blockdev.mounts()}
    st.unmount(BLUE)  # converges
    with pytest.raises(StorageRefused) as refused:
        st.destroy(snap)  # the clone depends on it
    assert refused.value.blockers == (BLUE,)
    image = st.image(BLUE)
    st.destroy(BLUE)
    st.destroy(snap)
    assert not Path(image).exists() and [d.name for d in st.datasets()] == [GREEN]


def test_destroy_or_rollback_of_a_mounted_volume_is_refused(st: ZvolStorage, tmp_path: Path) -> None:
    green = green_mounted(st, tmp_path)
    snap = st.snapshot(GREEN, "pre")
    st.clone(snap, BLUE)
    bmnt = tmp_path / "blue"
    st.mount(BLUE, str(bmnt))
    with pytest.raises(StorageRefused, match="unmount it first") as refused:
        st.destroy(BLUE)
    assert refused.value.blockers == (str(bmnt),)
    assert st.mounted_at(BLUE) == str(bmnt) and Path(st.image(BLUE)).exists()  # nothing changed
    with pytest.raises(StorageRefused, match="back under its mounted filesystem"):
        st.rollback(snap)
    assert (green / "ledger.bin").exists()
    with pytest.raises(StorageRefused, match="unmount it first"):
        st.destroy(GREEN, recursive=True)  # the tree holds a mounted volume
    st.unmount(BLUE)
    st.destroy(BLUE)


def test_mounting_a_clone_beside_its_origin_without_nouuid_fails(st: ZvolStorage, tmp_path: Path) -> None:
    green_mounted(st, tmp_path)
    st.clone(st.snapshot(GREEN, "pre"), BLUE)
    bmnt = tmp_path / "blue"
    with pytest.raises(CommandFailed) as failed:
        st.mount(BLUE, str(bmnt), nouuid=False)  # same XFS UUID as the mounted origin: the kernel refuses
    assert "mount" in failed.value.command
    assert st.mounted_at(BLUE) is None and blockdev.loops_of(st.image(BLUE)) == []  # nothing left attached
    st.mount(BLUE, str(bmnt))
    assert (bmnt / "ledger.bin").is_file()
    st.unmount(BLUE)


def test_identity_changes_on_a_write_or_a_rollback_only(st: ZvolStorage, tmp_path: Path) -> None:
    green = green_mounted(st, tmp_path)
    snap = st.snapshot(GREEN, "pre")
    before, snap_before = st.identity(GREEN), st.identity(snap)
    assert before["written"] == 0 and snap_before["written"] == 0 and set(before) == {"id", "inode", "volsize",
                                                                                        "written"}
    assert st.identity(GREEN) == before  # read again: nothing moved

    blue = tmp_path / "blue"
    st.clone(snap, BLUE)
    st.mount(BLUE, str(blue))
    write(blue, "ledger.bin", b"blue replays\n" * 50_000)  # a procedure writing to the clone is not green
    st.unmount(BLUE)
    st.destroy(BLUE)
    assert st.identity(GREEN) == before and st.identity(snap) == snap_before
    assert (green / "ledger.bin").read_bytes()[:8] == b"slot-100"  # reading green writes nothing either
    assert st.identity(GREEN) == before

    write(green, "ledger.bin", b"slot-200\n" * 100_000)  # the trap: something writes to green's data
    written, snap_written = st.identity(GREEN), st.identity(snap)
    assert written["written"] > 0 and snap_written["written"] > 0
    assert written["inode"] == before["inode"] and written["id"] == before["id"]

    st.unmount(GREEN)
    st.rollback(snap)  # green's data put back: visible too
    rolled = st.identity(GREEN)
    assert rolled["inode"] != before["inode"] and rolled["id"] == before["id"]
    assert rolled["written"] == 0 and st.identity(snap)["written"] == 0
    st.mount(GREEN, str(green))
    assert (green / "ledger.bin").read_bytes()[:8] == b"slot-100"


def test_free_space_figures(st: ZvolStorage, tmp_path: Path) -> None:
    green = green_mounted(st, tmp_path)
    free0, used0 = st.free_bytes(GREEN), st.used_bytes(GREEN)
    write(green, "more.bin", b"\xa5" * (32 * MiB))
    free1, used1 = st.free_bytes(GREEN), st.used_bytes(GREEN)
    assert used1 >= used0 + 32 * MiB and free1 <= free0 - 32 * MiB
    snap = st.snapshot(GREEN, "pre")
    assert st.free_bytes(GREEN) >= free1 - 4 * MiB  # copy-on-write: a snapshot takes (almost) nothing
    space = st.space(snap)
    assert space["available"] == st.free_bytes(GREEN) and space["volsize"] == 320 * MiB
    assert 32 * MiB <= (space["used"] or 0) <= used1  # its blocks (the origin's unwritten extents are holes here)
    assert st.free_bytes("biscayne/not-yet") == st.free_bytes(GREEN)  # a clone's target: the pool's space


def test_recursive_snapshot_of_the_parent_with_config_and_volume(st: ZvolStorage, tmp_path: Path) -> None:
    parent = st.ensure_dataset(DATA)  # a directory dataset: validator and DZ config
    Path(parent.path, "doublezero-config.json").write_text('{"id": 1}')
    green = green_mounted(st, tmp_path)
    assert st.kind(DATA) == "directory" and st.kind(GREEN) == "volume"
    st.snapshot(DATA, "pre", recursive=True)  # as the seed: zfs snapshot -r biscayne/DATA@pre
    assert {d.name: d.snapshots for d in st.datasets()} == {DATA: (f"{DATA}@pre",), GREEN: (f"{GREEN}@pre",)}
    Path(parent.path, "doublezero-config.json").write_text('{"id": 2}')
    assert Path(st.path(f"{DATA}@pre"), "doublezero-config.json").read_text() == '{"id": 1}'
    st.clone(f"{GREEN}@pre", BLUE)
    with pytest.raises(StorageRefused) as refused:
        st.destroy(f"{DATA}@pre", recursive=True)
    assert refused.value.blockers == (BLUE,)
    with pytest.raises(StorageRefused, match="child datasets"):
        st.destroy(DATA)

    cfg = tmp_path / "config"
    st.mount(DATA, str(cfg))  # a directory dataset: a bind mount
    assert (cfg / "doublezero-config.json").read_text() == '{"id": 2}' and st.path(DATA) == str(cfg)
    st.unmount(DATA)
    assert st.mounted_at(DATA) is None and (green / "ledger.bin").exists()


def test_zfs_rules_hold(st: ZvolStorage, tmp_path: Path) -> None:
    green_mounted(st, tmp_path)
    st.unmount(GREEN)
    s1, s2 = st.snapshot(GREEN, "s1"), st.snapshot(GREEN, "s2")
    assert st.snapshot(GREEN, "s1") == s1  # converges
    with pytest.raises(StorageRefused) as refused:
        st.rollback(s1)
    assert refused.value.blockers == (s2,)
    st.rollback(s1, destroy_newer=True)
    assert st.datasets()[0].snapshots == (s1,)
    with pytest.raises(StorageRefused, match="snapshots"):
        st.destroy(GREEN)
    st.clone(s1, BLUE)
    assert st.clone(s1, BLUE).origin == s1  # converges
    with pytest.raises(StorageRefused, match="not a clone"):
        st.clone(st.snapshot(GREEN, "s3"), BLUE)
    st.promote(BLUE)
    st.destroy(GREEN, recursive=True)  # its snapshot no longer has a dependant
    assert [(d.name, d.origin) for d in st.datasets()] == [(BLUE, None)]
    with pytest.raises(NoSuchDataset):
        st.mount(GREEN, str(tmp_path / "x"))


def test_state_persists_across_instances_and_processes(st: ZvolStorage, pool: Path, tmp_path: Path) -> None:
    green = green_mounted(st, tmp_path)
    snap = st.snapshot(GREEN, "pre")
    st.clone(snap, BLUE)
    again = ZvolStorage(pool)
    assert {(d.name, d.origin, d.snapshots) for d in again.datasets()} == {
        (GREEN, None, (snap,)), (BLUE, snap, ())}
    assert again.mounted_at(GREEN) == str(green) and again.identity(GREEN) == st.identity(GREEN)
    code = ("import json, sys; from runbook.adapters.storage import ZvolStorage; s = ZvolStorage(sys.argv[1]); "
            "print(json.dumps({d.name: [d.origin, d.path] for d in s.datasets()}))")
    out = subprocess.run([sys.executable, "-c", code, str(pool)], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {GREEN: [None, str(green)], BLUE: [snap, ""]}


def test_plan_names_the_commands(st: ZvolStorage, tmp_path: Path) -> None:
    green = green_mounted(st, tmp_path)
    lines = st.plan("snapshot", GREEN, "pre")
    assert lines[0] == f"xfs_freeze -f {green}" and lines[-1] == f"xfs_freeze -u {green}"
    assert "cp -a --reflink=always" in lines[1]
    mount = st.plan("mount", BLUE, "/srv/solana-blue")  # not made yet: a clone the procedure makes, so nouuid
    assert mount[-1] == "mount -t xfs -o noatime,nouuid '<loop device>' /srv/solana-blue"
    assert st.plan("mount", GREEN, str(green))[-1] == f"mount -t xfs -o noatime '<loop device>' {green}"
    assert st.plan("unmount", GREEN)[0] == f"umount {green}"
    assert st.plan("free_space", GREEN)[0].startswith("df -B1 --output=avail ")
    assert st.datasets()[0].snapshots == ()  # planning changed nothing


def test_teardown_after_a_crash_leaves_nothing(tmp_path: Path) -> None:
    ok, why = zvolpool.available()
    if not ok:
        pytest.skip(f"zvol pool unavailable: {why}")
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    code = (f"from runbook.testbed import zvolpool; from runbook.adapters.storage import ZvolStorage; "
            f"p = zvolpool.up({str(state)!r}, '1G'); s = ZvolStorage(p.mountpoint); "
            f"s.ensure_volume('v', '320M'); s.mount('v', {str(mnt / 'v')!r}); "
            f"s.ensure_dataset('d'); s.mount('d', {str(mnt / 'd')!r}); "
            f"s.ensure_volume('w', '320M'); import subprocess; "
            f"subprocess.run(['losetup', '--find', s.image('w')], check=True)")  # attached, never mounted
    try:
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)  # the process is gone, the rest is not
        left = zvolpool.leftovers(state)
        assert any(x.startswith("zram device") for x in left) and sum(x.startswith("loop device") for x in left) == 2
        assert sum(x.startswith("mount:") for x in left) == 3  # the pool, the volume, the bind mount
        assert zvolpool.up(state, "1G").mountpoint == zvolpool.default_mountpoint(state)  # converges
    finally:
        zvolpool.down(state)
    assert zvolpool.leftovers(state) == [] and zvolpool.find(state) is None
    assert not any(str(tmp_path) in m.target for m in blockdev.mounts())
    zvolpool.down(state)  # idempotent


def test_a_volume_held_by_another_mount_namespace_is_busy(pool: Path, tmp_path: Path) -> None:
    st = ZvolStorage(pool, timeout=1.0)
    green_mounted(st, tmp_path)
    st.clone(st.snapshot(GREEN, "pre"), BLUE)
    st.mount(BLUE, str(tmp_path / "blue"))
    # a process entering a new mount namespace now (as a pod's container does) gets its own copy of the mount
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "60"])
    try:
        wait_for(lambda: blockdev.holders(blockdev.device_majmin(blockdev.loops_of(st.image(BLUE))[0])),
                 lambda h: len(h) >= 2, timeout=10, what="the second mount namespace")
        with pytest.raises(TestbedError, match=r"busy .*mount namespace"):
            st.unmount(BLUE)  # our umount works; the loop device cannot go: the other namespace still has it
        assert st.mounted_at(BLUE) is None and blockdev.loops_of(st.image(BLUE))
        with pytest.raises(StorageRefused, match="busy"):
            st.destroy(BLUE)
    finally:
        holder.kill()
        holder.wait()
    st.destroy(BLUE)  # the holder is gone: the loop device detaches, the clone goes
    assert BLUE not in {d.name for d in st.datasets()}


def test_a_slave_mount_namespace_sees_the_unmount(pool: Path, tmp_path: Path) -> None:
    st = ZvolStorage(pool, timeout=5.0)
    green_mounted(st, tmp_path)
    st.clone(st.snapshot(GREEN, "pre"), BLUE)
    srv = tmp_path / "srv"  # an unmount propagates through the parent mount: /srv made a shared mount
    srv.mkdir()
    subprocess.run(["mount", "--bind", str(srv), str(srv)], check=True)
    holder = None
    try:
        subprocess.run(["mount", "--make-shared", str(srv)], check=True)
        st.mount(BLUE, str(srv / "solana-blue"))
        holder = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "sleep", "60"])
        wait_for(lambda: blockdev.holders(blockdev.device_majmin(blockdev.loops_of(st.image(BLUE))[0])),
                 lambda h: len(h) >= 2, timeout=10, what="the second mount namespace")
        st.unmount(BLUE)  # the umount reaches the slave copy, the loop device goes
        assert blockdev.loops_of(st.image(BLUE)) == []
        st.destroy(BLUE)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        if BLUE in {d.name for d in st.datasets()}:
            st.unmount(BLUE)
        subprocess.run(["umount", str(srv)], check=False)

"""The storage port: one behavioural suite over btrfs, reflink and copy; ZfsStorage against a fake host.

The directory backends are exercised for real (btrfs on a loop image when root). ZfsStorage is an
adapter unit test: a fake Host records every command line and returns scripted answers, so the exact
``zfs`` invocations and the refusals (trap 8) are checked without a pool.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.adapters.base import CommandResult, ProcessInfo, ServiceState, Storage
from runbook.adapters.storage import (
    BtrfsStorage,
    CopyStorage,
    NoSuchDataset,
    ReflinkStorage,
    StorageRefused,
    ZfsStorage,
    btrfs_available,
    choose_backend,
    copy_tree,
    make_storage,
    reflink_supported,
)
from runbook.adapters.storage_common import HostFs
from runbook.adapters.storage_tree import TreeStorage
from runbook.errors import AdapterError, CommandFailed, ConfigError
from runbook.testbed import loopfs

DS = "volumes/solana"
BLUE = "volumes/solana-blue"


def tree_sum(path: str | Path) -> str:
    """A checksum of every file's relative path and content under ``path``."""
    h = hashlib.sha256()
    base = Path(path)
    for p in sorted(base.rglob("*")):
        if p.is_file() and not p.is_symlink():
            h.update(str(p.relative_to(base)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def write_ledger(path: str | Path, tag: str, size: int = 256 * 1024) -> None:
    d = Path(path) / "ledger"
    d.mkdir(parents=True, exist_ok=True)
    (d / "progress").write_text(tag)
    (d / "blob").write_bytes(hashlib.sha256(tag.encode()).digest() * (size // 32))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def btrfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("btrfs")
    ok, why = btrfs_available(base)
    if not ok:
        pytest.skip(f"btrfs backend unavailable: {why}")
    mnt = base / "mnt"
    loopfs.up(image=base / "img", mountpoint=mnt, size="256M")
    yield mnt
    loopfs.down(image=base / "img", mountpoint=mnt)


class ShellHost:
    """The host port as a plain local shell: drives the directory backends through :class:`HostFs`."""

    url = "shell://localhost"

    def run(self, command: str, *, check: bool = True, timeout: float = 60.0) -> CommandResult:
        p = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout, check=False)
        if check and p.returncode != 0:
            raise CommandFailed("shell", command=command, rc=p.returncode, stderr=p.stderr)
        return CommandResult(command, p.returncode, p.stdout, p.stderr)


@pytest.fixture(params=["btrfs", "reflink", "copy", "copy-via-host"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> TreeStorage:
    name = request.param
    if name == "copy":
        return CopyStorage(tmp_path / "root")
    if name == "copy-via-host":  # as on a kind node: every file access is a command on the host
        return CopyStorage(tmp_path / "root", state_dir=tmp_path / "state", fs=HostFs(ShellHost()))  # type: ignore[arg-type]
    if name == "reflink" and reflink_supported(tmp_path)[0]:
        return ReflinkStorage(tmp_path / "root")
    if name == "reflink" and not btrfs_available(tmp_path)[0]:
        pytest.skip(f"reflink unsupported here ({reflink_supported(tmp_path)[1]}) and no btrfs loop mount")
    mnt: Path = request.getfixturevalue("btrfs_mount")  # reflink on btrfs when tmp's filesystem has none
    root = mnt / request.node.name.replace("[", "-").replace("]", "")
    root.mkdir()
    return BtrfsStorage(root) if name == "btrfs" else ReflinkStorage(root)


# --------------------------------------------------------------------------- behaviour, every backend


def test_backends_satisfy_the_protocol(storage: TreeStorage) -> None:
    assert isinstance(storage, Storage)
    assert isinstance(ZfsStorage(FakeHost()), Storage)


def test_clone_is_independent_of_its_origin(storage: TreeStorage) -> None:
    ds = storage.ensure_dataset(DS)
    write_ledger(ds.path, "slot-100")
    before = tree_sum(ds.path)

    snap = storage.snapshot(DS, "pre-upgrade")
    assert snap == f"{DS}@pre-upgrade"
    blue = storage.clone(snap, BLUE)
    assert blue.origin == snap and blue.name == BLUE
    assert tree_sum(blue.path) == before == tree_sum(storage.path(snap))

    write_ledger(blue.path, "slot-999-on-blue")  # blue replays: green and the snapshot must not change
    assert tree_sum(storage.path(DS)) == before
    assert tree_sum(storage.path(snap)) == before
    assert tree_sum(blue.path) != before

    write_ledger(ds.path, "slot-200-on-green")  # green keeps going: the snapshot must not change
    assert tree_sum(storage.path(snap)) == before

    listed = {d.name: d for d in storage.datasets()}
    assert set(listed) == {DS, BLUE}
    assert listed[DS].snapshots == (snap,) and listed[DS].origin is None
    assert listed[BLUE].origin == snap


def test_destroy_order_clone_before_its_snapshot(storage: TreeStorage) -> None:
    write_ledger(storage.ensure_dataset(DS).path, "a")
    snap = storage.snapshot(DS, "s1")
    storage.clone(snap, BLUE)

    with pytest.raises(StorageRefused) as refused:
        storage.destroy(snap)
    assert refused.value.blockers == (BLUE,) and BLUE in str(refused.value)
    with pytest.raises(StorageRefused) as refused:  # a dataset with snapshots: only recursively
        storage.destroy(DS)
    assert refused.value.blockers == (snap,)
    with pytest.raises(StorageRefused):  # recursively still refuses while the snapshot has a clone
        storage.destroy(DS, recursive=True)
    assert {d.name for d in storage.datasets()} == {DS, BLUE}

    storage.destroy(BLUE)  # the right order: the clone, then its origin snapshot
    storage.destroy(snap)
    storage.destroy(DS)
    assert storage.datasets() == []
    with pytest.raises(NoSuchDataset):
        storage.path(DS)


def test_recursive_destroy_takes_the_snapshots(storage: TreeStorage) -> None:
    storage.ensure_dataset(DS)
    storage.snapshot(DS, "s1")
    storage.snapshot(DS, "s2")
    storage.destroy(DS, recursive=True)
    assert storage.datasets() == []
    assert not Path(storage.snapshot_path(f"{DS}@s1")).exists()


def test_rollback_only_to_the_latest_snapshot(storage: TreeStorage) -> None:
    ds = storage.ensure_dataset(DS)
    write_ledger(ds.path, "one")
    one = tree_sum(ds.path)
    s1 = storage.snapshot(DS, "s1")
    write_ledger(ds.path, "two")
    two = tree_sum(ds.path)
    s2 = storage.snapshot(DS, "s2")
    write_ledger(ds.path, "three")

    with pytest.raises(StorageRefused) as refused:
        storage.rollback(s1)
    assert refused.value.blockers == (s2,) and s2 in str(refused.value)
    assert write_ledger is not None and tree_sum(storage.path(DS)) != two  # nothing changed

    storage.rollback(s2)
    assert tree_sum(storage.path(DS)) == two
    storage.rollback(s2)  # again: converges
    assert tree_sum(storage.path(DS)) == two

    storage.rollback(s1, destroy_newer=True)  # explicit: like zfs rollback -r
    assert tree_sum(storage.path(DS)) == one
    assert storage.datasets()[0].snapshots == (s1,)
    Path(storage.path(DS), "after-rollback").write_text("writable")  # the dataset is writable again


def test_rollback_never_destroys_a_newer_snapshot_with_clones(storage: TreeStorage) -> None:
    storage.ensure_dataset(DS)
    s1 = storage.snapshot(DS, "s1")
    s2 = storage.snapshot(DS, "s2")
    storage.clone(s2, BLUE)
    with pytest.raises(StorageRefused) as refused:
        storage.rollback(s1, destroy_newer=True)
    assert refused.value.blockers == (BLUE,)
    assert storage.datasets()[0].snapshots == (s1, s2)


def test_rollback_of_a_clone_keeps_its_origin(storage: TreeStorage) -> None:
    storage.ensure_dataset(DS)
    origin = storage.snapshot(DS, "s1")
    blue = storage.clone(origin, BLUE)
    write_ledger(blue.path, "blue-1")
    t = storage.snapshot(BLUE, "t")
    write_ledger(blue.path, "blue-2")
    storage.rollback(t)
    assert {d.name: d.origin for d in storage.datasets()}[BLUE] == origin
    with pytest.raises(StorageRefused):
        storage.destroy(origin)
    storage.destroy(t)  # a rolled-back dataset does not depend on its own snapshot
    storage.destroy(BLUE)
    storage.destroy(origin)


def test_rerun_converges(storage: TreeStorage) -> None:
    ds = storage.ensure_dataset(DS)
    write_ledger(ds.path, "first")
    assert storage.ensure_dataset(DS).path == ds.path
    snap = storage.snapshot(DS, "s1")
    first = tree_sum(storage.path(snap))
    write_ledger(ds.path, "second")
    assert storage.snapshot(DS, "s1") == snap  # an existing snapshot is left alone
    assert tree_sum(storage.path(snap)) == first
    blue = storage.clone(snap, BLUE)
    write_ledger(blue.path, "blue")
    again = storage.clone(snap, BLUE)  # same origin: left alone, blue's writes kept
    assert again.origin == snap and tree_sum(again.path) == tree_sum(blue.path)

    other = storage.snapshot(DS, "s2")
    with pytest.raises(StorageRefused):  # same name, different origin: refuse, never overwrite
        storage.clone(other, BLUE)
    storage.destroy(BLUE)
    storage.destroy(BLUE)  # already gone: converges
    storage.destroy(f"{DS}@nope")


def test_crash_leftovers_are_cleaned(storage: TreeStorage) -> None:
    ds = storage.ensure_dataset(DS)
    write_ledger(ds.path, "x")
    snap_path = Path(storage.snapshot_path(f"{DS}@s1"))
    stale = snap_path.with_name(f".{snap_path.name}.rbtmp")
    stale.mkdir(parents=True)  # a half-made copy from a crashed run
    (stale / "junk").write_text("partial")
    storage.snapshot(DS, "s1")
    assert not stale.exists() and tree_sum(snap_path) == tree_sum(ds.path)

    old = Path(ds.path).with_name(f".{Path(ds.path).name}.rbold")
    Path(ds.path).rename(old)  # crashed between the two renames of a rollback
    assert [d.name for d in storage.datasets()] == []
    storage.rollback(f"{DS}@s1")
    assert tree_sum(storage.path(DS)) == tree_sum(snap_path) and not old.exists()


def test_plan_changes_nothing(storage: TreeStorage) -> None:
    storage.ensure_dataset(DS)
    lines = storage.plan("snapshot", DS, "s1") + storage.plan("clone", f"{DS}@s1", BLUE)
    assert any("s1" in line for line in lines) and any(BLUE in line for line in lines)
    assert storage.datasets()[0].snapshots == () and [d.name for d in storage.datasets()] == [DS]
    with pytest.raises(ConfigError):
        storage.plan("format-disk", DS)


def test_bad_names_are_config_errors(storage: TreeStorage) -> None:
    for bad in ("../etc", "a/./b", ".storage/x", "has space", ""):
        with pytest.raises(ConfigError):
            storage.ensure_dataset(bad)
    storage.ensure_dataset(DS)
    with pytest.raises(ConfigError):
        storage.snapshot(DS, "a/b")
    with pytest.raises(StorageRefused):  # nested datasets: not on the directory backends
        storage.ensure_dataset(f"{DS}/child")


def test_btrfs_snapshot_is_read_only_subvolume(btrfs_mount: Path) -> None:
    root = btrfs_mount / "ro-check"
    root.mkdir()
    st = BtrfsStorage(root)
    write_ledger(st.ensure_dataset(DS).path, "x")
    snap = st.path(st.snapshot(DS, "s1"))
    with pytest.raises(OSError):
        Path(snap, "ledger", "progress").write_text("tampered")
    assert os.stat(snap).st_ino == 256  # a subvolume root
    with pytest.raises(StorageRefused):
        Path(root, "plain").mkdir()
        st.ensure_dataset("plain")  # an existing plain directory is not silently turned into a dataset


# --------------------------------------------------------------------------- copy_tree


def make_tree(src: Path) -> int:
    (src / "a" / "b").mkdir(parents=True)
    sizes = {"a/one": 3 * 1024 * 1024 + 7, "a/b/two": 1024, "three": 0, "a/b/four": 9 * 1024 * 1024}
    for rel, n in sizes.items():
        (src / rel).write_bytes(os.urandom(n))
    (src / "link").symlink_to("a/one")
    return sum(sizes.values())


def test_copy_tree_progress_and_resume(tmp_path: Path) -> None:
    src, dst = tmp_path / "accounts", tmp_path / "blue" / "accounts"
    total = make_tree(src)
    calls: list[tuple[int, int]] = []
    copied = copy_tree(src, dst, progress=lambda done, tot: calls.append((done, tot)))
    assert copied == total
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert all(t == total for _, t in calls) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) > 4  # chunked, not just start and end
    assert tree_sum(src) == tree_sum(dst) and os.readlink(dst / "link") == "a/one"

    calls.clear()
    assert copy_tree(src, dst, progress=lambda d, t: calls.append((d, t))) == 0  # all identical: skipped
    assert calls[-1] == (total, total)

    (src / "a" / "b" / "two").write_bytes(b"changed")
    assert copy_tree(src, dst) == len(b"changed")
    assert tree_sum(src) == tree_sum(dst)
    assert not list(dst.rglob("*.rbpart"))


def test_copy_tree_through_the_storage(storage: TreeStorage, tmp_path: Path) -> None:
    src = tmp_path / "ramdisk"
    total = make_tree(src)
    assert storage.copy_tree(str(src), str(tmp_path / "copy")) == total


def test_copy_tree_rejects_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(AdapterError):
        copy_tree(tmp_path / "nope", tmp_path / "dst")


# --------------------------------------------------------------------------- backend choice


def test_choose_backend(tmp_path: Path) -> None:
    assert choose_backend("copy", tmp_path)[0] == "copy"
    assert choose_backend("zfs", tmp_path)[0] == "zfs"
    name, reason = choose_backend("auto", tmp_path / "root")
    assert name in ("btrfs", "reflink", "copy") and reason.startswith("auto:")
    if os.geteuid() == 0 and btrfs_available(tmp_path)[0]:
        assert name == "btrfs"
    assert list((tmp_path / "root").iterdir()) == []  # the probes clean up after themselves
    with pytest.raises(ConfigError):
        choose_backend("lvm", tmp_path)
    if not reflink_supported(tmp_path)[0]:
        with pytest.raises(ConfigError, match="reflink"):
            choose_backend("reflink", tmp_path)
    assert isinstance(make_storage("copy", tmp_path), CopyStorage)
    with pytest.raises(ConfigError):
        make_storage("zfs", tmp_path)


# --------------------------------------------------------------------------- loopfs


def losetup_a() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout


def assert_nothing_left(tmp_path: Path, image: Path) -> None:
    assert loopfs.leftovers(tmp_path) == []
    assert str(image) not in Path("/proc/mounts").read_text()
    assert str(image) not in losetup_a()
    assert not image.exists()


@pytest.fixture
def need_loop(tmp_path: Path) -> None:
    ok, why = btrfs_available(tmp_path)
    if not ok:
        pytest.skip(f"loop devices/btrfs unavailable: {why}")


@pytest.mark.usefixtures("need_loop")
def test_loopfs_up_down_leaves_nothing(tmp_path: Path) -> None:
    image, mnt = tmp_path / "storage.img", tmp_path / "storage"
    m = loopfs.up(image=image, mountpoint=mnt, size="200M")
    assert m.device.startswith("/dev/loop") and str(image) in losetup_a()
    assert image.stat().st_blocks * 512 < 50 * 1024 * 1024  # sparse
    assert loopfs.up(image=image, mountpoint=mnt, size="200M").device == m.device  # idempotent
    assert any("mount:" in x for x in loopfs.leftovers(tmp_path))
    loopfs.down(image=image, mountpoint=mnt)
    assert_nothing_left(tmp_path, image)
    loopfs.down(image=image, mountpoint=mnt)  # idempotent


@pytest.mark.usefixtures("need_loop")
def test_loopfs_down_after_a_crash(tmp_path: Path) -> None:
    image, mnt = tmp_path / "storage.img", tmp_path / "storage"
    code = f"from runbook.testbed import loopfs; loopfs.up(image={str(image)!r}, mountpoint={str(mnt)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
    assert loopfs.leftovers(tmp_path)  # the process is gone, the mount is not
    loopfs.down(image=image, mountpoint=mnt)
    assert_nothing_left(tmp_path, image)

    loopfs.up(image=image, mountpoint=mnt)
    subprocess.run(["umount", str(mnt)], check=True)
    subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True)  # attached only
    assert any("loop device" in x for x in loopfs.leftovers(tmp_path))
    loopfs.down(image=image, mountpoint=mnt)
    assert_nothing_left(tmp_path, image)


def test_parse_size() -> None:
    assert loopfs.parse_size("1G") == 1024**3 and loopfs.parse_size("256M") == 256 * 1024**2
    assert loopfs.parse_size("300MiB") == 300 * 1024**2 and loopfs.parse_size(4096) == 4096


# --------------------------------------------------------------------------- ZfsStorage, fake host

MISSING = (1, "", "cannot open 'x': dataset does not exist\n")
GREEN = "biscayne/DATA/volumes/solana"
ZBLUE = "biscayne/DATA/volumes/solana-blue"
SNAP = f"{GREEN}@pre-upgrade-20260101"


class FakeHost:
    """Records command lines; answers reads from a script; mutating zfs commands succeed by default."""

    url = "ssh://fake-biscayne"

    def __init__(self, script: dict[str, tuple[int, str, str]] | None = None) -> None:
        self.script = dict(script or {})
        self.commands: list[str] = []
        self.as_root: list[str] = []  # the commands asked with root=True

    def run(self, command: str, *, check: bool = True, timeout: float = 60.0, root: bool = False) -> CommandResult:
        self.commands.append(command)
        if root:
            self.as_root.append(command)
        if command in self.script:
            rc, out, err = self.script[command]
        elif command.split()[:2] in (["zfs", w] for w in ("snapshot", "clone", "destroy", "rollback", "create")):
            rc, out, err = 0, "", ""
        elif command.startswith(("zfs list -H -o name -t volume -r ", "findmnt ")):
            rc, out, err = (0 if command.startswith("zfs") else 1), "", ""  # unscripted: no volumes, no mounts
        elif command.startswith("zfs get -Hp -o property,value type "):
            rc, out, err = 0, "type\tfilesystem\n", ""
        else:
            raise AssertionError(f"unscripted command: {command}")
        return CommandResult(command, rc, out, err)

    def mutations(self) -> list[str]:
        return [c for c in self.commands if c.split()[1] in ("snapshot", "clone", "destroy", "rollback", "create")]

    def processes(self, name: str) -> list[ProcessInfo]:
        return []

    def service(self, name: str) -> ServiceState:
        return ServiceState(name, None, None)

    def routes(self, interface: str, *, netns: str | None = None) -> list[str]:
        return []

    def file_sha256(self, path: str) -> str | None:
        return None


def snaps_cmd(ds: str, flag: str = "-d 1") -> str:
    return f"zfs list -H -o name,clones -t snapshot -s createtxg {flag} {ds}"


def info(ds: str, origin: str = "-", mountpoint: str = "/srv/x") -> dict[str, tuple[int, str, str]]:
    return {f"zfs list -H -o name,type,mountpoint,origin {ds}": (0, f"{ds}\tfilesystem\t{mountpoint}\t{origin}\n", ""),
            snaps_cmd(ds): (0, "", "")}


def test_zfs_snapshot_exact_and_converges() -> None:
    host = FakeHost({f"zfs list -H -o name -t snapshot {SNAP}": MISSING})
    assert ZfsStorage(host).snapshot(GREEN, "pre-upgrade-20260101") == SNAP
    assert host.commands == [f"zfs list -H -o name -t snapshot {SNAP}", f"zfs snapshot {SNAP}"]

    host = FakeHost({f"zfs list -H -o name -t snapshot {SNAP}": (0, SNAP + "\n", "")})
    ZfsStorage(host).snapshot(GREEN, "pre-upgrade-20260101")
    assert host.mutations() == []  # exists: left alone


def test_zfs_recursive_snapshot_only_when_asked() -> None:
    host = FakeHost({
        "zfs list -H -o name -t filesystem,volume -r biscayne/DATA": (0, "biscayne/DATA\n" + GREEN + "\n", ""),
        snaps_cmd("biscayne/DATA", "-r"): (0, "", ""),
    })
    ZfsStorage(host).snapshot("biscayne/DATA", "pre", recursive=True)
    assert host.mutations() == ["zfs snapshot -r biscayne/DATA@pre"]


def test_zfs_clone_exact_not_recursive_and_converges() -> None:
    host = FakeHost({
        f"zfs get -H -o value origin {ZBLUE}": MISSING,
        f"zfs list -H -o name -t snapshot {SNAP}": (0, SNAP + "\n", ""),
        **info(ZBLUE, origin=SNAP),
    })
    blue = ZfsStorage(host).clone(SNAP, ZBLUE)
    assert blue.origin == SNAP and blue.path == "/srv/x"
    assert host.mutations() == [f"zfs clone {SNAP} {ZBLUE}"]

    host = FakeHost({f"zfs get -H -o value origin {ZBLUE}": (0, SNAP + "\n", ""), **info(ZBLUE, origin=SNAP)})
    ZfsStorage(host).clone(SNAP, ZBLUE)
    assert host.mutations() == []

    host = FakeHost({f"zfs get -H -o value origin {ZBLUE}": (0, "-\n", "")})
    with pytest.raises(StorageRefused, match="not a clone"):
        ZfsStorage(host).clone(SNAP, ZBLUE)
    assert host.mutations() == []


def test_zfs_refuses_to_destroy_a_snapshot_with_clones() -> None:
    host = FakeHost({snaps_cmd(GREEN): (0, f"{SNAP}\t{ZBLUE}\n", "")})
    with pytest.raises(StorageRefused) as refused:
        ZfsStorage(host).destroy(SNAP)
    assert refused.value.blockers == (ZBLUE,) and "destroy the clone(s) first" in str(refused.value)
    assert host.mutations() == [] and not any("-R" in c for c in host.commands)

    host = FakeHost({snaps_cmd(GREEN): (0, f"{SNAP}\t-\n", "")})
    ZfsStorage(host).destroy(SNAP)
    assert host.mutations() == [f"zfs destroy {SNAP}"]


def test_zfs_destroy_dataset_rules() -> None:
    tree = f"zfs list -H -o name -t filesystem,volume -r {ZBLUE}"
    host = FakeHost({tree: MISSING})
    ZfsStorage(host).destroy(ZBLUE)  # gone already
    assert host.mutations() == []

    host = FakeHost({tree: (0, ZBLUE + "\n", ""), snaps_cmd(ZBLUE, "-r"): (0, "", "")})
    ZfsStorage(host).destroy(ZBLUE)  # a clone with no snapshots: the right first step
    assert host.mutations() == [f"zfs destroy {ZBLUE}"]

    host = FakeHost({tree: (0, ZBLUE + "\n", ""), snaps_cmd(ZBLUE, "-r"): (0, f"{ZBLUE}@t\t-\n", "")})
    with pytest.raises(StorageRefused, match="snapshots"):
        ZfsStorage(host).destroy(ZBLUE)
    ZfsStorage(host).destroy(ZBLUE, recursive=True)
    assert host.mutations() == [f"zfs destroy -r {ZBLUE}"]


def test_zfs_rollback_refuses_to_pass_newer_snapshots() -> None:
    rows = f"{GREEN}@s1\t-\n{GREEN}@s2\t-\n{GREEN}@s3\t{ZBLUE}\n"
    host = FakeHost({snaps_cmd(GREEN): (0, rows, "")})
    z = ZfsStorage(host)
    with pytest.raises(StorageRefused) as refused:
        z.rollback(f"{GREEN}@s2")
    assert refused.value.blockers == (f"{GREEN}@s3",)
    with pytest.raises(StorageRefused) as refused:  # -r would need -R: s3 has a clone
        z.rollback(f"{GREEN}@s2", destroy_newer=True)
    assert refused.value.blockers == (ZBLUE,)
    z.rollback(f"{GREEN}@s3")
    assert host.mutations() == [f"zfs rollback {GREEN}@s3"]
    with pytest.raises(NoSuchDataset):
        z.rollback(f"{GREEN}@s9")

    host = FakeHost({snaps_cmd(GREEN): (0, f"{GREEN}@s1\t-\n{GREEN}@s2\t-\n", "")})
    ZfsStorage(host).rollback(f"{GREEN}@s1", destroy_newer=True)
    assert host.mutations() == [f"zfs rollback -r {GREEN}@s1"]


def test_zfs_path_from_mountpoint_or_findmnt() -> None:
    host = FakeHost({f"zfs get -H -o value mountpoint {GREEN}": (0, "/srv/solana\n", "")})
    assert ZfsStorage(host).path(GREEN) == "/srv/solana"

    zvol = {f"zfs get -H -o value mountpoint {GREEN}": (0, "-\n", "")}
    findmnt = f"findmnt -n -o TARGET --source /dev/zvol/{GREEN}"
    host = FakeHost({**zvol, findmnt: (0, "/srv/solana\n", "")})
    assert ZfsStorage(host).path(GREEN) == "/srv/solana"
    host = FakeHost({**zvol, findmnt: (1, "", "")})
    with pytest.raises(AdapterError, match="not mounted"):
        ZfsStorage(host).path(GREEN)
    host = FakeHost({f"zfs get -H -o value mountpoint {GREEN}": MISSING})
    with pytest.raises(NoSuchDataset):
        ZfsStorage(host).path(GREEN)

    fs = {f"zfs get -H -o value mountpoint {GREEN}": (0, "/srv/solana\n", ""),
          f"zfs list -H -o name -t snapshot {SNAP}": (0, SNAP + "\n", "")}
    assert ZfsStorage(FakeHost(fs)).path(SNAP) == "/srv/solana/.zfs/snapshot/pre-upgrade-20260101"
    with pytest.raises(AdapterError, match=r"no \.zfs"):
        ZfsStorage(FakeHost({**fs, **zvol})).path(SNAP)


def test_zfs_other_failures_are_not_mistaken_for_absence() -> None:
    host = FakeHost({f"zfs list -H -o name -t snapshot {SNAP}": (1, "", "permission denied\n")})
    with pytest.raises(CommandFailed, match="permission denied"):
        ZfsStorage(host).snapshot(GREEN, "pre-upgrade-20260101")
    assert host.mutations() == []


def test_zfs_plan_runs_nothing() -> None:
    host = FakeHost()
    z = ZfsStorage(host)
    assert z.plan("snapshot", GREEN, "pre-upgrade-20260101") == [f"zfs snapshot {SNAP}"]
    assert z.plan("snapshot", "biscayne/DATA", "p", recursive=True) == ["zfs snapshot -r biscayne/DATA@p"]
    assert z.plan("clone", SNAP, ZBLUE) == [f"zfs clone {SNAP} {ZBLUE}"]
    assert z.plan("destroy", ZBLUE) == [f"zfs destroy {ZBLUE}"]
    assert z.plan("rollback", SNAP) == [f"zfs rollback {SNAP}"]
    assert z.plan("ensure_dataset", GREEN) == [f"zfs create -p {GREEN}"]
    copy = z.plan("copy_tree", "/srv/solana/ramdisk/accounts", "/srv/solana-blue/ramdisk/accounts")
    assert "rsync -a --inplace --stats /srv/solana/ramdisk/accounts/ /srv/solana-blue/ramdisk/accounts/" in copy[-1]
    with pytest.raises(ConfigError):
        z.plan("clone", GREEN, ZBLUE)  # not a snapshot
    assert host.commands == []


def test_zfs_copy_tree_on_the_host() -> None:
    src, dst = "/srv/solana/ramdisk/accounts", "/srv/solana-blue/ramdisk/accounts"
    size_cmd, copy_cmd = ZfsStorage(FakeHost()).plan("copy_tree", src, dst)
    host = FakeHost({size_cmd: (0, "5000\n", ""), copy_cmd: (0, "Total transferred file size: 1,234 bytes\n", "")})
    calls: list[tuple[int, int]] = []
    assert ZfsStorage(host).copy_tree(src, dst, progress=lambda d, t: calls.append((d, t))) == 1234
    assert calls == [(0, 5000), (5000, 5000)]


# ----------------------------------------------------------------------------- promote (cleanup: destroy old)
def test_promote_lets_the_old_dataset_and_its_snapshot_go(storage: TreeStorage) -> None:
    st = storage
    st.ensure_dataset("volumes/solana")
    st.snapshot("volumes/solana", "pre")
    st.clone("volumes/solana@pre", "volumes/solana-blue")
    with pytest.raises(StorageRefused):
        st.destroy("volumes/solana", recursive=True)  # the clone depends on its snapshot
    st.promote("volumes/solana-blue")
    st.promote("volumes/solana-blue")  # converge
    st.destroy("volumes/solana", recursive=True)
    names = {d.name: d for d in st.datasets()}
    assert "volumes/solana" not in names and names["volumes/solana-blue"].origin is None


def test_zfs_promote_command_and_plan() -> None:
    zfs = ZfsStorage(FakeHost())
    assert zfs.plan("promote", "pool/volumes/blue") == ["zfs promote pool/volumes/blue"]

"""ZfsStorage with zvols (biscayne's ledger: a volume carrying XFS), against a fake host.

An adapter unit test: the host records every command line and answers reads with output recorded in the
shape real ``zfs`` prints (``-H``: tab-separated, no header; ``-p``: exact numbers, ``-`` where a property
does not apply), so the exact command lines, the parsers and the refusals are checked without a pool.
"""

from __future__ import annotations

import pytest

from runbook.adapters.base import CommandResult, Storage
from runbook.adapters.storage import NoSuchDataset, StorageRefused, ZfsStorage
from runbook.adapters.storage_zfs_zvol import as_int, parse_props
from tests.adapters.test_storage import FakeHost

DATA = "biscayne/DATA"
GREEN = "biscayne/DATA/volumes/solana"
BLUE = "biscayne/DATA/volumes/solana-blue"
SNAP = f"{GREEN}@pre-upgrade-20260101"
SPACE = "available,used,referenced,volsize,refreservation,usedbyrefreservation"
MISSING = (1, "", "cannot open 'x': dataset does not exist\n")

# Recorded in the shape of OpenZFS 2.x output.
GET_VOLUME_SPACE = ("available\t1622483316736\nused\t540789063680\nreferenced\t498216206336\n"
                    "volsize\t1099511627776\nrefreservation\t0\nusedbyrefreservation\t0\n")
GET_FS_SPACE = "available\t1622483316736\nused\t541920890880\nreferenced\t106496\nvolsize\t-\n" \
               "refreservation\tnone\nusedbyrefreservation\t0\n"
GET_DEFAULT_COLUMNS = (f"{GREEN}\ttype\tvolume\t-\n{GREEN}\tvolsize\t1099511627776\tlocal\n"
                       f"{GREEN}\tavailable\t1622483316736\t-\n")
LIST_HP = (f"{DATA}\t541920890880\t1622483316736\t106496\t/biscayne/DATA\n"
           f"{GREEN}\t540789063680\t1622483316736\t498216206336\t-\n")


class ZvolHost(FakeHost):
    """FakeHost that also lets mount, umount and mkdir succeed and counts them as mutations."""

    def run(self, command: str, *, check: bool = True, timeout: float = 60.0, root: bool = False) -> CommandResult:
        if command not in self.script and command.split()[0] in ("mount", "umount", "mkdir"):
            self.commands.append(command)
            self.as_root += [command] if root else []
            return CommandResult(command, 0, "", "")
        return super().run(command, check=check, timeout=timeout, root=root)

    def mutations(self) -> list[str]:
        return [c for c in self.commands if c.split()[0] in ("mount", "umount", "mkdir")
                or c.split()[1] in ("snapshot", "clone", "destroy", "rollback", "create")]


def typ(name: str, kind: str = "volume") -> dict[str, tuple[int, str, str]]:
    return {f"zfs get -Hp -o property,value type {name}": (0, f"type\t{kind}\n", "")}


def mnt(name: str, *targets: str) -> dict[str, tuple[int, str, str]]:
    out = "".join(f"{t}\n" for t in targets)
    return {f"findmnt -n -o TARGET --source /dev/zvol/{name}": (0 if targets else 1, out, "")}


def test_parsers_read_real_zfs_output() -> None:
    vol = parse_props(GET_VOLUME_SPACE)
    assert as_int(vol["volsize"]) == 1099511627776 and as_int(vol["available"]) == 1622483316736
    fs = parse_props(GET_FS_SPACE)
    assert as_int(fs["volsize"]) is None and as_int(fs["refreservation"]) is None  # "-" and "none"
    full = parse_props(GET_DEFAULT_COLUMNS)  # zfs get -Hp without -o: name, property, value, source
    assert full == {"type": "volume", "volsize": "1099511627776", "available": "1622483316736"}
    assert parse_props(LIST_HP) == {}  # not a property listing: nothing mistaken for one


def test_the_zvol_backend_satisfies_the_protocol() -> None:
    assert isinstance(ZfsStorage(ZvolHost()), Storage)


def test_mount_a_clone_with_nouuid_and_converge() -> None:
    host = ZvolHost({**typ(BLUE), **mnt(BLUE)})
    ZfsStorage(host).mount(BLUE, "/srv/solana-blue")
    assert host.mutations() == ["mkdir -p /srv/solana-blue",
                                f"mount -t xfs -o noatime,nouuid /dev/zvol/{BLUE} /srv/solana-blue"]
    assert host.as_root == host.mutations()  # root for what changes (sudo -n on a ?sudo=true host), not for reads

    host = ZvolHost({**typ(BLUE), **mnt(BLUE, "/srv/solana-blue")})
    ZfsStorage(host).mount(BLUE, "/srv/solana-blue/")
    assert host.mutations() == []  # already there
    assert ZfsStorage(host).mounted_at(BLUE) == "/srv/solana-blue"

    host = ZvolHost({**typ(BLUE), **mnt(BLUE, "/mnt/elsewhere")})
    with pytest.raises(StorageRefused, match="already mounted at /mnt/elsewhere") as refused:
        ZfsStorage(host).mount(BLUE, "/srv/solana-blue")
    assert refused.value.blockers == ("/mnt/elsewhere",) and host.mutations() == []


def test_mount_of_a_filesystem_dataset_is_its_mountpoint() -> None:
    host = ZvolHost({**typ(DATA, "filesystem"), f"zfs get -H -o value mountpoint {DATA}": (0, "/biscayne/DATA\n", "")})
    ZfsStorage(host).mount(DATA, "/biscayne/DATA")
    with pytest.raises(StorageRefused, match="zfs set mountpoint"):
        ZfsStorage(host).mount(DATA, "/srv/other")
    assert host.mutations() == []
    with pytest.raises(NoSuchDataset):
        ZfsStorage(ZvolHost({f"zfs get -Hp -o property,value type {BLUE}": MISSING})).mount(BLUE, "/x")


def test_unmount_until_no_mount_is_left() -> None:
    host = ZvolHost({**typ(BLUE), **mnt(BLUE, "/srv/solana-blue")})
    answers = iter([(0, "/srv/solana-blue\n", ""), (1, "", "")])
    original = host.run

    def run(command: str, *, check: bool = True, timeout: float = 60.0, root: bool = False) -> CommandResult:
        if command.startswith("findmnt"):
            host.commands.append(command)
            rc, out, err = next(answers)
            return CommandResult(command, rc, out, err)
        return original(command, check=check, timeout=timeout, root=root)

    host.run = run  # type: ignore[method-assign]
    ZfsStorage(host).unmount(BLUE)
    assert host.mutations() == [f"umount /dev/zvol/{BLUE}"]


def test_destroy_of_a_mounted_clone_is_refused() -> None:
    tree = f"zfs list -H -o name -t filesystem,volume -r {BLUE}"
    vols = f"zfs list -H -o name -t volume -r {BLUE}"
    host = ZvolHost({tree: (0, BLUE + "\n", ""), vols: (0, BLUE + "\n", ""), **mnt(BLUE, "/srv/solana-blue")})
    with pytest.raises(StorageRefused, match="unmount it first") as refused:
        ZfsStorage(host).destroy(BLUE)
    assert refused.value.blockers == ("/srv/solana-blue",) and host.mutations() == []

    host = ZvolHost({tree: (0, BLUE + "\n", ""), vols: (0, BLUE + "\n", ""), **mnt(BLUE),
                     f"zfs list -H -o name,clones -t snapshot -s createtxg -r {BLUE}": (0, "", "")})
    ZfsStorage(host).destroy(BLUE)
    assert host.mutations() == [f"zfs destroy {BLUE}"] == host.as_root


def test_rollback_of_a_mounted_volume_is_refused() -> None:
    snaps = f"zfs list -H -o name,clones -t snapshot -s createtxg -d 1 {GREEN}"
    host = ZvolHost({snaps: (0, f"{SNAP}\t-\n", ""), **typ(GREEN), **mnt(GREEN, "/srv/solana")})
    with pytest.raises(StorageRefused, match=r"roll .* back under its mounted filesystem"):
        ZfsStorage(host).rollback(SNAP)
    assert host.mutations() == []
    host = ZvolHost({snaps: (0, f"{SNAP}\t-\n", ""), **typ(GREEN), **mnt(GREEN)})
    ZfsStorage(host).rollback(SNAP)
    assert host.mutations() == [f"zfs rollback {SNAP}"]


def test_recursive_snapshot_of_the_parent_takes_the_volume_too() -> None:
    host = ZvolHost({
        f"zfs list -H -o name -t filesystem,volume -r {DATA}": (0, f"{DATA}\n{DATA}/config\n{GREEN}\n", ""),
        f"zfs list -H -o name,clones -t snapshot -s createtxg -r {DATA}": (0, "", ""),
    })
    assert ZfsStorage(host).snapshot(DATA, "pre-upgrade-20260101", recursive=True) == f"{DATA}@pre-upgrade-20260101"
    assert host.mutations() == [f"zfs snapshot -r {DATA}@pre-upgrade-20260101"]


def test_space_figures_and_a_clone_target_that_does_not_exist_yet() -> None:
    host = ZvolHost({f"zfs get -Hp -o property,value {SPACE} {BLUE}": MISSING,
                     f"zfs get -Hp -o property,value {SPACE} biscayne/DATA/volumes": (0, GET_FS_SPACE, ""),
                     f"zfs get -Hp -o property,value {SPACE} {GREEN}": (0, GET_VOLUME_SPACE, "")})
    z = ZfsStorage(host)
    assert z.free_bytes(BLUE) == 1622483316736  # the parent's available: where the clone will live
    assert z.used_bytes(GREEN) == 540789063680
    assert z.space(SNAP)["volsize"] == 1099511627776  # a snapshot: its dataset's figures
    assert z.space(GREEN)["refreservation"] == 0
    nothing = ZvolHost({f"zfs get -Hp -o property,value {SPACE} nope": MISSING})
    with pytest.raises(NoSuchDataset):
        ZfsStorage(nothing).free_bytes("nope")


def test_identity_of_a_volume_and_of_its_snapshot() -> None:
    host = ZvolHost({
        f"zfs get -Hp -o property,value guid,createtxg,type,written {GREEN}":
            (0, "guid\t4315292466532519745\ncreatetxg\t1147\ntype\tvolume\nwritten\t8192\n", ""),
        f"zfs get -Hp -o property,value guid,createtxg {SNAP}":
            (0, "guid\t9853217725314178118\ncreatetxg\t88120\n", ""),
        f"zfs get -Hp -o property,value written@pre-upgrade-20260101 {GREEN}":
            (0, "written@pre-upgrade-20260101\t1310720\n", ""),
    })
    z = ZfsStorage(host)
    assert z.identity(GREEN) == {"guid": "4315292466532519745", "createtxg": 1147, "type": "volume", "written": 8192}
    assert z.identity(SNAP) == {"guid": "9853217725314178118", "createtxg": 88120, "written": 1310720}
    missing = ZvolHost({f"zfs get -Hp -o property,value guid,createtxg,type,written {BLUE}": MISSING})
    with pytest.raises(NoSuchDataset):
        ZfsStorage(missing).identity(BLUE)


def test_plan_shows_mount_umount_and_free_space() -> None:
    host = ZvolHost()
    z = ZfsStorage(host)
    assert z.plan("mount", BLUE, "/srv/solana-blue") == [
        "mkdir -p /srv/solana-blue", f"mount -t xfs -o noatime,nouuid /dev/zvol/{BLUE} /srv/solana-blue"]
    assert z.plan("unmount", BLUE) == [f"umount /dev/zvol/{BLUE}"]
    assert z.plan("free_space", DATA) == [f"zfs get -Hp -o property,value {SPACE} {DATA}"]
    assert host.commands == []

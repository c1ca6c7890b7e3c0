"""The zvol part of :class:`~runbook.adapters.storage_zfs.ZfsStorage`: mounts, space figures, identity facts.

A ZFS volume (``zfs get type`` says ``volume``) is the block device ``/dev/zvol/<name>``; biscayne's ledger
volume carries XFS. A clone of a volume's snapshot is another block device with the same XFS UUID, so it
is mounted with ``-o nouuid``. The command lines are built here once and used by the operations and by
``plan``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from runbook.adapters.base import CommandResult, Host
from runbook.adapters.storage_common import NoSuchDataset, StorageRefused, check_dataset, is_snapshot, split_snapshot
from runbook.errors import AdapterError


def q(word: str) -> str:
    return shlex.quote(word)


# -- zvols: a volume is the block device /dev/zvol/<name>; biscayne's carry XFS -----------------------
SPACE_PROPS = ("available", "used", "referenced", "volsize", "refreservation", "usedbyrefreservation")


def zvol_device(name: str) -> str:
    return f"/dev/zvol/{name}"


def cmd_props(props: Sequence[str], name: str) -> str:
    """``zfs get -Hp -o property,value``: one ``<property>\t<value>`` line per property, exact numbers."""
    return f"zfs get -Hp -o property,value {','.join(props)} {q(name)}"


def cmd_volumes(dataset: str) -> str:
    return f"zfs list -H -o name -t volume -r {q(dataset)}"


def cmd_findmnt(name: str) -> str:
    """Every mount of the zvol's device (findmnt resolves the /dev/zvol link to /dev/zdN itself)."""
    return f"findmnt -n -o TARGET --source {q(zvol_device(name))}"


def cmd_mount(name: str, path: str) -> list[str]:
    """XFS with ``nouuid`` (a clone carries its origin's UUID and XFS refuses a second mount of one UUID) and
    ``noatime`` (a validator's ledger is mounted so; a read then writes nothing, so ``written`` stays put)."""
    return [f"mkdir -p {q(path)}", f"mount -t xfs -o noatime,nouuid {q(zvol_device(name))} {q(path)}"]


def cmd_umount(name: str) -> str:
    return f"umount {q(zvol_device(name))}"


def parse_props(text: str) -> dict[str, str]:
    """Parse ``zfs get -Hp -o property,value`` (``<property>\t<value>``) or plain ``zfs get -Hp``
    (``<name>\t<property>\t<value>\t<source>``) into ``{property: value}``; other lines are ignored."""
    out = {}
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) == 2:
            out[cols[0].strip()] = cols[1].strip()
        elif len(cols) == 4:
            out[cols[1].strip()] = cols[2].strip()
    return out


def as_int(value: str | None) -> int | None:
    """A ``-p`` number, or None for ``-`` (not applicable, e.g. ``volsize`` of a filesystem) and ``none``."""
    return int(value) if value is not None and value.isdigit() else None


class ZvolOps:
    """Mixin: needs ``host``, ``timeout``, ``_run``, ``_query`` and ``_get`` from ZfsStorage."""

    host: Host
    timeout: float

    def _run(self, command: str, *, timeout: float | None = None) -> CommandResult:  # pragma: no cover
        raise NotImplementedError

    def _query(self, command: str) -> CommandResult | None:  # pragma: no cover
        raise NotImplementedError

    def _get(self, prop: str, name: str) -> str | None:  # pragma: no cover
        raise NotImplementedError

    def _props(self, props: Sequence[str], name: str) -> dict[str, str] | None:
        r = self._query(cmd_props(props, name))
        return None if r is None else parse_props(r.stdout)

    def _type(self, name: str) -> str | None:
        p = self._props(("type",), name)
        return None if p is None else p.get("type")

    def _mounts(self, name: str) -> list[str]:
        r = self.host.run(cmd_findmnt(name), check=False, timeout=self.timeout)
        return [t.strip() for t in r.stdout.splitlines() if t.strip()] if r.rc == 0 else []

    def _refuse_mounted(self, names: Sequence[str], what: str) -> None:
        mounted = {n: m for n in names if (m := self._mounts(n))}
        if mounted:
            where = "; ".join(f"{zvol_device(n)} is mounted at {', '.join(m)}" for n, m in mounted.items())
            raise StorageRefused(f"zfs: cannot {what}: {where}: unmount it first (stop what uses it, then "
                                 f"umount)", blockers=[t for m in mounted.values() for t in m], obj=names[0])

    # -- mounts (zvols), space, identity --------------------------------------------------------
    def mount(self, name: str, path: str) -> None:
        """A volume: ``mount -t xfs -o noatime,nouuid /dev/zvol/<name> <path>`` (converges when mounted there; refused
        when mounted elsewhere). A filesystem is mounted by ZFS at its ``mountpoint``: ``path`` must be it."""
        check_dataset(name)
        kind = self._type(name)
        if kind is None:
            raise NoSuchDataset(f"zfs: no such dataset {name!r}", obj=name)
        if kind != "volume":
            mp = self._get("mountpoint", name) or ""
            if mp.rstrip("/") != path.rstrip("/"):
                raise StorageRefused(f"zfs: {name} is a {kind} with mountpoint {mp}, not {path}; set its mountpoint "
                                     f"(zfs set mountpoint={path} {name}) or mount a volume", blockers=[path], obj=name)
            return
        where = self._mounts(name)
        if path.rstrip("/") in (w.rstrip("/") for w in where):
            return  # converge
        if where:
            raise StorageRefused(f"zfs: {zvol_device(name)} is already mounted at {', '.join(where)}; unmount it "
                                 f"before mounting it at {path}", blockers=where, obj=name)
        for line in cmd_mount(name, path):
            self._run(line)

    def unmount(self, name: str) -> None:
        """A volume: ``umount /dev/zvol/<name>`` until no mount of it is left. A filesystem: left to ZFS."""
        check_dataset(name)
        if self._type(name) != "volume":
            return
        for _ in range(16):
            if not self._mounts(name):
                return
            self._run(cmd_umount(name))
        raise AdapterError(f"zfs: {zvol_device(name)} is still mounted at {', '.join(self._mounts(name))}", obj=name)

    def mounted_at(self, name: str) -> str | None:
        check_dataset(name)
        kind = self._type(name)
        if kind is None:
            return None
        if kind == "volume":
            where = self._mounts(name)
            return where[0] if where else None
        p = self._props(("mounted", "mountpoint"), name) or {}
        return p.get("mountpoint") if p.get("mounted") == "yes" else None

    def space(self, name: str) -> dict[str, int | None]:
        """``available``, ``used``, ``referenced``, ``volsize``, ``refreservation``, ``usedbyrefreservation`` of
        ``name`` or, when it does not exist yet (a clone's target), of its nearest existing parent. None: not
        applicable (``-``, e.g. volsize of a filesystem). A snapshot of a volume with a refreservation needs
        ``available`` >= its ``referenced`` (ZFS keeps the volume's overwrite space), else it fails."""
        target = name.partition("@")[0]
        while True:
            p = self._props(SPACE_PROPS, target)
            if p is not None:
                return {k: as_int(p.get(k)) for k in SPACE_PROPS}
            if "/" not in target:
                raise NoSuchDataset(f"zfs: no such dataset {name!r} (nor any parent)", obj=name)
            target = target.rsplit("/", 1)[0]

    def free_bytes(self, name: str) -> int:
        """ZFS ``available`` of ``name`` (of its nearest parent when it does not exist yet)."""
        return self.space(name)["available"] or 0

    def used_bytes(self, name: str) -> int:
        """ZFS ``used`` (data, snapshots, children and any refreservation)."""
        return self.space(name)["used"] or 0

    def identity(self, name: str) -> dict[str, str | int]:
        """A dataset: ``guid`` (unique, kept for the dataset's life: a re-created dataset has another),
        ``createtxg`` (the pool transaction that created it), ``type``, ``written`` (bytes written since its
        latest snapshot: it grows while the dataset is in use). A snapshot ``ds@s``: its ``guid`` and
        ``createtxg`` (a snapshot destroyed and re-taken has new ones) and ``written`` = ``written@s`` of
        ``ds``: bytes of ``ds`` no longer shared with the snapshot (0 right after it, and after a rollback to
        it; it grows with every write to ``ds``)."""
        if is_snapshot(name):
            ds, snap = split_snapshot(name)
            p = self._props(("guid", "createtxg"), name)
            w = self._props((f"written@{snap}",), ds)
            if p is None or w is None:
                raise NoSuchDataset(f"zfs: no such snapshot {name!r}", obj=name)
            return {"guid": p.get("guid", ""), "createtxg": as_int(p.get("createtxg")) or 0,
                    "written": as_int(w.get(f"written@{snap}")) or 0}
        check_dataset(name)
        p = self._props(("guid", "createtxg", "type", "written"), name)
        if p is None:
            raise NoSuchDataset(f"zfs: no such dataset {name!r}", obj=name)
        return {"guid": p.get("guid", ""), "createtxg": as_int(p.get("createtxg")) or 0, "type": p.get("type", ""),
                "written": as_int(p.get("written")) or 0}

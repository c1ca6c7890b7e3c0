"""Mounts, space figures and identity facts of the directory backends (btrfs, reflink, copy, copy via host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.adapters.storage import StorageRefused
from runbook.adapters.storage_tree import TreeStorage
from tests.adapters import test_storage as suite
from tests.adapters.test_storage import DS, write_ledger

_storage, btrfs_mount = suite.storage, suite.btrfs_mount  # the storage suite's backends (fixtures)


@pytest.fixture
def backend(_storage: TreeStorage) -> TreeStorage:
    return _storage


def test_a_directory_dataset_is_mounted_at_its_own_path(backend: TreeStorage) -> None:
    ds = backend.ensure_dataset(DS)
    backend.mount(DS, ds.path)  # a no-op
    assert backend.mounted_at(DS) == ds.path
    with pytest.raises(StorageRefused, match="cannot mount it"):
        backend.mount(DS, "/srv/elsewhere")
    backend.unmount(DS)
    assert backend.mounted_at(DS) == ds.path and backend.mounted_at("volumes/nope") is None
    assert backend.plan("mount", DS, ds.path)[0].startswith("#")
    assert backend.plan("free_space", DS)[0].startswith("df -B1 --output=avail ")


def test_space_figures(backend: TreeStorage) -> None:
    ds = backend.ensure_dataset(DS)
    empty = backend.used_bytes(DS)
    write_ledger(ds.path, "x", size=1024 * 1024)
    assert backend.used_bytes(DS) >= empty + 1024 * 1024
    free = backend.free_bytes(DS)
    assert free > 0 and backend.free_bytes("volumes/not-yet") > 0  # a clone's target: the root's filesystem


def test_identity_changes_on_write_and_rollback_only(backend: TreeStorage) -> None:
    ds = backend.ensure_dataset(DS)
    write_ledger(ds.path, "one")
    snap = backend.snapshot(DS, "s1")
    before, snap_before = backend.identity(DS), backend.identity(snap)
    assert set(before) >= {"id", "inode", "newest_ctime", "entries"} and before["id"]
    backend.clone(snap, "volumes/blue")
    write_ledger(backend.path("volumes/blue"), "blue writes")  # the clone's writes are not green's
    assert backend.identity(DS) == before and backend.identity(snap) == snap_before

    Path(ds.path, "ledger", "progress").write_text("two")
    written = backend.identity(DS)
    assert written["newest_ctime"] != before["newest_ctime"] and written["id"] == before["id"]

    backend.rollback(snap)
    rolled = backend.identity(DS)
    assert rolled != written and rolled != before and rolled["id"] == before["id"]  # visible, even back to before
    assert backend.identity(snap) == snap_before


def test_recreated_dataset_has_a_new_id(backend: TreeStorage) -> None:
    first = backend.ensure_dataset(DS)
    old = backend.identity(DS)
    backend.destroy(DS)
    backend.ensure_dataset(DS)
    assert backend.identity(DS)["id"] != old["id"] and first.path == backend.path(DS)

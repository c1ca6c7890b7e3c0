"""'Green's data is untouched' from the storage's own facts, on a real backend: it passes when only the owner
writes while it runs, and fails when anything writes after the procedure stopped it, or the data is rolled back
or replaced under a running owner (the negative tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.adapters.storage import make_storage
from runbook.checks.untouched import problems


@pytest.fixture(params=["copy", "reflink"])
def storage(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    from runbook.adapters.storage import reflink_supported

    if request.param == "reflink" and not reflink_supported(tmp_path)[0]:
        pytest.skip(f"no reflink on {tmp_path}")
    st = make_storage(request.param, tmp_path / "pool")
    ds = st.ensure_dataset("volumes/solana")
    (Path(ds.path) / "ledger").mkdir()
    (Path(ds.path) / "ledger" / "data-0").write_bytes(b"x" * 4096)
    return st


def _write(st, name: str) -> None:  # type: ignore[no-untyped-def]
    (Path(st.path("volumes/solana")) / "ledger" / name).write_bytes(b"y" * 4096)


def test_the_owner_writing_while_it_runs_is_allowed(storage) -> None:  # type: ignore[no-untyped-def]
    before = storage.identity("volumes/solana")
    _write(storage, "owner-progress")
    assert problems(before, storage.identity("volumes/solana"), owner_running=True) == []


def test_a_write_after_the_colour_stopped_fails(storage) -> None:  # type: ignore[no-untyped-def]
    """The trap: a procedure that writes to green's data (after stopping it) fails 'green is untouched'."""
    at_stop = storage.identity("volumes/solana")
    assert problems(at_stop, storage.identity("volumes/solana"), owner_running=False) == []
    _write(storage, "written-by-the-procedure")
    found = problems(at_stop, storage.identity("volumes/solana"), owner_running=False)
    assert any(f.startswith("entries") for f in found), found  # a new file; its ctime too, where the clock ticked


def test_a_rollback_under_the_running_owner_fails(storage) -> None:  # type: ignore[no-untyped-def]
    storage.snapshot("volumes/solana", "s1")
    before = storage.identity("volumes/solana")
    _write(storage, "owner-progress")
    storage.rollback("volumes/solana@s1")
    found = problems(before, storage.identity("volumes/solana"), owner_running=True)
    assert found, "a rollback of a running colour's data must not pass"


def test_destroyed_and_recreated_fails(storage) -> None:  # type: ignore[no-untyped-def]
    before = storage.identity("volumes/solana")
    storage.destroy("volumes/solana", recursive=True)
    storage.ensure_dataset("volumes/solana")
    found = problems(before, storage.identity("volumes/solana"), owner_running=True)
    assert any(f.startswith("id:") for f in found), found
    assert problems(before, None, owner_running=True) == ["the dataset is gone"]


def test_growing_facts_may_not_go_back() -> None:
    """ZFS's written@<snap>: a rollback resets it; the owner's writes only make it grow."""
    before = {"guid": "1", "createtxg": "5", "written@pre-upgrade-x": "4096"}
    assert problems(before, {**before, "written@pre-upgrade-x": "8192"}, owner_running=True) == []
    assert problems(before, {**before, "written@pre-upgrade-x": "0"}, owner_running=True)
    assert problems(before, {**before, "written@pre-upgrade-x": "8192"}, owner_running=False)
    assert problems(before, {**before, "guid": "2"}, owner_running=True)
    # a bare `written` counts from the latest snapshot: the upgrade's own snapshot resets it while green runs
    assert problems({**before, "written": "11046912"}, {**before, "written": "53248"}, owner_running=True) == []
    assert problems({**before, "written": "53248"}, {**before, "written": "57344"}, owner_running=False)


def test_the_check_fails_on_a_rollback_or_a_write_after_the_stop(storage) -> None:  # type: ignore[no-untyped-def]
    """The check the scenarios use (data_untouched): its verdict, from the storage's facts."""
    from runbook.checks.untouched import data_untouched

    storage.snapshot("volumes/solana", "s1")
    before = storage.identity("volumes/solana")
    _write(storage, "owner-progress")
    at_stop = storage.identity("volumes/solana")
    assert data_untouched("green", "volumes/solana", before, storage.identity("volumes/solana"), stopped=at_stop).ok
    _write(storage, "written-after-the-stop")
    v = data_untouched("green", "volumes/solana", before, storage.identity("volumes/solana"), stopped=at_stop)
    assert v.status == "failed" and any("since green stopped" in p for p in v.problems), v
    storage.rollback("volumes/solana@s1", destroy_newer=False)
    assert not data_untouched("green", "volumes/solana", before, storage.identity("volumes/solana")).ok
    assert data_untouched("green", "volumes/solana", before, None).problems == (
        "green's data was rewritten: the dataset is gone",)

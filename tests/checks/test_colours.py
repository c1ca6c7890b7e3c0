"""The colours' state checks fail on their traps (runbook.checks.colours)."""

from __future__ import annotations

from runbook.checks import colours


def test_a_kept_dataset_or_snapshot_fails() -> None:
    assert colours.old_data_gone("solana", "pre-x", datasets=["solana-blue"], snapshots=[]).ok
    assert not colours.old_data_gone("solana", "pre-x", datasets=["solana", "solana-blue"], snapshots=[]).ok
    assert not colours.old_data_gone("solana", "pre-x", datasets=["solana-blue"], snapshots=["pool/x@pre-x"]).ok


def test_the_wrong_colour_or_version_fails() -> None:
    good = {"health": "ok", "version": "2.1.1"}
    assert colours.serves("blue", served_by="blue", state=good, version="2.1.1").ok
    assert not colours.serves("blue", served_by="green", state=good, version="2.1.1").ok
    assert not colours.serves("blue", served_by="blue", state={**good, "version": "2.1.0"}, version="2.1.1").ok
    assert not colours.serves("blue", served_by="blue", state={**good, "health": "behind"}, version="2.1.1").ok


def test_not_a_clone_fails() -> None:
    assert colours.clone_of("b", "g@s", origin="g@s", backend="zvol").ok
    assert colours.clone_of("b", "g@s", origin=None, backend="zfs").status == "failed"


def test_a_full_copy_is_not_passed_as_copy_on_write() -> None:
    v = colours.clone_of("b", "g@s", origin="g@s", backend="copy")
    assert (v.ok, v.status) == (False, "skipped") and "full copies" in v.skipped


def test_never_seen_behind_fails() -> None:
    assert colours.was_behind({"healths": ["behind", "ok"], "max_behind": 900}, distance=150).ok
    assert not colours.was_behind({"healths": ["ok"], "max_behind": 0}, distance=150).ok
    assert not colours.was_behind({"healths": ["behind", "ok"], "max_behind": 100}, distance=150).ok
    assert not colours.was_behind({}, distance=150).ok


def test_an_idle_colour_not_on_target_fails() -> None:
    ok = {"health": "ok", "version": "2.1.1"}
    assert colours.both_answer(ok, {"health": "ok"}, version="2.1.1").ok
    assert not colours.both_answer({**ok, "version": "2.1.0"}, {"health": "ok"}, version="2.1.1").ok
    assert not colours.both_answer(ok, {"health": "down"}, version="2.1.1").ok


def test_anything_left_of_the_idle_colour_fails() -> None:
    kw = {"dataset": "solana-blue", "accounts": "/accounts-blue"}
    assert colours.gone("agave-blue", pods=[], datasets=["solana"], accounts_left=False, **kw).ok
    assert not colours.gone("agave-blue", pods=["agave-blue-x"], datasets=["solana"], accounts_left=False, **kw).ok
    assert not colours.gone("agave-blue", pods=[], datasets=["solana-blue"], accounts_left=False, **kw).ok
    assert not colours.gone("agave-blue", pods=[], datasets=[], accounts_left=True, **kw).ok

"""The agave upgrade's step verifications fail on their traps (runbook.checks.upgrade_verify)."""

from __future__ import annotations

from runbook.checks import upgrade_verify as uv


def test_a_straggler_after_the_shift_fails() -> None:
    assert uv.all_served_by(["blue"] * 20, "blue", when="after the shift").ok
    assert not uv.all_served_by(["blue"] * 19 + ["green"], "blue", when="after the shift").ok
    assert not uv.all_served_by([None, "blue"], "blue", when="after the shift").ok
    assert not uv.all_served_by([], "blue", when="after the shift").ok


def test_an_upstream_order_not_switched_fails() -> None:
    assert uv.upstream_order(["localhost:8897", "127.0.0.1:8899"], ["127.0.0.1:8897", "127.0.0.1:8899"],
                             when="x").ok
    assert not uv.upstream_order(["127.0.0.1:8899", "127.0.0.1:8897"], ["127.0.0.1:8897", "127.0.0.1:8899"],
                                 when="x").ok


def test_pods_left_fail() -> None:
    assert uv.no_pods("agave-blue", [], when="after the rollback").ok
    assert not uv.no_pods("agave-blue", ["agave-blue-1"], when="after the rollback").ok


def test_a_differing_accounts_copy_fails() -> None:
    assert uv.accounts_copy({}, src="/a", dst="/b").ok
    v = uv.accounts_copy({"inodes": (10, 12)}, src="/a", dst="/b")
    assert v.problems == ("/b differs from /a: inodes 10 in the source, 12 in the copy",)
    assert uv.accounts_copy(None, src="/a", dst="/b").problems == ("no copy",)


def test_not_mounted_fails() -> None:
    assert uv.mounted_at("v/solana", "/srv/solana", mount="/srv/solana").ok
    assert not uv.mounted_at("v/solana", None, mount="/srv/solana").ok


def test_written_after_the_rollback_fails() -> None:
    assert uv.at_snapshot("v/solana", "v/solana@s", {"guid": "1", "written@s": "0"}).ok
    assert not uv.at_snapshot("v/solana", "v/solana@s", {"written": "4096"}).ok
    assert uv.at_snapshot("v/solana", "v/solana@s", {"inode": 5}).status == "skipped"


def test_something_left_fails() -> None:
    assert uv.gone("v/solana-blue", False).ok
    assert not uv.gone("v/solana-blue", True).ok


def test_the_wrong_build_fails_at_once() -> None:
    assert uv.build_version("blue", "2.2.1", want="2.2.1").ok
    assert uv.build_version("blue", None, want="2.2.1").ok  # not answering yet is no verdict on the version
    assert not uv.build_version("blue", "2.2.0", want="2.2.1").ok


def test_old_data_kept_or_destroyed_against_the_operators_choice_fails() -> None:
    assert uv.old_data("v/solana", destroy=False, present=True).ok
    assert uv.old_data("v/solana", destroy=True, present=False).ok
    assert not uv.old_data("v/solana", destroy=False, present=False).ok
    assert not uv.old_data("v/solana", destroy=True, present=True).ok

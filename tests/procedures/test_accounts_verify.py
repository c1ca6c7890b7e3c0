"""The upgrade's copy-accounts verification (runbook.procedures.accounts.verify) compares the copy with its source
through the host port, for real (rsync and the tree figures on this machine): a matching copy passes, a copy
that differs gets one more pass and passes once it matches, and a copy that stays different fails naming the
difference (a verification that returned without comparing would let blue start on half its accounts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runbook.adapters.accounts_copy import AccountsCopy
from runbook.errors import CheckFailed
from runbook.procedures import accounts
from runbook.procedures.framework import Context
from tests.baseline_fakes import make_adapters
from tests.procedures.facts_helper import upgrade_facts


def _ctx(tmp_path: Path) -> tuple[Context, Path, Path]:
    a = make_adapters(tmp_path)
    ctx = Context(adapters=a, params={"target_version": "v2.2.1"}, facts=upgrade_facts(live="green", idle="blue"),
                  progress=lambda m: None)
    src = Path(a.host_path(a.env.deployments.green.accounts))
    dst = Path(a.host_path(a.env.deployments.blue.accounts))
    (src / "run").mkdir(parents=True)
    (src / "snapshot" / "100").mkdir(parents=True)
    for i in range(3):
        (src / "run" / f"{i}.0").write_bytes(bytes([i]) * 4096)
        os.link(src / "run" / f"{i}.0", src / "snapshot" / "100" / f"{i}.0")  # agave's hard links
    dst.mkdir(parents=True)
    return ctx, src, dst


def test_a_matching_copy_passes(tmp_path: Path) -> None:
    ctx, _, _ = _ctx(tmp_path)
    accounts.copy(ctx)
    accounts.verify(ctx)
    assert accounts.copied(ctx)


def test_a_copy_that_differs_gets_one_more_pass(tmp_path: Path) -> None:
    ctx, _, dst = _ctx(tmp_path)
    accounts.copy(ctx)
    (dst / "run" / "1.0").unlink()
    assert not accounts.copied(ctx)
    accounts.verify(ctx)
    assert (dst / "run" / "1.0").is_file() and accounts.copied(ctx)


def test_a_copy_that_stays_different_fails_the_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, _, dst = _ctx(tmp_path)
    accounts.copy(ctx)
    (dst / "run" / "1.0").unlink()
    monkeypatch.setattr(AccountsCopy, "copy", lambda self, *a, **kw: None)  # the second pass cannot fix it
    with pytest.raises(CheckFailed, match="differs from"):
        accounts.verify(ctx)

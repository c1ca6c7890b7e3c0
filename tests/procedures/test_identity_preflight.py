"""The upgrade's identity precondition (design trap 9), on real keypair files through the host port: the idle
colour's keypair must exist and hold another key than the live colour's; refused before anything changes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runbook.errors import PreconditionFailed
from runbook.procedures import agave_upgrade as up
from runbook.procedures.framework import Context
from runbook.testbed import keypair
from tests.baseline_fakes import make_adapters
from tests.procedures.facts_helper import upgrade_facts


def _ctx(tmp_path: Path) -> tuple[Context, Path]:
    a = make_adapters(tmp_path)
    ctx = Context(adapters=a, params={"target_version": "v2.2.1"}, facts=upgrade_facts(live="green", idle="blue"))
    blue_key = Path(a.host_path(str(a.env.deployments.blue.identity)))
    return ctx, blue_key


def test_two_keys_pass_and_nothing_secret_is_recorded(tmp_path: Path) -> None:
    recorded: list[tuple[str, object]] = []
    ctx, _ = _ctx(tmp_path)
    ctx = Context(adapters=ctx.adapters, params=ctx.params, facts=ctx.facts,
                  record=lambda title, data: recorded.append((title, data)))
    up.require_own_identity(ctx)
    assert recorded and "present, another key" in str(recorded[-1][1])
    assert not re.search(r"[0-9a-f]{64}", str(recorded)), recorded  # no digest of a key, no key


def test_blue_under_greens_key_is_refused(tmp_path: Path) -> None:
    ctx, blue_key = _ctx(tmp_path)
    green_seed = keypair.colour_seed(bytes.fromhex(ctx.env.testbed.identity_seed), "green")  # type: ignore[union-attr]
    keypair.write_keypair(blue_key, green_seed)
    with pytest.raises(PreconditionFailed, match=r"holds the same key as .* would make agave-green, the colour "
                                                 r"serving, exit"):
        up.require_own_identity(ctx)


def test_a_missing_keypair_is_refused(tmp_path: Path) -> None:
    ctx, blue_key = _ctx(tmp_path)
    blue_key.unlink()
    with pytest.raises(PreconditionFailed, match=r"identity keypair .* is missing or unreadable"):
        up.require_own_identity(ctx)

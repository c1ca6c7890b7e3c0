"""``cluster_rpc`` is one reference URL (as before) or a list in order of preference; ``reference_poll`` is a
duration no shorter than half a second (a public RPC answers 429 above a few requests a second); the
testbed's cluster stand-in limits to ``testbed.cluster_rate_limit`` requests a second per client address."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook.env import PROJECT_ROOT, load_env
from runbook.errors import ConfigError
from runbook.procedures import agave_upgrade as up
from runbook.procedures.framework import Context
from tests.procedures.facts_helper import upgrade_facts


def _env(tmp_path: Path, **changes: Any) -> Any:
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "local.yaml").read_text())
    data.update(changes)
    path = tmp_path / "ref.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_env(str(path))


def test_one_url_is_a_list_of_one_and_a_list_keeps_its_order(tmp_path: Path) -> None:
    assert load_env("biscayne").cluster_rpc == ["https://api.mainnet-beta.solana.com"]
    env = _env(tmp_path, cluster_rpc=["http://127.0.0.1:18900/", "https://api.mainnet-beta.solana.com"])
    assert env.cluster_rpc == ["http://127.0.0.1:18900", "https://api.mainnet-beta.solana.com"]


@pytest.mark.parametrize(("value", "problem"), [
    ([], "non-empty list"), ("api.mainnet-beta.solana.com", "not an http(s) URL"),
    (["http://127.0.0.1:18900", "ftp://x"], "not an http(s) URL: 'ftp://x'")])
def test_a_bad_reference_is_refused(tmp_path: Path, value: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=r"field cluster_rpc: .*" + problem.replace("(", r"\(").replace(")", r"\)")):
        _env(tmp_path, cluster_rpc=value)


def test_reference_poll_is_seconds_and_never_faster_than_twice_a_second(tmp_path: Path) -> None:
    assert load_env("biscayne").reference_poll == 2.0
    assert _env(tmp_path, reference_poll="5s").reference_poll == 5.0
    for too_fast in ("250ms", 0):
        with pytest.raises(ConfigError, match=r"field reference_poll: Input should be greater than or equal to 0\.5"):
            _env(tmp_path, reference_poll=too_fast)


def test_the_testbeds_cluster_limits_a_few_requests_a_second() -> None:
    tb = load_env("local").testbed
    assert tb is not None and tb.cluster_rate_limit == 4.0


def test_the_plan_states_the_poll_rate_and_the_references(tmp_path: Path) -> None:
    env = _env(tmp_path, cluster_rpc=["https://a.example", "https://b.example"], reference_poll="3s")
    ctx = Context(adapters=type("A", (), {"env": env})(), params={},
                  facts=upgrade_facts(idle="blue", live="green", target_version="v2.2.1"))
    text = "\n".join(up._plan_catch_up(ctx))
    assert "getSlot on https://a.example, https://b.example every 3s at most" in text
    assert "429" in text and "Retry-After" in text and "2.2.1" in text

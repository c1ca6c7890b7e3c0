"""Every env keeps production's order of durations (checked on load): catch-up far longer than the ingress's
retry window, which is longer than its health check interval; a testbed that compresses time too far is
refused, by the setting that breaks the order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook.env import CATCH_UP_OVER_RETRY, PROJECT_ROOT, known_envs, load_env
from runbook.errors import ConfigError
from runbook.testbed import caddy


def _local(tmp_path: Path, *, ingress: dict[str, Any] | None = None, testbed: dict[str, Any] | None = None) -> Path:
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "local.yaml").read_text())
    data["ingress"].update(ingress or {})
    data["testbed"].update(testbed or {})
    path = tmp_path / "local-changed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", known_envs())
def test_every_shipped_env_keeps_the_order(name: str) -> None:
    env = load_env(name)
    catch_up = env.testbed.startup_delay if env.testbed else env.timeouts.catch_up
    assert catch_up >= CATCH_UP_OVER_RETRY * env.ingress.try_duration > env.ingress.health_interval
    values = caddy.template_vars(env)  # the Caddyfile gets exactly the env's timings
    assert (values["try_duration"], values["health_interval"]) == (
        caddy.go_duration(env.ingress.try_duration), caddy.go_duration(env.ingress.health_interval))


def test_a_retry_window_that_holds_a_whole_testbed_catch_up_is_refused(tmp_path: Path) -> None:
    # production's 5 s window on the testbed, whose clone is `unknown` for 3 s: the order breaks
    with pytest.raises(ConfigError, match=r"testbed.startup_delay .* is 3s: catch-up must be at least 3x .*"
                                          r"ingress.try_duration 5s"):
        load_env(str(_local(tmp_path, ingress={"try_duration": "5s"})))
    with pytest.raises(ConfigError, match=r"testbed\.startup_delay"):
        load_env(str(_local(tmp_path, testbed={"startup_delay": "2s"})))
    load_env(str(_local(tmp_path, ingress={"try_duration": "5s"}, testbed={"startup_delay": "15s"})))


def test_a_retry_window_no_longer_than_the_health_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ingress.try_duration \(1s\) must be longer than ingress.health_interval"):
        load_env(str(_local(tmp_path, ingress={"health_interval": "1s"})))


def test_a_production_catch_up_deadline_shorter_than_the_order_is_refused(tmp_path: Path) -> None:
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "biscayne.yaml").read_text())
    data["timeouts"]["catch_up"] = "10s"
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"timeouts\.catch_up is 10s"):
        load_env(str(path))

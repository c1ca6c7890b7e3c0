"""The Caddy config audit, on Caddy's own JSON (``caddy adapt`` of the rendered templates).

Ours passes every finding; the seed's block fails naming each trap; removing exactly one setting from
ours fails exactly that setting. Also the rendering of the one template for the testbed and production.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from runbook.adapters.caddy_config import find_reverse_proxies, site_proxy_of
from runbook.checks.caddy_audit import AuditReport, audit, go_duration, require_audit
from runbook.env import Env, load_env
from runbook.errors import CheckFailed, ConfigError, TestbedError
from runbook.testbed import caddy

pytestmark = pytest.mark.caddy

GREEN, BLUE = "127.0.0.1:18899", "127.0.0.1:18897"
EXPECTED = [GREEN, BLUE]


@pytest.fixture(scope="module")
def env() -> Env:
    return load_env("local")


@pytest.fixture(scope="module")
def ours_text(env: Env) -> str:
    return caddy.render(caddy.TEMPLATE, env)


@pytest.fixture(scope="module")
def ours(ours_text: str) -> dict[str, Any]:
    return caddy.adapt(ours_text)


@pytest.fixture(scope="module")
def seed(env: Env) -> dict[str, Any]:
    return caddy.adapt(caddy.render(caddy.SEED_TEMPLATE, env))


def _audit(config: dict[str, Any]) -> AuditReport:
    """The audit, after mirroring the default handler's settings onto the order switch's other handler (the
    tests below edit one handler's settings: each must then fail or pass in both)."""
    site = site_proxy_of(find_reverse_proxies(config))
    if site is not None and site.switched is not None:
        mirrored = copy.deepcopy(site.default.handler)
        mirrored["upstreams"] = list(reversed(mirrored.get("upstreams", [])))
        site.switched.handler.clear()
        site.switched.handler.update(mirrored)
    return audit(config, expected_upstreams=EXPECTED)


def _handler(config: dict[str, Any]) -> dict[str, Any]:
    """The handler serving while no order file exists (our config's default; the seed's only one)."""
    site = site_proxy_of(find_reverse_proxies(config))
    assert site is not None
    return site.default.handler


def _without(text: str, directive: str) -> str:
    """``text`` with the one directive (a line, or a ``{ ... }`` block) removed."""
    lines = text.splitlines(keepends=True)
    start = [i for i, line in enumerate(lines) if line.strip().split(" ")[0] == directive]
    assert len(start) == 1, f"{directive!r} found {len(start)} times in the rendered template"
    end = start[0]
    if lines[end].rstrip().endswith("{"):
        while lines[end].strip() != "}":
            end += 1
    return "".join(lines[: start[0]] + lines[end + 1 :])


# --------------------------------------------------------------------------- ours and the seed


def test_our_config_passes_every_finding(ours: dict[str, Any]) -> None:
    report = _audit(ours)
    assert report.ok, report.summary()
    assert len(report.findings) == 11
    assert require_audit(ours, expected_upstreams=EXPECTED).ok


def test_seed_config_fails_naming_each_trap(seed: dict[str, Any]) -> None:
    report = _audit(seed)
    failed = set(report.failed_settings)
    assert {
        "health_body",
        "fail_duration/max_fails",
        "lb_try_duration",
        "lb_retry_match",
        "request_buffers",
        "header_down X-Upstream",
    } <= failed, report.summary()
    # what the seed does have is reported as ok, not swept up with the rest
    assert {"upstreams", "lb_policy", "health_uri"}.isdisjoint(failed)

    with pytest.raises(CheckFailed) as info:
        report.raise_for_failures(env="local")
    message = str(info.value)
    for needle in ("health_body", "fail_duration", "max_fails", "lb_try_duration", "POST", "request_buffers"):
        assert needle in message
    assert "passive health checks" in message
    assert isinstance(info.value.expected, dict) and isinstance(info.value.observed, dict)
    assert info.value.observed["health_body"].startswith("absent")
    assert info.value.env == "local"


# --------------------------------------------------------------------------- one missing setting at a time

SINGLE_REMOVALS = [
    ("lb_policy", "lb_policy"),
    ("health_uri", "health_uri"),
    ("health_interval", "health_interval"),
    ("health_body", "health_body"),
    ("fail_duration", "fail_duration/max_fails"),
    ("lb_try_duration", "lb_try_duration"),
    ("lb_retry_match", "lb_retry_match"),
    ("request_buffers", "request_buffers"),
    ("header_down", "header_down X-Upstream"),
]


@pytest.mark.parametrize(("directive", "setting"), SINGLE_REMOVALS, ids=[d for d, _ in SINGLE_REMOVALS])
def test_removing_one_setting_fails_exactly_that_setting(ours_text: str, directive: str, setting: str) -> None:
    report = _audit(caddy.adapt(_without(ours_text, directive)))
    assert report.failed_settings == [setting], report.summary()
    with pytest.raises(CheckFailed, match=setting):
        report.raise_for_failures()


def test_missing_blue_upstream_fails_upstreams(env: Env) -> None:
    report = _audit(caddy.adapt(caddy.render(caddy.TEMPLATE, env, upstreams=GREEN)))
    assert report.failed_settings == ["upstreams", "order_switch"]  # one upstream has no other order
    assert report.finding("upstreams").observed == GREEN


def test_blue_first_fails_upstreams_order(env: Env) -> None:
    report = _audit(caddy.adapt(caddy.render(caddy.TEMPLATE, env, upstreams=f"{BLUE} {GREEN}")))
    assert report.failed_settings == ["upstreams"]
    assert "the live colour first" in report.finding("upstreams").expected


def test_max_fails_absent_is_caddys_default_of_one(ours_text: str) -> None:
    report = _audit(caddy.adapt(_without(ours_text, "max_fails")))
    assert report.ok, report.summary()
    assert "Caddy default" in report.finding("fail_duration/max_fails").observed


# --------------------------------------------------------------------------- the finer points, on JSON


@pytest.mark.parametrize(
    ("pattern", "ok", "note"),
    [
        ("^ok$", True, ""),
        ("ok", True, ""),
        ("^(ok|behind)$", False, "matches 'behind'"),
        ("o", False, "matches 'unknown'"),
        (".*", False, "matches 'behind'"),
        ("^healthy$", False, "does not match 'ok'"),
        ("(", False, "not a valid regex"),
    ],
)
def test_health_body_regex_is_tested_against_agave_bodies(
    ours: dict[str, Any], pattern: str, ok: bool, note: str
) -> None:
    config = copy.deepcopy(ours)
    _handler(config)["health_checks"]["active"]["expect_body"] = pattern
    finding = _audit(config).finding("health_body")
    assert finding.ok is ok
    assert note in finding.observed


@pytest.mark.parametrize(
    ("retry_match", "ok"),
    [
        ([{"method": ["GET", "POST"]}], True),
        ([{"method": ["GET"]}, {"method": ["POST"]}], True),
        ([{"method": ["post", "get", "PUT"]}], True),
        ([{}], True),
        ([{"method": ["POST"]}], False),
        ([{"method": ["GET"]}], False),
        ([{"method": ["GET", "POST"], "path": ["/health"]}], False),
    ],
)
def test_retry_match_must_allow_get_and_post(ours: dict[str, Any], retry_match: Any, ok: bool) -> None:
    config = copy.deepcopy(ours)
    _handler(config)["load_balancing"]["retry_match"] = retry_match
    assert _audit(config).finding("lb_retry_match").ok is ok


def test_json_durations_may_be_strings(ours: dict[str, Any]) -> None:
    config = copy.deepcopy(ours)
    h = _handler(config)
    h["health_checks"]["active"]["interval"] = "1500ms"
    h["health_checks"]["passive"]["fail_duration"] = "30s"
    h["load_balancing"]["try_duration"] = "5s"
    assert _audit(config).ok
    h["health_checks"]["passive"]["fail_duration"] = "0s"
    h["load_balancing"]["try_duration"] = "soon"
    assert _audit(config).failed_settings == ["fail_duration/max_fails", "lb_try_duration"]


def test_header_must_carry_the_upstream_placeholder(ours: dict[str, Any]) -> None:
    config = copy.deepcopy(ours)
    _handler(config)["headers"]["response"]["set"] = {"x-upstream": ["{http.reverse_proxy.upstream.address}"]}
    assert _audit(config).failed_settings == ["header_down X-Upstream"]
    _handler(config)["headers"]["response"]["set"] = {"x-upstream": ["{http.reverse_proxy.upstream.hostport}"]}
    assert _audit(config).ok


def test_no_or_several_reverse_proxies_is_one_failed_finding(ours: dict[str, Any]) -> None:
    empty = _audit({"apps": {"http": {"servers": {}}}})
    assert empty.failed_settings == ["reverse_proxy"]
    doubled = copy.deepcopy(ours)
    routes = doubled["apps"]["http"]["servers"]["srv0"]["routes"]
    routes.append(copy.deepcopy(routes[0]))
    report = _audit(doubled)
    assert report.failed_settings == ["reverse_proxy"]
    assert "4 (" in report.findings[0].observed  # the switch's two, twice


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(5_000_000_000, 5.0), ("250ms", 0.25), ("1m30s", 90.0), ("1.5h", 5400.0), ("0", 0.0), (None, None)],
)
def test_go_duration(value: Any, seconds: float | None) -> None:
    assert go_duration(value) == seconds


# --------------------------------------------------------------------------- the template


def test_testbed_render_is_loopback_only(ours_text: str, ours: dict[str, Any]) -> None:
    assert "${" not in ours_text
    assert "http://127.0.0.1:18080 {" in ours_text
    assert "auto_https off" in ours_text
    server = ours["apps"]["http"]["servers"]["srv0"]
    assert server["listen"] == ["127.0.0.1:18080"]
    assert server["automatic_https"]["disable"] is True
    assert ours["admin"]["listen"] == "127.0.0.1:12019"


def test_production_render_keeps_the_domain() -> None:
    env = load_env("biscayne")
    text = caddy.render(env.ingress.template, env)
    assert "\nbiscayne.vaasl.io {" in text
    assert "auto_https" not in text and "default_bind" not in text
    config = caddy.adapt(text)
    assert audit(config, expected_upstreams=["127.0.0.1:8899", "127.0.0.1:8897"]).ok


def test_render_refuses_unknown_variables(env: Env) -> None:
    with pytest.raises(ConfigError, match="unknown Caddyfile template variable"):
        caddy.render(caddy.TEMPLATE, env, health_intervall="1s")


def test_template_overrides_reach_the_json(env: Env) -> None:
    config = caddy.adapt(caddy.render(caddy.TEMPLATE, env, health_interval="250ms", try_duration="3s"))
    h = _handler(config)
    assert h["health_checks"]["active"]["interval"] == 250_000_000
    assert h["load_balancing"]["try_duration"] == 3_000_000_000


def test_adapt_error_carries_caddys_message() -> None:
    with pytest.raises(TestbedError, match="unrecognized"):
        caddy.adapt("http://127.0.0.1:1 {\n\treverse_proxy 127.0.0.1:2 {\n\t\tno_such_setting 1\n\t}\n}\n")


def test_binary_argv_and_state_dir(env: Env, tmp_path: Path) -> None:
    binary = caddy.caddy_binary()
    assert Path(binary).is_file()
    assert caddy.run_argv(tmp_path / "Caddyfile") == [
        binary, "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"
    ]
    program = caddy.prepare(env, tmp_path)
    assert program.config_path.read_text() == caddy.render(caddy.TEMPLATE, env)
    for value in program.environment.values():
        assert Path(value).is_dir() and Path(value).is_relative_to(tmp_path.resolve())
    assert set(program.environment) == {"XDG_DATA_HOME", "XDG_CONFIG_HOME"}


def test_a_setting_the_audit_does_not_know_is_refused(ours: dict[str, Any], seed: dict[str, Any]) -> None:
    """The step's setting names reach the verdict: each failed seed setting fails its check; a name the audit
    does not know is an error, never a pass."""
    from runbook.checks.caddy_audit import setting

    assert setting(_audit(ours), "lb_try_duration").ok
    v = setting(_audit(seed), "lb_try_duration")
    assert v.status == "failed" and v.check == "caddy_audit.setting", v
    with pytest.raises(KeyError, match="no finding for 'lb_try_durations'"):
        setting(_audit(ours), "lb_try_durations")

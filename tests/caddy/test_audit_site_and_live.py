"""The audit is true in every steady state (issue 9): the live colour first, whichever it is; `localhost`,
`127.0.0.1` and `[::1]` are one upstream host; the reverse_proxy audited is the one serving the env's site.

Configs are Caddy's own JSON (``caddy adapt`` of real Caddyfiles), never hand-written shapes.
"""

from __future__ import annotations

from typing import Any

import pytest

from runbook.adapters.caddy_config import find_site_proxies, find_site_proxy, same_upstreams
from runbook.checks.caddy_audit import audit
from runbook.env import Env, load_env
from runbook.errors import AdapterError
from runbook.procedures import bluegreen as bg
from runbook.testbed import caddy

pytestmark = pytest.mark.caddy


@pytest.fixture(scope="module")
def env() -> Env:
    return load_env("local")


@pytest.fixture(scope="module")
def ours(env: Env) -> dict[str, Any]:
    return caddy.adapt(caddy.render(caddy.TEMPLATE, env))


def _ours_with(env: Env, **overrides: str) -> dict[str, Any]:
    return caddy.adapt(caddy.render(caddy.TEMPLATE, env, **overrides))


def test_after_an_upgrade_blue_first_passes_and_green_first_fails(ours: dict[str, Any], env: Env) -> None:
    """Cleanup puts the new live colour first (the order switch serving blue first): the audit expects the
    live colour first, not green."""
    blue_first = bg.upstream_order_for(env, "blue")
    assert audit(ours, expected_upstreams=blue_first, site_url=env.ingress.url, served_order=blue_first).ok
    wrong = audit(ours, expected_upstreams=bg.upstream_order_for(env, "green"), site_url=env.ingress.url,
                  served_order=blue_first)
    assert wrong.failed_settings == ["upstreams"], wrong.summary()


def test_unknown_live_colour_fails_the_order_and_says_why(ours: dict[str, Any], env: Env) -> None:
    report = audit(ours, expected_upstreams=None, site_url=env.ingress.url, live_unknown="no X-Upstream header")
    assert report.failed_settings == ["upstreams"]
    assert "no X-Upstream header" in report.finding("upstreams").why


@pytest.mark.parametrize("spelling", ["localhost", "[::1]", "127.0.0.1"])
def test_loopback_spellings_are_one_upstream(env: Env, spelling: str) -> None:
    """The seed writes `localhost:8899`: in the right order it passes the order check."""
    g, b = (env.deployments.colour(c).rpc_port for c in ("green", "blue"))
    config = _ours_with(env, upstreams=f"{spelling}:{g} {spelling}:{b}",
                        upstreams_blue_first=f"{spelling}:{b} {spelling}:{g}")
    report = audit(config, expected_upstreams=bg.upstream_order_for(env, "green"), site_url=env.ingress.url)
    assert report.ok, report.summary()  # the order, and the switch's two orders mirror each other
    reversed_order = _ours_with(env, upstreams=f"{spelling}:{b} {spelling}:{g}")
    assert not audit(reversed_order, expected_upstreams=bg.upstream_order_for(env, "green"),
                     site_url=env.ingress.url).finding("upstreams").ok


def test_seed_block_with_localhost_upstreams_passes_the_order_check(env: Env) -> None:
    g, b = (env.deployments.colour(c).rpc_port for c in ("green", "blue"))
    seed = caddy.adapt(caddy.render(caddy.SEED_TEMPLATE, env, upstreams=f"localhost:{g} localhost:{b}"))
    report = audit(seed, expected_upstreams=bg.upstream_order_for(env, "green"), site_url=env.ingress.url)
    assert report.finding("upstreams").ok and report.finding("lb_policy").ok
    assert {"health_body", "order_switch"} <= set(report.failed_settings)  # the seed's real bugs are still caught


def test_a_different_host_is_a_different_upstream() -> None:
    assert not same_upstreams(["10.0.0.1:8899"], ["127.0.0.1:8899"])
    assert not same_upstreams(["localhost:8899"], ["localhost:8897"])
    assert same_upstreams(["localhost:8899", "[::1]:8897"], ["127.0.0.1:8899", "127.0.0.1:8897"])


OTHER_SITES = """
{{
	admin 127.0.0.1:12019
	auto_https off
}}
http://other.example:{port} {{
	reverse_proxy 127.0.0.1:5
}}
http://127.0.0.1:9000 {{
	reverse_proxy 127.0.0.1:7
}}
"""


def test_the_proxy_serving_the_env_site_is_audited_not_another_sites(env: Env) -> None:
    """Two other sites' proxies (another host on the same port, the same host on another port) beside ours:
    the env's is found and passes; without ours, the audit fails naming every proxy it saw."""
    ours_text = caddy.render(caddy.TEMPLATE, env)
    others = OTHER_SITES.format(port=env.ingress.port).split("}\n", 1)[1]  # without the global block
    both = caddy.adapt(ours_text + others)
    assert len(find_site_proxies(both, env.ingress.url)) == 2  # the order switch's two, not the others'
    report = audit(both, expected_upstreams=bg.upstream_order_for(env, "green"), site_url=env.ingress.url)
    assert report.ok, report.summary()
    unscoped = audit(both, expected_upstreams=bg.upstream_order_for(env, "green"))
    assert unscoped.failed_settings == ["reverse_proxy"]  # the old whole-config lookup cannot tell

    only_others = caddy.adapt(OTHER_SITES.format(port=env.ingress.port))
    report = audit(only_others, expected_upstreams=bg.upstream_order_for(env, "green"), site_url=env.ingress.url)
    assert report.failed_settings == ["reverse_proxy"]
    assert "routes" in report.findings[0].observed  # names the proxies it did see
    with pytest.raises(AdapterError, match="reverse_proxy serving"):
        find_site_proxy(only_others, env.ingress.url)


def test_production_site_is_found_by_its_domain() -> None:
    env = load_env("biscayne")
    config = caddy.adapt(caddy.render(env.ingress.template, env))
    report = audit(config, expected_upstreams=bg.upstream_order_for(env, "green"), site_url=env.ingress.url)
    assert report.ok, report.summary()
    assert find_site_proxies(config, "https://elsewhere.example") == []


def test_the_order_switch_is_audited_on_both_handlers(env: Env) -> None:
    """Each setting must hold in both orders: a retry window missing from the blue-first handler alone (the
    one serving after an upgrade) fails, naming it; two handlers not mirroring each other fail the switch."""
    text = caddy.render(caddy.TEMPLATE, env)
    one_sided = text.replace("reverse_proxy @blue_first ${upstreams_blue_first} {\n\t\t\timport blue_green_proxy",
                             "X")  # guard: the template must be what this test edits
    assert one_sided == text
    b, g = bg.upstream_order_for(env, "blue")
    edited = text.replace(f"reverse_proxy @blue_first {b} {g} {{\n\t\t\timport blue_green_proxy\n",
                          f"reverse_proxy @blue_first {b} {g} {{\n\t\t\timport blue_green_proxy\n"
                          "\t\t\tlb_try_duration 0s\n")
    assert edited != text
    report = audit(caddy.adapt(edited), expected_upstreams=[g, b], site_url=env.ingress.url)
    assert report.failed_settings == ["lb_try_duration"], report.summary()
    assert "while the order file exists" in report.finding("lb_try_duration").observed

    same_order = caddy.adapt(caddy.render(caddy.TEMPLATE, env, upstreams_blue_first=f"{g} {b}"))
    report = audit(same_order, expected_upstreams=[g, b], site_url=env.ingress.url)
    assert report.failed_settings == ["order_switch"], report.summary()

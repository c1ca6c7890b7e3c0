"""Audit of the live Caddy config against what a zero-drop blue-green cutover needs (design section 5).

It reads Caddy's JSON (what ``GET /config/`` on the admin API returns, or ``caddy adapt`` prints), never
Caddyfile text, so it audits what Caddy is actually running. Each required setting is one
:class:`Finding`, named by the Caddyfile directive an operator would edit:

==========================  ===========================================================================
setting                     required because
==========================  ===========================================================================
``reverse_proxy``           one proxy serves the env's site (its host and port), or an order switch's two
``upstreams``               both colours present, the live colour first in the order serving now
                            (loopback spellings equal)
``order_switch``            the order changes without a config reload: two handlers, the two orders, the
                            first under a file matcher (every setting below is checked on both)
``lb_policy``               ``first``: all traffic to the first available upstream (trap 2)
``health_uri``              active checks on ``/health``
``health_interval``         short: a node that falls ``behind`` keeps traffic until the next check
``health_body``             agave answers 200 while ``behind``: the body must be ``ok`` (trap 1)
``fail_duration/max_fails`` passive checks take a stopped upstream out on its first failure (trap 3)
``lb_try_duration``         failed requests are retried on the other upstream (trap 3)
``lb_retry_match``          JSON-RPC is POST; Caddy retries only GET once connected unless told (trap 3)
``request_buffers``         a retried POST needs its body buffered to be replayed (trap 3)
``header_down <header>``    clients see which upstream served (trap 4)
==========================  ===========================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runbook.adapters.caddy_config import (
    SiteProxy,
    dict_at,
    find_reverse_proxies,
    find_site_proxies,
    site_proxy_of,
    upstream_key,
)
from runbook.checks.core import Verdict, check, verdict
from runbook.errors import CheckFailed

UPSTREAM_PLACEHOLDER = "{http.reverse_proxy.upstream.hostport}"
HEALTH_URI = "/health"
HEALTHY_BODY = "ok"
UNHEALTHY_BODIES = ("behind", "unknown")
DEFAULT_MAX_HEALTH_INTERVAL = 2.0

# Caddy's defaults when a setting is absent from the JSON.
_CADDY_DEFAULT_INTERVAL = 30.0
_CADDY_DEFAULT_MAX_FAILS = 1

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


@dataclass(frozen=True)
class Finding:
    """One required setting: whether the config has it, and what was expected vs observed."""

    setting: str
    ok: bool
    expected: str
    observed: str
    why: str

    def __str__(self) -> str:
        mark = "ok" if self.ok else "FAIL"
        return f"[{mark}] {self.setting}: expected {self.expected}; observed {self.observed} ({self.why})"


@dataclass(frozen=True)
class AuditReport:
    findings: tuple[Finding, ...]
    handler_path: str = ""

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def failed(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.ok)

    @property
    def failed_settings(self) -> list[str]:
        return [f.setting for f in self.failed]

    def finding(self, setting: str) -> Finding:
        for f in self.findings:
            if f.setting == setting:
                return f
        raise KeyError(f"no finding for {setting!r} (have: {[f.setting for f in self.findings]})")

    def summary(self) -> str:
        head = f"Caddy config audit ({self.handler_path or 'no reverse_proxy'}): "
        head += "all settings ok" if self.ok else f"{len(self.failed)} of {len(self.findings)} settings wrong"
        return "\n".join([head, *(f"  {f}" for f in self.findings)])

    def raise_for_failures(self, **ctx: Any) -> None:
        """Raise :class:`CheckFailed` naming every failed setting with expected vs observed."""
        self._raise(self.failed, **ctx)

    def select(self, *settings: str) -> tuple[Finding, ...]:
        """The findings for ``settings`` (or the one finding saying there is no single reverse_proxy)."""
        if [f.setting for f in self.findings] == ["reverse_proxy"]:
            return self.findings
        return tuple(self.finding(s) for s in settings)

    def require(self, *settings: str, **ctx: Any) -> tuple[Finding, ...]:
        """The findings for ``settings``; raise :class:`CheckFailed` naming those that failed."""
        chosen = self.select(*settings)
        self._raise(tuple(f for f in chosen if not f.ok), **ctx)
        return chosen

    @staticmethod
    def _raise(failed: tuple[Finding, ...], **ctx: Any) -> None:
        if not failed:
            return
        lines = [f"  {f.setting}: expected {f.expected}; observed {f.observed} ({f.why})" for f in failed]
        raise CheckFailed(
            f"Caddy config audit failed on {', '.join(f.setting for f in failed)}:\n" + "\n".join(lines),
            expected={f.setting: f.expected for f in failed},
            observed={f.setting: f.observed for f in failed},
            **ctx,
        )


def go_duration(value: Any) -> float | None:
    """A Caddy JSON duration (integer nanoseconds, or a Go duration string) in seconds; None if absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        if body == "0":
            return 0.0
        parts = _GO_PART.findall(body)
        if parts and "".join(n + u for n, u in parts) == body:
            return sign * sum(float(n) * _GO_UNITS[u] for n, u in parts)
    raise ValueError(f"not a duration: {value!r}")


def _fmt_seconds(seconds: float | None, absent: str) -> str:
    return absent if seconds is None else f"{seconds:g}s"


def _duration(obj: dict[str, Any], key: str) -> tuple[float | None, str]:
    """(seconds, error text) for obj[key]: an unparseable value reads as absent with a note."""
    try:
        return go_duration(obj.get(key)), ""
    except ValueError as exc:
        return None, f" (unreadable: {exc})"


# --------------------------------------------------------------------------- one check per setting


def _check_upstreams(observed: Sequence[str], expected: Sequence[str] | None, unknown: str) -> Finding:
    why = "both colours must be upstreams, and with lb_policy first the order decides who serves"
    if expected is None:
        return Finding("upstreams", False, "the live colour's upstream first, then the idle one",
                       " ".join(observed) or "none", f"{why}; the live colour is unknown: {unknown}")
    return Finding(
        "upstreams",
        [upstream_key(d) for d in observed] == [upstream_key(e) for e in expected],
        " ".join(expected) + " (in this order, the live colour first; localhost, 127.0.0.1 and [::1] are one host)",
        " ".join(observed) or "none",
        why,
    )


def _check_order_switch(site: SiteProxy) -> Finding:
    why = ("every config reload costs requests under traffic (the idle keep-alive connections it closes, the "
           "listening socket it replaces: bench/reload_bench.py), so the upstream order must change without one")
    expected = ("two reverse_proxy handlers, the first under a file matcher, the same upstreams in the other "
                "order: the order file on Caddy's host switches them per request")
    if site.switched is None:
        return Finding("order_switch", False, expected, "one reverse_proxy: reordering it is a config reload", why)
    a, b = site.switched.dials, site.default.dials
    mirrored = len(a) == 2 and [upstream_key(d) for d in a] == [upstream_key(d) for d in reversed(b)]
    observed = f"{' '.join(a)} while {site.order_file} exists, else {' '.join(b)}"
    return Finding("order_switch", mirrored, expected, observed + ("" if mirrored else " (not the two orders "
                   "of the same two upstreams)"), why)


def _check_policy(h: dict[str, Any]) -> Finding:
    policy = dict_at(h, "load_balancing", "selection_policy").get("policy")
    return Finding(
        "lb_policy",
        policy == "first",
        "first",
        str(policy) if policy else "absent (Caddy default: random)",
        "traffic must go to the first available upstream so the cutover moves all of it at once",
    )


def _check_health_uri(h: dict[str, Any]) -> Finding:
    active = dict_at(h, "health_checks", "active")
    uri = active.get("uri") or active.get("path")
    return Finding(
        "health_uri",
        uri == HEALTH_URI,
        HEALTH_URI,
        str(uri) if uri else "absent (no active health checks)",
        "active health checks must probe agave's /health",
    )


def _check_interval(h: dict[str, Any], max_interval: float) -> Finding:
    seconds, err = _duration(dict_at(h, "health_checks", "active"), "interval")
    effective = _CADDY_DEFAULT_INTERVAL if seconds is None else seconds
    observed = _fmt_seconds(seconds, f"absent (Caddy default: {_CADDY_DEFAULT_INTERVAL:g}s)") + err
    return Finding(
        "health_interval",
        0 < effective <= max_interval,
        f"<= {max_interval:g}s",
        observed,
        "an upstream that falls behind keeps receiving traffic until the next active check",
    )


def _check_body(h: dict[str, Any]) -> Finding:
    pattern = dict_at(h, "health_checks", "active").get("expect_body")
    expected = f"a regex matching {HEALTHY_BODY!r} and not {' or '.join(map(repr, UNHEALTHY_BODIES))} (^ok$)"
    why = "agave's /health answers HTTP 200 while behind: status alone routes to a node still catching up"
    if not pattern:
        return Finding("health_body", False, expected, "absent (any 2xx counts as healthy)", why)
    try:
        rx = re.compile(str(pattern))
    except re.error as exc:
        return Finding("health_body", False, expected, f"{pattern!r} (not a valid regex: {exc})", why)
    matched_ok = rx.search(HEALTHY_BODY) is not None
    matched_bad = [b for b in UNHEALTHY_BODIES if rx.search(b)]
    problems = ([] if matched_ok else [f"does not match {HEALTHY_BODY!r}"]) + [f"matches {b!r}" for b in matched_bad]
    observed = repr(pattern) + (f" ({'; '.join(problems)})" if problems else "")
    return Finding("health_body", not problems, expected, observed, why)


def _check_passive(h: dict[str, Any]) -> Finding:
    passive = dict_at(h, "health_checks", "passive")
    seconds, err = _duration(passive, "fail_duration")
    raw_max = passive.get("max_fails")
    max_fails = _CADDY_DEFAULT_MAX_FAILS if raw_max is None else raw_max
    ok = seconds is not None and seconds > 0 and isinstance(max_fails, int) and max_fails >= 1
    fd = _fmt_seconds(seconds, "absent") + err
    mf = f"{max_fails}" + (" (Caddy default)" if raw_max is None else "")
    return Finding(
        "fail_duration/max_fails",
        ok,
        "passive health checks on: fail_duration > 0, max_fails >= 1 (1 recommended)",
        f"fail_duration {fd}, max_fails {mf}" if passive else "absent (passive health checks off)",
        "without passive health checks, retries re-pick an upstream that just stopped until the next "
        "active check",
    )


def _check_retries(h: dict[str, Any]) -> Finding:
    lb = dict_at(h, "load_balancing")
    seconds, err = _duration(lb, "try_duration")
    interval, _ = _duration(lb, "try_interval")
    observed = _fmt_seconds(seconds, "absent (no retries)") + err
    if seconds:
        observed += f", lb_try_interval {_fmt_seconds(interval, 'default 250ms')}"
    return Finding(
        "lb_try_duration",
        seconds is not None and seconds > 0,
        "> 0 (e.g. 5s) with a short lb_try_interval",
        observed,
        "a request that hits a stopping upstream must be retried on the other one",
    )


def _allowed_methods(retry_match: Any) -> set[str] | None:
    """Methods retried after a connection was made (None: any method). Sets with other matchers
    (path, header, ...) only retry some requests of a method, so they do not count."""
    allowed: set[str] = set()
    if not isinstance(retry_match, list):
        return allowed
    for matcher_set in retry_match:
        if not isinstance(matcher_set, dict) or set(matcher_set) - {"method"}:
            continue
        methods = matcher_set.get("method")
        if not methods:
            return None
        allowed |= {str(m).upper() for m in methods}
    return allowed


def _check_retry_match(h: dict[str, Any]) -> Finding:
    retry_match = dict_at(h, "load_balancing").get("retry_match")
    allowed = _allowed_methods(retry_match)
    missing = [] if allowed is None else [m for m in ("GET", "POST") if m not in allowed]
    if not retry_match:
        observed = "absent (Caddy retries only GET once a connection was made)"
    else:
        observed = f"{retry_match}" + (f" (does not retry {', '.join(missing)})" if missing else "")
    return Finding(
        "lb_retry_match",
        not missing,
        "retries GET and POST (method GET POST)",
        observed,
        "JSON-RPC is POST, and Caddy does not retry a POST once connected unless lb_retry_match allows it; "
        "safe for Solana RPC: reads are idempotent, transactions dedupe by signature",
    )


def _check_buffers(h: dict[str, Any]) -> Finding:
    raw = h.get("request_buffers")
    size = raw if isinstance(raw, int) and not isinstance(raw, bool) else 0
    return Finding(
        "request_buffers",
        size > 0 or size == -1,
        "> 0 (e.g. 64k) since POST is retried",
        f"{raw} bytes" if raw is not None else "absent (request bodies are streamed, not buffered)",
        "a retried POST must replay its body: without buffers retried POSTs hang and exhaust the pool",
    )


def _check_header(h: dict[str, Any], header: str) -> Finding:
    response = dict_at(h, "headers", "response")
    values: list[str] = []
    for op in ("set", "add"):
        for name, vals in dict_at(response, op).items():
            if name.lower() == header.lower() and isinstance(vals, list):
                values += [str(v) for v in vals]
    return Finding(
        f"header_down {header}",
        any(UPSTREAM_PLACEHOLDER in v for v in values),
        f"{header} {UPSTREAM_PLACEHOLDER}",
        " ".join(values) if values else f"absent (no {header} response header)",
        "Caddy's admin API reports no upstream health: the response header is how clients see who served",
    )


# --------------------------------------------------------------------------- entry points


def audit(
    config: dict[str, Any],
    *,
    expected_upstreams: Sequence[str] | None,
    site_url: str | None = None,
    served_order: Sequence[str] | None = None,
    upstream_header: str = "X-Upstream",
    max_health_interval: float = DEFAULT_MAX_HEALTH_INTERVAL,
    live_unknown: str = "",
) -> AuditReport:
    """Audit Caddy's JSON ``config``: one :class:`Finding` per required setting, on what serves ``site_url``
    (the env's site; without it, the config's only reverse_proxy): one reverse_proxy, or the order switch's
    two, each of which must have every setting.

    ``expected_upstreams`` is the order the live colour needs (live first), from real state; None when the
    live colour could not be told (``live_unknown`` says why): the upstreams finding then fails.
    ``served_order`` is the order serving now, which for an order switch depends on its file on Caddy's host
    (the ingress adapter reads it); without it, the default handler's order."""
    found = find_site_proxies(config, site_url) if site_url else find_reverse_proxies(config)
    site = site_proxy_of(found)
    if site is None:
        every = ", ".join(p.config_path for p in find_reverse_proxies(config)) or "none"
        return AuditReport(
            (
                Finding(
                    "reverse_proxy",
                    False,
                    f"one reverse_proxy serving {site_url or 'the ingress'} (or an order switch: two, the first "
                    "under a file matcher)",
                    f"{len(found)} (every reverse_proxy in the config: {every})",
                    "the ingress must have one load-balanced proxy over both colours for the env's site",
                ),
            )
        )
    served = list(served_order) if served_order is not None else site.default.dials

    def each(check: Callable[[dict[str, Any]], Finding]) -> Finding:
        return _merged([check(p.handler) for p in site.handlers], site)

    findings = (
        _check_upstreams(served, expected_upstreams, live_unknown),
        _check_order_switch(site),
        each(_check_policy),
        each(_check_health_uri),
        each(lambda h: _check_interval(h, max_health_interval)),
        each(_check_body),
        each(_check_passive),
        each(_check_retries),
        each(_check_retry_match),
        each(_check_buffers),
        each(lambda h: _check_header(h, upstream_header)),
    )
    return AuditReport(findings, handler_path=", ".join(p.config_path for p in site.handlers))


def _merged(per_handler: list[Finding], site: SiteProxy) -> Finding:
    """One finding for a setting every handler of the site must have: ok only if each has it."""
    first = per_handler[0]
    if len(per_handler) == 1 or len({f.observed for f in per_handler}) == 1:
        return Finding(first.setting, all(f.ok for f in per_handler), first.expected, first.observed, first.why)
    names = ("while the order file exists", "otherwise")
    observed = "; ".join(f"{n}: {f.observed}" for n, f in zip(names, per_handler, strict=True))
    return Finding(first.setting, all(f.ok for f in per_handler), first.expected, observed, first.why)


def require_audit(
    config: dict[str, Any],
    *,
    expected_upstreams: Sequence[str] | None,
    site_url: str | None = None,
    served_order: Sequence[str] | None = None,
    upstream_header: str = "X-Upstream",
    max_health_interval: float = DEFAULT_MAX_HEALTH_INTERVAL,
    **ctx: Any,
) -> AuditReport:
    """:func:`audit`, then raise :class:`CheckFailed` listing every failed setting; returns the report."""
    report = audit(
        config,
        expected_upstreams=expected_upstreams,
        site_url=site_url,
        served_order=served_order,
        upstream_header=upstream_header,
        max_health_interval=max_health_interval,
    )
    report.raise_for_failures(**ctx)
    return report


@check(negative=("tests/caddy/test_caddy_audit.py::test_seed_config_fails_naming_each_trap",
                 "tests/caddy/test_caddy_audit.py::test_removing_one_setting_fails_exactly_that_setting",
                 "tests/caddy/test_caddy_audit.py::test_a_setting_the_audit_does_not_know_is_refused"))
def setting(report: AuditReport, name: str) -> Verdict:
    """One required Caddy setting, as the audit of the live config found it (the finding is the verdict; a
    setting the audit does not know is refused, not passed)."""
    chosen = report.select(name)
    problems = [f"{f.setting}: expected {f.expected}; observed {f.observed}" for f in chosen if not f.ok]
    f = chosen[0]
    return verdict(f"{f.setting}: {f.why}", expected=f.expected, observed=f.observed, problems=problems,
                   obj=report.handler_path or "caddy reverse_proxy")

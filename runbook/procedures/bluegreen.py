"""Blue-green facts and observations shared by the agave upgrade, its rollbacks and the features.

Which colour is live is read from real state (the ingress's X-Upstream header), never assumed; the
facts derived at the start of a run are kept in its journal so a resumed run sees the same colours.

HTTP goes through the RPC adapter (:class:`~runbook.adapters.rpc.RpcClient`): given ``adapters``
(:class:`~runbook.adapters.factory.Adapters`), the ingress through ``adapters.public_rpc()`` and a colour
through ``adapters.rpc(colour)``; without, a client of the env's URLs (the callers that predate it).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from typing import Any

from runbook.adapters.reference import ReferenceTip
from runbook.adapters.rpc import RpcClient
from runbook.env import HOST_LOOPBACK, Env
from runbook.errors import AdapterError
from runbook.wait import wait_for

COLOURS = ("green", "blue")


def other(colour: str) -> str:
    return "blue" if colour == "green" else "green"


def upstream_address(env: Env, colour: str) -> str:
    """The colour's address as Caddy dials it, on their host (host-side, never the runner's)."""
    return f"{HOST_LOOPBACK}:{env.deployments.colour(colour).rpc_port}"


def upstream_order_for(env: Env, live: str) -> list[str]:
    """The ingress's upstream order when ``live`` serves: the live colour first (under lb_policy first the
    idle one gets traffic only if the live one fails)."""
    return [upstream_address(env, live), upstream_address(env, other(live))]


def colour_of_upstream(env: Env, upstream: str | None) -> str | None:
    if not upstream:
        return None
    port = upstream.rsplit(":", 1)[-1]
    for colour in COLOURS:
        if str(env.deployments.colour(colour).rpc_port) == port:
            return colour
    return None


def served_by(env: Env, *, timeout: float = 3.0, adapters: Any = None) -> str | None:
    """The colour that served one ``GET /health`` through the public ingress (from X-Upstream), through
    ``adapters.public_rpc()`` when given. No answer raises :class:`AdapterError`."""
    client = adapters.public_rpc(timeout=timeout) if adapters is not None else RpcClient(url=env.ingress.url,
                                                                                          timeout=timeout)
    with client as ingress:
        answer = ingress.health()
    return colour_of_upstream(env, answer.header(env.ingress.upstream_header))


def live_colour(env: Env, workloads: Any, *, adapters: Any = None) -> tuple[str | None, str]:
    """The live colour and how it was known: from X-Upstream, else the only colour with pods (an ingress
    without the header, like the seed's, cannot say which upstream served)."""
    served = served_by(env, adapters=adapters)
    if served is not None:
        return served, f"{env.ingress.upstream_header} header"
    running = [c for c in COLOURS if workloads.pods(env.deployments.colour(c).name)]
    if len(running) == 1:
        return running[0], f"no {env.ingress.upstream_header} header: the only colour with pods"
    return None, f"no {env.ingress.upstream_header} header and {len(running)} colours with pods"


def wait_ingress_remembers_no_failure(env: Env, ingress: Any, colour: str, *, timeout: float) -> float:
    """Wait until Caddy remembers no failure of ``colour``'s upstream (``fails`` in its admin API). Under
    passive health checks an upstream with ``max_fails`` recent failures is out for ``fail_duration``:
    stopping the other colour then leaves no available upstream, and every request fails until Caddy
    forgets (seen on the testbed when an upgrade's shift came seconds after a rollback's shift back had
    failed requests onto this colour). Returns the seconds waited."""
    from runbook.adapters.caddy_config import upstream_key

    address = upstream_key(upstream_address(env, colour))
    start = time.monotonic()
    wait_for(lambda: sum(u.fails for u in ingress.upstreams() if upstream_key(u.address) == address),
             lambda fails: fails == 0, timeout=timeout, interval=0.2,
             what=f"Caddy to remember no failed request to {colour} ({address}; passive health, fail_duration)",
             env=env.name)
    return time.monotonic() - start


def wait_ingress_sees_ok(env: Env, ingress: Any, colour: str, *, timeout: float, url: str | None = None) -> float:
    """Wait until ``colour`` has answered `ok` without a break for long enough that Caddy's active health
    checker has seen it too (two intervals plus the check's timeout). Caddy's admin API does not say which
    upstreams it believes healthy (design trap 4), so this is read from the checker's own schedule; stopping
    the other colour earlier leaves Caddy with no upstream it believes available. Returns the hold used."""
    from runbook.checks.caddy_audit import go_duration

    active = (ingress.proxy().handler.get("health_checks") or {}).get("active") or {}
    hold = 2 * (go_duration(active.get("interval")) or 30.0) + (go_duration(active.get("timeout")) or 5.0)
    since: list[float] = []

    def steady_ok() -> float:
        now = time.monotonic()
        if observe_colour(env, colour, url=url).health != "ok":
            since.clear()
            return 0.0
        if not since:
            since.append(now)
        return now - since[0]

    wait_for(steady_ok, lambda held: held >= hold, timeout=timeout + hold, interval=0.2,
             what=f"{colour} to answer ok for {hold:.1f}s, long enough for Caddy's active health check",
             env=env.name, obj=colour)
    return hold


def image_with_tag(image: str, version: str) -> str:
    """``laconicnetwork/agave:v2.1.0`` + ``v2.2.1`` -> ``laconicnetwork/agave:v2.2.1``."""
    repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    tag = version if version.startswith("v") else f"v{version}"
    return f"{repo}:{tag}"


def bare_version(version: str) -> str:
    """The release a binary reports for an image tag: ``v2.2.1`` and ``v2.2.1-stuck`` -> ``2.2.1`` (a build
    suffix names the image, not the release; getVersion and --version report the release only)."""
    m = re.match(r"v?(\d+\.\d+\.\d+)(?:[-+].*)?$", version)
    if m:
        return m.group(1)
    return version[1:] if version.startswith("v") else version


@dataclass(frozen=True)
class NodeState:
    """One observation of a colour's validator against the cluster tip."""

    colour: str
    health: str  # ok | behind | unknown | error | down
    slot: int | None
    tip: int | None
    version: str | None
    tip_age: float | None = None  # seconds since the reference answer the tip comes from (estimated past it)
    tip_trusted: bool = False  # that answer fresh and the slot rate measured (ReferenceTip.read)

    @property
    def behind(self) -> int | None:
        return None if self.slot is None or self.tip is None else max(0, self.tip - self.slot)

    def as_dict(self) -> dict[str, Any]:
        return {"colour": self.colour, "health": self.health, "slot": self.slot, "tip": self.tip,
                "behind": self.behind, "version": self.version,
                "tip age (s)": None if self.tip_age is None else round(self.tip_age, 2)}


def _colour_client(env: Env, colour: str, url: str | None, adapters: Any) -> RpcClient:
    if url is None and adapters is not None:
        return adapters.rpc(colour, timeout=3.0)
    return RpcClient(url=url or env.rpc_url(colour), timeout=3.0)


def observe_colour(env: Env, colour: str, *, url: str | None = None, adapters: Any = None) -> NodeState:
    """Health body, slot, version of a colour (direct, not through the ingress); no cluster tip, so no call
    to the rate-limited reference (for waits on health alone). ``adapters``: through ``adapters.rpc(colour)``
    (the runner's way to the host: a tunnel when it is not on it); else ``url``, the colour's RPC as the
    runner reaches it; default the env's host-side URL."""
    health, slot, version = "down", None, None
    with _colour_client(env, colour, url, adapters) as node:
        try:
            h = node.health()
            health = h.verdict
            version = node.get_version().solana_core
            slot = node.get_slot()
        except AdapterError:
            pass
    return NodeState(colour, health, slot, None, version)


def observe_node(env: Env, colour: str, reference: ReferenceTip | None = None, *,
                 url: str | None = None, adapters: Any = None) -> NodeState:
    """:func:`observe_colour` and the cluster tip: from ``reference`` (polled at its own pace, estimated
    between answers), or without one from a single call to the env's references (``adapters.reference()``
    when given; one-off looks only)."""
    st = observe_colour(env, colour, url=url, adapters=adapters)
    if reference is None:
        with adapters.reference() if adapters is not None else ReferenceTip.for_env(env) as once:
            reading = once.read()
    else:
        reading = reference.read()
    if reading is None:
        return st
    return replace(st, tip=reading.slot, tip_age=round(reading.age, 3), tip_trusted=reading.trusted)



"""Change Caddy's upstream order at the least cost in requests (issue 9). Not zero: see below.

Every Caddy config change is a reload: the old HTTP server shuts down (Go's ``http.Server.Shutdown``),
closing its idle keep-alive client connections at once, and a request a client sends on one of them at
that instant is lost (``needed_retry``). Neither of Caddy's shutdown options helps: ``grace_period`` only
bounds the wait for *active* connections, and ``shutdown_delay`` applies only to listeners that close,
never on a reload (``caddyhttp.App.Stop``); upstreams cannot change without a reload, short of dynamic
upstreams, which active health checks (trap 1) do not cover.

What this does: the Caddyfile's drain rule (``deploy/caddy/Caddyfile.tmpl``) adds ``Connection: close``
to every response while ``ingress.drain_file`` exists on the env's host (a file Caddy checks per request,
so draining changes no config); after ``ingress.drain`` seconds (longer than the clients' keep-alive idle
expiry) no connection a client would reuse is open, and the reload closes none anyone is about to send on.
Clients then open a connection per request, which meets two other costs of a reload: Caddy listens with
SO_REUSEPORT, one socket per config, and the old socket's accept queue is reset when it closes unless the
host has ``net.ipv4.tcp_migrate_req=1`` (the testbed's node sets it; checked and reported here); and a
request in flight on the old server can still be closed without an answer.

Measured with ``bench/reload_bench.py`` and a bare-Caddy experiment at 150 req/s (lost / reloads): plain
reorder 5/20, 4/20, 8/30, 5/20 on the testbed and 13/40, 2/20 bare (needed_retry); drained 0/20, 6/30 on
the testbed, 4/20 bare (fresh connections reset); drained with tcp_migrate_req=1: 1/20 bare, 8/20 on the
testbed (conn_error on fresh connections). The drain is not a zero-cost procedure; none was found.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence

import httpx

from runbook.adapters.base import Host, Ingress
from runbook.adapters.ingress import same_upstreams
from runbook.env import Env
from runbook.errors import WaitTimeout
from runbook.testbed.caddy import drain_path
from runbook.wait import wait_for


def closes_connections(env: Env) -> bool:
    """Whether a response through the ingress now says ``Connection: close`` (the drain rule in effect)."""
    try:
        r = httpx.get(env.ingress.url + "/health", timeout=5.0, headers={"user-agent": "runbook-drain/1"})
    except httpx.HTTPError:
        return False
    return "close" in r.headers.get("connection", "").lower()


def migrates_queued_connections(host: Host) -> bool:
    """Whether the host (its node namespace on the testbed) moves a closing listener's queued connections."""
    ns = getattr(host, "netns", None)
    prefix = f"ip netns exec {shlex.quote(ns)} " if ns else ""
    r = host.run(prefix + "cat /proc/sys/net/ipv4/tcp_migrate_req", check=False)
    return r.ok and r.stdout.strip() == "1"


def drained_change(env: Env, host: Host, change: Callable[[], None], *, what: str,
                   progress: Callable[[str], None] = lambda _: None) -> float:
    """Drain keep-alive connections for ``ingress.drain`` seconds, run ``change`` (a config change), stop
    draining. When the ingress does not drain (a config without the rule) the change is made undrained, with
    a warning: the drain lowers the cost of a reload without making it zero (measured above), so refusing a
    cleanup step after the shift (and rolling the upgrade back) over it would cost more than it saves.
    Returns the seconds drained before the change (0: undrained)."""
    path = drain_path(env)
    quoted = shlex.quote(path)
    if not migrates_queued_connections(host):
        progress("warning: net.ipv4.tcp_migrate_req is not 1 where Caddy listens: connections queued on its old "
                 "listener are reset at the reload (set it on the host)")
    host.run(f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0] or '/')} && touch {quoted}")
    try:
        try:
            wait_for(lambda: closes_connections(env), lambda closing: closing, timeout=10.0, interval=0.1,
                     what=f"responses through {env.ingress.url} to say `Connection: close` while {path} exists",
                     env=env.name)
        except WaitTimeout as exc:
            progress(f"warning: the ingress does not drain keep-alive connections ({exc}): {what} is made "
                     "undrained, and costs the requests clients send on the connections it closes. Deploy the "
                     f"Caddyfile's drain rule (deploy/caddy/Caddyfile.tmpl) with drain_file {path}")
            change()
            return 0.0
        start = time.monotonic()
        progress(f"draining keep-alive connections for {env.ingress.drain:g}s before {what}")
        wait_for(lambda: time.monotonic() - start, lambda held: held >= env.ingress.drain,
                 timeout=env.ingress.drain + 10.0, interval=0.1,
                 what=f"{env.ingress.drain:g}s of draining before {what}", env=env.name)
        drained = time.monotonic() - start
        change()
        return drained
    finally:
        host.run(f"rm -f {quoted}")


def reorder(env: Env, ingress: Ingress, host: Host, order: Sequence[str], *,
            progress: Callable[[str], None] = lambda _: None) -> float | None:
    """Set Caddy's upstream order after a drain; None (nothing drained) when the order is already right."""
    if same_upstreams(ingress.upstream_order(), order):
        return None
    return drained_change(env, host, lambda: ingress.set_upstream_order(list(order)),
                          what=f"the upstream order change to {list(order)}", progress=progress)


def plan(env: Env, order: Sequence[str]) -> list[str]:
    path = drain_path(env)
    return [f"touch {path}   # drain: every response says Connection: close (the Caddyfile's drain rule)",
            f"wait {env.ingress.drain:g}s   # clients' keep-alive connections close; a reload then closes none in use",
            f"PATCH {env.ingress.admin}/config/<reverse_proxy>/upstreams   # order {list(order)} (a config reload)",
            f"rm -f {path}   # keep-alive again"]

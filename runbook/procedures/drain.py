"""Change Caddy's upstream order without losing a request (issue 9).

Every Caddy config change is a reload: the old HTTP server shuts down (Go's ``http.Server.Shutdown``),
closing its idle keep-alive client connections at once, and a request a client sends on one of them at
that instant is lost (``bench/reload_bench.py``: 5 of 3,151 requests over 20 reloads at 150 req/s, each
lost to a client that does not retry). Neither of Caddy's shutdown options helps: ``grace_period`` only
bounds the wait for *active* connections, and ``shutdown_delay`` applies only to listeners that close,
never on a reload (``caddyhttp.App.Stop``); upstreams cannot change without a reload, short of dynamic
upstreams, which active health checks (trap 1) do not cover.

What does cost nothing: the Caddyfile's drain rule (``deploy/caddy/Caddyfile.tmpl``) adds
``Connection: close`` to every response while ``ingress.drain_file`` exists on the env's host, a file
Caddy checks per request, so draining changes no config. Clients then close each connection after its
answer and open a new one for the next request, so once the drain has lasted longer than the clients'
keep-alive idle expiry (``ingress.drain``), no connection a client would reuse is open: the reload closes
nothing anyone is about to send on. Then the file is removed and keep-alive resumes.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence

import httpx

from runbook.adapters.base import Host, Ingress
from runbook.adapters.ingress import same_upstreams
from runbook.env import Env
from runbook.errors import PreconditionFailed
from runbook.testbed.caddy import drain_path
from runbook.wait import wait_for


def closes_connections(env: Env) -> bool:
    """Whether a response through the ingress now says ``Connection: close`` (the drain rule in effect)."""
    try:
        r = httpx.get(env.ingress.url + "/health", timeout=5.0, headers={"user-agent": "runbook-drain/1"})
    except httpx.HTTPError:
        return False
    return "close" in r.headers.get("connection", "").lower()


def drained_change(env: Env, host: Host, change: Callable[[], None], *, what: str,
                   progress: Callable[[str], None] = lambda _: None) -> float:
    """Drain keep-alive connections for ``ingress.drain`` seconds, run ``change`` (a config change), stop
    draining. Refuses, changing nothing, when the ingress does not drain (a config without the rule).
    Returns the seconds drained before the change."""
    path = drain_path(env)
    quoted = shlex.quote(path)
    host.run(f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0] or '/')} && touch {quoted}")
    try:
        try:
            wait_for(lambda: closes_connections(env), lambda closing: closing, timeout=10.0, interval=0.1,
                     what=f"responses through {env.ingress.url} to say `Connection: close` while {path} exists",
                     env=env.name)
        except Exception as exc:
            raise PreconditionFailed(
                f"refusing {what}: the ingress does not drain keep-alive connections ({exc}); a config change now "
                "would lose the requests clients send on the connections it closes. Deploy the Caddyfile's drain "
                f"rule (deploy/caddy/Caddyfile.tmpl) with drain_file {path}", env=env.name) from exc
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

"""The seed document's procedure 2, kept ONLY to show what the suite catches. Never run it in production.

It differs from ours exactly where the seed is wrong (design section 5): it waits for blue's /health to
return HTTP 200 (`curl -sf`), which agave does while still `behind` (trap 1); it stops green without
checking that the ingress retries (trap 3), before it starts or at the shift; and it never touches
Caddy's upstream order.
"""

from __future__ import annotations

import dataclasses
import shlex

from runbook.errors import AdapterError
from runbook.procedures import agave_upgrade as up
from runbook.procedures.facts import UpgradeFacts
from runbook.procedures.framework import Context, Procedure, Step
from runbook.wait import wait_for


def wait_http_200(ctx: Context[UpgradeFacts]) -> None:
    url = ctx.adapters.rpc_url(ctx.facts.idle) + "/health"

    def status() -> int:
        with ctx.adapters.rpc(ctx.facts.idle) as node:
            return node.health().status_code

    wait_for(status, lambda s: s == 200, timeout=ctx.env.timeouts.healthy, interval=0.5, what=f"curl -sf {url}",
             tolerate=(AdapterError,))
    ctx.mark(f"{ctx.facts.idle} healthy", "HTTP 200 (status only, as the seed checks)")


_ours = {s.name: s for s in up.PROCEDURE.steps}


def _preflight_without_identity(ctx: Context[UpgradeFacts]) -> None:
    up.require_ingress_retries(ctx, doing="start the upgrade")
    up.preflight_storage_and_idle(ctx)


# Ours with one check removed: the idle colour's own identity (design trap 9). For the negative test that shows
# the trap is real on the testbed: a blue under green's key makes green, the colour serving, exit.
IDENTITY_UNCHECKED = dataclasses.replace(
    up.PROCEDURE, name="upgrade-identity-unchecked",
    summary="our upgrade without the identity check (for negative tests only)",
    steps=(dataclasses.replace(_ours["snapshot"], precondition=_preflight_without_identity),
           *up.PROCEDURE.steps[1:]))

def _write_into_old_data(ctx: Context[UpgradeFacts]) -> None:
    """What no step of ours may do: write into the old colour's data once it stopped (a copy pointed the wrong
    way, a cleanup that 'tidies' the old ledger)."""
    ledger = f"{ctx.adapters.storage.path(up._live(ctx).data).rstrip('/')}/ledger/runbook-was-here"
    ctx.adapters.host.run(f"echo tidied > {shlex.quote(ledger)}", root=True)


# Ours with one step added after the cleanup that writes into the old colour's data: the negative test of
# "the old colour's data is untouched" (proven by the storage's facts, not a hash).
WRITES_OLD_DATA = dataclasses.replace(
    up.PROCEDURE, name="upgrade-writes-old-data",
    summary="our upgrade plus a write into the old colour's data (for negative tests only)",
    steps=(*up.PROCEDURE.steps,
           Step("tidy-old", "write into the old colour's data", _write_into_old_data, lambda ctx: None)))

PROCEDURE = Procedure(
    facts=UpgradeFacts,
    name="seed-upgrade",
    summary="the seed's blue-green upgrade (for negative tests only)",
    prepare=up.prepare,
    steady_state=up.live_serving,
    steps=(
        # the seed checks nothing before it starts: our snapshot step without its preflight
        dataclasses.replace(_ours["snapshot"], precondition=None),
        _ours["clone"], _ours["copy-accounts"], _ours["deploy-idle"],
        Step("catch-up", "wait until blue's /health returns HTTP 200", lambda ctx: None, wait_http_200),
        Step("shift", "stop green", up.stop_live, lambda ctx: None, is_done=up.shifted, rollback=up.restart_live),
    ),
)

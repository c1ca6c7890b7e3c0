"""What ``runbook plan`` shows of the agave upgrade and of its rollback after cleanup: per step the checks,
the action, the verification and the rollback, as commands and API calls on the env (nothing is run).

The facts (live and idle colour, images, the snapshot) are the ones :func:`agave_upgrade.prepare` derives in
plan mode: the live colour assumed (``--live``), images and the run id as placeholders."""

from __future__ import annotations

import shlex
from typing import Any

from runbook.env import Env
from runbook.procedures import bluegreen as bg
from runbook.procedures.facts import UpgradeFacts
from runbook.procedures.framework import Context
from runbook.procedures.planning import RUN_ID, Planner, PlanRequest, kubectl, on_host, selector

OLD = "<the version before the upgrade>"
RETRY = "health_body, fail_duration/max_fails, lb_try_duration, lb_retry_match, request_buffers"


def _dep(ctx: Context[UpgradeFacts], which: str) -> Any:
    return ctx.env.deployments.colour(ctx.facts.colour(which))


def snapshot(ctx: Context[UpgradeFacts]) -> str:
    return f"{_dep(ctx, 'live').data}@{ctx.facts.snapshot}"


def storage(ctx: Context[UpgradeFacts], op: str, *args: str, **options: bool) -> list[str]:
    return on_host(ctx.env, list(ctx.adapters.storage.plan(op, *args, **options)))


def _secs(seconds: float) -> str:
    """A duration as kubectl's --timeout takes it: 6h, 10m, 90s."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _order(addresses: list[str]) -> str:
    return ", ".join(addresses)


def _proxy(env: Env) -> str:
    return f"the reverse_proxy serving {env.ingress.url}"


def audit_retries(ctx: Context[UpgradeFacts]) -> str:
    return (f"GET {ctx.env.ingress.admin}/config/   # {_proxy(ctx.env)}: {RETRY} set (design trap 3), and the "
            "order switch (two reverse_proxy orders picked by a file: reordering needs no config reload)")


def create_deployment(ctx: Context[UpgradeFacts], which: str, image: str) -> str:
    """The idle colour: derived from the live colour's object saved in the journal (runbook/procedures/derive.py);
    the live colour (a rollback): that saved object, exactly."""
    dep, env = _dep(ctx, which), ctx.env
    live = _dep(ctx, "live")
    if which == "live":
        return (f"{kubectl(env)} create -f -   # Deployment {dep.name} exactly as saved in the journal before the "
                f"upgrade (image {image})")
    ports = f"--rpc-port {dep.rpc_port}" + (f", --gossip-port {dep.gossip_port}" if dep.gossip_port else "") + (
        f", --dynamic-port-range {dep.dynamic_port_range}" if dep.dynamic_port_range else "")
    ident = f", identity {dep.identity}" if dep.identity else ""
    return (f"{kubectl(env)} create -f -   # replace if it exists: Deployment {dep.name} = {live.name}'s saved live "
            f"object with only these changed: name, colour label {ctx.facts.colour(which)}, {ports}, hostPaths under "
            f"<mountpoint of {live.data}> -> <mountpoint of {dep.data}>, accounts {dep.accounts}{ident}, "
            f"image {image}, sidecar {ctx.facts.sidecar_image}")


def save_live_object(ctx: Context[UpgradeFacts]) -> str:
    dep = _dep(ctx, "live")
    return (f"{kubectl(ctx.env)} get deployment {dep.name} -o json   # saved in the journal and the evidence before "
            "anything changes: the idle colour is derived from it, a rollback re-creates it exactly")


def delete_deployment(ctx: Context[UpgradeFacts], which: str, why: str) -> str:
    dep = _dep(ctx, which)
    return (f"{kubectl(ctx.env)} delete deployment {dep.name} --cascade=foreground --wait --timeout="
            f"{_secs(ctx.env.timeouts.rollout)}   # {why}")


def rollout(ctx: Context[UpgradeFacts], which: str) -> str:
    return (f"{kubectl(ctx.env)} rollout status deployment/{_dep(ctx, which).name} --timeout="
            f"{_secs(ctx.env.timeouts.rollout)}   # its pod runs, every container ready")


def set_order(ctx: Context[UpgradeFacts], first: str) -> list[str]:
    """The upstream order as the ingress adapter switches it: the order file on Caddy's host, no reload."""
    from runbook.testbed.caddy import order_path

    env = ctx.env
    order = bg.upstream_order_for(env, ctx.facts.colour(first))
    path = shlex.quote(order_path(env))
    switch = (f"mkdir -p {shlex.quote(order_path(env).rsplit('/', 1)[0] or '/')} && touch {path}"
              if ctx.facts.colour(first) == "blue" else f"rm -f {path}")
    return [f"GET {env.ingress.admin}/config/   # {_proxy(env)}: the order switch's two reverse_proxy handlers "
            "(blue first while the order file exists, else green first)",
            *on_host(env, [f"{switch}   # upstream order {_order(order)}: Caddy checks the file per request, "
                           "no config reload, no connection closed"])]


def served_by(ctx: Context[UpgradeFacts], which: str) -> str:
    env = ctx.env
    return (f"poll GET {env.ingress.url}/health until {env.ingress.upstream_header}: "
            f"{bg.upstream_address(env, ctx.facts.colour(which))} ({ctx.facts.colour(which)}), deadline "
            f"{_secs(env.timeouts.healthy)}")


def health_ok(ctx: Context[UpgradeFacts], which: str, *, deadline: float) -> str:
    return (f"poll GET {ctx.env.rpc_url(ctx.facts.colour(which))}/health until the body is `ok` "
            f"({ctx.facts.colour(which)}), deadline {_secs(deadline)}")


def held_ok(ctx: Context[UpgradeFacts], which: str) -> str:
    env, colour = ctx.env, ctx.facts.colour(which)
    return (f"poll GET {env.ingress.admin}/reverse_proxy/upstreams until `fails` of "
            f"{bg.upstream_address(env, colour)} is 0 (Caddy remembers no failed request to "
            f"{colour}: else it is out for fail_duration, and stopping the other colour leaves none), "
            f"deadline {_secs(env.timeouts.healthy)}; then "
            f"poll GET {env.rpc_url(colour)}/health until the body has been `ok` for 2 "
            f"active health-check intervals + its timeout ({colour}; Caddy's checker has seen it healthy), "
            f"deadline {_secs(ctx.env.timeouts.healthy)} + that hold")


# ------------------------------------------------------------------------------------------- the upgrade
def plan_preflight(ctx: Context[UpgradeFacts]) -> list[str]:
    idle = _dep(ctx, "idle")
    return [save_live_object(ctx), audit_retries(ctx),
            f"{kubectl(ctx.env)} get pods -l {selector(ctx.env, ctx.facts.idle)}   # {idle.name}: no pod, or a "
            f"resumed run's pod on {ctx.facts.target_image}",
            f"# the storage has no {idle.data}, or only this run's clone (an earlier upgrade's kept data stops "
            "the run here)", *own_identity(ctx), *free_space(ctx)]


def own_identity(ctx: Context[UpgradeFacts]) -> list[str]:
    live, idle = _dep(ctx, "live"), _dep(ctx, "idle")
    if not (live.identity and idle.identity):
        return []
    return [*on_host(ctx.env, [f"sha256sum {live.identity} {idle.identity}"]),
            f"# both present, two different keys (digests compared, never shown): a {idle.name} under "
            f"{live.name}'s key would make {live.name} exit"]


def free_space(ctx: Context[UpgradeFacts]) -> list[str]:
    live = _dep(ctx, "live").data
    return [*storage(ctx, "free_space", live), f"# refused unless available >= max({ctx.env.storage.min_free_mb} MiB, "
            f"used/10) of {live}"]


def _snapshot_target(ctx: Context[UpgradeFacts]) -> tuple[str, bool]:
    root = ctx.env.storage.snapshot_root
    return (root, True) if root else (_dep(ctx, "live").data, False)


def plan_snapshot(ctx: Context[UpgradeFacts]) -> list[str]:
    target, recursive = _snapshot_target(ctx)
    return storage(ctx, "snapshot", target, ctx.facts.snapshot, recursive=recursive)


def plan_drop_snapshot(ctx: Context[UpgradeFacts]) -> list[str]:
    target, recursive = _snapshot_target(ctx)
    return storage(ctx, "destroy", f"{target}@{ctx.facts.snapshot}", recursive=recursive)


def plan_clone(ctx: Context[UpgradeFacts]) -> list[str]:
    idle = _dep(ctx, "idle")
    lines = storage(ctx, "clone", snapshot(ctx), idle.data)
    if idle.mount:
        lines += storage(ctx, "mount", idle.data, idle.mount)
    return lines


def unmount_destroy(ctx: Context[UpgradeFacts], which: str) -> list[str]:
    dep = _dep(ctx, which)
    return [*(storage(ctx, "unmount", dep.data) if dep.mount else []), *storage(ctx, "destroy", dep.data,
                                                                                 recursive=True)]


def plan_verify_snapshot(ctx: Context[UpgradeFacts]) -> list[str]:
    return [f"# the storage lists {snapshot(ctx)}"]


def plan_verify_clone(ctx: Context[UpgradeFacts]) -> list[str]:
    return [f"# the storage lists {_dep(ctx, 'idle').data}, a clone whose origin is {snapshot(ctx)}"]


def plan_deploy(ctx: Context[UpgradeFacts]) -> list[str]:
    return [create_deployment(ctx, "idle", ctx.facts.target_image)]



def plan_shift_check(ctx: Context[UpgradeFacts]) -> list[str]:
    idle = ctx.facts.idle
    return [audit_retries(ctx), f"GET {ctx.env.rpc_url(idle)}/health   # `ok` ({idle})",
            held_ok(ctx, "idle")]


def plan_shift(ctx: Context[UpgradeFacts]) -> list[str]:
    return [delete_deployment(ctx, "live", f"graceful (SIGTERM); Caddy retries its requests onto {ctx.facts.idle}")]


def plan_shift_verify(ctx: Context[UpgradeFacts]) -> list[str]:
    idle = bg.upstream_address(ctx.env, ctx.facts.idle)
    return [served_by(ctx, "idle"), f"GET {ctx.env.ingress.url}/health 20 times   # every answer from {idle}"]


def plan_restart_live(ctx: Context[UpgradeFacts]) -> list[str]:
    return [create_deployment(ctx, "live", ctx.facts.live_image), rollout(ctx, "live"),
            health_ok(ctx, "live", deadline=ctx.env.timeouts.catch_up)]


def plan_cleanup_verify(ctx: Context[UpgradeFacts]) -> list[str]:
    order = bg.upstream_order_for(ctx.env, ctx.facts.idle)
    return [_order_serving(ctx, order),
            *plan_shift_verify(ctx)]


def plan_retire(ctx: Context[UpgradeFacts]) -> list[str]:
    live, idle = _dep(ctx, "live"), _dep(ctx, "idle")
    if ctx.params.get("cleanup", "keep") != "destroy":
        return [f"# nothing: {live.data} and {snapshot(ctx)} stay, the rollback point (--cleanup=keep; "
                "--cleanup=destroy would destroy them)"]
    from runbook.procedures import accounts

    return [*storage(ctx, "promote", idle.data), *unmount_destroy(ctx, "live"),
            *storage(ctx, "destroy", f"{idle.data}@{ctx.facts.snapshot}"), *accounts.plan_remove(ctx, old=True)]


def plan_retire_verify(ctx: Context[UpgradeFacts]) -> list[str]:
    live = _dep(ctx, "live").data
    if ctx.params.get("cleanup", "keep") != "destroy":
        return [f"# the storage still lists {live}"]
    return [f"# the storage no longer lists {live}"]


def plan_retire_rollback(ctx: Context[UpgradeFacts]) -> list[str]:
    if ctx.params.get("cleanup", "keep") != "destroy":
        return ["# nothing was changed"]
    return ["# none: the old data and the snapshot are destroyed; rolling back to them is no longer possible"]


def upgrade_header(env: Env, req: PlanRequest, ctx: Context[UpgradeFacts]) -> tuple[list[str], list[str], list[str]]:
    f, live, idle = ctx.facts, _dep(ctx, "live"), _dep(ctx, "idle")
    if req.cleanup == "destroy":
        confirm = (f"; on a production env confirmed separately: --confirm-destroy={live.data}, or typed at "
                   "the prompt" if env.production else "")
        cleanup = [f"  --cleanup=destroy         at the end, destroy {live.data} and {snapshot(ctx)}: rolling "
                   f"back to the old data is no longer possible{confirm}"]
    else:
        cleanup = [f"  --cleanup=keep            keep {live.data} and {snapshot(ctx)}, the rollback point "
                   "(the default; --cleanup=destroy destroys them)"]
    params = [f"  --target-version={f.target_version}   {f.idle} runs {f.target_image} (the live image's "
              "repository, this tag)", *cleanup]
    assumed = [f"  live colour   {f.live} (--live; a run reads it from the {env.ingress.upstream_header} header of "
               f"GET {env.ingress.url}/health): {live.name}, port {live.rpc_port}, data {live.data}",
               f"  idle colour   {f.idle}: {idle.name}, port {idle.rpc_port}, data {idle.data}, accounts "
               f"{idle.accounts}",
               f"  images        {f.live_image}; {f.sidecar_image} (a run reads both from {live.name}'s pod)",
               f"  run id        {RUN_ID}: this run's id (UTC time and 4 hex digits), chosen when it starts, kept "
               "in its journal; the snapshot is named after it"]
    on_failure = ["  the `rollback:` lines of the steps that acted run in reverse order, then "
                  f"{f.live} must serve again; an interrupted run resumes (`runbook run agave-upgrade` with the "
                  f"same parameters) or is rolled back (`runbook rollback agave-upgrade --env={env.name}`)",
                  "  after the last step, `runbook rollback agave-upgrade` runs the steps of `runbook plan "
                  "agave-rollback` (refused after --cleanup=destroy)"]
    return params, assumed, on_failure


def upgrade_facts(ctx: Context[UpgradeFacts]) -> None:
    """Nothing to add: agave_upgrade.prepare derives the facts in plan mode."""


UPGRADE = Planner(facts=upgrade_facts, header=upgrade_header)


# ------------------------------------------------------------------------------------------- the rollback
def rollback_facts(ctx: Context[UpgradeFacts]) -> None:
    """The upgrade's facts, as its journal would hold them: ``--live`` is the colour serving now (the
    upgrade's new colour, blue unless said), so the old colour (``live`` in the facts) is the other one."""
    from runbook.procedures import agave_upgrade as up

    serving = str(ctx.params.get("live") or "blue")
    up.prepare(Context(adapters=ctx.adapters, params={**ctx.params, "live": bg.other(serving)}, facts=ctx.facts))
    if not ctx.env.deployments.colour(ctx.facts.live).image:
        ctx.facts.live_image = f"{str(ctx.facts.live_image).rsplit(':', 1)[0]}:{OLD}"
    ctx.facts.sidecar_image = "<the sidecar image the upgrade's journal recorded>"


def plan_old_gone(ctx: Context[UpgradeFacts]) -> list[str]:
    return [f"{kubectl(ctx.env)} get pods -l {selector(ctx.env, ctx.facts.live)}   # {_dep(ctx, 'live').name}: "
            "no pod (its data cannot be rolled back under it)"]


def plan_restore_data(ctx: Context[UpgradeFacts]) -> list[str]:
    live = _dep(ctx, "live")
    if not live.mount:
        return storage(ctx, "rollback", snapshot(ctx))
    return [*storage(ctx, "unmount", live.data), *storage(ctx, "rollback", snapshot(ctx)),
            *storage(ctx, "mount", live.data, live.mount)]  # never under its mounted filesystem


def plan_redeploy_old(ctx: Context[UpgradeFacts]) -> list[str]:
    return [create_deployment(ctx, "live", ctx.facts.live_image)]


def plan_redeploy_verify(ctx: Context[UpgradeFacts]) -> list[str]:
    from runbook.procedures import catch_up

    return [rollout(ctx, "live"), *catch_up.plan_lines(ctx.env, ctx.facts.live, OLD)]


def plan_shift_back_check(ctx: Context[UpgradeFacts]) -> list[str]:
    return [audit_retries(ctx), held_ok(ctx, "live")]


def plan_shift_back(ctx: Context[UpgradeFacts]) -> list[str]:
    return [delete_deployment(ctx, "idle", f"graceful (SIGTERM); Caddy retries its requests onto {ctx.facts.live}")]


def plan_restore_order_verify(ctx: Context[UpgradeFacts]) -> list[str]:
    order = bg.upstream_order_for(ctx.env, ctx.facts.live)
    return [_order_serving(ctx, order)]


def _order_serving(ctx: Context[UpgradeFacts], order: list[str]) -> str:
    from runbook.testbed.caddy import order_path

    blue_first = order == bg.upstream_order_for(ctx.env, "blue")
    test = f"test {'-e' if blue_first else '! -e'} {shlex.quote(order_path(ctx.env))}"
    return on_host(ctx.env, [f"{test}   # the order serving is {_order(order)}"])[0]


def rollback_header(env: Env, req: PlanRequest, ctx: Context[UpgradeFacts]) -> tuple[list[str], list[str], list[str]]:
    f, live, idle = ctx.facts, _dep(ctx, "live"), _dep(ctx, "idle")
    params = [f"  --target-version={f.target_version}   the version the upgrade installed (it names the "
              "upgrade's snapshot)"]
    assumed = [f"  the upgrade   finished (its journal says done): {f.idle} serves (--live={f.idle}) on "
               f"{f.target_image}, {f.live} is stopped; a run reads all of this from the upgrade's journal",
               f"  old colour    {f.live}: {live.name}, port {live.rpc_port}, data {live.data}, image "
               f"{f.live_image}",
               f"  new colour    {f.idle}: {idle.name}, port {idle.rpc_port}, data {idle.data} (the clone)",
               f"  run id        {RUN_ID}: the upgrade's, from its journal (its snapshot {snapshot(ctx)})",
               "  the old data  kept at cleanup: after --cleanup=destroy the rollback is refused (nothing to "
               "roll back to)"]
    on_failure = ["  none of these steps is rolled back in turn: a failure stops, loudly; the journal "
                  "(agave-rollback) lets `runbook rollback agave-upgrade` resume where it stopped",
                  "  (an upgrade that had not finished is rolled back instead by the `rollback:` lines of "
                  "`runbook plan agave-upgrade`, for the steps that acted, in reverse order)"]
    return params, assumed, on_failure


ROLLBACK = Planner(facts=rollback_facts, header=rollback_header)

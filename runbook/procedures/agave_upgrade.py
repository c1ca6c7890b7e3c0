"""Procedure 2: the agave version upgrade, blue-green, with zero RPC downtime.

Phases (design section 6; the seed's bugs corrected, see design section 5):
  prepare   snapshot the live ledger (rollback point), clone it for the idle colour (copy-on-write), copy
            the accounts (not on the dataset; progress and throughput shown), deploy the idle colour on
            its own port from the clone with the target version;
  catch-up  wait until the idle colour answers `ok`, is within `catch_up_distance` of the cluster tip,
            and runs the target version (progress and ETA shown);
  shift     only with the ingress retrying (trap 3) and the idle colour answering `ok`: stop the live
            colour gracefully; Caddy's passive health checks and retries move every request to the idle
            colour (adding a healthy upstream alone shifts nothing under `lb_policy first`: trap 2);
  cleanup   put the new live colour first in Caddy's upstream order so the old colour, if it ever comes
            back, does not take the traffic again (a config change the prober counts).
"""

from __future__ import annotations

import shlex
from typing import Any

from runbook.adapters.caddy_config import same_upstreams
from runbook.checks import upgrade_verify as uv
from runbook.checks.caddy_audit import audit
from runbook.checks.workloads import running_pod
from runbook.errors import PreconditionFailed
from runbook.images import same_image
from runbook.manifests import APP_CONTAINER, render_deployment
from runbook.procedures import accounts, catch_up, derive
from runbook.procedures import agave_plan as pl
from runbook.procedures import bluegreen as bg
from runbook.procedures.agave_data import (  # noqa: F401  (re-exported: the rollback and the steps use them)
    _dataset,
    _idle,
    _live,
    _snapshot,
    clone_exists,
    clone_ready,
    destroy_clone,
    destroy_old_chosen,
    drop_snapshot,
    make_clone,
    old_retired,
    require_destroy_confirmed,
    require_space,
    retire_old,
    snapshot_exists,
    stale_snapshots,
    take_snapshot,
    unmount_and_destroy,
    verify_clone,
    verify_retired,
    verify_snapshot,
)
from runbook.procedures.facts import UpgradeFacts
from runbook.procedures.framework import Context, Procedure, Step, new_run_id
from runbook.wait import wait_for

RETRY_SETTINGS = ("health_body", "fail_duration/max_fails", "lb_try_duration", "lb_retry_match", "request_buffers")


# ------------------------------------------------------------------------------------------- facts
def prepare(ctx: Context[UpgradeFacts]) -> None:
    """Derive the run's facts from real state: which colour is live, its images, the names to use."""
    env, a = ctx.env, ctx.adapters
    target = str(ctx.params["target_version"])
    if ctx.params.get("plan"):
        live = str(ctx.params.get("live", "green"))
        live_image = env.deployments.colour(live).image or "laconicnetwork/agave:<live version>"
        sidecar_image = "<the live pod's doublezerod image>"
    else:
        found, how = bg.live_colour(env, a.workloads, adapters=a)
        if found is None:
            raise PreconditionFailed(f"cannot tell which colour is live ({how}): refusing to guess", env=env.name)
        live = found
        ctx.progress(f"live colour: {live} ({how})")
        pod = running_pod(a.workloads, env.deployments.colour(live).name)
        live_image = pod.spec_images[APP_CONTAINER]
        sidecar_image = pod.spec_images[env.doublezero.sidecar]
    idle = bg.other(live)
    f = ctx.facts
    f.live, f.idle, f.target_version = live, idle, target
    f.live_image, f.target_image, f.sidecar_image = live_image, bg.image_with_tag(live_image, target), sidecar_image
    f.snapshot = snapshot_name(env, target, ctx)
    save_live_object(ctx)
    require_destroy_confirmed(ctx)


def snapshot_name(env: Any, target: str, ctx: Context[UpgradeFacts]) -> str:
    """This run's snapshot: ``<prefix>-<target>-<run id>``. Named per run, so a snapshot an earlier run left
    (``pre-upgrade-v2.2.1`` after a rollback, or another run's) is never taken for this run's and cloned."""
    if ctx.params.get("plan"):
        return f"{env.storage.snapshot_prefix}-{target}-YYYYMMDDTHHMMSSZ-xxxx"  # the run id's shape
    if not ctx.facts.run_id:
        ctx.facts.run_id = new_run_id()
    return f"{env.storage.snapshot_prefix}-{target}-{ctx.facts.run_id}"


def shape(ctx: Context[UpgradeFacts], colour: str) -> derive.ColourShape:
    """What the env says differs between the colours: names, ports, and the host paths of the colour's data
    (the ledger's mount, the accounts, the identity keypair)."""
    dep = ctx.env.deployments.colour(colour)
    paths = {"ledger": dep.mount or ctx.adapters.storage.path(dep.data), "accounts": dep.accounts}
    if dep.identity:
        paths["identity"] = dep.identity
    return derive.ColourShape(name=dep.name, colour=colour, rpc_port=dep.rpc_port, gossip_port=dep.gossip_port,
                              dynamic_port_range=dep.dynamic_port_range, paths=paths)


def save_live_object(ctx: Context[UpgradeFacts]) -> None:
    """The live colour's Deployment as the cluster holds it, saved (journal and evidence) before anything
    touches it: the idle colour is derived from it and every rollback re-creates it from this copy."""
    if ctx.params.get("plan"):
        ctx.facts.live_object = render_deployment(ctx.env, ctx.facts.live, image=ctx.facts.live_image)
        return
    if ctx.facts.live_object is not None:
        return  # a resumed run: the copy saved when it started (the live object may be gone since the shift)
    obj = ctx.adapters.workloads.deployment(_live(ctx).name)
    if obj is None:
        raise PreconditionFailed(f"deployment {_live(ctx).name} not found: nothing to derive the idle colour from",
                                 env=ctx.env.name, obj=_live(ctx).name)
    ctx.facts.live_object = derive.restorable(obj)
    ctx.record(f"{_live(ctx).name} as the cluster held it before the upgrade (restored verbatim by a rollback)",
               ctx.facts.live_object)


def idle_manifest(ctx: Context[UpgradeFacts]) -> dict[str, Any]:
    """The idle colour: the saved live object with exactly derive.CHANGED changed (and the sidecar image the
    live pod runs, which a dz-upgrade may have patched in place)."""
    return derive.derive(ctx.facts.saved_live_object(), source=shape(ctx, ctx.facts.live),
                         target=shape(ctx, ctx.facts.idle), image=ctx.facts.target_image,
                         sidecar=(ctx.env.doublezero.sidecar, ctx.facts.sidecar_image))


def restore_live_object(ctx: Context[UpgradeFacts]) -> None:
    """Rollback: the live colour's saved object, re-created verbatim (the API server's fields left out)."""
    ctx.adapters.workloads.apply_deployment(derive.restorable(ctx.facts.saved_live_object()))


# ------------------------------------------------------------------------------------------- deploy
def idle_deployed(ctx: Context[UpgradeFacts]) -> bool:
    pods = ctx.adapters.workloads.pods(_idle(ctx).name)
    return any(same_image(p.spec_images.get(APP_CONTAINER, ""), ctx.facts.target_image) for p in pods)


def deploy_idle(ctx: Context[UpgradeFacts]) -> None:
    manifest = idle_manifest(ctx)
    ctx.record(f"{_idle(ctx).name}: the live object except " + "; ".join(derive.CHANGED),
               {"changed": derive.differences(ctx.facts.live_object, manifest)})
    ctx.adapters.workloads.apply_deployment(manifest)


def verify_idle_rolled_out(ctx: Context[UpgradeFacts]) -> None:
    pod = ctx.adapters.workloads.wait_rollout(_idle(ctx).name, timeout=ctx.env.timeouts.rollout)
    ctx.record(f"{pod.name} containers", {c.name: f"{c.image} {c.state}" for c in pod.containers})


def delete_idle(ctx: Context[UpgradeFacts]) -> None:
    ctx.adapters.workloads.delete_deployment(_idle(ctx).name)


# ------------------------------------------------------------------------------------------- catch-up
def wait_caught_up(ctx: Context[UpgradeFacts]) -> None:
    """Caught up (runbook.procedures.catch_up): the reference polled every ``reference_poll`` seconds with
    back-off; a wrong release answering getVersion fails at once, not at the deadline."""
    colour, want = ctx.facts.idle, bg.bare_version(ctx.facts.target_version)
    st, seen = catch_up.wait_caught_up(ctx, colour, want, step="catch-up", procedure="agave-upgrade")
    ctx.facts.catch_up_seen = seen
    ctx.record(f"{colour} caught up", {**st.as_dict(), "seen while catching up": seen})
    ctx.mark(f"{colour} healthy", f"slot {st.slot}, {st.behind} behind")


def idle_caught_up(ctx: Context[UpgradeFacts]) -> bool:
    """Already done: the idle colour is observed caught up now (health ok, the target release, within
    ``catch_up_distance`` of the reference: catch_up.caught_up_now), whatever the journal remembers.
    ``catch_up_seen`` is evidence of the wait (the "was behind" check), not a marker of it."""
    return catch_up.caught_up_now(ctx, ctx.facts.idle, bg.bare_version(ctx.facts.target_version))


def accounts_copied(ctx: Context[UpgradeFacts]) -> bool:
    """Already done: the idle colour's accounts match the source (observed: accounts.copied), or the idle
    colour runs on the target image (observed: idle_deployed), its accounts then its own: it writes them as
    it catches up, so they differ from the source, and a copy (rsync --delete) would overwrite a running
    validator's accounts with another's."""
    return idle_deployed(ctx) or accounts.copied(ctx)


# ------------------------------------------------------------------------------------------- shift
def require_ingress_retries(ctx: Context[UpgradeFacts], *, doing: str = "stop the live colour",
                            settings: tuple[str, ...] = (*RETRY_SETTINGS, "order_switch")) -> None:
    """The ingress's retry settings (design trap 3) and its order switch (no reload to reorder), audited on
    what serves the env's site."""
    env = ctx.env
    report = audit(ctx.adapters.ingress.config(), expected_upstreams=bg.upstream_order_for(env, ctx.facts.live),
                   site_url=env.ingress.url, upstream_header=env.ingress.upstream_header)
    bad = [f for f in report.select(*settings) if not f.ok]
    if bad:
        raise PreconditionFailed(f"refusing to {doing}: the ingress would drop requests (at the shift: design trap "
                                 "3; at a reorder: a config reload): "
                                 + "; ".join(f"{f.setting}: {f.observed}" for f in bad), env=env.name)


def require_own_identity(ctx: Context[UpgradeFacts]) -> None:
    """The idle colour's identity keypair is on the host and is not the live colour's key (agave's gossip makes
    the older instance of an identity exit: a blue under green's key kills green, the colour serving traffic).
    The files are private keys: compared by digest on the host, as root; neither digest is shown or kept."""
    live, idle = _live(ctx), _idle(ctx)
    if not (live.identity and idle.identity):
        return
    digests = {}
    for dep in (live, idle):
        path = str(dep.identity)
        r = ctx.adapters.host.run(f"sha256sum {shlex.quote(ctx.adapters.host_path(path))}", check=False, root=True)
        if not r.ok or not r.stdout.split():
            raise PreconditionFailed(f"refusing to start the upgrade: {dep.name}'s identity keypair {path} is missing "
                                     "or unreadable on the host; provision one first with solana-keygen (any keypair "
                                     "serves a non-voting RPC node)", env=ctx.env.name, obj=path)
        digests[dep.name] = r.stdout.split()[0]
    if digests[live.name] == digests[idle.name]:
        raise PreconditionFailed(f"refusing to start the upgrade: {idle.identity} holds the same key as "
                                 f"{live.identity}; agave's gossip would make {live.name}, the colour serving, exit "
                                 f"when {idle.name} starts (design trap 9). Give {idle.name} its own keypair",
                                 env=ctx.env.name, obj=str(idle.identity))
    ctx.record("identity keypairs", {live.name: f"{live.identity} (present)",
                                     idle.name: f"{idle.identity} (present, another key)"})


def preflight(ctx: Context[UpgradeFacts]) -> None:
    """Every precondition that can be checked before anything changes, checked before the snapshot (not
    after hours of cloning, copying and catching up): the ingress retries and switches its order without a
    reload, the idle colour has its own identity, the pool has room, the idle colour runs nothing else, and
    its dataset name is free for this run's clone."""
    require_ingress_retries(ctx, doing="start the upgrade")
    require_own_identity(ctx)
    preflight_storage_and_idle(ctx)


def preflight_storage_and_idle(ctx: Context[UpgradeFacts]) -> None:
    require_space(ctx, "snapshot")
    if ctx.adapters.workloads.pods(_idle(ctx).name) and not idle_deployed(ctx):
        raise PreconditionFailed(f"refusing to start the upgrade: {_idle(ctx).name} already runs something other "
                                 f"than {ctx.facts.target_image}; remove it or roll back first", env=ctx.env.name)
    idle_data = _idle(ctx).data
    if _dataset(ctx, idle_data) is not None and not clone_exists(ctx):
        raise PreconditionFailed(
            f"refusing to start the upgrade: {idle_data} exists and is not this run's clone (the data an earlier "
            f"upgrade kept as its rollback point, or a leftover), and the idle colour's clone needs that name. "
            f"Nothing was changed: destroy it (with its snapshots) once you no longer need that rollback point, "
            f"then run again", env=ctx.env.name, obj=idle_data)


def require_retrying_ingress(ctx: Context[UpgradeFacts]) -> None:
    env = ctx.env
    require_ingress_retries(ctx)
    st = bg.observe_colour(env, ctx.facts.idle, adapters=ctx.adapters)
    if st.health != "ok":
        raise PreconditionFailed(f"refusing to shift: {ctx.facts.idle} answers {st.health!r}, not ok",
                                 env=env.name)
    forgot = bg.wait_ingress_remembers_no_failure(env, ctx.adapters.ingress, ctx.facts.idle,
                                                  timeout=env.timeouts.healthy)
    hold = bg.wait_ingress_sees_ok(env, ctx.adapters.ingress, ctx.facts.idle, timeout=env.timeouts.healthy,
                                   url=ctx.adapters.rpc_url(ctx.facts.idle))
    ctx.record(f"{ctx.facts.idle} answered ok for {hold:.1f}s before the shift (Caddy's checker saw it); "
               f"waited {forgot:.1f}s for Caddy to remember no failed request to it", None)


def shifted(ctx: Context[UpgradeFacts]) -> bool:
    return not ctx.adapters.workloads.pods(_live(ctx).name) \
        and bg.served_by(ctx.env, adapters=ctx.adapters) == ctx.facts.idle


def stop_live(ctx: Context[UpgradeFacts]) -> None:
    ctx.mark("shift", f"stopping {ctx.facts.live} gracefully")
    ctx.adapters.workloads.delete_deployment(_live(ctx).name)
    ctx.mark(f"{ctx.facts.live} stopped", _live(ctx).name)
    # nothing may write to the stopped colour's data from now on: its storage facts, to compare at the end
    facts = ctx.adapters.storage.identity(_live(ctx).data)
    ctx.facts.stopped_data = {"colour": ctx.facts.live, "facts": facts}
    ctx.record(f"storage facts of {_live(ctx).data} when {ctx.facts.live} stopped", facts)


def verify_served_by_idle(ctx: Context[UpgradeFacts]) -> None:
    idle = ctx.facts.idle
    wait_for(lambda: bg.served_by(ctx.env, adapters=ctx.adapters), lambda c: c == idle,
             timeout=ctx.env.timeouts.healthy, interval=0.1,
             what=f"the ingress to serve from {idle}", env=ctx.env.name, step="shift")
    seen = [bg.served_by(ctx.env, adapters=ctx.adapters) for _ in range(20)]
    ctx.judge(uv.all_served_by(seen, idle, when=f"after the shift ({ctx.facts.live} stopped)"))


def restart_live(ctx: Context[UpgradeFacts]) -> None:
    """Rollback of the shift: the old colour back, on its own data, with its old version."""
    live = ctx.facts.live
    if not ctx.adapters.workloads.pods(_live(ctx).name):
        restore_live_object(ctx)
    ctx.facts.stopped_data = {}  # it runs (and writes) again
    ctx.adapters.workloads.wait_rollout(_live(ctx).name, timeout=ctx.env.timeouts.rollout)
    wait_for(lambda: bg.observe_colour(ctx.env, live, adapters=ctx.adapters).health, lambda h: h == "ok",
             timeout=ctx.env.timeouts.catch_up, interval=0.25, what=f"{live} to answer ok again", env=ctx.env.name,
             step="shift rollback")


# ------------------------------------------------------------------------------------------- cleanup
def new_order(ctx: Context[UpgradeFacts]) -> list[str]:
    return bg.upstream_order_for(ctx.env, ctx.facts.idle)


def order_is_safe(ctx: Context[UpgradeFacts]) -> bool:
    return same_upstreams(ctx.adapters.ingress.upstream_order(), new_order(ctx))


def put_new_live_first(ctx: Context[UpgradeFacts]) -> None:
    _reorder(ctx, new_order(ctx))


def _reorder(ctx: Context[UpgradeFacts], order: list[str]) -> None:
    """The order switch: the order file on Caddy's host, no config reload (a reload costs requests under
    traffic: bench/reload_bench.py). The preflight refused an ingress without the switch."""
    ctx.mark("upstream order switch", f"upstream order {order}")
    ctx.adapters.ingress.set_upstream_order(order)


def verify_order(ctx: Context[UpgradeFacts]) -> None:
    ctx.judge(uv.upstream_order(ctx.adapters.ingress.upstream_order(), new_order(ctx), when="after the switch"))
    verify_served_by_idle(ctx)


def restore_order(ctx: Context[UpgradeFacts]) -> None:
    old = list(reversed(new_order(ctx)))
    if not same_upstreams(ctx.adapters.ingress.upstream_order(), old):
        _reorder(ctx, old)


# ------------------------------------------------------------------------------------------- steady state
def live_serving(ctx: Context[UpgradeFacts]) -> None:
    """After a rollback: the old live colour serves the ingress and answers ok, the idle colour is gone."""
    live = ctx.facts.live
    wait_for(lambda: bg.live_colour(ctx.env, ctx.adapters.workloads, adapters=ctx.adapters),
             lambda found: found[0] == live,
             timeout=ctx.env.timeouts.healthy, interval=0.2, what=f"the ingress to be served by {live} again",
             env=ctx.env.name, procedure="agave-upgrade")
    ctx.judge(uv.no_pods(_idle(ctx).name, [p.name for p in ctx.adapters.workloads.pods(_idle(ctx).name)],
                         when="after the rollback"))


# ------------------------------------------------------------------------------------------- plans
def _plan_catch_up(ctx: Context[UpgradeFacts]) -> list[str]:
    return catch_up.plan_lines(ctx.env, ctx.facts.idle, bg.bare_version(ctx.facts.target_version))


PROCEDURE = Procedure(
    facts=UpgradeFacts,
    name="agave-upgrade",
    summary="agave version upgrade, blue-green, zero RPC downtime",
    prepare=prepare,
    steady_state=live_serving,
    steps=(
        Step("snapshot", "snapshot the live ledger (the rollback point)", take_snapshot, verify_snapshot,
             is_done=snapshot_exists, precondition=preflight, rollback=drop_snapshot,
             plan_check=pl.plan_preflight, plan=pl.plan_snapshot,
             plan_verify=pl.plan_verify_snapshot, plan_rollback=pl.plan_drop_snapshot),
        Step("clone", "clone the snapshot for the idle colour (copy-on-write where the backend is), mounted where "
             "its Deployment reads it when a volume", make_clone, verify_clone,
             is_done=clone_ready, precondition=lambda c: require_space(c, "clone"), rollback=destroy_clone,
             plan_check=lambda c: pl.free_space(c), plan=pl.plan_clone, plan_verify=pl.plan_verify_clone,
             plan_rollback=lambda c: pl.unmount_destroy(c, "idle")),
        Step("copy-accounts", "copy the accounts (not on the dataset): hard links kept, space and RAM checked first",
             accounts.copy, accounts.verify, is_done=accounts_copied, rollback=accounts.remove,
             plan=accounts.plan_copy, plan_verify=accounts.plan_verify, plan_rollback=accounts.plan_remove),
        Step("deploy-idle", "deploy the idle colour from the clone with the target version", deploy_idle,
             verify_idle_rolled_out, is_done=idle_deployed, rollback=delete_idle, plan=pl.plan_deploy,
             plan_verify=lambda c: [pl.rollout(c, "idle")],
             plan_rollback=lambda c: [pl.delete_deployment(c, "idle", "and its pod")]),
        Step("catch-up", "wait until the idle colour is caught up and healthy", lambda ctx: None, wait_caught_up,
             is_done=idle_caught_up,
             plan=lambda c: ["# nothing: the idle colour replays from the snapshot toward the cluster's tip"],
             plan_verify=_plan_catch_up),
        Step("shift", "stop the live colour gracefully; the ingress retries onto the idle colour", stop_live,
             verify_served_by_idle, is_done=shifted, precondition=require_retrying_ingress, rollback=restart_live,
             plan_check=pl.plan_shift_check, plan=pl.plan_shift, plan_verify=pl.plan_shift_verify,
             plan_rollback=pl.plan_restart_live),
        Step("cleanup", "put the new live colour first in the upstream order", put_new_live_first, verify_order,
             is_done=order_is_safe, rollback=restore_order, plan=lambda c: pl.set_order(c, "idle"),
             plan_verify=pl.plan_cleanup_verify, plan_rollback=lambda c: pl.set_order(c, "live")),
        Step("retire-old", "keep the old colour's data as the rollback point, or destroy it if the operator chose",
             retire_old, verify_retired, is_done=old_retired, plan=pl.plan_retire, plan_verify=pl.plan_retire_verify,
             plan_rollback=pl.plan_retire_rollback),
    ),
)

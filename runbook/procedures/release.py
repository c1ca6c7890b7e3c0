"""Seed 003: an operator-style blue-green release of an application of two services, with automatic rollback, a
release history of 10 and a manual rollback to a version from it.

The seed's operator is a reconcile loop over a state kept in the cluster (Stable -> Deploying -> Switching ->
Cleanup -> Stable). Here each run reads that state (:mod:`runbook.procedures.release_state`, a ConfigMap) and
advances it, so it is idempotent and resumable like the loop: a run after an interruption, from any machine,
continues at the state reached, and the failure deadline counts from when the new colour was created (kept in
the state), so neither a resume nor a crash loop restarts it.

Steps:
  deploy      Stable -> Deploying: the state written first (pending colour, target, creation time), then the
              other colour's ConfigMaps, Services and Deployments, derived from the live active colour's (the
              env's template for the first release), images at the release's tags. A Deployment whose immutable
              selector differs is deleted and re-created (never the active colour's). Rollback: the new colour's
              objects deleted, the release recorded Failed, the active colour untouched (checked); on a first
              release there is nothing to roll back to: recorded Failed, phase Failed, nothing deleted.
  await-ready Deploying -> Switching: every Deployment's ready replicas equal its spec, held without a break for
              ``release.grace``; a container waiting ImagePullBackOff/CrashLoopBackOff/..., or restarted
              ``release.max_restarts`` times, fails at once; not ready and held by ``release.ready_timeout``
              after the colour's creation fails.
  switch      Switching -> Cleanup: the common ConfigMap names the new colour's Services, the history gains
              the Active record (the last Active becomes Superseded, 10 kept), the state's active colour
              flips; then every client (each gateway pod, asked what its process has loaded) is on the new
              Services within ``release.switch_timeout`` (a ConfigMap volume is updated late). Rollback: the
              common ConfigMap back on the old colour, the record Failed, clients back.
  cleanup     Cleanup -> Stable: the old colour's objects saved, then deleted. Rollback: re-created as saved.

Parameters: ``version`` (the release; image tags default to it), ``tags`` (component -> tag, to override),
``rollback_to`` (a version in the history: its tags are released again), ``plan``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from runbook.checks import release as rc
from runbook.checks.core import Verdict
from runbook.env import PROJECT_ROOT
from runbook.errors import CheckFailed, ConfigError, PreconditionFailed, RunbookError
from runbook.kustomize import kustomize
from runbook.procedures import release_colours as rcol
from runbook.procedures import release_plan as plan
from runbook.procedures import release_state as rs
from runbook.procedures.facts import ReleaseFacts
from runbook.procedures.framework import Context, Procedure, Step
from runbook.wait import wait_for

NAME = "release"
Ctx = Context[ReleaseFacts]


def context(adapters: Any, params: dict[str, Any], *, progress: Callable[[str], None] = print,
            record: Callable[[str, Any], None] = lambda t, d: None,
            mark: Callable[[str, str], None] = lambda n, d: None,
            verdicts: Callable[[Verdict], None] = lambda v: None) -> Ctx:
    return PROCEDURE.context(adapters, params, progress=progress, record=record, mark=mark, verdicts=verdicts)


cfg = rcol.cfg


def _err(ctx: Context[Any], msg: str, cls: type[RunbookError] = PreconditionFailed, **kw: Any) -> RunbookError:
    return cls(msg, env=ctx.env.name, procedure=NAME, **kw)


def state(ctx: Context[Any]) -> rs.State:
    return rs.read(ctx.adapters.objects, cfg(ctx))


def save(ctx: Context[Any], st: rs.State, event: str, detail: str) -> None:
    rs.write(ctx.adapters.objects, cfg(ctx), st)
    ctx.mark(event, detail)
    ctx.progress(f"[{NAME}] state: {st.phase} (active {st.active or 'none'}, pending {st.pending or 'none'}): {detail}")


# ----------------------------------------------------------------------------- prepare


def _target(ctx: Ctx, st: rs.State) -> rs.Target:
    c, p = cfg(ctx), ctx.params
    if p.get("rollback_to"):
        want = str(p["rollback_to"])
        rec = next((r for r in reversed(st.history) if r.version == want and r.status != "Failed"), None)
        if rec is None:
            known = [f"{r.version} ({r.status})" for r in st.history]
            raise _err(ctx, f"no release {want} to roll back to in the history: it holds {known or 'nothing'}")
        return rs.Target(version=rec.version, tags=dict(rec.tags), rollback_of=rec.version)
    version = rs.check_version(str(p.get("version") or ""))
    tags = {comp: version for comp in c.components}
    extra = dict(p.get("tags") or {})
    unknown = sorted(set(extra) - set(c.components))
    if unknown:
        raise ConfigError(f"tags for unknown components {unknown}: the release has {list(c.components)}")
    tags.update({k: rs.check_version(str(v)) for k, v in extra.items()})
    return rs.Target(version=version, tags=tags)


def prepare(ctx: Ctx) -> None:
    f = ctx.facts
    if ctx.params.get("plan"):  # release_plan.assume has set the facts
        return
    if not ctx.params.get("version") and not ctx.params.get("rollback_to"):
        raise _err(ctx, f"{NAME} needs a version to release (or rollback_to, a version from the history)")
    st = state(ctx)
    target = _target(ctx, st)
    if st.phase in ("Deploying", "Switching", "Cleanup"):
        if st.target != target:
            raise _err(ctx, f"release {st.target.version if st.target else '?'} is in progress (phase {st.phase}, "
                            f"colour {st.pending or st.old}): run it again with that version to finish it")
        ctx.progress(f"[{NAME}] resuming release {target.version} at phase {st.phase} (from the cluster's state)")
        f.pending = st.pending or st.active
        f.active = st.active if st.phase == "Deploying" else st.old
    else:
        f.active = st.active
        f.pending = rs.other(st.active) if st.active else (st.pending or rs.COLOURS[0])
    f.version, f.tags, f.rollback_of = target.version, dict(target.tags), target.rollback_of
    if f.active:
        f.active_before = rcol.snapshot(ctx, f.active)
    ctx.record("release state before the run", {"phase": st.phase, "active": st.active, "pending": st.pending,
                                                 "history": [r.__dict__ for r in st.history]})


def target(ctx: Ctx) -> rs.Target:
    f = ctx.facts
    return rs.Target(version=f.version, tags=dict(f.tags), rollback_of=f.rollback_of)


# ----------------------------------------------------------------------------- deploy


def _source_objects(ctx: Ctx) -> tuple[str, list[dict[str, Any]]]:
    """The colour to derive from and its objects: the live active colour's, or the template's (first release)."""
    c, f = cfg(ctx), ctx.facts
    if f.active:
        live = [rcol.read(ctx, k, n) for k, n in rs.colour_names(c, f.active)]
        missing = [f"{k}/{n}" for (k, n), o in zip(rs.colour_names(c, f.active), live, strict=True) if o is None]
        if missing:
            raise _err(ctx, f"the active colour {f.active} is incomplete ({', '.join(missing)} missing): "
                            "cannot derive the new colour from it")
        return f.active, [o for o in live if o is not None]
    path = PROJECT_ROOT / c.template
    rendered = [m for m in kustomize(path) if m.get("kind") in rs.KINDS]
    colours = {(m.get("metadata", {}).get("labels") or {}).get(rs.COLOUR_LABEL) for m in rendered}
    if len(colours) != 1:
        raise ConfigError(f"release.template {c.template} must render one colour's objects, found colours {colours}")
    return str(colours.pop()), rendered


def deployed(ctx: Ctx) -> bool:
    """Past Deploying for this release, or Deploying with every object of the new colour there (a run stopped
    in the middle of creating them creates the rest)."""
    st = state(ctx)
    if st.target != target(ctx):
        return _is_released(ctx, st)
    if st.phase == "Deploying":
        return len(rcol.present(ctx, ctx.facts.pending)) == len(rs.colour_names(cfg(ctx), ctx.facts.pending))
    return st.phase in ("Switching", "Cleanup") or _is_released(ctx, st)


def _is_released(ctx: Ctx, st: rs.State) -> bool:
    rec = st.active_record
    f = ctx.facts
    return st.phase == "Stable" and rec is not None and rec.version == f.version and rec.tags == f.tags \
        and st.active == rec.colour


def deploy(ctx: Ctx) -> None:
    c, f = cfg(ctx), ctx.facts
    st = state(ctx)
    if not (st.phase == "Deploying" and st.target == target(ctx) and st.pending == f.pending):
        # the deadline counts from here; a run that resumes the creation keeps it
        st.phase, st.pending, st.pending_deployed_at, st.target = "Deploying", f.pending, time.time(), target(ctx)
        save(ctx, st, "deploying", f"release {f.version} on {f.pending} (tags {f.tags})")
    src, objects = _source_objects(ctx)
    for obj in rs.derive(objects, c, src=src, dst=f.pending, target=target(ctx)):
        rcol.apply(ctx, obj)


def verify_deployed(ctx: Ctx) -> None:
    c, f = cfg(ctx), ctx.facts
    st = state(ctx)
    if _is_released(ctx, st):
        return
    there = rcol.present(ctx, f.pending)
    missing = [p for p in (f"{k}/{n}" for k, n in rs.colour_names(c, f.pending)) if p not in there]
    if missing:
        raise _err(ctx, f"colour {f.pending} lacks {', '.join(missing)} after the deploy", CheckFailed)


def undeploy(ctx: Ctx) -> None:
    """Automatic rollback: the new colour deleted, the release Failed, the active colour untouched. A first
    release has nothing to roll back to: Failed, and its objects left for the operator."""
    c, f = cfg(ctx), ctx.facts
    st = state(ctx)
    failed = rs.Record(f.version, f.pending, dict(f.tags), rs.now_rfc3339(), "Failed")
    if not f.active:
        st.phase = "Failed"
        st.history = ([*st.history, failed])[-c.history:]
        save(ctx, st, "failed", f"first release {f.version} failed on {f.pending}: nothing to roll back to; "
                                "its objects are left for the operator")
        return
    rcol.delete_colour(ctx, f.pending)
    st = state(ctx)
    if not any(r.version == f.version and r.colour == f.pending and r.status == "Failed" for r in st.history[-1:]):
        st.history = ([*st.history, failed])[-c.history:]
    st.phase, st.pending, st.pending_deployed_at, st.target, st.old = "Stable", "", 0.0, None, ""
    st.active = f.active
    save(ctx, st, "rolled back", f"release {f.version} Failed; {f.active} stays active")


def steady_state(ctx: Ctx) -> None:
    """After a rollback: the colour clients were on is as it was, and they are all still on it."""
    f = ctx.facts
    if not f.active:
        return
    ctx.judge_all([rc.untouched(f.active, f.active_before, rcol.snapshot(ctx, f.active)), *rcol.serving(ctx, f.active)])


# ----------------------------------------------------------------------------- await-ready


def past_ready(ctx: Ctx) -> bool:
    st = state(ctx)
    return (st.target == target(ctx) and st.phase in ("Switching", "Cleanup")) or _is_released(ctx, st)


def await_ready(ctx: Ctx) -> None:
    c, f = cfg(ctx), ctx.facts
    st = state(ctx)
    deadline = st.pending_deployed_at + c.ready_timeout  # from the colour's creation: no restart resets it
    since: list[float | None] = [None]
    last: list[tuple[Verdict, Verdict] | None] = [None]
    shown = [0.0]

    def observe() -> tuple[Verdict, Verdict]:
        ready, failing = rcol.observe_colour(ctx, f.pending, max_restarts=c.max_restarts)
        now = time.time()
        since[0] = (since[0] or now) if ready.ok else None
        last[0] = (ready, failing)
        if now - shown[0] >= 2.0:
            shown[0] = now
            held = f"ready {now - since[0]:.0f}s of {c.grace:g}s grace" if since[0] else "not ready"
            ctx.progress(f"[{NAME}] colour {f.pending}: {', '.join(map(str, ready.observed.values()))}; {held}; "
                         f"{max(0.0, deadline - now):.0f}s to the deadline")
        return ready, failing

    def settled(obs: tuple[Verdict, Verdict]) -> bool:
        if not obs[1].ok:
            return True
        return since[0] is not None and time.time() - since[0] >= c.grace

    try:
        _ready, failing = wait_for(observe, settled, timeout=max(0.0, deadline - time.time()), interval=0.5,
                                  what=f"colour {f.pending} ready for {c.grace:g}s", env=ctx.env.name,
                                  obj=f.pending)
    except RunbookError:
        if last[0] is not None:
            ctx.judge_all(list(last[0]))
        raise
    ctx.judge(failing)
    f.ready_since = since[0] or 0.0
    ctx.judge(rc.ready_held(f.pending, ready_since=since[0], now=time.time(), grace=c.grace))
    st = state(ctx)
    st.phase = "Switching"
    save(ctx, st, "ready", f"colour {f.pending} ready and held for {c.grace:g}s")


def verify_ready(ctx: Ctx) -> None:
    if past_ready(ctx) and state(ctx).phase != "Switching":
        return
    ctx.judge(rc.colour_ready(ctx.facts.pending, rcol.statuses(ctx, ctx.facts.pending)))


# ----------------------------------------------------------------------------- switch


def switched(ctx: Ctx) -> bool:
    st, f = state(ctx), ctx.facts
    return (st.target == target(ctx) and st.phase == "Cleanup" and st.active == f.pending) or _is_released(ctx, st)


def switch(ctx: Ctx) -> None:
    c, f = cfg(ctx), ctx.facts
    rcol.point_common(ctx, f.pending)
    st = state(ctx)
    record = rs.Record(f.version, f.pending, dict(f.tags), rs.now_rfc3339(), "Active")
    st.history = rs.add_record(st.history, record, c.history)
    st.old, st.active, st.pending, st.phase = st.active, f.pending, "", "Cleanup"
    save(ctx, st, "switch", f"common ConfigMap {c.common} -> {f.pending}'s Services")


def verify_switched(ctx: Ctx) -> None:
    c, f = cfg(ctx), ctx.facts
    ctx.judge(rc.common_names(ctx.adapters.objects.get_object("ConfigMap", c.common), hosts=rcol.hosts(c, f.pending)))
    rcol.wait_clients(ctx, f.pending)


def unswitch(ctx: Ctx) -> None:
    """Clients back on the old colour (it is still there: cleanup has not run or was undone), the release
    Failed, the record it superseded Active again."""
    c, f = cfg(ctx), ctx.facts
    if not f.active:
        return  # a first release: no colour to go back to (deploy's rollback records it Failed)
    rcol.point_common(ctx, f.active)
    st = state(ctx)
    st.history = rs.set_status(st.history, f.version, f.pending, "Failed")
    prev = next((r for r in reversed(st.history) if r.colour == f.active and r.status == "Superseded"), None)
    if prev is not None:
        st.history = rs.set_status(st.history, prev.version, prev.colour, "Active")
    st.active, st.pending, st.old, st.phase = f.active, f.pending, "", "Deploying"
    save(ctx, st, "switch back", f"common ConfigMap {c.common} -> {f.active}'s Services")
    rcol.wait_clients(ctx, f.active)


# ----------------------------------------------------------------------------- cleanup


def cleaned(ctx: Ctx) -> bool:
    st = state(ctx)
    return _is_released(ctx, st) and (not ctx.facts.active or not rcol.present(ctx, ctx.facts.active))


def cleanup(ctx: Ctx) -> None:
    c, f = cfg(ctx), ctx.facts
    st = state(ctx)
    old = st.old or f.active
    if old and old != f.pending:
        f.deleted = [rs.strip_server_fields(o) for k, n in rs.colour_names(c, old)
                     if (o := rcol.read(ctx, k, n)) is not None]
        ctx.mark("cleanup", f"deleting colour {old}")
        rcol.delete_colour(ctx, old)
    st = state(ctx)
    st.phase, st.old = "Stable", ""
    save(ctx, st, "stable", f"release {f.version} active on {f.pending}")


def verify_cleaned(ctx: Ctx) -> None:
    f = ctx.facts
    judged = [rc.released(state(ctx), version=f.version, colour=f.pending)]
    if f.active and f.active != f.pending:
        judged.append(rc.colour_gone(f.active, rcol.present(ctx, f.active)))
    ctx.judge_all(judged)


def uncleanup(ctx: Ctx) -> None:
    """The old colour re-created as cleanup saved it, and ready again (before the switch is undone)."""
    f = ctx.facts
    for obj in f.deleted:
        rcol.apply(ctx, dict(obj))
    if f.deleted and f.active:
        wait_for(lambda: rcol.observe_colour(ctx, f.active, max_restarts=cfg(ctx).max_restarts)[0], lambda v: v.ok,
                 timeout=cfg(ctx).ready_timeout, interval=0.5, what=f"colour {f.active} ready again",
                 env=ctx.env.name, obj=f.active)
        f.active_before = rcol.snapshot(ctx, f.active)  # re-created: new uids; untouched from here on


PROCEDURE = Procedure(
    name=NAME,
    summary="blue-green release of storage and schema: deploy the other colour, ready + grace, switch the common "
            "ConfigMap, clean up; automatic rollback, a history of 10, manual rollback to a version",
    facts=ReleaseFacts,
    prepare=prepare,
    steady_state=steady_state,
    steps=(
        Step("deploy", "the other colour's ConfigMaps, Services and Deployments at the release's tags",
             action=deploy, verify=verify_deployed, is_done=deployed, rollback=undeploy,
             plan=plan.deploy, plan_check=plan.read_state, plan_verify=plan.deploy_verify, plan_rollback=plan.undeploy),
        Step("await-ready", "ready replicas equal the spec, held for the grace period, before the deadline",
             action=await_ready, verify=verify_ready, is_done=past_ready,
             plan=plan.await_ready, plan_verify=plan.await_ready_verify),
        Step("switch", "the common ConfigMap names the new colour; every client on it",
             action=switch, verify=verify_switched, is_done=switched, rollback=unswitch,
             plan=plan.switch, plan_verify=plan.switch_verify, plan_rollback=plan.unswitch),
        Step("cleanup", "the old colour's objects saved, then deleted",
             action=cleanup, verify=verify_cleaned, is_done=cleaned, rollback=uncleanup,
             plan=plan.cleanup, plan_verify=plan.cleanup_verify, plan_rollback=plan.uncleanup),
    ),
)

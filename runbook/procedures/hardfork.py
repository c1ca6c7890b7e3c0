"""Seeds 001/002: a Sei node set upgraded across a hard fork at height H through a bootstrap Job, in the seed's four
tasks, with the two gaps the seed names closed: AwaitRunning has a deadline, and the traffic switch comes before
the teardown.

The node set: a StatefulSet per revision (``<app>-<revision>``, one data claim per pod), and a Service whose
selector pins a revision. H is the chain's upgrade plan (x/upgrade's current_plan on the network's RPC; an
operator's ``halt_height`` must agree with it).

Steps:
  create-entrants   CreateEntrantNodes: the entrant revision's claims (from the live incumbent StatefulSet's
                    volumeClaimTemplate, named as the entrant StatefulSet will adopt them) and one bootstrap Job
                    per pod: the incumbent's pod template on the incumbent image, ``--snapshot-s3`` the env's
                    bucket, ``--target-height`` H-2 (a snapshot below H-1: seid halts at commit, so from one
                    at H-1 it would commit H first) and ``--halt-height`` H-1, never restarted. Rollback: the
                    entrant's StatefulSet, Jobs and claims deleted; the incumbents untouched (checked).
  await-running     AwaitRunning: each bootstrap to completion (a Failed Job, a failed pod or a container waiting
                    ErrImagePull/ImagePullBackOff/... fails at once; a pod not running ``bootstrap_timeout``
                    after the Jobs' creation fails), with the chain's progress toward H-1 and an ETA; then the
                    Jobs deleted (the claims stay) and the entrant StatefulSet created from the incumbent's on the
                    new image; done when every entrant pod is Ready on the new binary, past H, not catching up,
                    with the upgrade handler's mark at H. A chain below H is a wait, not a failure; once the
                    network is at H the deadline is ``running_timeout`` from then (no crash loop or resume
                    restarts it: it is kept in the journal).
  switch-traffic    SwitchTraffic: the Service's selector on the entrant revision (at once, not at the plan's
                    end), verified on its endpoints. Rollback: the selector back on the incumbents.
  teardown          TeardownIncumbents: the incumbents' state recorded, their StatefulSet saved and deleted; their
                    claims are kept (the operator's to delete). Rollback: the StatefulSet re-created as saved.

Parameters: ``version`` (the new binary's image tag), ``halt_height`` (optional: must be the plan's),
``bootstrap_image`` (default: the incumbents' image), ``bootstrap_peers`` (state sync from these peers instead of
the env's snapshot bucket), ``plan``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from runbook.adapters.base import JobStatus, PodInfo
from runbook.checks import hardfork as hc
from runbook.checks.core import Verdict
from runbook.errors import CheckFailed, PreconditionFailed, RunbookError
from runbook.procedures import hardfork_nodes as hn
from runbook.procedures import hardfork_plan as plan
from runbook.procedures.facts import HardforkFacts
from runbook.procedures.framework import Context, Procedure, Step
from runbook.wait import wait_for

NAME = hn.NAME
Ctx = Context[HardforkFacts]
cfg = hn.cfg
SWITCH_TIMEOUT = 60.0  # the endpoints follow a selector within seconds (the endpoints controller, kube-proxy)


def context(adapters: Any, params: dict[str, Any], *, progress: Callable[[str], None] = print,
            record: Callable[[str, Any], None] = lambda t, d: None,
            mark: Callable[[str, str], None] = lambda n, d: None,
            verdicts: Callable[[Verdict], None] = lambda v: None) -> Ctx:
    return PROCEDURE.context(adapters, params, progress=progress, record=record, mark=mark, verdicts=verdicts)


def _err(ctx: Context[Any], msg: str, cls: type[RunbookError] = PreconditionFailed, **kw: Any) -> RunbookError:
    return cls(msg, env=ctx.env.name, procedure=NAME, **kw)


# ----------------------------------------------------------------------------- reads
def pods_of(ctx: Context[Any], sts: str) -> list[PodInfo]:
    st = ctx.adapters.batch.statefulset_status(sts)
    out = []
    for name in st.pods if st else ():
        try:
            out.append(ctx.adapters.workloads.pod(name))
        except RunbookError:
            continue  # deleted meanwhile
    return out


def incumbents(ctx: Context[Any]) -> dict[str, Any]:
    return hc.incumbents_snapshot(pods_of(ctx, cfg(ctx).statefulset(ctx.facts.incumbent)))


def replicas(f: HardforkFacts) -> int:
    return int(f.incumbent_sts.get("spec", {}).get("replicas", 1))


def jobs(ctx: Context[Any]) -> list[str]:
    f = ctx.facts
    return [cfg(ctx).bootstrap_job(f.entrant, i) for i in range(replicas(f))]


def claims(ctx: Context[Any]) -> list[str]:
    return [c["metadata"]["name"] for c in hn.entrant_claims(ctx.facts.incumbent_sts, cfg(ctx),
                                                             revision=ctx.facts.entrant)]


def present(ctx: Context[Any]) -> list[str]:
    """The entrant revision's objects that exist (StatefulSet, bootstrap Jobs, claims)."""
    b, c, f = ctx.adapters.batch, cfg(ctx), ctx.facts
    out = [f"statefulset/{c.statefulset(f.entrant)}"] if b.statefulset_status(c.statefulset(f.entrant)) else []
    out += [f"job/{j}" for j in jobs(ctx) if b.job_status(j) is not None]
    have = set(b.pvcs(f"{c.revision_label}={f.entrant}"))
    out += [f"pvc/{n}" for n in claims(ctx) if n in have]
    return out


def service(ctx: Context[Any]) -> dict[str, Any] | None:
    return ctx.adapters.objects.get_object("Service", cfg(ctx).service)


def pins(ctx: Context[Any], revision: str) -> Verdict:
    c = cfg(ctx)
    svc = service(ctx)
    sel = (svc or {}).get("spec", {}).get("selector") if svc else None
    return hc.service_pins(c.service, sel, ctx.adapters.rollouts.endpoints(c.service), label=c.revision_label,
                           revision=revision, pods=pods_of(ctx, c.statefulset(revision)))


# ----------------------------------------------------------------------------- prepare
def prepare(ctx: Ctx) -> None:
    c, f, p = cfg(ctx), ctx.facts, ctx.params
    if p.get("plan"):  # hardfork_plan.assume has set the facts
        return
    version = str(p.get("version") or p.get("target_version") or "")
    if not version:
        raise _err(ctx, f"{NAME} needs the new binary's version (its image tag: --target-version)")
    svc = service(ctx)
    incumbent = hn.service_revision(svc, c)
    if incumbent is None:
        raise _err(ctx, f"service {c.service} {'does not exist' if svc is None else 'pins no ' + c.revision_label}: "
                        "no incumbent revision to upgrade")
    sts = ctx.adapters.batch.statefulset(c.statefulset(incumbent))
    if sts is None:
        raise _err(ctx, f"service {c.service} pins {incumbent}, but statefulset {c.statefulset(incumbent)} does "
                        "not exist")
    f.incumbent, f.incumbent_sts = incumbent, hn.strip(sts)
    f.incumbent_image = hn.incumbent_image(sts, c)
    f.bootstrap_image = str(p.get("bootstrap_image") or f.incumbent_image)
    f.bootstrap_peers = str(p.get("bootstrap_peers") or "")
    f.image = f"{c.image}:{version}"
    if hn.tag_of(f.incumbent_image) == version:
        raise _err(ctx, f"the incumbents ({c.statefulset(incumbent)}) already run {f.incumbent_image}")
    f.entrant = hn.revision_for(version)
    if f.entrant == incumbent:
        raise _err(ctx, f"the entrant revision {f.entrant} is the incumbent's")
    given = p.get("halt_height")
    found = hn.network_plan(ctx)
    tip = hn.network_tip(ctx)
    halt = int(str(given)) if given not in (None, "") else None
    ctx.judge(hc.plan_ahead((found.name, found.height) if found else None, tip=tip, halt_height=halt),
              precondition=True)
    f.height = found.height if found else int(halt or 0)
    f.upgrade = found.name if found else ""
    f.incumbents_before = incumbents(ctx)
    ctx.record("hard fork", {"upgrade": f.upgrade, "H": f.height, "bootstrap to": f.height - 1, "tip": tip,
                             "incumbent": f"{c.statefulset(incumbent)} on {f.incumbent_image}",
                             "entrant": f"{c.statefulset(f.entrant)} on {f.image}",
                             "incumbent pods": sorted(f.incumbents_before)})


def steady_state(ctx: Ctx) -> None:
    """After a rollback: the incumbents serve as they did, untouched, and the Service pins them."""
    f = ctx.facts
    ctx.judge_all([hc.incumbents_untouched(f.incumbents_before, incumbents(ctx)), pins(ctx, f.incumbent)])


# ----------------------------------------------------------------------------- create-entrants
def created(ctx: Ctx) -> bool:
    have = present(ctx)
    jobs_or_sts = f"statefulset/{cfg(ctx).statefulset(ctx.facts.entrant)}" in have or \
        all(f"job/{j}" in have for j in jobs(ctx))
    return jobs_or_sts and all(f"pvc/{n}" in have for n in claims(ctx))


def create_entrants(ctx: Ctx) -> None:
    b, c, f = ctx.adapters.batch, cfg(ctx), ctx.facts
    have = present(ctx)
    for claim in hn.entrant_claims(f.incumbent_sts, c, revision=f.entrant):
        if f"pvc/{claim['metadata']['name']}" not in have:
            b.apply_pvc(claim)
    if not f.created_at:
        f.created_at = time.time()
    for i in range(replicas(f)):
        job = hn.bootstrap_job(f.incumbent_sts, c, revision=f.entrant, ordinal=i, image=f.bootstrap_image,
                               halt_height=f.height - 1, peers=f.bootstrap_peers or None)
        if f"job/{job['metadata']['name']}" not in have:
            b.apply_job(job)
    ctx.mark("bootstrap", f"{len(jobs(ctx))} bootstrap Job(s) on {f.bootstrap_image} to H-1 = {f.height - 1}")


def verify_created(ctx: Ctx) -> None:
    if not created(ctx):
        raise _err(ctx, f"after create-entrants, the entrant {ctx.facts.entrant} has only {present(ctx)}", CheckFailed)


def delete_entrants(ctx: Ctx) -> None:
    """Rollback: the entrant's StatefulSet, Jobs (their pods) and claims deleted; the incumbents are not touched."""
    b, c, f = ctx.adapters.batch, cfg(ctx), ctx.facts
    if b.statefulset_status(c.statefulset(f.entrant)) is not None:
        b.delete_statefulset(c.statefulset(f.entrant))
    for j in jobs(ctx):
        if b.job_status(j) is not None:
            b.delete_job(j)
    have = set(b.pvcs(f"{c.revision_label}={f.entrant}"))
    for n in claims(ctx):
        if n in have:
            b.delete_pvc(n)
    ctx.judge(hc.entrants_gone(f.entrant, present(ctx)))
    ctx.mark("entrants deleted", f"revision {f.entrant}: StatefulSet, Jobs and claims")


# ----------------------------------------------------------------------------- await-running
class _Chain:
    """The network's tip as AwaitRunning sees it, with its rate (for an ETA) and when it first reached H."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.first: tuple[float, int] | None = None
        self.tip = 0

    def read(self) -> int:
        f = self.ctx.facts
        self.tip = hn.network_tip(self.ctx)
        now = time.time()
        if self.first is None:
            self.first = (now, self.tip)
        if self.tip >= f.height and not f.reached_h_at:
            f.reached_h_at = now
            self.ctx.mark("H reached", f"the network is at {self.tip} >= H = {f.height}")
        return self.tip

    def eta(self, height: int) -> str:
        if self.first is None or self.tip >= height:
            return "now"
        dt, dh = time.time() - self.first[0], self.tip - self.first[1]
        if dt < 1 or dh <= 0:
            return "unknown yet"
        return f"~{(height - self.tip) * dt / dh:.0f}s"

    def deadline(self) -> float | None:
        f = self.ctx.facts
        return f.reached_h_at + cfg(self.ctx).running_timeout if f.reached_h_at else None


def _job_pods(ctx: Ctx, status: JobStatus | None) -> list[PodInfo]:
    out = []
    for jp in status.pods if status else ():
        try:
            out.append(ctx.adapters.workloads.pod(jp.name))
        except RunbookError:
            continue
    return out


def _past_deadline(ctx: Ctx, chain: _Chain, what: str, last: str, verdict: Verdict | None = None) -> None:
    """Past the deadline (``running_timeout`` after the network reached H): the last verdict is recorded as seen,
    and the step fails naming the deadline and the last state."""
    deadline = chain.deadline()
    if deadline is not None and time.time() > deadline:
        if verdict is not None:
            ctx.verdicts(verdict)
        raise _err(ctx, f"AwaitRunning deadline: {what} {cfg(ctx).running_timeout:g}s after the network reached "
                        f"H = {ctx.facts.height}; last seen: {last}", CheckFailed)


def _bootstrap(ctx: Ctx, chain: _Chain) -> None:
    """Every bootstrap Job to completion; fails at once on a failed one, or on a pod not running in time."""
    b, c, f = ctx.adapters.batch, cfg(ctx), ctx.facts
    shown = 0.0
    while True:
        tip = chain.read()
        statuses = {j: b.job_status(j) for j in jobs(ctx)}
        states = []
        for j, st in statuses.items():
            pods = _job_pods(ctx, st)
            failing = hc.bootstrap_not_failing(j, st, pods)
            if not failing.ok:
                ctx.judge(failing)
            running = [p for p in pods if p.phase in ("Running", "Succeeded")]
            if st is not None and not st.finished and not running and time.time() - f.created_at > c.bootstrap_timeout:
                waits = "; ".join(f"{p.name}: {p.phase} " + ", ".join(f"{x.name} {x.state}:{x.reason}"
                                                                       for x in p.containers) for p in pods)
                raise _err(ctx, f"bootstrap {j}: no pod running {c.bootstrap_timeout:g}s after its creation "
                                f"({waits or 'no pod'})", CheckFailed)
            view = next((v for p in running if p.phase == "Running"
                         and (v := hn.node_view(ctx, p, hn.rpc_port(f.incumbent_sts['spec']['template'],
                                                                    c.container))) is not None), None)
            states.append(f"{j}: " + ("complete" if st is not None and st.finished == "Complete" else
                                      view.describe() if view else (pods[0].phase if pods else "no pod yet")))
        last = f"tip {tip}; " + "; ".join(states)
        if all(s is not None and s.finished == "Complete" for s in statuses.values()):
            f.bootstrapped = {j: {"succeeded": s.succeeded, "pods": [p.name for p in s.pods],
                                  "exit codes": [p.exit_codes for p in s.pods]}
                              for j, s in statuses.items() if s is not None}
            ctx.mark("bootstrap halted", f"every bootstrap halted at H-1 = {f.height - 1} and completed")
            return
        _past_deadline(ctx, chain, "the bootstraps were not complete", last)
        if time.time() - shown >= 2 * c.poll:
            shown = time.time()
            ctx.progress(f"[{NAME}] bootstrap to H-1 = {f.height - 1}: {last}; H-1 in {chain.eta(f.height - 1)}"
                         + ("" if chain.deadline() is None else
                            f"; {max(0.0, (chain.deadline() or 0) - time.time()):.0f}s to the deadline"))
        time.sleep(c.poll)


def _marks(ctx: Ctx, pods: list[PodInfo], port: int) -> dict[str, int | None]:
    """The upgrade handler's mark on each node (``seid query upgrade applied NAME``: the height it ran at)."""
    f = ctx.facts
    out: dict[str, int | None] = {}
    for p in pods:
        out[p.name] = None
        if not f.upgrade or not p.ip:
            continue
        try:
            res = ctx.adapters.workloads.exec(p.name, cfg(ctx).container, [
                "seid", "query", "upgrade", "applied", f.upgrade, "--node", f"tcp://{p.ip}:{port}", "--output", "json"],
                timeout=15.0)
        except RunbookError:
            continue
        if res.ok:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                out[p.name] = int(json.loads(res.stdout)["height"]) or None
    return out


def observe_entrants(ctx: Ctx) -> tuple[Verdict, list[PodInfo], dict[str, Any]]:
    c, f = cfg(ctx), ctx.facts
    pods = pods_of(ctx, c.statefulset(f.entrant))
    port = hn.rpc_port(f.incumbent_sts["spec"]["template"], c.container)
    views = {p.name: view for p in pods if (view := hn.node_view(ctx, p, port)) is not None}
    marks = _marks(ctx, pods, port) if f.upgrade else {p.name: f.height for p in pods}
    verdict = hc.entrants_running(pods, views, replicas=replicas(f), version=hn.tag_of(f.image), height=f.height,
                                  marks=marks)
    return verdict, pods, views


def await_running(ctx: Ctx) -> None:
    b, c, f = ctx.adapters.batch, cfg(ctx), ctx.facts
    chain = _Chain(ctx)
    if b.statefulset_status(c.statefulset(f.entrant)) is None:
        _bootstrap(ctx, chain)
        for j in jobs(ctx):  # TeardownBootstrap: the Jobs and their pods go, the claims stay
            b.delete_job(j)
        b.apply_statefulset(hn.entrant_statefulset(f.incumbent_sts, c, revision=f.entrant, image=f.image))
        ctx.mark("entrants started", f"{c.statefulset(f.entrant)} on {f.image}, on the bootstraps' claims")
    shown = 0.0
    while True:
        tip = chain.read()
        v, pods, views = observe_entrants(ctx)
        if v.ok:
            f.running = {p: views[p].describe() for p in views}
            ctx.mark("H processed", f"every entrant on {f.image} past H = {f.height} with the handler's mark")
            ctx.judge(v)
            return
        waits = "; ".join(f"{p.name}: {p.phase} " + ", ".join(f"{x.state}{':' + x.reason if x.reason else ''} "
                                                               f"{x.restart_count} restarts" for x in p.containers)
                          for p in pods) or "no pod yet"
        last = f"tip {tip}; {waits}; " + "; ".join(v.problems)
        _past_deadline(ctx, chain, "the entrants were not Running", last, v)
        if time.time() - shown >= 2 * c.poll:
            shown = time.time()
            dl = chain.deadline()
            ctx.progress(f"[{NAME}] entrants toward H = {f.height}: {last}; H in {chain.eta(f.height)}"
                         + ("" if dl is None else f"; {max(0.0, dl - time.time()):.0f}s to the deadline"))
        time.sleep(c.poll)


def running(ctx: Ctx) -> bool:
    return bool(ctx.facts.running) and observe_entrants(ctx)[0].ok


def verify_running(ctx: Ctx) -> None:
    ctx.judge(observe_entrants(ctx)[0])


# ----------------------------------------------------------------------------- switch-traffic
def switched(ctx: Ctx) -> bool:
    return hn.service_revision(service(ctx), cfg(ctx)) == ctx.facts.entrant


def point_service(ctx: Ctx, revision: str) -> None:
    c = cfg(ctx)
    svc = service(ctx)
    if svc is None:
        raise _err(ctx, f"service {c.service} is gone", CheckFailed)
    ctx.adapters.objects.apply_object(hn.with_selector(svc, c, revision))


def _wait_pins(ctx: Ctx, revision: str) -> None:
    """Until the Service's endpoints follow its selector (the endpoints controller and kube-proxy lag); the last
    verdict seen is recorded either way."""
    last: list[Verdict] = []

    def observe() -> Verdict:
        last[:] = [pins(ctx, revision)]
        return last[0]

    try:
        wait_for(observe, lambda v: v.ok, timeout=SWITCH_TIMEOUT, interval=0.2,
                 what=f"service {cfg(ctx).service}'s endpoints on {revision}", env=ctx.env.name)
    finally:
        if last:
            ctx.judge(last[0])


def switch(ctx: Ctx) -> None:
    f = ctx.facts
    if not f.incumbents_at_switch:  # what they were when traffic left them (a resumed run keeps the first look)
        f.incumbents_at_switch = incumbents(ctx)
    point_service(ctx, f.entrant)
    ctx.mark("switch", f"service {cfg(ctx).service} selects {f.entrant}")


def verify_switched(ctx: Ctx) -> None:
    _wait_pins(ctx, ctx.facts.entrant)


def unswitch(ctx: Ctx) -> None:
    f = ctx.facts
    point_service(ctx, f.incumbent)
    ctx.mark("switch back", f"service {cfg(ctx).service} selects {f.incumbent}")
    _wait_pins(ctx, f.incumbent)


# ----------------------------------------------------------------------------- teardown
def torn_down(ctx: Ctx) -> bool:
    return ctx.adapters.batch.statefulset_status(cfg(ctx).statefulset(ctx.facts.incumbent)) is None


def teardown(ctx: Ctx) -> None:
    c, f = cfg(ctx), ctx.facts
    if not f.incumbents_at_switch:
        f.incumbents_at_switch = incumbents(ctx)
    ctx.mark("teardown", f"deleting {c.statefulset(f.incumbent)} (its claims are kept)")
    ctx.adapters.batch.delete_statefulset(c.statefulset(f.incumbent))


def verify_torn_down(ctx: Ctx) -> None:
    c, f = cfg(ctx), ctx.facts
    if not torn_down(ctx) or pods_of(ctx, c.statefulset(f.incumbent)):
        raise _err(ctx, f"statefulset {c.statefulset(f.incumbent)} or its pods are still there", CheckFailed)
    ctx.judge(pins(ctx, f.entrant))


def untear(ctx: Ctx) -> None:
    """The incumbents' StatefulSet re-created as it was read (its claims were kept). Past H their binary cannot
    go on: it panics at H (UPGRADE NEEDED), so this is a rollback of the objects, not of the chain."""
    c, f = cfg(ctx), ctx.facts
    if ctx.adapters.batch.statefulset_status(c.statefulset(f.incumbent)) is None:
        ctx.adapters.batch.apply_statefulset(dict(f.incumbent_sts))
        ctx.mark("incumbents re-created", c.statefulset(f.incumbent))


STEPS = (
    Step("create-entrants", "the entrant's claims and its bootstrap Jobs (the incumbent binary to H-1)",
         action=create_entrants, verify=verify_created, is_done=created, rollback=delete_entrants,
         plan=plan.create, plan_check=plan.read, plan_verify=plan.create_verify, plan_rollback=plan.delete),
    Step("await-running", "bootstraps complete, then the entrants Running on the new binary past H, by the deadline",
         action=await_running, verify=verify_running, is_done=running,
         plan=plan.await_running, plan_verify=plan.await_running_verify),
    Step("switch-traffic", "the Service's selector on the entrant revision, at once",
         action=switch, verify=verify_switched, is_done=switched, rollback=unswitch,
         plan=plan.switch, plan_verify=plan.switch_verify, plan_rollback=plan.unswitch),
    Step("teardown", "the incumbents' StatefulSet deleted (their claims kept)",
         action=teardown, verify=verify_torn_down, is_done=torn_down, rollback=untear,
         plan=plan.teardown, plan_verify=plan.teardown_verify, plan_rollback=plan.untear),
)

PROCEDURE = Procedure(
    name=NAME,
    summary="hard fork at H: entrants bootstrapped on the incumbent binary to H-1 by a Job, Running on the new "
            "binary past H (with a deadline), the Service switched, then the incumbents torn down",
    facts=HardforkFacts,
    prepare=prepare,
    steady_state=steady_state,
    steps=STEPS,
)

"""Seed 004: promote the canary to production, gated on Prometheus, undone automatically on a failed gate.

The seed is a checklist an operator ticks by hand. Here each item is a check on real state, and the gates
decide from request counts (:mod:`runbook.canary.evaluate`): too little data is inconclusive and stops the
promotion, never passes it.

Steps:
  checklist   the seed's pre-promotion checklist, read-only, every item recorded (runbook.checks.canary): the
              canary rolled out with every pod Ready; no alert firing for the canary; a chat completion through
              the canary's endpoint answers with usage; token counting rising on the canary; workers used it;
              its tag is ``<release>-canary`` and its pods run it. The release repository is a clean git
              checkout without the tag yet. Then production's baseline (latency histogram, traffic) over
              ``gates.baseline`` before now: too few requests to compare against is inconclusive, and stops.
  roll-out    ``kubectl set image`` of production's container to the canary's image without the suffix, with
              the pod template's ``version`` label (the seed's own version check reads it) and a change-cause,
              in one patch: one revision. While the RollingUpdate runs and for ``gates.soak`` after it, every
              ``gates.check_every`` the gates judge the new version's series (``app_version``): the error rate
              in a moving window, p95 against the baseline, the token counter. A failed gate, a rollout past
              its deadline (a deadline from the patch, which no crash loop resets), or a gate still
              inconclusive at the end fails the step. Rollback: ``kubectl rollout undo --to-revision`` of the
              revision production ran before, then every pod back on the old image.
  verify      post-rollout: every production pod Ready on the new image (containerd's status) with the
              new version label, no pod of another revision left.
  finalize    VERSION committed without the suffix, an annotated tag ``v<version>`` on that commit, pushed to
              the remote when the env names one. Rollback: the tag deleted, VERSION restored.

Parameters: ``target_version`` (the release the operator expects: the canary's tag must be it plus the suffix;
required on production), ``plan`` (render without reading anything).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runbook.adapters.git_repo import GitRepo
from runbook.canary import evaluate as ev
from runbook.checks import canary as cc
from runbook.checks.core import Verdict
from runbook.env import PROJECT_ROOT, Env
from runbook.env_canary import CanaryConfig
from runbook.errors import AdapterError, PreconditionFailed, WaitTimeout
from runbook.procedures import canary_plan as plan
from runbook.procedures.facts import CanaryFacts
from runbook.procedures.framework import Context, Procedure, Step
from runbook.wait import wait_for

NAME = "canary-promote"
VERSION_LABEL = "version"  # the pod template label the seed reads (custom-columns=VERSION:.metadata.labels.version)
APP_VERSION = "app_version"  # the same label as Prometheus's target label on every series


def context(adapters: Any, *, target_version: str | None = None, progress: Callable[[str], None] = print,
            record: Callable[[str, Any], None] = lambda t, d: None,
            verdicts: Callable[[Verdict], None] = lambda v: None) -> Context[CanaryFacts]:
    params: dict[str, Any] = {"target_version": target_version} if target_version else {}
    return PROCEDURE.context(adapters, params, progress=progress, record=record, verdicts=verdicts)


def cfg(ctx: Context[Any]) -> CanaryConfig:
    return ctx.adapters.canary


def release_repo(env: Env) -> GitRepo:
    """The env's release repository: ``canary.repo``; a relative path is under the testbed's state dir on a
    testbed, the project's root elsewhere."""
    c = env.canary
    if c is None:
        raise PreconditionFailed(f"env {env.name} has no canary section", env=env.name, procedure=NAME)
    path = Path(c.repo)
    if not path.is_absolute():
        base = Path(env.testbed.state_dir) if env.testbed is not None else PROJECT_ROOT
        path = (base if base.is_absolute() else PROJECT_ROOT / base) / path
    return GitRepo(path, remote=c.remote)


def split_tag(image: str) -> tuple[str, str]:
    """``repo/name:tag`` -> (``repo/name``, ``tag``); no tag -> (image, "")."""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, ""
    return name, tag


def template_image(dep: dict[str, Any] | None, container: str) -> str:
    for c in ((dep or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []):
        if c.get("name") == container:
            return str(c.get("image", ""))
    return ""


def template_label(dep: dict[str, Any] | None, label: str) -> str:
    return str(((dep or {}).get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}).get(label, ""))


# ------------------------------------------------------------------------------------------- facts
def prepare(ctx: Context[CanaryFacts]) -> None:
    """Derive what to promote from the live objects: the canary's template image, production's image,
    version label and revision."""
    c, f = cfg(ctx), ctx.facts
    if ctx.params.get("plan"):
        plan.assume(ctx)
        return
    if ctx.env.production and not ctx.params.get("target_version"):
        raise PreconditionFailed(f"env {ctx.env.name} is production: name the release to promote (--target-version, "
                                 "pytest's --canary-version); the canary's tag must be it", env=ctx.env.name,
                                 procedure=NAME)
    w, r = ctx.adapters.workloads, ctx.adapters.rollouts
    canary, prod = w.deployment(c.canary), w.deployment(c.production)
    for name, dep in ((c.canary, canary), (c.production, prod)):
        if dep is None:
            raise PreconditionFailed(f"deployment {name} not found", env=ctx.env.name, procedure=NAME, obj=name)
    f.canary_image = template_image(canary, c.container)
    repo, tag = split_tag(f.canary_image)
    if not tag.endswith(c.suffix):
        raise PreconditionFailed(f"the canary {c.canary} runs {f.canary_image or '(no ' + c.container + ')'}: its tag "
                                 f"does not end with {c.suffix}, so there is no release to promote", env=ctx.env.name,
                                 procedure=NAME, obj=c.canary)
    f.target_version = tag[: -len(c.suffix)]
    want = ctx.params.get("target_version")
    if want and str(want).lstrip("v") != f.target_version:
        raise PreconditionFailed(f"--target-version={want}, but the canary {c.canary} runs {f.canary_image} "
                                 f"(release {f.target_version}): refusing to promote another release", env=ctx.env.name,
                                 procedure=NAME, obj=c.canary)
    f.target_image = f"{repo}:{f.target_version}"
    f.old_image = template_image(prod, c.container)
    f.old_version = template_label(prod, VERSION_LABEL)
    f.old_revision = r.rollout_status(c.production).revision
    f.tag = f"v{f.target_version}"
    ctx.record("what is promoted", {"canary": f.canary_image, "production now": f.old_image,
                                    "production revision": f.old_revision, "promoted to": f.target_image})


# ------------------------------------------------------------------------------------------- checklist
def _functional(ctx: Context[CanaryFacts]) -> Verdict:
    url = cfg(ctx).canary_url
    body: Any
    try:
        with ctx.adapters.service_http("canary") as http:
            resp = http.post("/v1/chat/completions", json={
                "model": "glm-4.6", "max_tokens": 16,
                "messages": [{"role": "user", "content": f"runbook {NAME} functional test"}]})
        status = resp.status_code
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
    except Exception as exc:
        status, body = 0, f"{type(exc).__name__}: {exc}"
    return cc.functional(status, body, url=url)


def checklist(ctx: Context[CanaryFacts]) -> None:
    """The seed's pre-promotion checklist; every item recorded, then one error naming each that failed."""
    c, f, r = cfg(ctx), ctx.facts, ctx.adapters.rollouts
    now = time.time()
    with ctx.adapters.prometheus() as prom:
        # workers' requests on the canary: read before the runbook's own functional test adds to them
        workers = ev.requests_between(prom, c.canary_variant, start=now - c.gates.baseline, end=now, step=c.gates.step)
        alerts = prom.alerts()
        tokens = ev.tokens_presence(prom, c.gates, variant=c.canary_variant, end=now)
    canary_pods = r.pods_of(c.canary)
    verdicts = [
        cc.canary_healthy(r.rollout_status(c.canary), canary_pods, container=c.container),
        cc.no_alerts_firing(alerts, variant=c.canary_variant),
        _functional(ctx),
        cc.tokens_counted(tokens, variant=c.canary_variant),
        cc.workers_used(workers, variant=c.canary_variant, span=c.gates.baseline),
        cc.canary_tag(f.canary_image, canary_pods, container=c.container, suffix=c.suffix),
        cc.release_repo_ready(release_repo(ctx.env), tag=f.tag),
    ]
    ctx.judge_all(verdicts, precondition=True)


def measure_baseline(ctx: Context[CanaryFacts]) -> None:
    c, f = cfg(ctx), ctx.facts
    labels = {APP_VERSION: f.old_version} if f.old_version else {}
    with ctx.adapters.prometheus() as prom:
        base = ev.measure_baseline(prom, c.gates, variant=c.variant, labels=labels, end=time.time())
    f.baseline = base.to_json()
    ctx.record("production's baseline", f.baseline)


def baseline_sufficient(ctx: Context[CanaryFacts]) -> None:
    c = cfg(ctx)
    ctx.judge(cc.baseline(ev.Baseline.from_json(ctx.facts.baseline), c.gates), precondition=True)


# ------------------------------------------------------------------------------------------- roll-out
def promote(ctx: Context[CanaryFacts]) -> None:
    c, f = cfg(ctx), ctx.facts
    if not f.rollout_started:
        f.rollout_started = time.time()
    ctx.mark("promote", f"set image {c.production}/{c.container}={f.target_image}")
    ctx.adapters.rollouts.set_template(
        c.production, images={c.container: f.target_image}, labels={VERSION_LABEL: f.target_version},
        change_cause=f"runbook {NAME} {f.run_id}: {f.old_image} -> {f.target_image} (from {f.canary_image})")


def promoted(ctx: Context[CanaryFacts]) -> bool:
    c, f = cfg(ctx), ctx.facts
    return template_image(ctx.adapters.workloads.deployment(c.production), c.container) == f.target_image


class _Tick:
    """One observation of the gated rollout: the rollout's status and the gates' evaluation."""

    def __init__(self, status: Any, report: ev.GateReport, soaked: bool) -> None:
        self.status, self.report, self.soaked = status, report, soaked

    def __repr__(self) -> str:
        return f"{self.status.message}; gates: {self.report.line()}"


def watch(ctx: Context[CanaryFacts]) -> None:
    """Gate the rollout until it is done and soaked; a failed gate or the deadline fails the step."""
    c, f = cfg(ctx), ctx.facts
    g = c.gates
    baseline = ev.Baseline.from_json(f.baseline)
    labels = {APP_VERSION: f.target_version}
    deadline_at = f.rollout_started + c.rollout  # from the patch: a crash loop cannot reset it

    def observe() -> _Tick:
        status = ctx.adapters.rollouts.rollout_status(c.production)
        now = time.time()
        if status.done and not f.rollout_done:
            f.rollout_done = now
            ctx.mark("rolled out", status.message)
        report = ev.evaluate(prom, g, variant=c.variant, labels=labels, start=f.rollout_started, end=now,
                             baseline=baseline)
        f.gates.append({"t": now, "rollout": status.message, **report.to_json()})
        if report.failed:  # a failed gate stops the promotion now, whatever the rollout's state
            ctx.mark("gate failed", "; ".join(report.failed))
            ctx.judge_all([cc.gate(res) for res in report.results if res.verdict == "fail"])
        if not status.done and now > deadline_at:
            raise WaitTimeout(f"the rollout of {c.production} is not done {c.rollout:g}s after the patch: "
                              f"{status.message}; {plan.stalled(ctx.adapters.rollouts.pods_of(c.production), c)}",
                              last_state=repr(status), env=ctx.env.name, procedure=NAME, step="roll-out",
                              obj=c.production)
        return _Tick(status, report, bool(f.rollout_done) and now >= f.rollout_done + g.soak)

    def progress(tick: _Tick, elapsed: float) -> None:
        ctx.progress(f"[{NAME}] {elapsed:.0f}s: {tick!r}")

    # soaked and every gate decided: pass; a gate still inconclusive keeps the watch going (more requests may
    # decide it) until the deadline, where it fails the step: too little data never passes a promotion
    remaining = f.rollout_started + c.rollout + g.soak - time.time()
    try:
        with ctx.adapters.prometheus() as prom:  # one client (and its connection) for every tick
            tick = wait_for(observe, lambda t: t.soaked and t.report.passed,
                            timeout=max(remaining, 2 * g.check_every),
                            interval=g.check_every, on_progress=progress, progress_every=max(g.check_every, 5.0),
                            what=f"{c.production} rolled out and soaked with every gate passing", env=ctx.env.name,
                            procedure=NAME, step="roll-out", obj=c.production)
    except WaitTimeout as exc:
        last = exc.last_state
        if isinstance(last, _Tick) and last.status.done:
            ctx.progress(f"[{NAME}] gates at the deadline: {last.report.line()}")
            ctx.judge_all([cc.gate(res) for res in last.report.results])
        raise
    ctx.record("gates at the end of the soak", tick.report.to_json())
    ctx.progress(f"[{NAME}] gates at the end of the soak: {tick.report.line()}")
    ctx.judge_all([cc.gate(res) for res in tick.report.results])


def undo(ctx: Context[CanaryFacts]) -> None:
    """Back to the revision production ran before (``kubectl rollout undo --to-revision``), then verified."""
    c, f = cfg(ctx), ctx.facts
    if template_image(ctx.adapters.workloads.deployment(c.production), c.container) != f.old_image:
        ctx.mark("undo", f"rollout undo {c.production} --to-revision={f.old_revision}")
        ctx.adapters.rollouts.rollout_undo(c.production, to_revision=f.old_revision)
    on_version(ctx, f.old_image, f.old_version)


def on_version(ctx: Context[CanaryFacts], image: str, version: str) -> None:
    c, r = cfg(ctx), ctx.adapters.rollouts

    def observe() -> Verdict:
        return cc.on_version(r.rollout_status(c.production), r.pods_of(c.production), container=c.container,
                             image=image, version=version)

    try:
        v = wait_for(observe, lambda v: v.ok, timeout=c.rollout, interval=0.5, tolerate=(AdapterError,),
                     what=f"every {c.production} pod Ready on {image}", env=ctx.env.name, procedure=NAME,
                     obj=c.production)
    except WaitTimeout as exc:
        last = exc.last_state
        v = last if isinstance(last, Verdict) else observe()
    ctx.judge(v)


# ------------------------------------------------------------------------------------------- finalize
def finalize(ctx: Context[CanaryFacts]) -> None:
    f = ctx.facts
    repo = release_repo(ctx.env)
    f.commit = repo.commit_version(f.target_version, f"chore: release zai-proxy v{f.target_version}")
    if repo.tag(f.tag) is None:
        repo.create_tag(f.tag, f"Release zai-proxy v{f.target_version}\n\n- Validated via canary testing "
                        f"({f.canary_image})\n- Promoted from canary to production by runbook {NAME} run {f.run_id}",
                        f.commit)
    repo.push_tag(f.tag)
    ctx.mark("finalized", f"VERSION {f.target_version}, tag {f.tag} on {f.commit[:12]}")


def finalized(ctx: Context[CanaryFacts]) -> bool:
    info = release_repo(ctx.env).tag(ctx.facts.tag)
    return info is not None and info.annotated and info.version_file == ctx.facts.target_version


def verify_finalized(ctx: Context[CanaryFacts]) -> None:
    repo, f = release_repo(ctx.env), ctx.facts
    ctx.judge(cc.tagged(repo.tag(f.tag), tag=f.tag, version=f.target_version, pushed=repo.remote_has_tag(f.tag)))


def unfinalize(ctx: Context[CanaryFacts]) -> None:
    repo, f = release_repo(ctx.env), ctx.facts
    info = repo.tag(f.tag)
    if info is not None and f.commit and info.commit == f.commit:
        repo.delete_tag(f.tag)
    if repo.version() == f.target_version:
        repo.commit_version(f"{f.target_version}{cfg(ctx).suffix}", f"revert: zai-proxy v{f.target_version} "
                            f"rolled back by runbook {NAME} run {f.run_id}")


# ------------------------------------------------------------------------------------------- the procedure
def _verify_new(ctx: Context[CanaryFacts]) -> None:
    on_version(ctx, ctx.facts.target_image, ctx.facts.target_version)


PROCEDURE = Procedure(
    name=NAME,
    summary="promote the canary's release to production: checklist, gated RollingUpdate, automatic undo, release tag",
    facts=CanaryFacts,
    prepare=prepare,
    steps=(
        Step("checklist", "the pre-promotion checklist and production's baseline", action=measure_baseline,
             verify=baseline_sufficient, precondition=checklist,
             plan_check=plan.checklist, plan=plan.baseline, plan_verify=plan.baseline_verify),
        Step("roll-out", "set production's image, gate the RollingUpdate and its soak", action=promote,
             verify=watch, is_done=promoted, rollback=undo,
             plan=plan.roll_out, plan_verify=plan.watch, plan_rollback=plan.undo),
        Step("verify", "every production pod Ready on the new image and version", action=lambda ctx: None,
             verify=_verify_new, plan_verify=plan.verify),
        Step("finalize", "VERSION without the suffix, an annotated release tag", action=finalize,
             verify=verify_finalized, is_done=finalized, rollback=unfinalize,
             plan=plan.finalize, plan_verify=plan.finalize_verify, plan_rollback=plan.unfinalize),
    ),
)

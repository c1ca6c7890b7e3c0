"""The canary promotion's checks (seed 004): the seed's checklist, one check per item, each from what was
observed (pods through the workloads port, Prometheus's answers, the canary's own answer, git), and the
gates' verdicts as rows.

The checklist before the promotion: :func:`canary_healthy`, :func:`no_alerts_firing`, :func:`functional`,
:func:`tokens_counted`, :func:`workers_used`, :func:`canary_tag`. While and after the rollout: :func:`gate`
for each gate (an inconclusive gate stops the promotion once the span is over), :func:`on_version`. After an
undo: :func:`on_version` with the old image. Finalization: :func:`tagged`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from runbook.adapters.base import PodInfo, Revision, RolloutStatus
from runbook.adapters.git_repo import GitRepo, TagInfo
from runbook.canary.evaluate import Baseline
from runbook.canary.gates import LatencyResult, PresenceResult
from runbook.canary.window import WindowResult
from runbook.checks.core import Verdict, check, verdict
from runbook.env_canary import CanaryGates
from runbook.errors import ConfigError
from runbook.images import parse, same_image
from runbook.procedures.framework import RunResult

__all__ = ["CHECKLIST", "baseline", "canary_healthy", "canary_tag", "checklist_ticked", "failed_at_gate", "functional",
           "gate", "no_alerts_firing", "not_tagged", "on_version", "refused_at_checklist", "release_repo_ready",
           "revision_current", "revision_unchanged", "tagged", "tokens_counted", "workers_used"]

_RELEASE = re.compile(r"^\d+\.\d+\.\d+")
T = "tests/checks/test_canary.py::"


def _pods(pods: Sequence[PodInfo], container: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pods:
        try:
            c = p.container(container)
            out[p.name] = {"image": c.image, "state": c.state + (f":{c.reason}" if c.reason else ""),
                           "ready": p.ready, "version": p.labels.get("version", "")}
        except KeyError:
            out[p.name] = {"image": "", "state": "no such container", "ready": p.ready}
    return out


def _has(p: PodInfo, container: str) -> bool:
    return any(c.name == container for c in p.containers)


def _image_problems(p: PodInfo, container: str, image: str) -> list[str]:
    """What is wrong with ``container`` in pod ``p`` running ``image`` (containerd's name, normalised)."""
    if not _has(p, container):
        return [f"pod {p.name} has no container {container}"]
    running = p.container(container).image
    return [] if same_image(running, image) else [f"pod {p.name} runs {running}, not {image}"]


@check(negative=T + "test_a_canary_with_a_pod_not_ready_is_not_healthy")
def canary_healthy(status: RolloutStatus, pods: Sequence[PodInfo], *, container: str) -> Verdict:
    """Checklist: the canary Deployment is rolled out and every pod of it is Ready (the seed's
    ``kubectl get pods -l variant=test``)."""
    problems = [] if pods else [f"deployment {status.deployment} has no pods"]
    problems += [f"pod {p.name} is not Ready" for p in pods if not p.ready]
    if not status.done:
        problems.append(status.message)
    return verdict(f"canary {status.deployment} healthy", expected="rolled out, every pod Ready",
                   observed={"rollout": status.message, "pods": _pods(pods, container)}, problems=problems,
                   obj=status.deployment)


@check(negative=T + "test_a_firing_alert_for_the_canary_fails_the_checklist")
def no_alerts_firing(alerts: Sequence[Mapping[str, Any]], *, variant: str) -> Verdict:
    """Checklist: no Prometheus alert firing for the canary (``/api/v1/alerts``, labels ``variant``)."""
    mine = [a for a in alerts if (a.get("labels") or {}).get("variant") == variant]
    firing = [a for a in mine if a.get("state") == "firing"]
    observed = [f"{a['labels'].get('alertname', '?')} {a.get('state')} since {a.get('activeAt', '?')}" for a in mine]
    return verdict(f"no alerts firing for variant {variant}", expected=[], observed=observed,
                   problems=[f"alert {a['labels'].get('alertname', '?')} is firing for {variant}" for a in firing])


@check(negative=T + "test_a_canary_answer_without_usage_fails_the_functional_test")
def functional(status: int, body: Any, *, url: str) -> Verdict:
    """Checklist: a chat completion through the canary's endpoint answers 200 with a choice and its token
    usage (what the seed's functional tests and workers need)."""
    problems = []
    if status != 200:
        problems.append(f"HTTP {status}")
    doc = body if isinstance(body, dict) else {}
    if not doc.get("choices"):
        problems.append("no choices in the answer")
    usage = doc.get("usage") or {}
    total = usage.get("total_tokens")
    if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
        problems.append(f"no token usage in the answer ({usage or 'none'})")
    observed = {"status": status, "usage": usage, "model": doc.get("model")} if doc else {"status": status,
                                                                                           "body": str(body)[:200]}
    return verdict(f"functional test: POST {url}/v1/chat/completions", expected="200, a choice, usage.total_tokens > 0",
                   observed=observed, problems=problems, obj=url)


@check(negative=T + "test_a_canary_without_token_metrics_fails_the_checklist")
def tokens_counted(result: PresenceResult, *, variant: str) -> Verdict:
    """Checklist: token counting verified on the canary (``zai_proxy_tokens_total`` exported and rising while
    it served requests); too little traffic to tell is not a pass."""
    return gate(result, title=f"tokens counted on {variant}")


@check(negative=T + "test_no_worker_traffic_on_the_canary_fails_the_checklist")
def workers_used(requests: float, *, variant: str, span: float, minimum: float = 1) -> Verdict:
    """Checklist: at least one worker used the canary endpoint: requests on the canary variant over the span
    before the runbook's own functional test."""
    return verdict(f"workers used the {variant} endpoint", expected=f">= {minimum:g} requests in {span:g}s",
                   observed=f"{requests:g} requests", problems=[] if requests >= minimum else [
                       f"only {requests:g} requests on {variant} in the last {span:g}s: no worker has tested it"])


@check(negative=(T + "test_a_canary_tag_without_the_suffix_is_refused",
                 T + "test_canary_pods_running_another_image_are_refused"))
def canary_tag(image: str, pods: Sequence[PodInfo], *, container: str, suffix: str) -> Verdict:
    """Checklist: the canary's image tag is a release with the canary suffix (``1.3.0-canary``), and the
    canary's pods run that image (containerd's name for it, compared normalised)."""
    try:
        ref = parse(image)
        tag, digest = ref.tag or "", ref.digest
    except ConfigError as exc:
        tag, digest = "", str(exc)
    problems = []
    if digest:
        problems.append(f"the canary is pinned by digest ({image}): the promotion names the release by its tag, "
                        "so the production image would not be the canary's")
    if not tag.endswith(suffix) or not _RELEASE.match(tag):
        problems.append(f"the canary's tag {tag or '(none)'!r} is not <release>{suffix}")
    for p in pods:
        problems += _image_problems(p, container, image)
    return verdict("canary image tag confirmed", expected=f"<release>{suffix}, run by every canary pod",
                   observed={"template": image, "pods": _pods(pods, container)}, problems=problems, obj=image)


GateResult = WindowResult | LatencyResult | PresenceResult


@check(negative=(T + "test_a_failed_gate_fails", T + "test_an_inconclusive_gate_is_not_a_pass"))
def gate(result: GateResult, *, title: str = "") -> Verdict:
    """A gate's verdict as a check: pass passes; fail fails with the figures; inconclusive fails too (too
    little data stops a promotion, never passes it)."""
    problems = []
    if result.verdict == "fail":
        problems.append(f"{result.gate} gate failed: {result.reason}")
    elif result.verdict == "inconclusive":
        problems.append(f"{result.gate} gate inconclusive, the promotion stops: {result.reason}")
    return verdict(title or f"{result.gate} gate", expected="pass", observed=f"{result.verdict}: {result.reason}",
                   problems=problems)


@check(negative=(T + "test_a_pod_still_on_the_old_image_is_not_on_the_new_version",
                 T + "test_a_stale_version_label_is_caught"))
def on_version(status: RolloutStatus, pods: Sequence[PodInfo], *, container: str, image: str,
               version: str) -> Verdict:
    """Every pod of the Deployment runs ``image`` (containerd's status, normalised), is Ready and carries the
    ``version`` label; the rollout is complete (no pod of another revision left)."""
    problems = [] if pods else [f"deployment {status.deployment} has no pods"]
    if not status.done:
        problems.append(status.message)
    if status.images.get(container) and not same_image(status.images[container], image):
        problems.append(f"the template names {status.images[container]}, not {image}")
    for p in pods:
        problems += _image_problems(p, container, image)
        if not _has(p, container):
            continue
        if not p.ready:
            problems.append(f"pod {p.name} is not Ready")
        if p.labels.get("version") != version:
            problems.append(f"pod {p.name} is labelled version={p.labels.get('version')!r}, not {version!r} (the "
                            "seed's `kubectl get pods -o custom-columns=VERSION:.metadata.labels.version`)")
    return verdict(f"{status.deployment} on {image}", expected=f"every pod Ready on {image}, labelled {version}",
                   observed={"rollout": status.message, "revision": status.revision, "pods": _pods(pods, container)},
                   problems=problems, obj=status.deployment)


@check(negative=T + "test_a_history_without_the_revision_fails")
def revision_current(history: Sequence[Revision], status: RolloutStatus, *, images: Mapping[str, str]) -> Verdict:
    """After ``rollout undo --to-revision``: the newest revision carries the named revision's template (its
    images), and it is the Deployment's current revision."""
    newest = max(history, key=lambda r: r.number) if history else None
    problems = []
    if newest is None:
        problems.append("no revisions")
    else:
        if newest.number != status.revision:
            problems.append(f"the newest revision is {newest.number}, the Deployment's is {status.revision}")
        for name, image in images.items():
            if not same_image(newest.images.get(name, ""), image):
                problems.append(f"revision {newest.number} runs {newest.images.get(name)} in {name}, not {image}")
    return verdict(f"{status.deployment} history", expected={"current": images},
                   observed=[{"revision": r.number, "images": r.images, "cause": r.change_cause} for r in history],
                   problems=problems, obj=status.deployment)


@check(negative=(T + "test_a_lightweight_tag_is_not_a_release", T + "test_a_tag_on_a_commit_with_another_version"))
def tagged(info: TagInfo | None, *, tag: str, version: str, pushed: bool | None) -> Verdict:
    """Finalization: an annotated tag ``tag`` on a commit whose VERSION is ``version`` (no suffix), pushed
    when the env names a remote."""
    problems = []
    if info is None:
        problems.append(f"no tag {tag}")
    else:
        if not info.annotated:
            problems.append(f"{tag} is a lightweight tag, not an annotated one (`git tag -a`)")
        if info.version_file != version:
            problems.append(f"VERSION at {tag} ({info.commit[:12]}) says {info.version_file!r}, not {version!r}")
    if pushed is False:
        problems.append(f"{tag} is not on the remote")
    observed = None if info is None else {"commit": info.commit[:12], "annotated": info.annotated,
                                          "VERSION": info.version_file, "pushed": pushed}
    return verdict(f"release {tag}", expected={"annotated": True, "VERSION": version}, observed=observed,
                   problems=problems, obj=tag)


@check(negative=(T + "test_a_dirty_release_repo_is_refused", T + "test_an_existing_release_tag_is_refused"))
def release_repo_ready(repo: GitRepo, *, tag: str) -> Verdict:
    """Finalization can run: the release repository is a git checkout with no uncommitted change and no tag
    ``tag`` yet (a tag that exists names a release already made)."""
    problems, observed = [], {}
    if not repo.is_repo():
        problems.append(f"{repo.path} is not a git repository")
    else:
        dirty = repo.dirty()
        info = repo.tag(tag)
        observed = {"path": str(repo.path), "VERSION": repo.version(), "uncommitted": dirty,
                    "tag": None if info is None else info.commit[:12]}
        if dirty:
            problems.append(f"{repo.path} has uncommitted changes: {dirty[:5]}")
        if info is not None:
            problems.append(f"tag {tag} already exists (on {info.commit[:12]}): this release was made already")
    return verdict("release repository ready", expected={"clean": True, "tag": None}, observed=observed,
                   problems=problems, obj=str(repo.path))


@check(negative=T + "test_a_thin_baseline_is_inconclusive")
def baseline(base: Baseline, gates: CanaryGates) -> Verdict:
    """Production's baseline, measured before the rollout, holds enough requests for the latency gate to
    compare against (fewer: inconclusive, the promotion does not start)."""
    observations = max(base.buckets.values(), default=0.0)
    problems = [] if observations >= gates.min_requests else [
        f"production's baseline holds {observations:g} requests in {base.end - base.start:g}s, fewer than the "
        f"{gates.min_requests} the gates need: inconclusive, the promotion does not start"]
    return verdict("production baseline", expected=f">= {gates.min_requests} requests in {gates.baseline:g}s",
                   observed={"requests": base.requests, "errors": base.errors, "observations": observations},
                   problems=problems)


GATES = {"error rate": "error rate, moving window", "latency": "latency", "tokens": "presence"}
"""A gate as a scenario names it -> the gate's own name in its verdict."""

CHECKLIST = ("canary.canary_healthy", "canary.no_alerts_firing", "canary.functional", "canary.tokens_counted",
             "canary.workers_used", "canary.canary_tag", "canary.release_repo_ready", "canary.baseline")
"""The seed's pre-promotion checklist, one check per item (and the baseline the gates need), as recorded."""


@check(negative=(T + "test_a_checklist_with_an_item_missing_is_not_ticked",
                 T + "test_a_checklist_with_a_failed_item_is_not_ticked"))
def checklist_ticked(recorded: Mapping[str, str]) -> Verdict:
    """Every checklist item has a verdict in the evidence, and each passed (``recorded``: check name -> status
    as the report holds it)."""
    problems = [f"{name}: no verdict recorded" for name in CHECKLIST if name not in recorded]
    problems += [f"{name}: {recorded[name]}" for name in CHECKLIST if recorded.get(name, "passed") != "passed"]
    return verdict("the pre-promotion checklist", expected={n: "passed" for n in CHECKLIST},
                   observed={n: recorded.get(n, "(none)") for n in CHECKLIST}, problems=problems)


@check(negative=(T + "test_a_failure_at_another_step_is_not_the_gates",
                 T + "test_a_promotion_that_passed_did_not_fail_at_its_gate"))
def failed_at_gate(result: RunResult | None, journal: Mapping[str, Any], *, gate: str) -> Verdict:
    """The promotion failed at roll-out because ``gate`` failed (the checklist had passed), and the automatic
    undo ran: the journal says rolled back."""
    problems = []
    steps = {s.name: (s.status, s.error) for s in result.steps} if result else {}
    if result is None:
        problems.append("the procedure did not finish")
    else:
        if result.ok:
            problems.append("the promotion succeeded")
        if steps.get("checklist", ("",))[0] not in ("done", "skipped (already done)"):
            problems.append(f"the checklist did not pass: {steps.get('checklist')}")
        status, error = steps.get("roll-out", ("not run", ""))
        if status != "failed":
            problems.append(f"roll-out: {status}, not failed")
        elif f"{GATES.get(gate, gate)} gate failed" not in error:
            problems.append(f"roll-out failed, but not at the {gate} gate: {error[:300]}")
        if not result.rolled_back:
            problems.append("no automatic undo ran")
    if journal.get("status") != "rolled back":
        problems.append(f"the journal says {journal.get('status')!r}, not 'rolled back'")
    return verdict(f"failed at the {gate} gate, then undone", expected=f"roll-out failed: {gate} gate failed; "
                   "rolled back", observed={"steps": {k: v[0] for k, v in steps.items()},
                                            "error": result.error[:400] if result else None,
                                            "journal": journal.get("status")}, problems=problems)


@check(negative=(T + "test_a_refusal_for_another_reason_is_not_this_one", T + "test_a_run_that_acted_was_not_refused"))
def refused_at_checklist(result: RunResult | None, journal: Mapping[str, Any], *, item: str) -> Verdict:
    """The promotion stopped at its checklist, for ``item`` (the error names it), before changing anything
    (no step acted)."""
    problems = []
    if result is None:
        problems.append("the procedure did not finish")
    else:
        failed = [s for s in result.steps if s.status == "failed"]
        if result.ok or not failed:
            problems.append("the promotion was not refused")
        elif failed[0].name != "checklist":
            problems.append(f"it failed at {failed[0].name}, not at the checklist: {failed[0].error[:300]}")
        elif item not in failed[0].error:
            problems.append(f"the checklist failed, but not for {item!r}: {failed[0].error[:300]}")
    acted = [a for a in journal.get("acted", []) if a != "checklist"]
    if acted:
        problems.append(f"steps acted before the refusal: {acted}")
    return verdict(f"refused at the checklist: {item}", expected={"failed at": "checklist", "reason": item,
                                                                  "acted": []},
                   observed={"error": result.error[:400] if result else None, "acted": journal.get("acted")},
                   problems=problems)


@check(negative=T + "test_a_new_revision_is_a_change")
def revision_unchanged(status: RolloutStatus, *, before: int) -> Verdict:
    """Production's Deployment is still at the revision it had before (nothing was rolled out)."""
    return verdict(f"{status.deployment} revision unchanged", expected=before, observed=status.revision,
                   problems=[] if status.revision == before and status.done else [
                       f"{status.deployment} is at revision {status.revision} ({status.message}), was {before}"],
                   obj=status.deployment)


@check(negative=T + "test_a_tag_left_behind_is_found")
def not_tagged(info: TagInfo | None, *, tag: str) -> Verdict:
    """No release tag: a promotion that did not finish made no release."""
    return verdict(f"no release tag {tag}", expected=None,
                   observed=None if info is None else {"commit": info.commit[:12], "VERSION": info.version_file},
                   problems=[] if info is None else [f"tag {tag} exists on {info.commit[:12]}"], obj=tag)

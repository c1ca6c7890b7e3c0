"""The canary promotion's checks (runbook/checks/canary.py): each fails on its trap, naming what is wrong,
and passes on the good case. Inputs are the plain values the adapters return (PodInfo, RolloutStatus,
Revision, RunResult), gate results computed by runbook.canary on real numbers, and a real git repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runbook.adapters.base import ContainerStatus, PodInfo, Revision, RolloutStatus
from runbook.adapters.git_repo import GitRepo
from runbook.canary.evaluate import Baseline
from runbook.canary.gates import latency_gate, presence_gate
from runbook.canary.promql import TOKENS
from runbook.canary.window import Counts, moving_window_error_gate
from runbook.checks import canary
from runbook.env_canary import CanaryGates
from runbook.procedures.framework import RunResult, StepOutcome

OLD, NEW, CANARY = "zai-proxy:1.2.0", "zai-proxy:1.3.0", "zai-proxy:1.3.0-canary"
BASE = {0.005: 500.0, 0.01: 900.0, 0.025: 990.0, 0.05: 1000.0, float("inf"): 1000.0}  # p95 ~18 ms
SLOW = {0.05: 100.0, 0.1: 500.0, 0.25: 900.0, 0.5: 1000.0, float("inf"): 1000.0}  # p95 ~375 ms


def _pod(name: str, image: str, *, ready: bool = True, version: str = "1.3.0") -> PodInfo:
    c = ContainerStatus("proxy", "app", image, f"sha256:{name}", "running" if ready else "waiting", None, 0, ready,
                        reason="" if ready else "ContainersNotReady")
    return PodInfo(name, name.rsplit("-", 2)[0], "Running", (c,), labels={"version": version})


def _status(deployment: str = "zai-proxy", *, replicas: int = 2, updated: int = 2, available: int = 2,
            revision: int = 3, image: str = NEW) -> RolloutStatus:
    return RolloutStatus(deployment, 4, 4, 2, replicas, updated, available, available, revision, {"proxy": image})


def _window(errors_per_step: float, requests_per_step: float, steps: int = 12) -> canary.GateResult:
    """The moving-window error gate over ``steps`` samples 5 s apart (30 s windows, 200 requests needed)."""
    samples = [Counts(5.0 * k, requests_per_step * k, errors_per_step * k) for k in range(steps + 1)]
    return moving_window_error_gate(samples, window=30, step=5, threshold=0.05, min_requests=200)


# --------------------------------------------------------------------------- the checklist
def test_a_canary_with_a_pod_not_ready_is_not_healthy() -> None:
    pods = [_pod("zai-proxy-test-7f9c-a1", CANARY), _pod("zai-proxy-test-7f9c-b2", CANARY)]
    assert canary.canary_healthy(_status("zai-proxy-test"), pods, container="proxy").ok
    pods[1] = _pod("zai-proxy-test-7f9c-b2", CANARY, ready=False)
    v = canary.canary_healthy(_status("zai-proxy-test"), pods, container="proxy")
    assert v.problems == ("pod zai-proxy-test-7f9c-b2 is not Ready",)
    assert v.observed["pods"]["zai-proxy-test-7f9c-b2"]["state"] == "waiting:ContainersNotReady"
    rolling = canary.canary_healthy(_status("zai-proxy-test", available=1), pods[:1], container="proxy")
    assert rolling.problems == ('Waiting for deployment "zai-proxy-test" rollout to finish: 1 of 2 updated replicas '
                                "are available...",)
    assert "deployment zai-proxy-test has no pods" in canary.canary_healthy(_status("zai-proxy-test"), [],
                                                                             container="proxy").problems


def test_a_firing_alert_for_the_canary_fails_the_checklist() -> None:
    alerts = [{"labels": {"alertname": "ProxyErrors", "variant": "production"}, "state": "firing"},
              {"labels": {"alertname": "ProxyErrors", "variant": "canary"}, "state": "pending", "activeAt": "t0"}]
    quiet = canary.no_alerts_firing(alerts, variant="canary")
    assert quiet.ok and quiet.observed == ["ProxyErrors pending since t0"]  # production's alert is not the canary's
    alerts[1]["state"] = "firing"
    v = canary.no_alerts_firing(alerts, variant="canary")
    assert v.problems == ("alert ProxyErrors is firing for canary",)


def test_a_canary_answer_without_usage_fails_the_functional_test() -> None:
    url = "http://zai-proxy-test:8080"
    good = {"model": "glm-4", "choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}
    assert canary.functional(200, good, url=url).ok
    no_usage = canary.functional(200, {"model": "glm-4", "choices": good["choices"]}, url=url)
    assert no_usage.problems == ("no token usage in the answer (none)",)
    zero = canary.functional(200, {**good, "usage": {"total_tokens": 0}}, url=url)
    assert zero.problems == ("no token usage in the answer ({'total_tokens': 0})",)
    broken = canary.functional(500, "upstream error", url=url)
    assert broken.problems == ("HTTP 500", "no choices in the answer", "no token usage in the answer (none)")
    assert broken.observed == {"status": 500, "body": "upstream error"}


def test_a_canary_without_token_metrics_fails_the_checklist() -> None:
    assert canary.tokens_counted(presence_gate(TOKENS, 360.0, 30), variant="canary").ok
    missing = canary.tokens_counted(presence_gate(TOKENS, None, 30), variant="canary")
    assert missing.problems == (f"presence gate failed: {TOKENS} is not exported while 30 requests were served",)
    assert missing.title == "tokens counted on canary"
    flat = canary.tokens_counted(presence_gate(TOKENS, 0.0, 30), variant="canary")
    assert flat.problems == (f"presence gate failed: {TOKENS} did not increase while 30 requests were served",)
    idle = canary.tokens_counted(presence_gate(TOKENS, None, 0), variant="canary")  # no traffic: not a pass
    assert not idle.ok and "inconclusive" in idle.problems[0]


def test_no_worker_traffic_on_the_canary_fails_the_checklist() -> None:
    assert canary.workers_used(3, variant="canary", span=300).ok
    v = canary.workers_used(0, variant="canary", span=300)
    assert v.problems == ("only 0 requests on canary in the last 300s: no worker has tested it",)
    assert not canary.workers_used(4, variant="canary", span=300, minimum=5).ok


def test_a_canary_tag_without_the_suffix_is_refused() -> None:
    pods = [_pod("zai-proxy-test-7f9c-a1", CANARY)]
    assert canary.canary_tag(CANARY, pods, container="proxy", suffix="-canary").ok
    # an image without a tag is :latest, as a container runtime reads it
    for image, tag in ((NEW, "1.3.0"), ("zai-proxy:latest-canary", "latest-canary"), ("zai-proxy", "latest")):
        running = [_pod("zai-proxy-test-7f9c-a1", image)]
        v = canary.canary_tag(image, running, container="proxy", suffix="-canary")
        assert v.problems == (f"the canary's tag {tag!r} is not <release>-canary",), image
    pinned = CANARY + "@sha256:" + "ab" * 32  # a digest: promoting by tag would not promote this image
    v = canary.canary_tag(pinned, [_pod("zai-proxy-test-7f9c-a1", pinned)], container="proxy", suffix="-canary")
    assert v.problems and "pinned by digest" in v.problems[0]


def test_canary_pods_running_another_image_are_refused() -> None:
    # containerd's full name for the same image is the same image
    same = [_pod("zai-proxy-test-7f9c-a1", "docker.io/library/" + CANARY)]
    assert canary.canary_tag(CANARY, same, container="proxy", suffix="-canary").ok
    pods = [_pod("zai-proxy-test-7f9c-a1", CANARY), _pod("zai-proxy-test-6d2b-b2", "zai-proxy:1.2.0-canary")]
    v = canary.canary_tag(CANARY, pods, container="proxy", suffix="-canary")
    assert v.problems == (f"pod zai-proxy-test-6d2b-b2 runs zai-proxy:1.2.0-canary, not {CANARY}",)
    other = canary.canary_tag(CANARY, pods[:1], container="sidecar", suffix="-canary")
    assert other.problems == ("pod zai-proxy-test-7f9c-a1 has no container sidecar",)


# --------------------------------------------------------------------------- gates
def test_a_failed_gate_fails() -> None:
    good = canary.gate(_window(0, 100))  # 0 errors in 1,200 requests
    assert good.ok and good.observed.startswith("pass: ")
    v = canary.gate(_window(20, 100))  # 20% errors on 1,200 requests
    assert len(v.problems) == 1 and v.problems[0].startswith("error rate, moving window gate failed: a burst from")
    assert "240 errors in 1,200 requests (20%)" in v.problems[0]
    slow = canary.gate(latency_gate(SLOW, BASE, min_observations=200), title="latency")
    assert slow.problems[0].startswith("latency gate failed: p95 375 ms over 1,000 requests, baseline 18.3 ms")
    assert canary.gate(latency_gate(BASE, BASE, min_observations=200)).ok


def test_an_inconclusive_gate_is_not_a_pass() -> None:
    thin = _window(0, 5)  # 0 errors in 60 requests: too few to pass (200 needed)
    assert thin.verdict == "inconclusive"
    v = canary.gate(thin)
    assert v.problems[0].startswith("error rate, moving window gate inconclusive, the promotion stops: ")
    assert "0 errors in 60 requests" in v.problems[0]
    few = canary.gate(latency_gate({0.01: 50.0, float("inf"): 50.0}, BASE, min_observations=200))
    assert not few.ok and "too few observations to compare" in few.problems[0]
    assert not canary.gate(presence_gate(TOKENS, 10.0, 5, min_requests=200)).ok


def test_a_thin_baseline_is_inconclusive() -> None:
    gates = CanaryGates(min_requests=200, baseline=30)
    assert canary.baseline(Baseline(970.0, 1000.0, BASE, 1000.0, 0.0), gates).ok
    thin = {le: c / 10 for le, c in BASE.items()}
    v = canary.baseline(Baseline(970.0, 1000.0, thin, 100.0, 0.0), gates)
    assert v.problems == ("production's baseline holds 100 requests in 30s, fewer than the 200 the gates need: "
                          "inconclusive, the promotion does not start",)
    assert not canary.baseline(Baseline(970.0, 1000.0, {}, 0.0, 0.0), gates).ok  # no histogram at all


# --------------------------------------------------------------------------- rollout
def test_a_pod_still_on_the_old_image_is_not_on_the_new_version() -> None:
    pods = [_pod("zai-proxy-5c8d-a1", NEW), _pod("zai-proxy-5c8d-b2", NEW)]
    assert canary.on_version(_status(), pods, container="proxy", image=NEW, version="1.3.0").ok
    pods.append(_pod("zai-proxy-4b7a-c3", OLD, version="1.2.0"))
    v = canary.on_version(_status(replicas=3), pods, container="proxy", image=NEW, version="1.3.0")
    assert v.problems[0] == ('Waiting for deployment "zai-proxy" rollout to finish: 1 old replicas are pending '
                             "termination...")
    assert f"pod zai-proxy-4b7a-c3 runs {OLD}, not {NEW}" in v.problems
    undone = canary.on_version(_status(image=OLD), pods[:2], container="proxy", image=NEW, version="1.3.0")
    assert undone.problems == (f"the template names {OLD}, not {NEW}",)


def test_a_stale_version_label_is_caught() -> None:
    pods = [_pod("zai-proxy-5c8d-a1", NEW), _pod("zai-proxy-5c8d-b2", NEW, version="1.2.0")]
    v = canary.on_version(_status(), pods, container="proxy", image=NEW, version="1.3.0")
    assert len(v.problems) == 1
    assert v.problems[0].startswith("pod zai-proxy-5c8d-b2 is labelled version='1.2.0', not '1.3.0'")


def test_a_history_without_the_revision_fails() -> None:
    history = [Revision(1, {"proxy": OLD}, {}), Revision(2, {"proxy": NEW}, {}), Revision(3, {"proxy": OLD}, {})]
    assert canary.revision_current(history, _status(revision=3), images={"proxy": OLD}).ok
    v = canary.revision_current(history[:2], _status(revision=2), images={"proxy": OLD})
    assert v.problems == (f"revision 2 runs {NEW} in proxy, not {OLD}",)
    stale = canary.revision_current(history, _status(revision=2), images={"proxy": OLD})
    assert stale.problems == ("the newest revision is 3, the Deployment's is 2",)
    assert canary.revision_current([], _status(), images={"proxy": OLD}).problems == ("no revisions",)


def test_a_new_revision_is_a_change() -> None:
    assert canary.revision_unchanged(_status(revision=2), before=2).ok
    v = canary.revision_unchanged(_status(revision=3), before=2)
    assert v.problems == ('zai-proxy is at revision 3 (deployment "zai-proxy" successfully rolled out), was 2',)
    assert not canary.revision_unchanged(_status(revision=2, updated=1), before=2).ok  # rolling: not unchanged


# --------------------------------------------------------------------------- the release repository
def _git(path: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def release(tmp_path: Path) -> GitRepo:
    path = tmp_path / "canary-release"
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    for key, value in (("user.name", "Runbook Test"), ("user.email", "runbook@example.invalid"),
                       ("commit.gpgsign", "false"), ("tag.gpgsign", "false")):
        _git(path, "config", key, value)
    repo = GitRepo(path)
    repo.commit_version("1.2.0", "release 1.2.0")
    return repo


def test_a_lightweight_tag_is_not_a_release(release: GitRepo) -> None:
    head = release.commit_version("1.3.0", "release 1.3.0")
    info = release.create_tag("v1.3.0", "release 1.3.0", head)
    assert canary.tagged(info, tag="v1.3.0", version="1.3.0", pushed=None).ok
    assert canary.tagged(info, tag="v1.3.0", version="1.3.0", pushed=True).ok
    unpushed = canary.tagged(info, tag="v1.3.0", version="1.3.0", pushed=False)
    assert unpushed.problems == ("v1.3.0 is not on the remote",)
    _git(release.path, "tag", "v1.3.1")
    light = canary.tagged(release.tag("v1.3.1"), tag="v1.3.1", version="1.3.0", pushed=None)
    assert light.problems == ("v1.3.1 is a lightweight tag, not an annotated one (`git tag -a`)",)
    assert canary.tagged(None, tag="v1.3.2", version="1.3.2", pushed=None).problems == ("no tag v1.3.2",)


def test_a_tag_on_a_commit_with_another_version(release: GitRepo) -> None:
    head = release.commit_version("1.3.0-canary", "the canary's version")
    info = release.create_tag("v1.3.0", "release 1.3.0", head)
    v = canary.tagged(info, tag="v1.3.0", version="1.3.0", pushed=None)
    assert v.problems == (f"VERSION at v1.3.0 ({head[:12]}) says '1.3.0-canary', not '1.3.0'",)
    release.commit_version("1.3.0", "release 1.3.0")  # VERSION right at HEAD, but the tag is on the commit before
    assert not canary.tagged(release.tag("v1.3.0"), tag="v1.3.0", version="1.3.0", pushed=None).ok


def test_a_dirty_release_repo_is_refused(release: GitRepo, tmp_path: Path) -> None:
    ready = canary.release_repo_ready(release, tag="v1.3.0")
    assert ready.ok and ready.observed["VERSION"] == "1.2.0"
    (release.path / "VERSION").write_text("1.3.0-wip\n")
    (release.path / "notes.txt").write_text("draft\n")
    v = canary.release_repo_ready(release, tag="v1.3.0")
    assert v.problems == (f"{release.path} has uncommitted changes: [' M VERSION', '?? notes.txt']",)
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    assert canary.release_repo_ready(GitRepo(plain), tag="v1.3.0").problems == (f"{plain} is not a git repository",)


def test_an_existing_release_tag_is_refused(release: GitRepo) -> None:
    head = release.commit_version("1.3.0", "release 1.3.0")
    release.create_tag("v1.3.0", "release 1.3.0", head)
    v = canary.release_repo_ready(release, tag="v1.3.0")
    assert v.problems == (f"tag v1.3.0 already exists (on {head[:12]}): this release was made already",)
    assert canary.release_repo_ready(release, tag="v1.4.0").ok


def test_a_tag_left_behind_is_found(release: GitRepo) -> None:
    assert canary.not_tagged(release.tag("v1.3.0"), tag="v1.3.0").ok
    head = release.commit_version("1.3.0", "release 1.3.0")
    release.create_tag("v1.3.0", "release 1.3.0", head)
    v = canary.not_tagged(release.tag("v1.3.0"), tag="v1.3.0")
    assert v.problems == (f"tag v1.3.0 exists on {head[:12]}",)


# --------------------------------------------------------------------------- the run's outcome
def test_a_checklist_with_an_item_missing_is_not_ticked() -> None:
    ticked = dict.fromkeys(canary.CHECKLIST, "passed")
    assert canary.checklist_ticked(ticked).ok
    del ticked["canary.workers_used"]
    v = canary.checklist_ticked(ticked)
    assert v.problems == ("canary.workers_used: no verdict recorded",)
    assert v.observed["canary.workers_used"] == "(none)"


def test_a_checklist_with_a_failed_item_is_not_ticked() -> None:
    recorded = {**dict.fromkeys(canary.CHECKLIST, "passed"), "canary.functional": "failed"}
    assert canary.checklist_ticked(recorded).problems == ("canary.functional: failed",)
    skipped = {**dict.fromkeys(canary.CHECKLIST, "passed"), "canary.no_alerts_firing": "skipped"}
    assert canary.checklist_ticked(skipped).problems == ("canary.no_alerts_firing: skipped",)  # a skip is no tick


ERROR_GATE = canary.gate(_window(20, 100)).message  # what the roll-out step's CheckFailed says
LATENCY_GATE = canary.gate(latency_gate(SLOW, BASE, min_observations=200)).message
STEPS = ("checklist", "roll-out", "verify", "finalize")


def _run(failed_at: str | None, error: str = "", *, rolled_back: bool = True) -> RunResult:
    if failed_at is None:
        return RunResult("canary-promote", True, [StepOutcome(s, "done") for s in STEPS])
    steps = [StepOutcome(s, "done") for s in STEPS[:STEPS.index(failed_at)]]
    steps.append(StepOutcome(failed_at, "failed", 12.0, error))
    if rolled_back:
        steps.append(StepOutcome("(rollback)", "rolled back"))
    return RunResult("canary-promote", False, steps, error, rolled_back=rolled_back)


def test_a_failure_at_another_step_is_not_the_gates() -> None:
    undone = {"status": "rolled back"}
    assert canary.failed_at_gate(_run("roll-out", ERROR_GATE), undone, gate="error rate").ok
    assert canary.failed_at_gate(_run("roll-out", LATENCY_GATE), undone, gate="latency").ok
    other = canary.failed_at_gate(_run("roll-out", LATENCY_GATE), undone, gate="error rate")
    assert other.problems == (f"roll-out failed, but not at the error rate gate: {LATENCY_GATE[:300]}",)
    early = canary.failed_at_gate(_run("checklist", "canary.functional: HTTP 500"), undone, gate="error rate")
    assert early.problems[:2] == ("the checklist did not pass: ('failed', 'canary.functional: HTTP 500')",
                                  "roll-out: not run, not failed")
    kept = canary.failed_at_gate(_run("roll-out", ERROR_GATE, rolled_back=False), {"status": "failed"},
                                 gate="error rate")
    assert kept.problems == ("no automatic undo ran", "the journal says 'failed', not 'rolled back'")


def test_a_promotion_that_passed_did_not_fail_at_its_gate() -> None:
    v = canary.failed_at_gate(_run(None), {"status": "done"}, gate="error rate")
    assert v.problems == ("the promotion succeeded", "roll-out: done, not failed", "no automatic undo ran",
                          "the journal says 'done', not 'rolled back'")
    assert canary.failed_at_gate(None, {}, gate="error rate").problems[0] == "the procedure did not finish"


def test_a_refusal_for_another_reason_is_not_this_one() -> None:
    refused = _run("checklist", "canary.functional: no token usage in the answer (none)", rolled_back=False)
    journal = {"status": "failed", "acted": []}
    assert canary.refused_at_checklist(refused, journal, item="no token usage").ok
    other = canary.refused_at_checklist(refused, journal, item="not Ready")
    assert other.problems == ("the checklist failed, but not for 'not Ready': canary.functional: no token usage in "
                              "the answer (none)",)
    later = canary.refused_at_checklist(_run("roll-out", ERROR_GATE), journal, item="no token usage")
    assert later.problems == (f"it failed at roll-out, not at the checklist: {ERROR_GATE[:300]}",)


def test_a_run_that_acted_was_not_refused() -> None:
    refused = _run("checklist", "canary.canary_tag: the canary's tag '1.3.0' is not <release>-canary",
                   rolled_back=False)
    assert canary.refused_at_checklist(refused, {"acted": ["checklist"]}, item="canary_tag").ok
    acted = canary.refused_at_checklist(refused, {"acted": ["checklist", "roll-out"]}, item="canary_tag")
    assert acted.problems == ("steps acted before the refusal: ['roll-out']",)
    ran = canary.refused_at_checklist(_run(None), {"acted": list(STEPS)}, item="canary_tag")
    assert ran.problems == ("the promotion was not refused",
                            "steps acted before the refusal: ['roll-out', 'verify', 'finalize']")

"""The release checks (runbook/checks/release.py): each fails on its trap, naming what is wrong, and passes on the
good case. Inputs are the plain values the adapters return (RolloutStatus, PodInfo, objects as dicts) and the
release state as runbook.procedures.release_state parses it."""

from __future__ import annotations

from runbook.adapters.base import ContainerStatus, PodInfo, RolloutStatus
from runbook.checks import release as rc
from runbook.procedures import release_state as rs


def _status(name: str, *, ready: int = 2, desired: int = 2, generation: int = 1, observed: int = 1) -> RolloutStatus:
    return RolloutStatus(name, generation, observed, desired, desired, desired, ready, ready, 1, {})


def _pod(name: str, *, state: str = "running", reason: str = "", restarts: int = 0) -> PodInfo:
    c = ContainerStatus("storage", "app", "docker.io/e6data/storage:1.1.0", "sha256:x", state,  # type: ignore[arg-type]
                        None, restarts, state == "running", reason=reason)
    return PodInfo(name, "meta-storage-green", "Running" if state == "running" else "Pending", (c,))


def test_a_colour_with_a_deployment_short_of_ready_replicas_is_not_ready() -> None:
    good = {"meta-storage-green": _status("meta-storage-green"), "meta-schema-green": _status("meta-schema-green")}
    assert rc.colour_ready("green", good).ok
    short = dict(good, **{"meta-schema-green": _status("meta-schema-green", ready=1)})
    assert rc.colour_ready("green", short).problems == ("deployment meta-schema-green: 1 of 2 replicas ready",)
    unobserved = dict(good, **{"meta-schema-green": _status("meta-schema-green", generation=2, observed=1)})
    assert "not yet observed" in rc.colour_ready("green", unobserved).problems[0]
    missing = dict(good, **{"meta-schema-green": None})
    assert rc.colour_ready("green", missing).problems == ("deployment meta-schema-green does not exist",)


def test_an_image_that_cannot_be_pulled_is_a_failure() -> None:
    ok = {"meta-storage-green": [_pod("a"), _pod("b")]}
    assert rc.colour_not_failing("green", ok, max_restarts=3).ok
    pulling = {"meta-storage-green": [_pod("a", state="waiting", reason="ImagePullBackOff")]}
    v = rc.colour_not_failing("green", pulling, max_restarts=3)
    assert v.problems == ("meta-storage-green: pod a container storage is ImagePullBackOff",)
    creating = {"meta-storage-green": [_pod("a", state="waiting", reason="ContainerCreating")]}
    assert rc.colour_not_failing("green", creating, max_restarts=3).ok  # still starting: not a failure


def test_a_crash_loop_is_a_failure_by_its_restart_count_whatever_its_current_state() -> None:
    looping = {"meta-storage-green": [_pod("a", state="waiting", reason="CrashLoopBackOff", restarts=1)]}
    assert "CrashLoopBackOff" in rc.colour_not_failing("green", looping, max_restarts=3).problems[0]
    # running right now, between two crashes: the restart count says what it is
    between = {"meta-storage-green": [_pod("a", restarts=3)]}
    v = rc.colour_not_failing("green", between, max_restarts=3)
    assert v.problems == ("meta-storage-green: pod a container storage restarted 3 times (crash loop; limit 3)",)


def test_ready_for_less_than_the_grace_period_is_not_held() -> None:
    assert rc.ready_held("green", ready_since=100.0, now=103.5, grace=3.0).ok
    assert rc.ready_held("green", ready_since=100.0, now=101.0, grace=3.0).problems == (
        "ready for 1.0s of the 3s grace period",)
    assert rc.ready_held("green", ready_since=None, now=101.0, grace=3.0).problems == ("not ready",)


def _common(storage: str, schema: str) -> dict:
    return {"metadata": {"name": "demo-common"},
            "data": {"config.properties": f"STORAGE_SERVICE_HOST={storage}\nSCHEMA_SERVICE_HOST={schema}\n"}}


def test_a_common_configmap_naming_the_old_colour_fails() -> None:
    want = {"STORAGE_SERVICE_HOST": "meta-storage-green", "SCHEMA_SERVICE_HOST": "meta-schema-green"}
    assert rc.common_names(_common("meta-storage-green", "meta-schema-green"), hosts=want).ok
    v = rc.common_names(_common("meta-storage-green", "meta-schema-blue"), hosts=want)
    assert v.problems == ("SCHEMA_SERVICE_HOST=meta-schema-blue, not meta-schema-green",)
    assert rc.common_names(None, hosts=want).problems == ("the common ConfigMap does not exist",)


def test_a_client_still_on_the_old_colour_has_not_switched() -> None:
    want = {"storage": "meta-storage-green", "schema": "meta-schema-green"}
    assert rc.clients_switched({"gw-1": dict(want), "gw-2": dict(want)}, hosts=want).ok
    old = {"storage": "meta-storage-blue", "schema": "meta-schema-blue"}
    v = rc.clients_switched({"gw-1": dict(want), "gw-2": old}, hosts=want)
    assert v.problems == ("gw-2 still uses {'storage': 'meta-storage-blue', 'schema': 'meta-schema-blue'}",)
    assert rc.clients_switched({"gw-1": "cannot read its config: exec failed"}, hosts=want).problems == (
        "gw-1: cannot read its config: exec failed",)
    assert rc.clients_switched({}, hosts=want).problems == ("no client pod to ask",)


def test_a_colour_with_an_object_left_is_not_gone() -> None:
    assert rc.colour_gone("blue", []).ok
    assert rc.colour_gone("blue", ["Service/meta-schema-blue"]).problems == ("Service/meta-schema-blue still exists",)


def _objects(rv: str = "7") -> dict:
    return {"Deployment/meta-storage-blue": {"metadata": {"uid": "u1", "resourceVersion": rv}},
            "Service/meta-storage-blue": {"metadata": {"uid": "u2", "resourceVersion": "3"}}}


def test_an_active_colour_with_a_deleted_object_was_touched() -> None:
    before = rc.snapshot(_objects(), [_pod("meta-storage-blue-1")])
    assert rc.untouched("blue", before, rc.snapshot(_objects(), [_pod("meta-storage-blue-1")])).ok
    gone = dict(_objects(), **{"Service/meta-storage-blue": None})
    v = rc.untouched("blue", before, rc.snapshot(gone, [_pod("meta-storage-blue-1")]))
    assert v.problems == ("Service/meta-storage-blue: u2@3 -> missing",)
    changed = rc.snapshot(_objects(rv="8"), [_pod("meta-storage-blue-1")])
    assert rc.untouched("blue", before, changed).problems == ("Deployment/meta-storage-blue: u1@7 -> u1@8",)


def test_an_active_pod_replaced_or_restarted_was_touched() -> None:
    before = rc.snapshot(_objects(), [_pod("meta-storage-blue-1")])
    restarted = rc.snapshot(_objects(), [_pod("meta-storage-blue-1", restarts=1)])
    assert rc.untouched("blue", before, restarted).problems == (
        "pod/meta-storage-blue-1: {'storage': 0} -> {'storage': 1}",)
    replaced = rc.snapshot(_objects(), [_pod("meta-storage-blue-2")])
    assert len(rc.untouched("blue", before, replaced).problems) == 2


def _rec(version: str, colour: str, status: str) -> rs.Record:
    return rs.Record(version, colour, {"storage": version, "schema": version}, "2026-11-30T03:00:00Z", status)  # type: ignore[arg-type]


def test_a_state_still_deploying_is_not_released() -> None:
    done = rs.State(phase="Stable", active="green", history=[_rec("1.0.0", "blue", "Superseded"),
                                                             _rec("1.1.0", "green", "Active")])
    assert rc.released(done, version="1.1.0", colour="green").ok
    deploying = rs.State(phase="Deploying", active="blue", pending="green",
                         history=[_rec("1.0.0", "blue", "Active")])
    v = rc.released(deploying, version="1.1.0", colour="green")
    assert v.problems == ("phase Deploying, not Stable", "active colour blue, not green",
                          "the Active record is 1.0.0 on blue, not 1.1.0 on green")


def test_a_history_with_a_wrong_status_or_length_fails() -> None:
    hist = [_rec("1.0.0", "blue", "Superseded"), _rec("1.1.0", "green", "Active")]
    assert rc.history_is(hist, [("1.0.0", "Superseded"), ("1.1.0", "Active")]).ok
    assert not rc.history_is(hist, [("1.0.0", "Active"), ("1.1.0", "Active")]).ok
    assert not rc.history_is(hist, [("1.1.0", "Active")]).ok


def test_a_switch_before_the_grace_period_is_caught_from_the_watchers_timeline() -> None:
    samples = [(t / 10, t >= 20) for t in range(0, 100)]  # ready from 2.0 s, sampled every 0.1 s
    assert rc.switched_after_grace(samples, switched_at=5.5, grace=3.0, colour="green").ok
    v = rc.switched_after_grace(samples, switched_at=2.5, grace=3.0, colour="green")
    assert v.problems == ("switched to green after it had been ready for 0.5s (grace 3s)",)
    flapping = [(t / 10, t >= 20 and t != 40) for t in range(0, 100)]  # not ready at 4.0 s: the grace restarts
    assert not rc.switched_after_grace(flapping, switched_at=5.5, grace=3.0, colour="green").ok
    assert rc.switched_after_grace(samples, switched_at=1.0, grace=3.0, colour="green").problems == (
        "switched to green while it was not ready",)
    assert not rc.switched_after_grace(samples, switched_at=None, grace=3.0, colour="green").ok


# --------------------------------------------------------------------------- the state and its history
def test_the_history_keeps_ten_and_supersedes_the_active_record() -> None:
    hist: list[rs.Record] = []
    for i in range(11):
        hist = rs.add_record(hist, _rec(f"1.{i}.0", "blue" if i % 2 else "green", "Active"), 10)
    assert [r.version for r in hist] == [f"1.{i}.0" for i in range(1, 11)]
    assert [r.status for r in hist] == ["Superseded"] * 9 + ["Active"]
    failed = rs.set_status(hist, "1.10.0", "green", "Failed")
    assert failed[-1].status == "Failed" and hist[-1].status == "Active"  # a new list; the old one unchanged


def test_the_state_round_trips_and_a_malformed_one_is_refused() -> None:
    import pytest

    from runbook.errors import ConfigError

    st = rs.State(phase="Deploying", active="blue", pending="green", pending_deployed_at=12.5,
                  target=rs.Target("1.1.0", {"storage": "1.1.0", "schema": "1.1.0"}),
                  history=[_rec("1.0.0", "blue", "Active")])
    back = rs.parse(st.to_data())
    assert (back.phase, back.pending, back.pending_deployed_at, back.target, back.history) == (
        "Deploying", "green", 12.5, st.target, st.history)
    with pytest.raises(ConfigError, match="malformed"):
        rs.parse({"state.json": "{", "history.json": "[]"})
    with pytest.raises(ConfigError, match="unknown phase 'Sideways'"):
        rs.parse({"state.json": '{"phase": "Sideways"}'})


def _blue() -> list[dict]:
    from runbook.env_release import ReleaseConfig

    c = ReleaseConfig(url="http://127.0.0.1:1")
    out = []
    for comp in c.components:
        name = c.name(comp, "blue")
        labels = {"app": "meta", "component": comp, "colour": "blue", "version": "1.0.0"}
        props = f"COMPONENT={comp}\nCOLOUR=blue\n"
        out += [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": dict(labels),
                 "uid": "u", "resourceVersion": "4"}, "data": {"service.properties": props}},
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": dict(labels)},
                 "spec": {"clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"], "ports": [{"port": 8080}],
                          "selector": {"app": "meta", "component": comp, "colour": "blue"}}},
                {"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": name, "labels": dict(labels), "generation": 3,
                              "annotations": {"deployment.kubernetes.io/revision": "2", "team": "meta"}},
                 "status": {"readyReplicas": 2},
                 "spec": {"selector": {"matchLabels": {"app": "meta", "component": comp, "colour": "blue"}},
                          "template": {"metadata": {"labels": dict(labels)},
                                       "spec": {"containers": [{"name": comp, "image": f"e6data/{comp}:1.0.0"}],
                                                "volumes": [{"name": "cfg", "configMap": {"name": name}}]}}}}]
    return out


def test_the_new_colour_is_derived_from_the_live_one_renamed_relabelled_and_retagged() -> None:
    from runbook.env_release import ReleaseConfig

    c = ReleaseConfig(url="http://127.0.0.1:1")
    target = rs.Target("1.1.0", {"storage": "1.1.0-crash", "schema": "1.1.0"})
    green = {(o["kind"], o["metadata"]["name"]): o for o in rs.derive(_blue(), c, src="blue", dst="green",
                                                                        target=target)}
    dep = green[("Deployment", "meta-storage-green")]
    assert dep["spec"]["selector"]["matchLabels"]["colour"] == "green"
    assert dep["spec"]["template"]["metadata"]["labels"] == {"app": "meta", "component": "storage",
                                                             "colour": "green", "version": "1.1.0"}
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "e6data/storage:1.1.0-crash"
    assert dep["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == "meta-storage-green"
    assert "status" not in dep and "generation" not in dep["metadata"]
    assert dep["metadata"]["annotations"] == {"team": "meta"}  # the controller's revision dropped, the rest kept
    svc = green[("Service", "meta-schema-green")]
    assert svc["spec"]["selector"]["colour"] == "green" and "clusterIP" not in svc["spec"]
    cm = green[("ConfigMap", "meta-schema-green")]
    assert cm["data"]["service.properties"] == "COMPONENT=schema\nCOLOUR=green\n"
    assert "uid" not in cm["metadata"] and "resourceVersion" not in cm["metadata"]
    assert [k for k, _ in green] == ["ConfigMap", "ConfigMap", "Service", "Service", "Deployment", "Deployment"]


def test_a_colour_missing_an_object_cannot_be_derived_from() -> None:
    import pytest

    from runbook.env_release import ReleaseConfig
    from runbook.errors import ConfigError

    c = ReleaseConfig(url="http://127.0.0.1:1")
    partial = [o for o in _blue() if o["metadata"]["name"] != "meta-schema-blue" or o["kind"] != "Service"]
    with pytest.raises(ConfigError, match="colour blue has no Service meta-schema-blue"):
        rs.derive(partial, c, src="blue", dst="green", target=rs.Target("1.1.0", {"storage": "1", "schema": "1"}))


def _result(step: str, status: str, seconds: float, error: str, *, rolled_back: bool = True) -> object:
    from runbook.procedures.framework import RunResult, StepOutcome

    return RunResult("release", False, [StepOutcome("deploy", "done", 0.3),
                                        StepOutcome(step, status, seconds, error)], error, rolled_back=rolled_back)


def test_a_rollback_for_another_step_or_reason_fails() -> None:
    ok = _result("await-ready", "failed", 4.0, "colour green not failing: ... is CrashLoopBackOff")
    assert rc.rolled_back_for(ok, {"status": "rolled back"}, step="await-ready", reason="CrashLoopBackOff",  # type: ignore[arg-type]
                              within=25).ok
    wrong = _result("await-ready", "failed", 4.0, "colour green ready: 1 of 2 replicas ready")
    v = rc.rolled_back_for(wrong, {"status": "rolled back"}, step="await-ready", reason="CrashLoopBackOff",  # type: ignore[arg-type]
                           within=25)
    assert v.problems == ("await-ready failed without naming CrashLoopBackOff: colour green ready: 1 of 2 replicas "
                          "ready",)
    other = _result("switch", "failed", 4.0, "CrashLoopBackOff")
    assert "failed at switch, not at await-ready" in rc.rolled_back_for(
        other, {"status": "rolled back"}, step="await-ready", reason="CrashLoopBackOff", within=25).problems[0]  # type: ignore[arg-type]
    kept = _result("await-ready", "failed", 4.0, "CrashLoopBackOff", rolled_back=False)
    assert not rc.rolled_back_for(kept, {"status": "failed"}, step="await-ready", reason="CrashLoopBackOff",  # type: ignore[arg-type]
                                  within=25).ok


def test_a_failure_found_after_the_deadline_fails() -> None:
    late = _result("await-ready", "failed", 31.0, "timed out ... CrashLoopBackOff")
    v = rc.rolled_back_for(late, {"status": "rolled back"}, step="await-ready", reason="CrashLoopBackOff",  # type: ignore[arg-type]
                           within=25)
    assert v.problems == ("await-ready failed after 31.0s, past 25s",)


def test_a_failed_first_release_that_was_deleted_or_not_recorded_fails() -> None:
    objs = ["ConfigMap/meta-storage-blue", "Deployment/meta-storage-blue"]
    st = rs.State(phase="Failed", history=[_rec("1.0.0", "blue", "Failed")])
    assert rc.first_release_failed(st, version="1.0.0", colour="blue", present=objs, expected=objs).ok
    v = rc.first_release_failed(st, version="1.0.0", colour="blue", present=objs[:1], expected=objs)
    assert v.problems == ("deleted, though there was nothing to roll back to: ['Deployment/meta-storage-blue']",)
    stable = rs.State(phase="Stable", history=[])
    assert len(rc.first_release_failed(stable, version="1.0.0", colour="blue", present=objs, expected=objs)
               .problems) == 2


def test_a_run_that_was_not_stopped_at_that_phase_fails() -> None:
    at = rs.State(phase="Switching")
    assert rc.phase_is(at, phase="Switching", interrupted="interrupted after await-ready").ok
    assert rc.phase_is(at, phase="Switching", interrupted="").problems == ("the run was not interrupted",)
    assert rc.phase_is(rs.State(phase="Stable"), phase="Switching", interrupted="x").problems == (
        "the release state is at Stable, not Switching",)


def test_a_second_run_that_repeated_a_step_did_not_resume() -> None:
    from runbook.procedures.framework import RunResult

    ok = RunResult("release", True, [])
    assert rc.resumed(ok, {"acted": ["switch", "cleanup"]}, before=["deploy", "await-ready"]).ok
    v = rc.resumed(ok, {"acted": ["deploy", "await-ready", "switch", "cleanup"]}, before=["deploy", "await-ready"])
    assert v.problems == ("deploy acted again", "await-ready acted again")
    assert not rc.resumed(RunResult("release", False, [], "boom"), {"acted": []}, before=["deploy"]).ok

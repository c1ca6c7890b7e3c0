"""Sidecar restart isolation (spec step 2, design traps 5 and 6).

Patching a running pod's native-sidecar image must restart *only* that sidecar. The check compares two
observations of the same pod, one before and one after the patch, and must not pass vacuously: it proves
the sidecar DID restart (restartCount + 1, running, on the new image, with a new imageID) as well as that
agave did not (same pod, same startedAt, same restartCount), and that the tunnel's routes stayed in the
kernel. A Deployment-template patch (the pod replaced, agave included) and a patch that restarts nothing
both fail it, each with what was expected and what was observed.

Observations are plain, JSON-able values: a procedure keeps its "before" in its journal.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from runbook.adapters.base import ContainerStatus, Host, PodInfo, Workloads
from runbook.checks.core import Verdict, check, skipped, verdict
from runbook.images import same_image


@dataclass(frozen=True)
class ContainerView:
    """What the isolation check compares of one container (from its status, never from a stand-in flag)."""

    name: str
    kind: str
    image: str
    image_id: str
    state: str
    started_at: str  # ISO 8601; "" when not running
    restart_count: int
    pid: int | None = None  # the local testbed's process; None on Kubernetes

    @classmethod
    def of(cls, c: ContainerStatus) -> ContainerView:
        return cls(c.name, c.kind, c.image, c.image_id, c.state,
                   c.started_at.isoformat() if c.started_at else "", c.restart_count, c.pid)


@dataclass(frozen=True)
class Observation:
    """One pod of a Deployment, its sidecar and app containers, and the tunnel's routes on the host."""

    deployment: str
    pod: str  # the pod asked about
    pods: tuple[str, ...]  # the Deployment's pods when observed
    sidecar: ContainerView | None  # None: the pod is gone
    app: ContainerView | None
    spec_image: str  # the sidecar's image in the pod spec ("" when the pod is gone)
    template_image: str  # the sidecar's image in the Deployment's pod template
    routes: tuple[str, ...] | None = None  # None: not observed

    @property
    def present(self) -> bool:
        return self.pod in self.pods and self.sidecar is not None

    def as_dict(self) -> dict[str, Any]:
        """JSON-native (lists, not tuples): the same before and after a trip through a journal."""
        return dict(json.loads(json.dumps(asdict(self))))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Observation:
        def view(v: dict[str, Any] | None) -> ContainerView | None:
            return ContainerView(**v) if v else None

        routes = d.get("routes")
        return cls(deployment=d["deployment"], pod=d["pod"], pods=tuple(d["pods"]), sidecar=view(d["sidecar"]),
                   app=view(d["app"]), spec_image=d["spec_image"], template_image=d["template_image"],
                   routes=tuple(routes) if routes is not None else None)


def _view(pod: PodInfo, name: str) -> ContainerView | None:
    try:
        return ContainerView.of(pod.container(name))
    except KeyError:
        return None


def observe(workloads: Workloads, host: Host | None, *, deployment: str, pod: str, sidecar: str, app: str,
            interface: str | None = None) -> Observation:
    """Read the pod (found among the Deployment's pods, so a replaced pod shows as gone) and the routes."""
    pods = workloads.pods(deployment)
    mine = next((p for p in pods if p.name == pod), None)
    template = next((p.template_images.get(sidecar, "") for p in pods), "")
    routes = tuple(sorted(host.routes(interface))) if host is not None and interface else None
    if mine is None:
        return Observation(deployment, pod, tuple(p.name for p in pods), None, None, "", template, routes)
    return Observation(deployment, pod, tuple(p.name for p in pods), _view(mine, sidecar), _view(mine, app),
                       mine.spec_images.get(sidecar, ""), mine.template_images.get(sidecar, template), routes)


# ----------------------------------------------------------------------------------- problems
@dataclass(frozen=True)
class Problem:
    what: str
    expected: Any
    observed: Any

    def __str__(self) -> str:
        return f"{self.what}: expected {self.expected!r}, observed {self.observed!r}"


def app_problems(before: Observation, after: Observation) -> list[Problem]:
    """agave must not have restarted: same pod, same startedAt, same restartCount, still running; and the
    Deployment template untouched (a template change makes the controller replace the whole pod)."""
    out: list[Problem] = []
    if after.template_image != before.template_image:
        out.append(Problem("agave restarted or will: the Deployment template was changed (its sidecar image), so "
                           "the controller replaces the whole pod, agave included",
                           before.template_image, after.template_image))
    if not after.present:
        out.append(Problem(f"agave restarted: pod {before.pod} was replaced (the Deployment's pods now)",
                           [before.pod], list(after.pods)))
        return out
    b, a = before.app, after.app
    if b is None or a is None:
        out.append(Problem("agave container status", b and b.name, a and a.name))
        return out
    if a.restart_count != b.restart_count:
        out.append(Problem(f"agave restarted: {a.name} restartCount", b.restart_count, a.restart_count))
    if a.started_at != b.started_at:
        out.append(Problem(f"agave restarted: {a.name} startedAt", b.started_at, a.started_at))
    if a.pid is not None and b.pid is not None and a.pid != b.pid:
        out.append(Problem(f"agave restarted: {a.name} process", b.pid, a.pid))
    if a.state != "running":
        out.append(Problem(f"{a.name} state", "running", a.state))
    return out


def sidecar_problems(before: Observation, after: Observation, *, image: str) -> list[Problem]:
    """The sidecar must have restarted exactly once, be running, on ``image``, with a new imageID."""
    if not after.present or before.sidecar is None:
        return [Problem(f"the sidecar of pod {before.pod} (the pod is gone)", "the same pod", list(after.pods))]
    b, a = before.sidecar, after.sidecar
    assert a is not None
    out: list[Problem] = []
    if a.restart_count != b.restart_count + 1:
        why = "the sidecar did not restart" if a.restart_count == b.restart_count else "the sidecar restarted " \
            f"{a.restart_count - b.restart_count} times"
        out.append(Problem(f"{why}: {a.name} restartCount", b.restart_count + 1, a.restart_count))
    if a.state != "running":
        out.append(Problem(f"{a.name} state", "running", f"{a.state}"))
    if not same_image(a.image, image):
        out.append(Problem(f"{a.name} running image", image, a.image))
    if not same_image(after.spec_image, image):
        out.append(Problem(f"{a.name} image in the pod spec", image, after.spec_image))
    if a.image_id == b.image_id:
        out.append(Problem(f"{a.name} imageID unchanged (the old image still runs)", f"not {b.image_id}", a.image_id))
    return out


def sidecar_back_problems(before: Observation, after: Observation, *, restarts: int) -> list[Problem]:
    """After an upgrade and its rollback: the same sidecar image (and imageID) as ``before`` runs again, after
    exactly ``restarts`` restarts."""
    if not after.present or before.sidecar is None:
        return [Problem(f"the sidecar of pod {before.pod} (the pod is gone)", "the same pod", list(after.pods))]
    b, a = before.sidecar, after.sidecar
    assert a is not None
    out: list[Problem] = []
    if a.restart_count != b.restart_count + restarts:
        out.append(Problem(f"{a.name} restartCount", b.restart_count + restarts, a.restart_count))
    if not (same_image(a.image, b.image) and a.image_id == b.image_id and a.state == "running"):
        out.append(Problem(f"{a.name} image, imageID, state", [b.image, b.image_id, "running"],
                           [a.image, a.image_id, a.state]))
    if not same_image(after.spec_image, before.spec_image):
        out.append(Problem(f"{a.name} image in the pod spec", before.spec_image, after.spec_image))
    return out


def route_problems(before: Observation, after: Observation, *, interface: str) -> list[Problem]:
    """The routes on the tunnel interface are the same set as before (and there were some to compare)."""
    if before.routes is None or after.routes is None:
        return [Problem(f"routes on {interface} were not observed", "observed before and after",
                        {"before": before.routes, "after": after.routes})]
    if not before.routes:
        return [Problem(f"no routes on {interface} before the restart: their survival proves nothing",
                        "at least one route", [])]
    if set(after.routes) != set(before.routes):
        missing = sorted(set(before.routes) - set(after.routes))
        extra = sorted(set(after.routes) - set(before.routes))
        return [Problem(f"routes on {interface} changed (missing {missing}, new {extra})",
                        sorted(before.routes), sorted(after.routes))]
    return []


def restart_settled(before: Observation, after: Observation, *, image: str) -> bool:
    """Stop waiting: the sidecar is back on ``image`` after a restart, or agave was disturbed (no point
    waiting for a pod that is gone or a template that changed)."""
    if app_problems(before, after):
        return True
    a, b = after.sidecar, before.sidecar
    return (a is not None and b is not None and a.state == "running" and same_image(a.image, image)
            and a.restart_count > b.restart_count and a.image_id != b.image_id)


_NEG = "tests/procedures/test_dz_upgrade.py::"


def _verdict(title: str, problems: list[Problem], *, expected: Any, observed: Any, obj: str) -> Verdict:
    return verdict(title, expected=expected, observed=observed, problems=[str(p) for p in problems], obj=obj)


def _container(view: ContainerView | None) -> dict[str, Any] | None:
    return None if view is None else {"image": view.image, "imageID": view.image_id, "state": view.state,
                                      "startedAt": view.started_at, "restartCount": view.restart_count}


@check(negative=(f"{_NEG}test_isolation_does_not_pass_vacuously",
                 f"{_NEG}test_isolation_names_each_way_agave_was_disturbed"))
def isolation(before: Observation, after: Observation, *, image: str, interface: str | None) -> Verdict:
    """Everything at once: agave untouched, the sidecar restarted once on ``image``, routes kept
    (``interface`` None: routes not checked, the caller states why)."""
    problems = app_problems(before, after) + sidecar_problems(before, after, image=image)
    if interface is not None:
        problems += route_problems(before, after, interface=interface)
    return _verdict(f"sidecar restart isolation in pod {before.pod}", problems, obj=before.pod,
                    expected={"agave": _container(before.app), "sidecar image": image},
                    observed={"pods": list(after.pods), "agave": _container(after.app),
                              "sidecar": _container(after.sidecar)})


@check(negative=(f"{_NEG}test_isolation_does_not_pass_vacuously",
                 f"{_NEG}test_a_patch_that_restarts_nothing_fails_isolation"))
def sidecar_restarted(before: Observation, after: Observation, *, image: str, which: str) -> Verdict:
    """The sidecar restarted exactly once, is running ``image`` (the ``which`` image: new or previous) with a
    new imageID, in the same pod."""
    b = before.sidecar
    expected = b and {"restartCount": b.restart_count + 1, "state": "running", "image": image,
                      "imageID": f"not {b.image_id}"}
    return _verdict(f"the sidecar restarted once, on the {which} image", sidecar_problems(before, after, image=image),
                    expected=expected, observed=_container(after.sidecar), obj=before.pod)


@check(negative=(f"{_NEG}test_isolation_names_each_way_agave_was_disturbed",
                 f"{_NEG}test_patching_the_template_instead_fails_isolation_agave_restarted"))
def app_untouched(before: Observation, now: Observation) -> Verdict:
    """agave was not restarted: the same pod, startedAt and restartCount, and the Deployment template
    untouched (a template change makes the controller replace the whole pod)."""
    return _verdict("agave not restarted (same pod, startedAt, restartCount)", app_problems(before, now),
                    expected={"pod": before.pod, "template": before.template_image, **(_container(before.app) or {})},
                    observed={"pods": list(now.pods), "template": now.template_image, **(_container(now.app) or {})},
                    obj=before.pod)


def route_problems_throughout(start: Observation, samples: list[Observation], end: Observation,
                              interface: str) -> list[Problem]:
    """Routes equal before and after, and none missing from any sample taken during the restart."""
    problems = route_problems(start, end, interface=interface)
    if not problems and start.routes:
        gaps = [sorted(set(start.routes) - set(s.routes)) for s in samples if s.routes is not None
                and not set(start.routes) <= set(s.routes)]
        if gaps:
            problems.append(Problem(f"routes on {interface} went missing during the restart ({len(gaps)} of "
                                    f"{len(samples)} samples)", "always present", gaps[0]))
    return problems


@check(negative=(f"{_NEG}test_isolation_names_each_way_agave_was_disturbed",
                 "tests/checks/test_isolation_checks.py::test_routes_missing_in_one_sample_fail"))
def routes_kept(start: Observation, samples: list[Observation], end: Observation, *, interface: str,
                skip_reason: str = "") -> Verdict:
    """The routes on the DoubleZero interface are the same after the restart and present in every sample
    taken during it. Without CAP_NET_ADMIN the testbed has no node network namespace: skipped with that
    reason, and the rest of the scenario runs."""
    title = f"routes on {interface} (before vs after, and in {len(samples)} samples during the restart)"
    if skip_reason:
        return skipped(title, skip_reason, expected="the same routes throughout")
    return _verdict(title, route_problems_throughout(start, samples, end, interface),
                    expected=list(start.routes or []), observed=list(end.routes or []), obj=interface)


@check(negative="tests/checks/test_isolation_checks.py::test_another_pod_or_agave_restarted_fails_in_place")
def upgraded_in_place(before: Observation, now: Observation, *, image: str, pod: str, upgraded: str) -> Verdict:
    """After the procedure: the scenario's pod (the one the procedure patched) runs ``image`` in its sidecar,
    restarted once, and agave was not restarted."""
    problems = app_problems(before, now) + sidecar_problems(before, now, image=image)
    if upgraded != pod:
        problems.append(Problem("the procedure upgraded another pod than the scenario's", pod, upgraded))
    return _verdict(f"sidecar on {image} in pod {pod}, agave not restarted", problems,
                    expected={"pod": pod, "sidecar image": image, "agave": _container(before.app)},
                    observed={"pods": list(now.pods), "sidecar": _container(now.sidecar), "agave": _container(now.app)},
                    obj=pod)


@check(negative="tests/checks/test_isolation_checks.py::test_a_rollback_that_left_the_new_image_fails")
def restored_in_place(before: Observation, now: Observation, *, restarts: int) -> Verdict:
    """After an upgrade and its rollback: the previous sidecar image (and imageID) runs again in the same pod,
    after exactly ``restarts`` restarts, and agave was not restarted."""
    want = {**(_container(before.sidecar) or {}), "restartCount": f"before + {restarts}"}
    return _verdict("the sidecar back on its previous image, agave not restarted",
                    app_problems(before, now) + sidecar_back_problems(before, now, restarts=restarts),
                    expected={"sidecar": want, "agave": _container(before.app)},
                    observed={"sidecar": _container(now.sidecar), "agave": _container(now.app)}, obj=before.pod)


@check(negative="tests/checks/test_isolation_checks.py::test_a_rollback_that_left_the_new_image_fails")
def back_on(before: Observation, now: Observation, *, image: str) -> Verdict:
    """Steady state after a rollback: the same pod, agave untouched, the sidecar running ``image`` (the old)."""
    problems = app_problems(before, now)
    if now.sidecar is None or not same_image(now.sidecar.image, image) or now.sidecar.state != "running":
        problems.append(Problem("sidecar after the rollback", image,
                                now.sidecar and f"{now.sidecar.image} ({now.sidecar.state})"))
    return _verdict("as before the upgrade", problems, expected={"sidecar": image, "agave": _container(before.app)},
                    observed={"sidecar": _container(now.sidecar), "agave": _container(now.app)}, obj=before.pod)


@check(negative="tests/checks/test_isolation_checks.py::test_a_wrong_version_fails")
def sidecar_version(observed: str, *, expected: str) -> Verdict:
    """``doublezero --version`` in the sidecar reports ``expected`` (its last word, without a leading v)."""
    words = observed.split()
    ok = bool(words) and words[-1].lstrip("v") == expected.lstrip("v")
    return verdict("doublezero --version in the sidecar", expected=expected, observed=observed,
                   problems=[] if ok else [f"expected {expected!r}, observed {observed!r}"])


@check(negative="tests/checks/test_isolation_checks.py::test_drift_checks_fail_on_the_trap")
def drift(*, pod: str, template: str, running: str, want_template: str, want_running: str) -> Verdict:
    """After an in-place patch the pod drifts from its Deployment: the template keeps the old image (it was
    not patched: that would restart agave) and the pod runs the new one."""
    problems = [] if same_image(template, want_template) and same_image(running, want_running) else [
        f"drift of {pod}: expected the template to keep {want_template!r} and the pod to run {want_running!r}, "
        f"observed template {template!r}, pod {running!r}"]
    return verdict("drift from the Deployment template", expected={"template": want_template, "pod": want_running},
                   observed={"template": template, "pod": running}, problems=problems, obj=pod)


@check(negative="tests/checks/test_isolation_checks.py::test_drift_checks_fail_on_the_trap")
def no_drift(pod: str, drift: dict[str, list[str]]) -> Verdict:
    """The pod runs what its Deployment template says (after the rollback patched the old image back)."""
    return verdict("drift from the Deployment template", expected={}, observed=drift, obj=pod,
                   problems=[f"pod {pod} still drifts from its template: {drift}"] if drift else [])


# ----------------------------------------------------------------------------------- native sidecar
# (the check itself: runbook.checks.required.native_sidecar, one for the audit and the DZ procedure)
def sidecar_index(pod: PodInfo, sidecar: str) -> int | None:
    """Position of ``sidecar`` in ``spec.initContainers`` (native sidecars are listed in spec order;
    run-to-completion init containers, which the adapters do not report, would shift it)."""
    sidecars = [c.name for c in pod.containers if c.kind == "sidecar"]
    return sidecars.index(sidecar) if sidecar in sidecars else None

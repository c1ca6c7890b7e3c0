"""Procedure 1 (dz-upgrade) and its isolation check, against the session's testbed: the happy path passes,
and each broken variant fails for the right reason (design trap 5). Every test leaves green as it found it.

- a "procedure" that patches the Deployment template instead of the running pod fails: agave restarted
  (the pod was replaced);
- a sidecar "patch" that restarts nothing fails: the sidecar's restartCount did not change;
- doublezerod as a regular container instead of a native sidecar fails the precondition, and nothing is
  patched.
"""

from __future__ import annotations

import copy
import dataclasses
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from runbook.adapters.base import ContainerStatus, PodInfo
from runbook.adapters.factory import Adapters
from runbook.checks import isolation as iso
from runbook.checks import required
from runbook.checks.core import judge
from runbook.checks.workloads import running_pod
from runbook.env import Env
from runbook.errors import AdapterError, CheckFailed, PreconditionFailed
from runbook.manifests import APP_CONTAINER, render_deployment, set_arg
from runbook.procedures import bluegreen as bg
from runbook.procedures import dz_upgrade as dz
from runbook.procedures.framework import Context, Interrupted, Journal, Procedure, RunResult
from runbook.testbed import netns
from runbook.testbed.stack import Testbed
from runbook.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.doublezero]

TARGET = "v0.6.1"
PLAIN = "agave-dzplain"  # the throwaway deployment with doublezerod as a regular container


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture
def green(adapters: Adapters, testbed: Testbed | None) -> Iterator[str]:
    """Green's sidecar image at the start; afterwards green is put back: template and pod on that image, one
    running pod, answering `ok` and serving the ingress."""
    env = adapters.env
    if testbed is None:
        pytest.skip(f"env {env.name} has no local testbed: these tests break the pod on purpose")
    sidecar, name = env.doublezero.sidecar, env.deployments.green.name
    pod = running_pod(adapters.workloads, name)
    old = pod.template_images[sidecar]
    _restore(adapters, old)
    yield old
    _restore(adapters, old)


def _restore(adapters: Adapters, image: str) -> None:
    env, wl = adapters.env, adapters.workloads
    sidecar, name = env.doublezero.sidecar, env.deployments.green.name
    pods = wl.pods(name)
    if any(p.template_images.get(sidecar) != image for p in pods):
        wl.patch_template_container_image(name, sidecar, image)  # replaces the pod
    for p in wl.pods(name):
        if p.spec_images.get(sidecar) != image:
            wl.patch_pod_container_image(p.name, sidecar, image)
    wl.wait_rollout(name, timeout=env.timeouts.rollout)
    wait_for(lambda: (bg.observe_node(env, "green").health, bg.served_by(env)), lambda s: s == ("ok", "green"),
             timeout=env.timeouts.healthy, tolerate=(AdapterError,), what="green to answer ok and serve the ingress")


def _fast(adapters: Adapters, seconds: float = 4.0) -> Adapters:
    """The same adapters with a short sidecar-restart deadline (negative tests wait it out)."""
    timeouts = adapters.env.timeouts.model_copy(update={"sidecar_restart": seconds})
    return dataclasses.replace(adapters, env=adapters.env.model_copy(update={"timeouts": timeouts}))


def _ctx(adapters: Adapters, testbed: Testbed | None, log: list[str]) -> Context:
    reason = f"no network namespace: {netns.net_admin_reason()}" if testbed is not None and not testbed.netns else ""
    return dz.context(adapters, target_version=TARGET, colour="green", skip_routes_reason=reason,
                      progress=log.append, record=lambda title, data: log.append(f"{title}: {data}"))


def _broken(action: Callable[[Context], None]) -> Procedure:
    step = dataclasses.replace(dz.PROCEDURE.steps[0], action=action)
    return dataclasses.replace(dz.PROCEDURE, steps=(step, *dz.PROCEDURE.steps[1:]))


def _run(proc: Procedure, ctx: Context, tmp_path: Path) -> RunResult:
    return proc.run(ctx, journal=Journal(tmp_path / "journal.json"), rollback="none")


# ----------------------------------------------------------------------------------- happy path
def test_upgrade_restarts_only_the_sidecar_and_rolls_back(adapters: Adapters, testbed: Testbed | None, green: str,
                                                           tmp_path: Path) -> None:
    log: list[str] = []
    ctx = _ctx(adapters, testbed, log)
    journal = Journal(tmp_path / "journal.json")
    result = dz.PROCEDURE.run(ctx, journal=journal)
    assert result.ok, result.error
    before, after = dz.before(ctx), dz.observe_now(ctx)
    assert iso.sidecar_problems(before, after, image=bg.image_with_tag(green, TARGET)) == []
    assert iso.app_problems(before, after) == []
    assert any("DRIFT" in line and "REVERTS" in line for line in log), log
    drift = adapters.workloads.pod(before.pod).drift
    assert drift == {adapters.env.doublezero.sidecar: (green, ctx.facts.target_image)}

    # a re-run converges: already at the target, nothing patched, nothing restarted
    again = _ctx(adapters, testbed, log)
    assert dz.PROCEDURE.run(again, journal=Journal(tmp_path / "again.json")).ok
    assert again.facts.already_at_target is True
    assert dz.observe_now(ctx).sidecar == after.sidecar

    dz.PROCEDURE.roll_back(ctx, journal)
    end = dz.observe_now(ctx)
    assert iso.sidecar_back_problems(before, end, restarts=2) == []
    assert iso.app_problems(before, end) == []
    assert adapters.workloads.pod(before.pod).drift == {}


def test_an_interrupted_run_resumes_without_patching_again(adapters: Adapters, testbed: Testbed | None, green: str,
                                                          tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.json")
    first = _ctx(adapters, testbed, [])
    with pytest.raises(Interrupted):
        dz.PROCEDURE.run(first, journal=journal, interrupt_after="patch-sidecar")
    after_first = dz.observe_now(first)
    resumed = _ctx(adapters, testbed, [])
    result = dz.PROCEDURE.run(resumed, journal=journal)
    assert result.ok, result.error
    assert result.outcome("patch-sidecar").status == "skipped (already done)"
    assert resumed.facts.before == first.facts.before  # the journal's facts, not a new "before"
    assert dz.observe_now(resumed).sidecar == after_first.sidecar  # no second restart
    dz.PROCEDURE.roll_back(resumed, journal)
    assert iso.sidecar_back_problems(dz.before(resumed), dz.observe_now(resumed), restarts=2) == []


# ----------------------------------------------------------------------------------- negative tests
def test_patching_the_template_instead_fails_isolation_agave_restarted(
        adapters: Adapters, testbed: Testbed | None, green: str, tmp_path: Path) -> None:
    def patch_template(ctx: Context) -> None:
        ctx.adapters.workloads.patch_template_container_image(ctx.facts.deployment, ctx.env.doublezero.sidecar,
                                                              ctx.facts.target_image)

    ctx = _ctx(adapters, testbed, [])
    result = _run(_broken(patch_template), ctx, tmp_path)
    assert not result.ok
    assert result.outcome("patch-sidecar").status == "failed"
    assert "agave restarted" in result.error and f"pod {ctx.facts.pod} was replaced" in result.error, result.error
    assert "Deployment template was changed" in result.error, result.error
    # the failure is real: the pod (agave with it) is gone
    assert ctx.facts.pod not in [p.name for p in adapters.workloads.pods(ctx.facts.deployment)]


@pytest.mark.parametrize("broken", ["same image", "no patch"])
def test_a_patch_that_restarts_nothing_fails_isolation(adapters: Adapters, testbed: Testbed | None, green: str,
                                                       tmp_path: Path, broken: str) -> None:
    def same_image(ctx: Context) -> None:
        ctx.adapters.workloads.patch_pod_container_image(ctx.facts.pod, ctx.env.doublezero.sidecar,
                                                         ctx.facts.old_image)

    ctx = _ctx(_fast(adapters), testbed, [])
    result = _run(_broken(same_image if broken == "same image" else lambda ctx: None), ctx, tmp_path)
    assert not result.ok
    restarts = dz.before(ctx).sidecar.restart_count  # type: ignore[union-attr]
    assert "the sidecar did not restart" in result.error, result.error
    assert f"restartCount: expected {restarts + 1}, observed {restarts}" in result.error, result.error
    assert "imageID unchanged" in result.error, result.error
    assert "agave restarted" not in result.error, result.error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _plain_manifest(env: Env, tmp_path: Path, port: int) -> dict[str, Any]:
    """Green's Deployment with doublezerod moved to the regular containers, under a throwaway name."""
    dep = render_deployment(env, "green", host_paths={"ledger": str(tmp_path / "ledger"),
                                                      "accounts": str(tmp_path / "accounts")})
    dep["metadata"]["name"] = PLAIN
    spec = dep["spec"]["template"]["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == env.doublezero.sidecar)
    spec["initContainers"] = [c for c in spec["initContainers"] if c is not sidecar]
    regular = copy.deepcopy(sidecar)
    regular.pop("restartPolicy")
    spec["containers"].insert(0, regular)
    app = next(c for c in spec["containers"] if c["name"] == APP_CONTAINER)
    app["args"][app["args"].index("--rpc-port") + 1] = str(port)
    # beside green on one host network: blue's gossip ports and identity (agave's gossip makes the older
    # instance of an identity exit; a gossip port is bound once)
    blue = env.deployments.blue
    if blue.gossip_port is not None and blue.dynamic_port_range is not None:
        set_arg(app["args"], "--gossip-port", str(blue.gossip_port), where=PLAIN)
        set_arg(app["args"], "--dynamic-port-range", blue.dynamic_port_range, where=PLAIN)
    for vol in spec["volumes"]:
        if vol["name"] == "identity" and blue.identity:
            vol["hostPath"]["path"] = blue.identity
    return dep


@pytest.fixture
def plain(adapters: Adapters, green: str, tmp_path: Path) -> Iterator[Adapters]:
    """A throwaway deployment whose doublezerod is a regular container; adapters whose green names it."""
    env, port = adapters.env, _free_port()
    adapters.workloads.apply_deployment(_plain_manifest(env, tmp_path, port))
    try:
        adapters.workloads.wait_rollout(PLAIN, timeout=env.timeouts.rollout)
        green_cfg = env.deployments.green.model_copy(update={"name": PLAIN, "rpc_port": port})
        deps = env.deployments.model_copy(update={"green": green_cfg})
        yield dataclasses.replace(adapters, env=env.model_copy(update={"deployments": deps}))
    finally:
        adapters.workloads.delete_deployment(PLAIN)


def test_doublezerod_as_a_regular_container_fails_the_precondition(plain: Adapters, testbed: Testbed | None,
                                                                   tmp_path: Path) -> None:
    pod = running_pod(plain.workloads, PLAIN)
    assert pod.container(plain.env.doublezero.sidecar).kind == "app"
    ctx = _ctx(plain, testbed, [])
    result = _run(dz.PROCEDURE, ctx, tmp_path)
    assert not result.ok
    assert result.outcome("patch-sidecar").status == "failed"
    assert "a regular (app) container" in result.error and "native sidecar" in result.error, result.error
    assert "restartPolicy: Always" in result.error
    # nothing was patched or restarted
    now = dz.observe_now(ctx)
    assert now.spec_image == ctx.facts.old_image
    assert now.sidecar == dz.before(ctx).sidecar and now.app == dz.before(ctx).app


# ----------------------------------------------------------------------------------- pure checks
T0 = "2026-01-01T00:00:00+00:00"


def _status(name: str, kind: str, image: str, restarts: int, started: str = T0) -> ContainerStatus:
    return ContainerStatus(name, kind, image, f"id-{image}", "running", datetime.fromisoformat(started),  # type: ignore[arg-type]
                           restarts, True)


def _obs(sidecar_image: str, sidecar_restarts: int, *, app_started: str = T0,
         routes: tuple[str, ...] | None = ("192.0.2.10 via 169.254.0.0 proto bgp",), pod: str = "p1",
         template: str = "dz:v0.6.0") -> iso.Observation:
    sidecar = iso.ContainerView.of(_status("doublezerod", "sidecar", sidecar_image, sidecar_restarts))
    app = iso.ContainerView.of(_status(APP_CONTAINER, "app", "agave:v2.1.0", 0, app_started))
    return iso.Observation("agave-green", "p1", (pod,), sidecar, app, sidecar_image, template, routes)


def test_isolation_does_not_pass_vacuously() -> None:
    before = _obs("dz:v0.6.0", 0)
    with pytest.raises(CheckFailed, match=r"the sidecar did not restart.*expected 1, observed 0"):
        judge(None, iso.isolation(before, before, image="dz:v0.6.0", interface="doublezero0"))
    with pytest.raises(CheckFailed, match="survival proves nothing"):
        judge(None, iso.isolation(_obs("dz:v0.6.0", 0, routes=()), _obs("dz:v0.6.1", 1, routes=()), image="dz:v0.6.1",
                            interface="doublezero0"))
    judge(None, iso.isolation(before, _obs("dz:v0.6.1", 1), image="dz:v0.6.1", interface="doublezero0"))


def test_isolation_names_each_way_agave_was_disturbed() -> None:
    before = _obs("dz:v0.6.0", 0)
    with pytest.raises(CheckFailed, match=r"agave restarted: agave-validator startedAt: expected .*00:00:00.*, "
                                          r"observed .*00:00:09"):
        judge(None, iso.isolation(before, _obs("dz:v0.6.1", 1, app_started="2026-01-01T00:00:09+00:00"),
                                  image="dz:v0.6.1", interface=None))
    with pytest.raises(CheckFailed, match=r"pod p1 was replaced.*expected \['p1'\], observed \['p2'\]"):
        judge(None, iso.isolation(before, _obs("dz:v0.6.1", 0, pod="p2", template="dz:v0.6.1"), image="dz:v0.6.1",
                            interface=None))
    with pytest.raises(CheckFailed, match=r"routes on doublezero0 changed"):
        judge(None, iso.isolation(before, _obs("dz:v0.6.1", 1, routes=()), image="dz:v0.6.1", interface="doublezero0"))


def test_native_sidecar_required() -> None:
    def pod(kind: str) -> PodInfo:
        return PodInfo("p1", "agave-green", "Running", (_status("doublezerod", kind, "dz:v0.6.0", 0),
                                                        _status(APP_CONTAINER, "app", "agave:v2.1.0", 0)))

    assert required.native_sidecar(pod("sidecar"), "doublezerod").require(precondition=True).ok
    with pytest.raises(PreconditionFailed, match="regular"):
        required.native_sidecar(pod("app"), "doublezerod").require(precondition=True)
    with pytest.raises(PreconditionFailed, match="has no dz container"):
        required.native_sidecar(pod("sidecar"), "dz").require(precondition=True)


def test_plan_reads_nothing_and_names_the_pod_patch(env: Env) -> None:
    adapters: Any = type("NoAdapters", (), {"env": env})()  # plan must not touch any port
    ctx = dz.context(adapters, target_version=TARGET)
    ctx.params["plan"] = True
    plans = {p.step.name: p for p in dz.PROCEDURE.plan(ctx)}
    lines = [line for p in plans.values() for line in p.lines]
    patch = [ln for ln in plans["patch-sidecar"].action if " patch pod " in ln]
    assert len(patch) == 1
    assert '"path":"/spec/initContainers/0/image","value":"laconicnetwork/doublezero:v0.6.1"' in patch[0]
    back = [ln for ln in plans["patch-sidecar"].rollback or [] if " patch pod " in ln]
    assert len(back) == 1 and '"value":"laconicnetwork/doublezero:v0.6.0"' in back[0]
    assert any("doublezero --version" in ln for ln in lines) and any("doublezero status" in ln for ln in lines)
    assert any("$ ip route show dev doublezero0" in ln for ln in plans["patch-sidecar"].check)
    assert not any("patch deployment" in ln for ln in lines)

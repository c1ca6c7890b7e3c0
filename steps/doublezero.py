"""DoubleZero steps -> runbook.checks.doublezero."""

from __future__ import annotations

from pytest_bdd import parsers, then, when

from runbook.adapters.base import PodInfo
from runbook.adapters.factory import Adapters
from runbook.checks import doublezero as dz
from runbook.checks.core import judge
from runbook.evidence.recorder import Recorder


@when("the doublezerod sidecar is asked for its address", target_fixture="dz_address")
def ask_address(adapters: Adapters, pod: PodInfo, evidence: Recorder) -> str:
    address = dz.sidecar_address(adapters.workloads, pod.name, adapters.env.doublezero.sidecar)
    evidence.call(f"exec {pod.name}/{adapters.env.doublezero.sidecar}: doublezero address", address)
    return address


@then("the address is the expected DoubleZero identity")
def address_is_expected(adapters: Adapters, dz_address: str, evidence: Recorder) -> None:
    judge(evidence, dz.identity(observed=dz_address, expected=adapters.env.doublezero.expected_identity))


@when("the doublezerod sidecar is asked for its status", target_fixture="dz_status")
def ask_status(adapters: Adapters, pod: PodInfo, evidence: Recorder) -> dz.DzStatus:
    status = dz.sidecar_status(adapters.workloads, pod.name, adapters.env.doublezero.sidecar)
    evidence.call(f"exec {pod.name}/{adapters.env.doublezero.sidecar}: doublezero status", status.raw)
    return status


@then(parsers.parse('the status shows "{session}" on the expected device'))
def status_up(adapters: Adapters, dz_status: dz.DzStatus, session: str, evidence: Recorder) -> None:
    judge(evidence, dz.session(dz_status, device=adapters.env.doublezero.expected_device, expected=session))


@then("no doublezerod runs on the host outside the pod")
def no_stray(adapters: Adapters, evidence: Recorder) -> None:
    name = adapters.env.doublezero.host_service
    every = adapters.host.processes(name)
    judge(evidence, dz.no_stray_daemons(every, dz.strays_among(every, adapters.workloads), name=name))


@then("the host's doublezerod service is stopped and disabled")
def host_service_off(adapters: Adapters, evidence: Recorder) -> None:
    judge(evidence, dz.host_service_off(adapters.host.service(adapters.env.doublezero.host_service)))

"""DoubleZero steps -> runbook.checks.doublezero."""

from __future__ import annotations

from pytest_bdd import parsers, then, when

from runbook.adapters.base import PodInfo
from runbook.adapters.factory import Adapters
from runbook.checks import doublezero as dz
from runbook.evidence.recorder import Recorder


@when("the doublezerod sidecar is asked for its address", target_fixture="dz_address")
def ask_address(adapters: Adapters, pod: PodInfo, evidence: Recorder) -> str:
    address = dz.sidecar_address(adapters.workloads, pod.name, adapters.env.doublezero.sidecar)
    evidence.call(f"exec {pod.name}/{adapters.env.doublezero.sidecar}: doublezero address", address)
    return address


@then("the address is the expected DoubleZero identity")
def address_is_expected(adapters: Adapters, dz_address: str, evidence: Recorder) -> None:
    expected = adapters.env.doublezero.expected_identity
    evidence.compare("doublezero address", expected=expected, observed=dz_address, ok=dz_address == expected)
    dz.check_identity(observed=dz_address, expected=expected)


@when("the doublezerod sidecar is asked for its status", target_fixture="dz_status")
def ask_status(adapters: Adapters, pod: PodInfo, evidence: Recorder) -> dz.DzStatus:
    status = dz.sidecar_status(adapters.workloads, pod.name, adapters.env.doublezero.sidecar)
    evidence.call(f"exec {pod.name}/{adapters.env.doublezero.sidecar}: doublezero status", status.raw)
    return status


@then(parsers.parse('the status shows "{session}" on the expected device'))
def status_up(adapters: Adapters, dz_status: dz.DzStatus, session: str, evidence: Recorder) -> None:
    device = adapters.env.doublezero.expected_device
    ok = dz_status.session == session and dz_status.device == device
    evidence.compare("session and device", expected={"session": session, "device": device},
                     observed={"session": dz_status.session, "device": dz_status.device}, ok=ok)
    dz.check_session(dz_status, device=device)


@then("no doublezerod runs on the host outside the pod")
def no_stray(adapters: Adapters, evidence: Recorder) -> None:
    name = adapters.env.doublezero.host_service
    every = adapters.host.processes(name)
    strays = dz.stray_daemons(adapters.host, adapters.workloads, name)
    evidence.call(f"host processes named {name}", [f"{p.pid} {p.cmdline}" for p in every])
    evidence.compare(f"{name} outside any pod", expected=[], observed=[p.pid for p in strays], ok=not strays)
    dz.check_no_stray_daemons(strays, name=name, seen=every)


@then("the host's doublezerod service is stopped and disabled")
def host_service_off(adapters: Adapters, evidence: Recorder) -> None:
    state = adapters.host.service(adapters.env.doublezero.host_service)
    evidence.compare(f"host service {state.name}", expected={"active": False, "enabled": False},
                     observed={"active": state.active, "enabled": state.enabled, "detail": state.detail},
                     ok=not (state.active or state.enabled))
    dz.check_host_service_off(state)

"""The DZ identity checks against the session's testbed, each shown to fail when its trap is present."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.adapters.base import ServiceState
from runbook.adapters.factory import Adapters
from runbook.checks import doublezero as dz
from runbook.checks.core import judge
from runbook.checks.workloads import running_pod
from runbook.errors import CheckFailed
from runbook.testbed import keypair
from runbook.wait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def stray_doublezerod(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A doublezerod started on the host by hand, outside any pod (what a host systemd unit would be)."""
    keypair.write_keypair(tmp_path / "id.json", bytes(range(32)))
    proc = subprocess.Popen([sys.executable, "-m", "runbook.testbed.doublezerod", "--version", "0.6.0",
                             "--config-dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_no_stray_daemon_on_a_clean_testbed(adapters: Adapters) -> None:
    name = adapters.env.doublezero.host_service
    assert adapters.host.processes(name), "the pod's own doublezerod must be visible on the host"
    assert dz.stray_daemons(adapters.host, adapters.workloads, name) == []


def test_a_doublezerod_outside_the_pod_is_caught(
    adapters: Adapters, stray_doublezerod: subprocess.Popen[bytes]
) -> None:
    name = adapters.env.doublezero.host_service
    strays = wait_for(lambda: dz.stray_daemons(adapters.host, adapters.workloads, name), bool, timeout=10,
                      what="the stray doublezerod to show in the process table")
    assert [p.pid for p in strays] == [stray_doublezerod.pid]
    every = adapters.host.processes(name)
    with pytest.raises(CheckFailed, match=rf"pid {stray_doublezerod.pid}"):
        judge(None, dz.no_stray_daemons(every, dz.strays_among(every, adapters.workloads), name=name))


def test_a_blind_process_listing_is_refused() -> None:
    with pytest.raises(CheckFailed, match="listing is blind"):
        judge(None, dz.no_stray_daemons([], [], name="doublezerod"))


def test_wrong_device_fails_with_expected_and_observed(adapters: Adapters) -> None:
    pod = running_pod(adapters.workloads, adapters.env.deployments.green.name)
    status = dz.sidecar_status(adapters.workloads, pod.name, adapters.env.doublezero.sidecar)
    assert dz.session(status, device=adapters.env.doublezero.expected_device).ok  # the real state passes
    with pytest.raises(CheckFailed, match=r"expected 'BGP Session Up' on 'nyc-sw99'.*observed 'BGP Session Up' "
                                          r"on 'laconic-mia-sw01'"):
        judge(None, dz.session(status, device="nyc-sw99"))


def test_the_session_word_reaches_the_verdict() -> None:
    """The Gherkin's {session} is what the check wants: a scenario naming another state fails on an Up session."""
    status = dz.parse_status("| Tunnel status | Current device |\n|---|---|\n| BGP Session Up | sw01 |\n")
    assert dz.session(status, device="sw01", expected="BGP Session Up").ok
    with pytest.raises(CheckFailed, match="expected 'BGP Session Down'"):
        judge(None, dz.session(status, device="sw01", expected="BGP Session Down"))


def test_a_wrong_identity_fails() -> None:
    assert dz.identity(observed="Dz1", expected="Dz1").ok
    with pytest.raises(CheckFailed, match="identity mismatch"):
        judge(None, dz.identity(observed="Dz2", expected="Dz1"))


@pytest.mark.parametrize(("active", "enabled"), [(True, True), (False, True), (True, False)])
def test_host_service_running_or_enabled_fails(active: bool, enabled: bool) -> None:
    state = ServiceState("doublezerod", active=active, enabled=enabled, detail="is-active: x; is-enabled: y")
    with pytest.raises(CheckFailed, match="must be stopped and disabled"):
        judge(None, dz.host_service_off(state))


def test_host_service_stopped_and_disabled_passes_and_no_service_manager_is_skipped_not_passed() -> None:
    assert dz.host_service_off(ServiceState("doublezerod", active=False, enabled=False)).ok
    v = judge(None, dz.host_service_off(ServiceState("doublezerod", active=None, enabled=None, detail="no systemd")))
    assert (v.status, v.ok, v.skipped) == ("skipped", False, "the host cannot say (no systemd)")

"""The testbed host's services are real enough for "the host's doublezerod service is stopped and disabled" to
fail (issue 11): the host port reads them with `systemctl is-active/is-enabled` as on biscayne, and finds the
testbed's `systemctl` (runbook.testbed.systemd) first on its PATH; an active unit is a real process under
the testbed's supervisord.

A scratch service manager (its own supervisord on a free port, a unit running `sleep`) proves the verbs, words
and exit codes, and the check failing and passing, in a few seconds; the integration test does the same with the
session testbed's own unit (envs/local.yaml doublezero.host_service) and its doublezerod. Both start
supervisord: run them under `flock /tmp/runbook-testbed.lock`.
"""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.adapters.factory import Adapters
from runbook.adapters.host import TestinfraHost
from runbook.checks import doublezero as dz
from runbook.checks.core import judge
from runbook.errors import CheckFailed
from runbook.testbed import systemd
from runbook.testbed.host import TestbedHost
from runbook.testbed.supervisor import Supervisor
from runbook.wait import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[tuple[TestbedHost, Supervisor]]:
    """A host whose service manager is the stand-in, with one unit `demo` (installed, disabled, inactive)."""
    sup = Supervisor(state_dir=tmp_path, port=_free_port())
    sup.start()
    try:
        units = systemd.Units(tmp_path, sup)
        units.write("demo", systemd.render_unit("a demo daemon", [shutil.which("sleep") or "sleep", "600"]))
        yield TestbedHost("local://", bin_dir=systemd.install(tmp_path, sup.port)), sup
    finally:
        sup.shutdown()


def test_systemctl_words_and_exit_codes(scratch: tuple[TestbedHost, Supervisor]) -> None:
    host, sup = scratch

    def ctl(args: str) -> tuple[int, str, str]:
        r = host.run(f"systemctl {args}", check=False)
        return r.rc, r.stdout.strip(), r.stderr.strip()

    assert ctl("is-system-running") == (0, "running", "")
    assert ctl("is-active demo") == (3, "inactive", "")
    assert ctl("is-enabled demo.service") == (1, "disabled", "")
    assert ctl("is-active nosuch") == (4, "inactive", "")
    assert ctl("is-enabled nosuch") == (4, "not-found", "")
    assert ctl("status nosuch") == (4, "", "Unit nosuch.service could not be found.")
    assert ctl("start nosuch")[0] == 5
    assert ctl("enable nosuch") == (1, "", "Failed to enable unit: Unit file nosuch.service does not exist.")

    rc, _, err = ctl("enable demo")
    assert rc == 0 and err.startswith("Created symlink") and err.endswith("demo.service.")
    assert ctl("is-enabled demo") == (0, "enabled", "")
    assert ctl("start demo") == (0, "", "")
    assert ctl("is-active demo") == (0, "active", "")
    info = sup.info("unit--demo")
    assert info is not None and info.running, "an active unit is a real process under supervisord"
    assert ctl("is-active --quiet demo") == (0, "", "")
    assert ctl("status demo")[0] == 0 and f"Main PID: {info.pid}" in ctl("status demo")[1]
    assert ctl("stop demo") == (0, "", "")
    assert ctl("is-active demo") == (3, "inactive", "")
    assert sup.info("unit--demo") is None
    rc, _, err = ctl("disable --now demo")
    assert rc == 0 and err.startswith("Removed")
    assert ctl("is-enabled demo") == (1, "disabled", "")
    assert ctl("frobnicate demo") == (1, "", "Unknown command verb 'frobnicate'.")


def test_the_host_service_check_fails_on_an_active_or_enabled_unit(scratch: tuple[TestbedHost, Supervisor]) -> None:
    host, _ = scratch
    off = host.service("demo")
    assert (off.active, off.enabled) == (False, False), off.detail
    assert judge(None, dz.host_service_off(off)).status == "passed"

    host.run("systemctl enable demo", root=True)
    with pytest.raises(CheckFailed, match="stopped and disabled: is-active: inactive; is-enabled: enabled"):
        judge(None, dz.host_service_off(host.service("demo")))
    host.run("systemctl disable demo && systemctl start demo", root=True)
    with pytest.raises(CheckFailed, match="is-active: active; is-enabled: disabled"):
        judge(None, dz.host_service_off(host.service("demo")))
    host.run("systemctl stop demo", root=True)
    assert judge(None, dz.host_service_off(host.service("demo"))).status == "passed"


def test_no_service_manager_is_still_no_systemd(tmp_path: Path) -> None:
    """The stand-in with its supervisord down answers `offline` (as systemctl on a machine not booted with
    systemd), and a host with no systemctl at all is unchanged: neither claims a state."""
    bindir = systemd.install(tmp_path, _free_port())  # nothing listens there
    down = TestbedHost("local://", bin_dir=bindir)
    assert down.run("systemctl is-system-running", check=False).stdout.strip() == "offline"
    assert down.run("systemctl is-active demo", check=False).rc == 1
    state = down.service("doublezerod")
    assert (state.active, state.enabled, state.detail) == (None, None, "no systemd on this host")
    assert dz.host_service_off(state).status == "skipped", "a host that cannot say is never a pass"
    if shutil.which("systemctl") is None and not Path("/run/systemd/system").is_dir():
        plain = TestinfraHost("local://").service("doublezerod")
        assert (plain.active, plain.enabled, plain.detail) == (None, None, "no systemd on this host")


@pytest.mark.integration
def test_the_testbed_hosts_doublezerod_unit_fails_the_check_until_stopped_and_disabled(
        adapters: Adapters) -> None:
    if adapters.env.testbed is None:
        pytest.skip(f"env {adapters.env.name} is not a local testbed")
    host, name = adapters.host, adapters.env.doublezero.host_service
    baseline = host.service(name)
    assert (baseline.active, baseline.enabled) == (False, False), baseline.detail
    assert judge(None, dz.host_service_off(baseline)).status == "passed"
    try:
        host.run(f"systemctl enable --now {name}", root=True)
        on = host.service(name)
        assert (on.active, on.enabled) == (True, True), on.detail
        with pytest.raises(CheckFailed, match=rf"host service {name} must be stopped and disabled"):
            judge(None, dz.host_service_off(on))
        # the unit's daemon is a real doublezerod on the host, outside any pod: the stray check sees it too
        strays = wait_for(lambda: dz.stray_daemons(adapters.host, adapters.workloads, name), bool, timeout=10,
                          what=f"the {name} unit's process in the host's process table")
        assert any(sys.executable in p.cmdline or "runbook.testbed.doublezerod" in p.cmdline for p in strays)
    finally:
        host.run(f"systemctl disable --now {name}", root=True)
    off = host.service(name)
    assert (off.active, off.enabled) == (False, False), off.detail
    assert judge(None, dz.host_service_off(off)).status == "passed"
    assert dz.stray_daemons(adapters.host, adapters.workloads, name) == []

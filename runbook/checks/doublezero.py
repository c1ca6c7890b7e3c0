"""DoubleZero checks (spec step 1): identity, BGP session and device, no host daemon outside the pod.

Every check reads real state: the sidecar's own CLI run inside its container, the host's process table
and service manager. Each check returns a :class:`~runbook.checks.core.Verdict`.
"""

from __future__ import annotations

from dataclasses import dataclass

from runbook.adapters.base import CommandResult, Host, ProcessInfo, ServiceState, Workloads
from runbook.checks.core import Verdict, check, skipped, verdict
from runbook.errors import AdapterError


@dataclass(frozen=True)
class DzStatus:
    """``doublezero status`` parsed: one dict per table row, keyed by the header cells."""

    rows: tuple[dict[str, str], ...]
    raw: str

    def _col(self, *names: str) -> str:
        for row in self.rows:
            for key, value in row.items():
                if key.lower() in names:
                    return value
        return ""

    @property
    def session(self) -> str:
        return self._col("tunnel status", "status", "session")

    @property
    def device(self) -> str:
        return self._col("current device", "device")

    @property
    def last_update(self) -> str:
        """When the session last changed state: a reset (a flap) moves it."""
        return self._col("last session update")


def parse_status(text: str) -> DzStatus:
    lines = [ln for ln in text.splitlines() if "|" in ln and set(ln.strip()) - set("|-+ ")]
    if not lines:
        return DzStatus(rows=(), raw=text)
    header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    rows = []
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        rows.append(dict(zip(header, cells, strict=False)))
    return DzStatus(rows=tuple(rows), raw=text)


def _exec(workloads: Workloads, pod: str, container: str, argv: list[str]) -> CommandResult:
    r = workloads.exec(pod, container, argv)
    if not r.ok:
        raise AdapterError(f"`{r.command}` in {pod}/{container} exited {r.rc}: {(r.stderr or r.stdout).strip()}",
                           obj=f"{pod}/{container}")
    return r


def sidecar_address(workloads: Workloads, pod: str, container: str) -> str:
    """The public key the sidecar's identity file holds (``doublezero address``)."""
    return _exec(workloads, pod, container, ["doublezero", "address"]).stdout.strip()


def sidecar_status(workloads: Workloads, pod: str, container: str) -> DzStatus:
    return parse_status(_exec(workloads, pod, container, ["doublezero", "status"]).stdout)


SESSION_UP = "BGP Session Up"


@check(negative="tests/integration/test_dz_checks.py::test_a_wrong_identity_fails")
def identity(*, observed: str, expected: str) -> Verdict:
    """The sidecar's ``doublezero address`` is the identity the env registered."""
    return verdict("doublezero address", expected=expected, observed=observed, obj="doublezero address",
                   problems=[] if observed == expected else [
                       f"DoubleZero identity mismatch: the sidecar runs {observed!r} but the env expects {expected!r}"])


@check(negative=("tests/integration/test_dz_checks.py::test_wrong_device_fails_with_expected_and_observed",
                 "tests/integration/test_dz_checks.py::test_the_session_word_reaches_the_verdict"))
def session(status: DzStatus, *, device: str, expected: str = SESSION_UP) -> Verdict:
    """``doublezero status`` shows ``expected`` (the Gherkin's word: "BGP Session Up") on the expected device."""
    problems = [] if status.session == expected and status.device == device else [
        f"DoubleZero session not as expected: expected {expected!r} on {device!r}, observed "
        f"{status.session or '(no session)'!r} on {status.device or '(no device)'!r}"]
    return verdict("session and device", expected={"session": expected, "device": device},
                   observed={"session": status.session, "device": status.device}, problems=problems,
                   obj="doublezero status")


def stray_daemons(host: Host, workloads: Workloads, name: str) -> list[ProcessInfo]:
    """``name`` processes on the host that no pod owns (a host systemd doublezerod, a leftover DaemonSet...)."""
    return strays_among(host.processes(name), workloads)


def strays_among(seen: list[ProcessInfo], workloads: Workloads) -> list[ProcessInfo]:
    """The processes of ``seen`` that no pod owns."""
    return [p for p in seen if not workloads.owns_process(p)]


@check(negative=("tests/integration/test_dz_checks.py::test_a_doublezerod_outside_the_pod_is_caught",
                 "tests/integration/test_dz_checks.py::test_a_blind_process_listing_is_refused"))
def no_stray_daemons(seen: list[ProcessInfo], strays: list[ProcessInfo], *, name: str) -> Verdict:
    """No ``name`` process outside a pod. ``seen`` (every ``name`` process listed) must include the pod's own
    daemon: an empty listing means the host's process table cannot be read, and the check fails rather than
    passing vacuously."""
    problems = []
    if not seen:
        problems.append(f"no {name} process is visible on the host at all, not even the pod's: the process listing "
                        "is blind, so absence outside the pod proves nothing")
    if strays:
        problems.append(f"{name} runs on the host outside the pod: "
                        + "; ".join(f"pid {p.pid}: {p.cmdline}" for p in strays))
    return verdict(f"{name} outside any pod", expected={"outside a pod": [], "listed": "at least the pod's daemon"},
                   observed={"outside a pod": [p.pid for p in strays],
                             "listed": [f"{p.pid} {p.cmdline}" for p in seen]}, problems=problems, obj=name)


@check(negative=("tests/integration/test_dz_checks.py::test_host_service_running_or_enabled_fails",
                 "tests/testbed/test_host_units.py::test_the_host_service_check_fails_on_an_active_or_enabled_unit",
                 "tests/testbed/test_host_units.py::test_the_testbed_hosts_doublezerod_unit_fails_the_check_until_stopped_and_disabled"))
def host_service_off(state: ServiceState) -> Verdict:
    """The host's systemd unit is stopped and disabled (a unit that does not exist is off). A host without a
    service manager cannot say: the check is skipped with that reason, never passed."""
    title = f"host service {state.name}"
    expected = {"active": False, "enabled": False}
    if state.active is None and state.enabled is None:
        return skipped(title, f"the host cannot say ({state.detail or 'no service manager'})", expected=expected)
    problems = [f"host service {state.name} must be stopped and disabled: {state.detail}"] if (
        state.active or state.enabled) else []
    return verdict(title, expected=expected, observed={"active": state.active, "enabled": state.enabled,
                                                       "detail": state.detail}, problems=problems, obj=state.name)

"""DoubleZero checks (spec step 1): identity, BGP session and device, no host daemon outside the pod.

Every check reads real state: the sidecar's own CLI run inside its container, the host's process table
and service manager. Failures raise :class:`~runbook.errors.CheckFailed` with expected and observed.
"""

from __future__ import annotations

from dataclasses import dataclass

from runbook.adapters.base import CommandResult, Host, ProcessInfo, ServiceState, Workloads
from runbook.errors import AdapterError, CheckFailed


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


def check_identity(*, observed: str, expected: str) -> None:
    if observed != expected:
        raise CheckFailed(
            f"DoubleZero identity mismatch: the sidecar runs {observed!r} but the env expects {expected!r}",
            expected=expected, observed=observed, obj="doublezero address",
        )


def check_session(status: DzStatus, *, device: str) -> None:
    if status.session != "BGP Session Up" or status.device != device:
        raise CheckFailed(
            f"DoubleZero session not up on the expected device: expected 'BGP Session Up' on {device!r}, "
            f"observed {status.session or '(no session)'!r} on {status.device or '(no device)'!r}\n{status.raw}",
            expected={"session": "BGP Session Up", "device": device},
            observed={"session": status.session, "device": status.device}, obj="doublezero status",
        )


def stray_daemons(host: Host, workloads: Workloads, name: str) -> list[ProcessInfo]:
    """``name`` processes on the host that no pod owns (a host systemd doublezerod, a leftover DaemonSet...)."""
    return [p for p in host.processes(name) if not workloads.owns_process(p)]


def check_no_stray_daemons(strays: list[ProcessInfo], *, name: str, seen: list[ProcessInfo] | None = None) -> None:
    """No ``name`` process outside a pod. ``seen`` (every ``name`` process listed) must include the pod's
    own daemon; an empty listing means the host's process table cannot be read and the check is refused
    rather than passed vacuously."""
    if seen is not None and not seen:
        raise CheckFailed(f"no {name} process is visible on the host at all, not even the pod's: the process "
                          "listing is blind, so absence outside the pod proves nothing", expected="the pod's daemon",
                          observed=[], obj=name)
    if strays:
        listing = "; ".join(f"pid {p.pid}: {p.cmdline}" for p in strays)
        raise CheckFailed(f"{name} runs on the host outside the pod: {listing}",
                          expected=[], observed=[p.pid for p in strays], obj=name)


def check_host_service_off(state: ServiceState) -> None:
    """The host's systemd unit must be stopped and disabled (absent counts as off)."""
    if state.active or state.enabled:
        raise CheckFailed(
            f"host service {state.name} must be stopped and disabled: {state.detail}",
            expected={"active": False, "enabled": False},
            observed={"active": state.active, "enabled": state.enabled}, obj=state.name,
        )

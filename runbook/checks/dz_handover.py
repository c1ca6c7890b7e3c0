"""DoubleZero across a blue-green handover (design trap 10): one doublezerod per identity at any moment.

Both colours' pods run a doublezerod sidecar on the same id.json in the host's network namespace. The
deployment's lock makes blue's wait while green's runs; without it, the second daemon resets the holder's
BGP session (a flap) and the two fight over ``doublezero0``. :class:`HandoverSampler` records, through the
ports only, for the whole upgrade:

- the doublezerod daemons in the pods' network namespace, the host network (``Host.processes``, and
  ``ip netns identify`` through ``Host.run`` as root: a daemon in another namespace is another "host", e.g.
  another testbed's node, and is listed apart but not counted; a shell or ``flock`` that waits for the lock
  is not a daemon and is never counted, only processes whose program is the daemon itself). One host holds
  one DoubleZero identity, so every daemon there claims it: the identity file itself is a private key and
  is never read;
- each running sidecar's ``doublezero status`` (``Workloads.exec``): who holds the BGP session and its
  "Last Session Update" (a reset moves it);
- the routes on the DoubleZero interface (``Host.routes``), unless the caller says why they cannot be read.

:func:`verdict` judges the samples once: never more than one daemon; no session reset except the handover
(a pod that held the session and later holds it again with another "Last Session Update" was reset while
it kept running: a flap); two sidecars never hold it at once; the routes in every sample; the new colour's
sidecar holds the session at the end. Too few samples is a failure, never a pass.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from runbook.adapters.base import Host, PodInfo, ProcessInfo, Workloads
from runbook.checks.core import Verdict, check
from runbook.checks.core import verdict as make_verdict
from runbook.checks.doublezero import parse_status
from runbook.errors import RunbookError

SESSION_UP = "BGP Session Up"
# What waits for the identity's lock (the deployment's wrapper) or starts the daemon: never the daemon itself.
WRAPPERS = frozenset({"sh", "bash", "dash", "ash", "busybox", "flock", "sleep", "timeout", "env"})
DEFAULT_INTERVAL = 0.2
DEFAULT_MAX_SAMPLES = 20_000
DEFAULT_MAX_DURATION = 3600.0
MIN_SAMPLES = 3
MAX_GAP = 15.0  # seconds between two samples beyond which the sampler was blind (two exec timeouts and more)


def daemons(processes: Sequence[ProcessInfo]) -> list[ProcessInfo]:
    """The real daemons among ``Host.processes(name)``: not the shell waiting on the lock, nor ``flock``."""
    return [p for p in processes if p.name not in WRAPPERS and (p.cmdline.split() or [""])[0].rsplit("/", 1)[-1]
            not in WRAPPERS]


@dataclass(frozen=True)
class SidecarView:
    """One running sidecar's answer to ``doublezero status`` (``error`` when it gave none)."""

    colour: str
    pod: str
    session: str = ""
    last_update: str = ""
    error: str = ""

    @property
    def holds(self) -> bool:
        return self.session == SESSION_UP


@dataclass(frozen=True)
class Sample:
    at: float  # wall clock (time.time()) when the sample started
    took: float  # seconds the sample took to read
    daemons: tuple[str, ...]  # "pid cmdline" of every real daemon
    sidecars: tuple[SidecarView, ...]
    routes: tuple[str, ...] | None  # None: not read (see the sampler's skip reason or ``error``)
    error: str = ""  # what could not be read in this sample
    elsewhere: tuple[str, ...] = ()  # "pid netns cmdline" of daemons in other network namespaces (not judged)

    @property
    def holders(self) -> list[SidecarView]:
        return [s for s in self.sidecars if s.holds]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def state(self) -> tuple[Any, ...]:
        """What the verdict judges, without the timing: equal states in a row are one state."""
        return self.daemons, self.sidecars, self.routes, self.error, self.elsewhere


def changes(samples: Sequence[Sample]) -> list[Sample]:
    """The first sample, each sample whose state differs from the one before, and the last: the record a
    report keeps of hours of sampling."""
    return [s for i, s in enumerate(samples)
            if i in (0, len(samples) - 1) or s.state() != samples[i - 1].state()]


def sample_from_dict(d: Mapping[str, Any]) -> Sample:
    """The inverse of :meth:`Sample.as_dict` (recorded samples, for unit tests and replays)."""
    return Sample(at=float(d["at"]), took=float(d.get("took", 0.0)), daemons=tuple(d.get("daemons", ())),
                  sidecars=tuple(SidecarView(**s) for s in d.get("sidecars", ())),
                  routes=None if d.get("routes") is None else tuple(d["routes"]), error=str(d.get("error", "")),
                  elsewhere=tuple(d.get("elsewhere", ())))


@dataclass
class HandoverSampler:
    """Samples daemons, session holder and routes every ``interval`` s between :meth:`start` and :meth:`stop`.

    ``deployments``: colour -> Deployment name (both colours). ``netns``: the named network namespace that is
    the pods' host network (the testbed's node), None for the host's own (unnamed) one. Bounded: at most
    ``max_samples`` samples and ``max_duration`` seconds, after which it stops sampling by itself (the verdict
    then sees where it ended)."""

    host: Host
    workloads: Workloads
    deployments: Mapping[str, str]
    sidecar: str = "doublezerod"
    daemon: str = "doublezerod"
    interface: str = "doublezero0"
    skip_routes_reason: str = ""  # non-empty: routes are not read here, and the verdict says why
    netns: str | None = None
    interval: float = DEFAULT_INTERVAL
    max_samples: int = DEFAULT_MAX_SAMPLES
    max_duration: float = DEFAULT_MAX_DURATION
    exec_timeout: float = 5.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sample_once(self) -> Sample:
        t0, start = time.monotonic(), time.time()
        errors: list[str] = []
        found: tuple[str, ...] = ()
        elsewhere: tuple[str, ...] = ()
        try:
            found, elsewhere = self._daemons()
        except RunbookError as exc:
            errors.append(f"process listing: {exc}")
        sidecars: list[SidecarView] = []
        for colour, deployment in self.deployments.items():
            try:
                pods = self.workloads.pods(deployment)
            except RunbookError as exc:
                errors.append(f"pods of {deployment}: {exc}")
                continue
            for pod in pods:
                sidecars.append(self._status(colour, pod.name, pod))
        routes: tuple[str, ...] | None = None
        if not self.skip_routes_reason:
            try:
                routes = tuple(self.host.routes(self.interface))
            except RunbookError as exc:
                errors.append(f"routes on {self.interface}: {exc}")
        return Sample(at=start, took=time.monotonic() - t0, daemons=found, sidecars=tuple(sidecars), routes=routes,
                      error="; ".join(errors), elsewhere=elsewhere)

    def _daemons(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The daemons in the pods' network namespace, and those elsewhere (with their namespace's name)."""
        procs = daemons(self.host.processes(self.daemon))
        if not procs:
            return (), ()
        pids = " ".join(str(p.pid) for p in procs)
        # a pid gone since the listing prints nothing and is dropped (it exited: not running any more)
        r = self.host.run(f"for p in {pids}; do [ -d /proc/$p ] && echo \"$p $(ip netns identify $p | tr '\\n' ' ')\"; "
                          "done; true", check=True, timeout=10.0, root=True)
        if "Permission denied" in r.stderr:  # never guess a namespace: the sample is unreadable
            raise RunbookError(f"cannot tell which network namespace the {self.daemon} processes are in: "
                               f"{r.stderr.strip()}")
        names = {int(line.split()[0]): line.split()[1:] for line in r.stdout.splitlines() if line.strip()}
        want = self.netns or ""
        here, there = [], []
        for p in procs:
            if p.pid not in names:
                continue
            ns = names[p.pid]
            if (want in ns) if want else not ns:
                here.append(f"{p.pid} {p.cmdline}")
            else:
                there.append(f"{p.pid} {' '.join(ns) or '(the host netns)'} {p.cmdline}")
        return tuple(here), tuple(there)

    def _status(self, colour: str, name: str, pod: PodInfo) -> SidecarView:
        try:
            state = pod.container(self.sidecar).state
        except (KeyError, LookupError, RunbookError) as exc:
            return SidecarView(colour, name, error=f"no {self.sidecar} container: {exc}")
        if state != "running":
            return SidecarView(colour, name, error=f"{self.sidecar} is {state}")
        try:
            r = self.workloads.exec(name, self.sidecar, ["doublezero", "status"], timeout=self.exec_timeout)
        except RunbookError as exc:
            return SidecarView(colour, name, error=str(exc).splitlines()[0][:200])
        if not r.ok:
            return SidecarView(colour, name, error=f"rc {r.rc}: {(r.stderr or r.stdout).strip()[:200]}")
        st = parse_status(r.stdout)
        return SidecarView(colour, name, session=st.session, last_update=st.last_update)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_duration
        while not self._stop.is_set() and len(self.samples) < self.max_samples and time.monotonic() < deadline:
            s = self.sample_once()
            with self._lock:
                if self.samples:  # an unchanged part shares the previous sample's objects (hours of samples)
                    prev = self.samples[-1]
                    s = replace(s, **{k: getattr(prev, k) for k in ("daemons", "sidecars", "routes", "elsewhere")
                                      if getattr(s, k) == getattr(prev, k)})
                self.samples.append(s)
            self._stop.wait(max(0.0, self.interval - s.took))

    def start(self) -> HandoverSampler:
        if self._thread is not None:
            raise RunbookError("the DoubleZero handover sampler is already started")
        self._thread = threading.Thread(target=self._run, name="dz-handover-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        """Stop, take one last sample (the state at the end), and return every sample. A second call (a
        finalizer after the verdict's step) returns the same samples and reads nothing."""
        if self._stop.is_set():
            with self._lock:
                return list(self.samples)
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=self.exec_timeout * 4 + 10)
        with self._lock:
            self.samples.append(self.sample_once())
            return list(self.samples)


def _t(samples: Sequence[Sample], s: Sample) -> str:
    return f"+{s.at - samples[0].at:.1f}s"


TITLE = ("DoubleZero handover: one doublezerod per identity, no flap, routes kept, the new colour holds the "
         "session")


@check(negative=("tests/procedures/test_dz_handover_verdict.py::test_a_second_daemon_and_its_flap_fail_naming_both",
                 "tests/integration/test_dz_handover.py::test_two_doublezerods_at_once_fail_the_check"))
def verdict(samples: Sequence[Sample], *, new_colour: str, skip_routes_reason: str = "",
            min_samples: int = MIN_SAMPLES, max_gap: float = MAX_GAP) -> Verdict:
    """Never two doublezerods at once, no session reset but the handover, routes in every sample, the new
    colour's sidecar holding the session at the end, enough samples with no long gap (pure: judged once,
    after the sampler stopped)."""
    problems: list[str] = []
    expected = {"daemons at once": "at most 1", "session resets": "none (a new holder only at the handover)",
                "holders at once": "at most 1", "routes": "present in every sample",
                "holder at the end": f"{new_colour}'s sidecar", "samples": f">= {min_samples}",
                "longest interval s": f"<= {max_gap:g}"}
    if skip_routes_reason:
        expected["routes"] = f"not checked: {skip_routes_reason}"
    if len(samples) < min_samples:
        problems.append(f"only {len(samples)} samples (need {min_samples}): too little data to judge, not a pass")
    blind = [s for s in samples if s.error]
    gaps = [b.at - a.at for a, b in itertools.pairwise(samples)]
    if gaps and max(gaps) > max_gap:
        i = gaps.index(max(gaps))
        problems.append(f"no sample for {max(gaps):.1f} s after {_t(samples, samples[i])} (the sampler was blind or "
                        "stopped at its bound): what happened then is unobserved")
    if blind:
        problems.append(f"{len(blind)} samples could not be read, first at {_t(samples, blind[0])}: {blind[0].error}")
    crowded = [s for s in samples if len(s.daemons) > 1]
    if crowded:
        s = max(crowded, key=lambda x: len(x.daemons))
        problems.append(f"a second doublezerod with the same identity ran in {len(crowded)} samples, first at "
                        f"{_t(samples, crowded[0])}, up to {len(s.daemons)} at once: {'; '.join(s.daemons)}")
    doubled = [s for s in samples if len(s.holders) > 1]
    if doubled:
        problems.append(f"two sidecars held the BGP session at once at {_t(samples, doubled[0])}: "
                        + ", ".join(h.pod for h in doubled[0].holders))
    resets: list[str] = []
    last_up: dict[str, str] = {}  # pod -> "Last Session Update" while it held the session
    holders_seen: list[str] = []
    for s in samples:
        for h in s.holders:
            before = last_up.get(h.pod)
            if before is not None and h.last_update != before:
                resets.append(f"{h.pod} at {_t(samples, s)} ({before!r} -> {h.last_update!r})")
            last_up[h.pod] = h.last_update
            if not holders_seen or holders_seen[-1] != h.pod:
                holders_seen.append(h.pod)
    if resets:
        problems.append("the BGP session was reset (a flap) while its holder kept running: " + "; ".join(resets[:5]))
    routes_missing: list[str] = []
    first_routes: tuple[str, ...] | None = None
    if not skip_routes_reason:
        read = [s for s in samples if s.routes is not None]
        first_routes = read[0].routes if read else None
        if not first_routes:
            problems.append("no routes on the DoubleZero interface in the first sample: their survival proves nothing")
        else:
            gone = [s for s in read if set(first_routes) - set(s.routes or ())]
            if gone:
                missing = sorted(set(first_routes) - set(gone[0].routes or ()))
                routes_missing = [f"{len(gone)} samples, first at {_t(samples, gone[0])}: {missing} missing"]
                problems.append("routes left the kernel during the handover: " + routes_missing[0])
    end = samples[-1].holders if samples else []
    if not end or any(h.colour != new_colour for h in end):
        problems.append(f"at the end the session is held by {[f'{h.colour} ({h.pod})' for h in end] or 'nobody'}, "
                        f"not by {new_colour}'s sidecar")
    gaps_held: list[float] = []  # seconds without a holder between one holder and the next (the handover)
    last_held: Sample | None = None
    for s in samples:
        if s.holders:
            if last_held is not None and last_held.holders[0].pod != s.holders[0].pod:
                gaps_held.append(round(s.at - last_held.at, 2))
            last_held = s
    tooks = [s.took for s in samples]
    observed = {
        "samples": len(samples),
        "span s": round(samples[-1].at - samples[0].at, 2) if samples else 0.0,
        "max daemons at once": max((len(s.daemons) for s in samples), default=0),
        "second daemon": crowded[0].daemons if crowded else [],
        "daemons in other network namespaces (not counted)": sorted({d for s in samples for d in s.elsewhere}),
        "session holders in order": holders_seen,
        "session resets": resets,
        "handover gap s (last sample of one holder to the first of the next)": gaps_held,
        "routes": (f"not checked: {skip_routes_reason}" if skip_routes_reason
                   else {"first sample": list(first_routes or ()), "missing": routes_missing}),
        "holder at the end": [f"{h.colour} ({h.pod}, last update {h.last_update})" for h in end],
        "unreadable samples": len(blind),
        "sample read s (mean/max)": [round(sum(tooks) / len(tooks), 3), round(max(tooks), 3)] if tooks else [],
        "interval s (mean/max)": [round(sum(gaps) / len(gaps), 3), round(max(gaps), 3)] if gaps else [],
    }
    return make_verdict(TITLE, expected=expected, observed=observed, problems=problems, obj="doublezerod")

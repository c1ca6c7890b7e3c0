"""One check abstraction: a check computes expected, observed and its verdict once, from real state.

A check is a function in ``runbook/checks/`` decorated with :func:`check`, which names the negative test
proving it can fail; it returns a :class:`Verdict`. A Then step (or a procedure's verification) hands the
verdict to :func:`judge`, which records exactly that verdict in the evidence and raises
:class:`~runbook.errors.CheckFailed` when it failed. Nothing else writes a verdict row: the recorder takes
a :class:`Verdict`, not an ``ok=`` flag, so the report cannot show an outcome nobody computed.

    @check(negative="tests/checks/test_required.py::test_daemonset_found")
    def no_daemonset(workloads) -> Verdict:
        running = [...]
        return verdict("doublezero DaemonSets", expected=[], observed=running,
                       problems=[f"{n} is running" for n in running])

    judge(evidence, required.no_daemonset(adapters.workloads))   # in the step

A check that needs a capability the machine lacks returns :func:`skipped` with the reason: it is shown as
skipped in the report and the rest of the scenario runs (a skip is never a pass: ``ok`` is False).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, ParamSpec, Protocol, runtime_checkable

from runbook.errors import CheckFailed, PreconditionFailed

__all__ = ["CHECKS", "CheckSpec", "Sink", "Verdict", "check", "check_rows", "equal", "judge", "judge_all", "skipped",
           "verdict"]

Status = Literal["passed", "failed", "skipped"]
P = ParamSpec("P")


@dataclass(frozen=True)
class Verdict:
    """What one check expected, what it observed, and what it found wrong (nothing: it passed)."""

    title: str
    expected: Any
    observed: Any
    problems: tuple[str, ...] = ()
    skipped: str = ""  # why the check could not run here (a missing capability); never a pass
    check: str = ""  # the registered check that computed it
    obj: str | None = None  # the object checked (a pod, a dataset), for the error

    @property
    def ok(self) -> bool:
        return not self.problems and not self.skipped

    @property
    def status(self) -> Status:
        return "skipped" if self.skipped and not self.problems else ("failed" if self.problems else "passed")

    @property
    def message(self) -> str:
        if self.skipped and not self.problems:
            return f"{self.title}: skipped ({self.skipped})"
        return f"{self.title}: {'; '.join(self.problems)}" if self.problems else f"{self.title}: as expected"

    def require(self, *, precondition: bool = False) -> Verdict:
        """Raise :class:`CheckFailed` when a problem was found (:class:`PreconditionFailed` for a procedure's
        precondition: nothing was changed); a skipped check does not raise."""
        if self.problems and precondition:
            raise PreconditionFailed(self.message, obj=self.obj)
        if self.problems:
            raise CheckFailed(self.message, expected=self.expected, observed=self.observed, obj=self.obj)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "expected": self.expected, "observed": self.observed,
                "problems": list(self.problems), "skipped": self.skipped}


def verdict(title: str, *, expected: Any, observed: Any, problems: Iterable[str] = (), obj: str | None = None,
            skip: str = "") -> Verdict:
    """A verdict from the problems a check found (none: it passed)."""
    return Verdict(title, expected, observed, tuple(str(p) for p in problems), skipped=skip, obj=obj)


def skipped(title: str, reason: str, *, expected: Any = None) -> Verdict:
    """The check could not run here (``reason``: the capability this machine lacks)."""
    if not reason:
        raise ValueError("a skipped check must say why")
    return Verdict(title, expected, None, (), skipped=reason)


@dataclass(frozen=True)
class CheckSpec:
    """A registered check: its name, what it checks and the tests proving it fails when the trap is there."""

    name: str
    summary: str
    negative: tuple[str, ...]
    func: Callable[..., Any]


CHECKS: dict[str, CheckSpec] = {}


def check(*, negative: str | Iterable[str]) -> Callable[[Callable[P, Verdict]], Callable[P, Verdict]]:
    """Register a check. ``negative`` names the test(s) (``path::function``) in which it fails on the trap."""
    tests = (negative,) if isinstance(negative, str) else tuple(negative)

    def register(fn: Callable[P, Verdict]) -> Callable[P, Verdict]:
        name = f"{fn.__module__.removeprefix('runbook.checks.')}.{fn.__name__}"

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> Verdict:
            v = fn(*args, **kwargs)
            if not isinstance(v, Verdict):
                raise TypeError(f"check {name} returned {type(v).__name__}, not a Verdict")
            return replace(v, check=name)

        return _registered(fn, run, name, tests)

    return register


def check_rows(*, negative: str | Iterable[str]) -> Callable[[Callable[P, list[Verdict]]], Callable[P, list[Verdict]]]:
    """Register a check that judges several rows at once (the zero-drop verdict's phases): one verdict each."""
    tests = (negative,) if isinstance(negative, str) else tuple(negative)

    def register(fn: Callable[P, list[Verdict]]) -> Callable[P, list[Verdict]]:
        name = f"{fn.__module__.removeprefix('runbook.checks.')}.{fn.__name__}"

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> list[Verdict]:
            rows = fn(*args, **kwargs)
            if not rows or not all(isinstance(v, Verdict) for v in rows):
                raise TypeError(f"check {name} must return one Verdict per row, at least one")
            return [replace(v, check=name) for v in rows]

        return _registered(fn, run, name, tests)

    return register


def _registered(fn: Callable[..., Any], run: Callable[P, Any], name: str, tests: tuple[str, ...]) -> Callable[P, Any]:
    if not tests:
        raise ValueError(f"check {name} needs a negative test")
    # a module imported again (pytester's in-process runs) registers its checks again: the same name, replaced
    run.__check__ = name  # type: ignore[attr-defined]
    summary = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    CHECKS[name] = CheckSpec(name, " ".join(summary.split()), tests, run)
    return run


@runtime_checkable
class Sink(Protocol):
    """Where verdicts are recorded (the evidence recorder)."""

    def verdict(self, v: Verdict) -> None: ...


def judge(sink: Sink | Callable[[Verdict], None] | None, v: Verdict, *, precondition: bool = False) -> Verdict:
    """Record ``v`` exactly as computed (``sink``: the evidence recorder, or a procedure context's ``verdicts``
    callable), then raise if it failed. Returns it (for a step that uses it on)."""
    if not v.check:
        raise TypeError(f"verdict {v.title!r} did not come from a registered check")
    if isinstance(sink, Sink):
        sink.verdict(v)
    elif sink is not None:
        sink(v)
    return v.require(precondition=precondition)


def judge_all(sink: Sink | Callable[[Verdict], None] | None, verdicts: Iterable[Verdict], *, summary: str = "",
              precondition: bool = False) -> list[Verdict]:
    """Record every verdict (a step checking several things shows each), then raise naming every failure
    (``summary``: the check's own account of the same verdict, put first in the error, e.g. the zero-drop
    verdict's lost requests one by one; ``precondition``: :class:`PreconditionFailed`, nothing was changed)."""
    every = list(verdicts)
    if not every:
        raise ValueError("judge_all needs at least one verdict: a step that checks nothing cannot pass")
    for v in every:
        if not v.check:
            raise TypeError(f"verdict {v.title!r} did not come from a registered check")
        if isinstance(sink, Sink):
            sink.verdict(v)
        elif sink is not None:
            sink(v)
    failed = [v for v in every if v.problems]
    if len(failed) == 1 and not summary:
        failed[0].require(precondition=precondition)
    if failed:
        text = "; ".join(v.message for v in failed)
        message = f"{summary}\n{text}" if summary else text
        if precondition:
            raise PreconditionFailed(message)
        raise CheckFailed(message, expected={v.title: v.expected for v in failed},
                          observed={v.title: v.observed for v in failed})
    return every


@check(negative="tests/checks/test_core.py::test_equal_fails_on_a_difference")
def equal(title: str, *, expected: Any, observed: Any) -> Verdict:
    """``observed`` equals ``expected`` (the simplest check: for a value read once and compared)."""
    return verdict(title, expected=expected, observed=observed,
                   problems=[] if observed == expected else [f"expected {expected!r}, observed {observed!r}"])

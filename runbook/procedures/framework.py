"""Procedures: ordered steps, each with a precondition, an idempotent action, a verification with a
deadline, and a rollback. Modelled on chaostoolkit's experiment (steady state before and after, rollbacks
with an explicit policy, a journal as evidence), but typed.

- A step whose real state is already there (``is_done``) is not acted on again: a re-run resumes.
- The journal (one JSON file per env and procedure) records what completed, with which parameters, so an
  interrupted run is resumed with the same parameters and `runbook rollback` knows what to undo.
- A failed step stops the procedure; with ``rollback="auto"`` the rollbacks of the steps that changed
  something run in reverse order, then the procedure's steady state is verified again. A rollback
  failure is raised loudly with the original error attached.
- ``plan()`` renders every step's commands and API calls without running anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runbook.errors import RunbookError

Progress = Callable[[str], None]
RollbackPolicy = Literal["auto", "none"]


class Interrupted(RunbookError):
    """The run was stopped between two steps (Ctrl-C, or a test's interruption point)."""


class RollbackFailed(RunbookError):
    """A rollback did not restore the environment: loud, with the error that caused it."""


class Journal:
    """What a procedure completed on an env, persisted after every step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return {}

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        tmp.replace(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class Context:
    """What a step sees: the adapters, the procedure's parameters, and where to report."""

    adapters: Any  # runbook.adapters.factory.Adapters (kept loose to avoid an import cycle)
    params: dict[str, Any]
    progress: Progress = print
    record: Callable[[str, Any], None] = lambda title, data: None
    mark: Callable[[str, str], None] = lambda name, detail: None  # a timeline event (the prober's)
    facts: dict[str, Any] = field(default_factory=dict)  # derived at start, persisted in the journal

    @property
    def env(self) -> Any:
        return self.adapters.env


@dataclass(frozen=True)
class Step:
    name: str
    summary: str
    action: Callable[[Context], None]
    verify: Callable[[Context], None]
    is_done: Callable[[Context], bool] = lambda ctx: False
    precondition: Callable[[Context], None] | None = None
    rollback: Callable[[Context], None] | None = None
    plan: Callable[[Context], list[str]] = lambda ctx: []


@dataclass
class StepOutcome:
    name: str
    status: str  # done | skipped (already done) | failed | rolled back | rollback failed
    seconds: float = 0.0
    error: str = ""


@dataclass
class RunResult:
    procedure: str
    ok: bool
    steps: list[StepOutcome]
    error: str = ""
    rolled_back: bool = False

    def outcome(self, step: str) -> StepOutcome:
        return next(s for s in self.steps if s.name == step)


@dataclass(frozen=True)
class Procedure:
    name: str
    summary: str
    steps: tuple[Step, ...]
    prepare: Callable[[Context], None] = lambda ctx: None  # derive facts (live colour, names, ...)
    steady_state: Callable[[Context], None] = lambda ctx: None  # production as it should be

    # -------------------------------------------------------------------- plan
    def plan(self, ctx: Context) -> list[tuple[Step, list[str]]]:
        self.prepare(ctx)
        return [(s, s.plan(ctx)) for s in self.steps]

    # -------------------------------------------------------------------- run
    def run(
        self,
        ctx: Context,
        *,
        journal: Journal,
        rollback: RollbackPolicy = "auto",
        interrupt_after: str | None = None,
    ) -> RunResult:
        """Run or resume. ``interrupt_after`` stops right after that step (tests of resumption)."""
        state = journal.load()
        if state and state.get("procedure") == self.name and state.get("status") == "running":
            if state.get("params") != _jsonable(ctx.params):
                raise RunbookError(
                    f"an unfinished {self.name} run with other parameters is in the journal "
                    f"({state.get('params')}): resume it with those or roll it back first",
                    procedure=self.name, obj=str(journal.path))
            ctx.facts.update(state.get("facts", {}))
            ctx.progress(f"resuming {self.name} from its journal ({journal.path})")
        else:
            state = {"procedure": self.name, "params": _jsonable(ctx.params), "status": "running",
                     "started": time.time(), "completed": [], "acted": []}
        if not ctx.facts:
            self.prepare(ctx)
        state["facts"] = ctx.facts
        journal.save(state)

        outcomes: list[StepOutcome] = []
        acted: list[str] = list(state.get("acted", []))
        for step in self.steps:
            start = time.monotonic()
            try:
                done_before = step.name in state["completed"] and step.is_done(ctx)
                if done_before:
                    outcomes.append(StepOutcome(step.name, "skipped (already done)"))
                    ctx.progress(f"[{self.name}] {step.name}: already done")
                    continue
                ctx.progress(f"[{self.name}] {step.name}: {step.summary}")
                if step.precondition is not None:
                    step.precondition(ctx)
                if not step.is_done(ctx):
                    if step.name not in acted:
                        acted.append(step.name)
                        state["acted"] = acted
                        journal.save(state)
                    step.action(ctx)
                step.verify(ctx)
            except KeyboardInterrupt:
                state["interrupted_at"] = step.name
                journal.save(state)
                raise Interrupted(f"interrupted during {step.name}", procedure=self.name, step=step.name) from None
            except RunbookError as exc:
                outcomes.append(StepOutcome(step.name, "failed", time.monotonic() - start, str(exc)))
                ctx.record(f"{step.name} failed", str(exc))
                return self._fail(ctx, journal, state, outcomes, acted, exc, rollback)
            outcomes.append(StepOutcome(step.name, "done", time.monotonic() - start))
            state["completed"].append(step.name)
            journal.save(state)
            if interrupt_after == step.name:
                raise Interrupted(f"interrupted after {step.name}", procedure=self.name, step=step.name)
        state["status"] = "done"
        state["finished"] = time.time()
        journal.save(state)
        return RunResult(self.name, True, outcomes)

    def _fail(self, ctx: Context, journal: Journal, state: dict[str, Any], outcomes: list[StepOutcome],
              acted: list[str], exc: RunbookError, policy: RollbackPolicy) -> RunResult:
        state["status"] = "failed"
        state["error"] = str(exc)
        journal.save(state)
        if policy == "none":
            return RunResult(self.name, False, outcomes, str(exc))
        self.roll_back(ctx, journal, cause=exc)
        outcomes.append(StepOutcome("(rollback)", "rolled back"))
        return RunResult(self.name, False, outcomes, str(exc), rolled_back=True)

    # -------------------------------------------------------------------- rollback
    def roll_back(self, ctx: Context, journal: Journal, *, cause: BaseException | None = None) -> None:
        """Undo, in reverse, every step the journal says acted; then check the steady state."""
        state = journal.load()
        ctx.facts.update(state.get("facts", {}))
        acted = [s for s in self.steps if s.name in state.get("acted", [])]
        for step in reversed(acted):
            if step.rollback is None:
                continue
            ctx.progress(f"[{self.name}] rolling back {step.name}")
            try:
                step.rollback(ctx)
            except RunbookError as exc:
                state["status"] = "rollback failed"
                journal.save(state)
                why = f" (the run had failed with: {cause})" if cause else ""
                raise RollbackFailed(f"ROLLBACK FAILED at {step.name}: {exc}{why}", procedure=self.name,
                                     step=step.name) from exc
        self.steady_state(ctx)
        state["status"] = "rolled back"
        state["acted"] = []
        state["completed"] = []
        journal.save(state)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params, default=str))

"""Procedures: ordered steps, each with a precondition, an idempotent action, a verification with a
deadline, and a rollback. Modelled on chaostoolkit's experiment (steady state before and after, rollbacks
with an explicit policy, a journal as evidence), but typed.

- A step whose real state is already there (``is_done``) is not acted on again: a re-run resumes.
- The journal (one JSON document per env and procedure, :mod:`runbook.procedures.journal`) records what
  completed, with which parameters, so an interrupted run is resumed with the same parameters and
  `runbook rollback` knows what to undo. A run finds the journal in one of three states: finished (done,
  rolled back) or absent, and a new run starts, with a new run id in its facts; unfinished with the same
  parameters, and it resumes; anything else (other parameters, a failed run not rolled back, a failed
  rollback) is refused with what to do (:func:`resume_or_refuse`). A corrupt journal is an error.
- One run or rollback at a time per env: the journal's lock, held for the whole run, names its holder.
- A failed step stops the procedure; with ``rollback="auto"`` the rollbacks of the steps that changed
  something run in reverse order, then the procedure's steady state is verified again. A rollback
  failure is raised loudly with the original error attached.
- ``plan()`` renders every step's commands and API calls without running anything.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from runbook.checks.core import Verdict, judge, judge_all
from runbook.errors import RunbookError
from runbook.procedures.facts import Facts
from runbook.procedures.journal import Journal, JournalCorrupt, Locked

if TYPE_CHECKING:
    from runbook.adapters.factory import Adapters
    from runbook.env import Env

F = TypeVar("F", bound=Facts)

__all__ = ["Context", "Interrupted", "Journal", "JournalCorrupt", "Locked", "Procedure", "RollbackFailed",
           "RunRefused", "RunResult", "Step", "StepOutcome", "new_run_id", "resume_or_refuse"]

Progress = Callable[[str], None]
PlanLines = Callable[["Context[Any]"], list[str]]
RollbackPolicy = Literal["auto", "none"]


class Interrupted(RunbookError):
    """The run was stopped between two steps (Ctrl-C, or a test's interruption point)."""


class RollbackFailed(RunbookError):
    """A rollback did not restore the environment: loud, with the error that caused it."""


class RunRefused(RunbookError):
    """The journal holds an unfinished run this one cannot resume: the message says how to go on."""


def new_run_id() -> str:
    """A short id naming one run (and what it creates, like its snapshot): UTC time and 4 random hex digits."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(2)}"


def _options(params: dict[str, Any]) -> str:
    cli = ("target_version", "cleanup", "confirm_destroy")  # the parameters `runbook run` takes as options
    return " ".join(f"--{k.replace('_', '-')}={v}" for k, v in params.items() if k in cli)


def env_option(env: Any) -> str:
    """How a command line names ``env``: its name for a file under envs/, else the file's path."""
    from pathlib import Path

    from runbook.env import envs_dir

    source = str(getattr(env, "source", "") or "")
    if not source or Path(source).resolve() == (envs_dir() / f"{env.name}.yaml").resolve():
        return str(env.name)
    return source


def resume_or_refuse(state: dict[str, Any], procedure: str, params: dict[str, Any], *, env: str = "",
                     where: str = "") -> dict[str, Any] | None:
    """What a run of ``procedure`` with ``params`` does with the journal ``state``: None starts a new run
    (no journal, or a finished one), a state is resumed (an unfinished run with the same parameters);
    anything else raises :class:`RunRefused` saying how to go on."""
    status = state.get("status")
    if not state or status in ("done", "rolled back"):
        return None
    owner = str(state.get("procedure"))
    env_opt = f" --env={env}" if env else ""
    rollback = f"`runbook rollback {owner}{env_opt}`"
    stopped = f"completed: {', '.join(state.get('completed') or []) or 'nothing yet'}"
    if status == "running" and owner == procedure and state.get("params") == _jsonable(params):
        return state
    if status == "running":
        what = "with other parameters" if owner == procedure else f"of {owner}"
        raise RunRefused(
            f"an unfinished {owner} run {what} is in the journal {where} (parameters {state.get('params')}; "
            f"{stopped}). Resume it with the same parameters (`runbook run {owner}{env_opt} "
            f"{_options(state.get('params') or {})}`), or roll it back with {rollback} to start over",
            procedure=procedure, obj=where)
    if status == "failed":
        raise RunRefused(
            f"the last {owner} run failed and was not rolled back ({state.get('error', 'no error recorded')}; "
            f"{stopped}; journal {where}). Roll it back with {rollback}, then run again", procedure=procedure,
            obj=where)
    raise RunRefused(
        f"a rollback of {owner} failed ({state.get('error', 'see the journal')}; journal {where}): the env is "
        f"half rolled back. Fix what it names, then run {rollback} again; a new run starts once it is rolled back",
        procedure=procedure, obj=where)


@dataclass
class Context(Generic[F]):
    """What a step sees: the adapters, the procedure's parameters, its facts, and where to report. The facts
    are the procedure's typed class (:mod:`runbook.procedures.facts`): derived at the start, kept in the
    journal, read back on a resume."""

    adapters: Adapters
    params: dict[str, Any]
    facts: F = field(default_factory=Facts)  # type: ignore[assignment]  # the procedure's class, set when it runs
    progress: Progress = print
    record: Callable[[str, Any], None] = lambda title, data: None
    mark: Callable[[str, str], None] = lambda name, detail: None  # a timeline event (the prober's)
    verdicts: Callable[[Verdict], None] = lambda v: None  # where a verification's verdicts are recorded

    def __post_init__(self) -> None:
        if not isinstance(self.facts, Facts):
            raise TypeError(f"a Context's facts are a typed Facts class, not {type(self.facts).__name__}")

    @property
    def env(self) -> Env:
        return self.adapters.env

    def judge(self, v: Verdict, *, precondition: bool = False) -> Verdict:
        """A verification's verdict (a check from runbook.checks): recorded as computed, raised if it failed
        (:class:`PreconditionFailed` for a precondition: nothing was changed)."""
        return judge(self.verdicts, v, precondition=precondition)

    def judge_all(self, verdicts: list[Verdict], *, precondition: bool = False) -> list[Verdict]:
        """Several verdicts (a checklist): every one recorded, then one error naming every failure."""
        return judge_all(self.verdicts, verdicts, precondition=precondition)


@dataclass(frozen=True)
class Step:
    name: str
    summary: str
    action: Callable[[Context[Any]], None]
    verify: Callable[[Context[Any]], None]
    is_done: Callable[[Context[Any]], bool] = lambda ctx: False
    precondition: Callable[[Context[Any]], None] | None = None
    rollback: Callable[[Context[Any]], None] | None = None
    plan: PlanLines = lambda ctx: []  # the action's commands and API calls
    plan_check: PlanLines = lambda ctx: []  # what the precondition reads
    plan_verify: PlanLines = lambda ctx: []  # what the verification reads, and what it must see
    plan_rollback: PlanLines | None = None  # the rollback's commands (every step with a rollback has one)


@dataclass(frozen=True)
class StepPlan:
    """One step as ``plan`` renders it; ``rollback`` is None when the step has no rollback."""

    step: Step
    check: list[str]
    action: list[str]
    verify: list[str]
    rollback: list[str] | None

    @property
    def lines(self) -> list[str]:
        return [*self.check, *self.action, *self.verify, *(self.rollback or [])]


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
    prepare: Callable[[Context[Any]], None] = lambda ctx: None  # derive facts (live colour, names, ...)
    steady_state: Callable[[Context[Any]], None] = lambda ctx: None  # production as it should be
    facts: Callable[[], Facts] = Facts  # the procedure's typed facts (runbook.procedures.facts)

    def context(self, adapters: Adapters, params: dict[str, Any], **report: Any) -> Context[Any]:
        """A context for a run, a rollback or a plan of this procedure, with its facts class, empty."""
        return Context(adapters=adapters, params=params, facts=self.facts(), **report)

    def adopt_facts(self, ctx: Context[Any]) -> None:
        """A context built without facts gets this procedure's class (empty); another class is refused."""
        want = self.facts()
        if type(ctx.facts) is Facts and type(want) is not Facts:
            want.run_id = ctx.facts.run_id
            ctx.facts = want
        elif not isinstance(ctx.facts, type(want)):
            raise TypeError(f"{self.name} needs {type(want).__name__}, the context holds {type(ctx.facts).__name__}")

    # -------------------------------------------------------------------- plan
    def plan(self, ctx: Context) -> list[StepPlan]:
        """Every step's action, verification and rollback, rendered from ``ctx.params`` (``plan``: True)."""
        self.adopt_facts(ctx)
        self.prepare(ctx)
        missing = [s.name for s in self.steps if s.rollback is not None and s.plan_rollback is None]
        if missing:
            raise RunbookError(f"{self.name}: steps with a rollback but no plan_rollback: {', '.join(missing)}",
                               procedure=self.name)
        return [StepPlan(s, s.plan_check(ctx), s.plan(ctx), s.plan_verify(ctx),
                         s.plan_rollback(ctx) if s.plan_rollback else None) for s in self.steps]

    # -------------------------------------------------------------------- run
    def run(
        self,
        ctx: Context,
        *,
        journal: Journal,
        rollback: RollbackPolicy = "auto",
        interrupt_after: str | None = None,
    ) -> RunResult:
        """Run, or resume the journal's unfinished run; under the env's lock for the whole run.
        ``interrupt_after`` stops right after that step (tests of resumption)."""
        self.adopt_facts(ctx)
        with journal.lock(self.name, "run"):
            return self._run(ctx, journal, rollback, interrupt_after)

    def _run(self, ctx: Context, journal: Journal, rollback: RollbackPolicy, interrupt_after: str | None) -> RunResult:
        env = getattr(ctx.adapters, "env", None)
        resumed = resume_or_refuse(journal.load(), self.name, ctx.params, env=env_option(env) if env else "",
                                   where=journal.where)
        if resumed is not None:
            state = resumed
            ctx.facts.load(state.get("facts", {}))
            ctx.progress(f"resuming {self.name} run {ctx.facts.run_id} from its journal ({journal.where}); "
                         f"completed: {', '.join(state.get('completed', [])) or 'nothing yet'}")
        else:
            state = {"procedure": self.name, "params": _jsonable(ctx.params), "status": "running",
                     "started": time.time(), "completed": [], "acted": []}
            derived = bool(ctx.facts)  # a caller's facts (a rollback's are the upgrade's): prepare is skipped
            if not ctx.facts.run_id:
                ctx.facts.run_id = new_run_id()
            if not derived:
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
        self.adopt_facts(ctx)
        with journal.lock(self.name, "rollback"):
            self._roll_back(ctx, journal, cause)

    def _roll_back(self, ctx: Context, journal: Journal, cause: BaseException | None) -> None:
        state = journal.load()
        if not state:
            raise RunbookError(f"no {self.name} run in the journal {journal.where}: nothing to roll back",
                               procedure=self.name, obj=journal.where)
        ctx.facts.load(state.get("facts", {}))
        acted = [s for s in self.steps if s.name in state.get("acted", [])]
        for step in reversed(acted):
            if step.rollback is None:
                continue
            ctx.progress(f"[{self.name}] rolling back {step.name}")
            try:
                step.rollback(ctx)
            except RunbookError as exc:
                state["status"] = "rollback failed"
                state["error"] = f"at {step.name}: {exc}"
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

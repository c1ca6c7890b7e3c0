"""One exception tree. Every error names what it can of: env, procedure, step, object.

Modelled on httpx: a root class, a few branches, and context carried as attributes so a
report or CLI can print them without parsing messages.
"""

from __future__ import annotations

from typing import Any


class RunbookError(Exception):
    """Root of every error this project raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        env: str | None = None,
        procedure: str | None = None,
        step: str | None = None,
        obj: str | None = None,
    ) -> None:
        self.message = message
        self.env = env
        self.procedure = procedure
        self.step = step
        self.obj = obj
        super().__init__(message)

    def context(self) -> dict[str, str]:
        pairs = {"env": self.env, "procedure": self.procedure, "step": self.step, "object": self.obj}
        return {k: v for k, v in pairs.items() if v}

    def __str__(self) -> str:
        ctx = self.context()
        if not ctx:
            return self.message
        where = ", ".join(f"{k}={v}" for k, v in ctx.items())
        return f"{self.message} [{where}]"


class ConfigError(RunbookError):
    """An environment file or option is wrong: names the file, the field and the problem."""


class UnknownEnvironment(ConfigError):
    """--env names no file under envs/."""


class PortInUse(ConfigError):
    """A port chosen by the env is already bound by another program."""


class MutationRefused(RunbookError):
    """A mutating action was asked for without the required permission."""


class PreconditionFailed(RunbookError):
    """A step's precondition does not hold; nothing was changed."""


class StepRefused(ConfigError):
    """A Gherkin step was given a value it does not handle (a parameter the verdict would ignore), or is used
    where its preconditions in the scenario are missing: refused, never mapped to a default."""


class CheckFailed(RunbookError):
    """A verification compared real state with an expectation and they differ."""

    def __init__(self, message: str, *, expected: Any = None, observed: Any = None, **ctx: Any) -> None:
        self.expected = expected
        self.observed = observed
        super().__init__(message, **ctx)


class WaitTimeout(RunbookError):
    """A deadline passed before a predicate held; carries the last observed state."""

    def __init__(self, message: str, *, last_state: Any = None, waited: float = 0.0, **ctx: Any) -> None:
        self.last_state = last_state
        self.waited = waited
        super().__init__(f"{message} (waited {waited:.1f}s; last state: {last_state!r})", **ctx)


class AdapterError(RunbookError):
    """An adapter could not talk to what it fronts (an API, a process, a command)."""


class CommandFailed(AdapterError):
    """A command run through the host port exited non-zero."""

    def __init__(self, message: str, *, command: str, rc: int, stderr: str = "", **ctx: Any) -> None:
        self.command = command
        self.rc = rc
        self.stderr = stderr
        super().__init__(f"{message}: `{command}` exited {rc}: {stderr.strip()[:500]}", **ctx)


class KubeError(AdapterError):
    """The Kubernetes API refused or could not be reached; ``status`` is the HTTP status when it answered."""

    def __init__(self, message: str, *, status: int = 0, **ctx: Any) -> None:
        self.status = status
        super().__init__(message, **ctx)


class TestbedError(RunbookError):
    """The local testbed could not be brought up or torn down."""

    __test__ = False  # not a pytest test class

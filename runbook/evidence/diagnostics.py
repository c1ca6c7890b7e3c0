"""Diagnostics: what an SRE looks at first when a step fails, collected at the moment it fails.

The runtime registers collectors (pod status and events, process logs, Caddy config and upstream stats
from the adapters); each is a callable that takes a :class:`FailureContext` (or nothing) and returns
``{title: content}`` where content is text or anything JSON-like. On a failed step (or a scenario that
failed outside its steps) every collector runs, each in its own thread with a deadline, and what it
returns is redacted and stored with the failed step. A collector that raises or hangs is recorded as
such; it never hides the original failure.

    registry.register(lambda ctx: {"pods": adapters.workloads.describe_pods()}, name="pods")
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runbook.evidence.redact import redact, redact_obj

MAX_TEXT = 200_000  # characters kept of one diagnostic's text


@dataclass(frozen=True)
class FailureContext:
    """What failed: the test id, the scenario, the step (None outside steps), when, and the error (redacted)."""

    nodeid: str
    scenario: str
    step: str | None
    when: str  # "step", "setup", "call" or "teardown"
    error: str
    request: Any = field(default=None, repr=False, compare=False)  # pytest.FixtureRequest when there is one

    def fixture(self, name: str) -> Any:
        """A fixture's value (e.g. ``adapters``) when the failure happened inside a test; raises otherwise."""
        if self.request is None:
            raise LookupError(f"no fixture request for {self.nodeid}: cannot get fixture {name!r}")
        return self.request.getfixturevalue(name)


Collector = Callable[[FailureContext], Mapping[str, Any]] | Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class Diagnostic:
    collector: str
    title: str
    content: Any
    error: str | None = None
    took_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"collector": self.collector, "title": self.title, "content": self.content, "error": self.error,
                "took_s": round(self.took_s, 3)}


@dataclass(frozen=True)
class _Registered:
    name: str
    fn: Callable[[FailureContext], Mapping[str, Any]]
    timeout: float


def _clip(value: Any) -> Any:
    value = redact_obj(value)
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + f"\n... ({len(value) - MAX_TEXT:,} more characters not kept)"
    return value


class DiagnosticsRegistry:
    """The collectors of one pytest session (or one ``runbook run``)."""

    def __init__(self) -> None:
        self._collectors: list[_Registered] = []
        self._lock = threading.Lock()

    def register(self, collector: Collector, *, name: str | None = None, timeout: float = 20.0) -> Callable[[], None]:
        """Add a collector; returns a function that removes it (for collectors bound to a session fixture)."""
        label = name or getattr(collector, "__name__", None) or repr(collector)
        try:
            takes_ctx = bool(inspect.signature(collector).parameters)
        except (TypeError, ValueError):
            takes_ctx = True
        c: Any = collector

        def fn(ctx: FailureContext) -> Mapping[str, Any]:
            return c(ctx) if takes_ctx else c()
        entry = _Registered(label, fn, timeout)
        with self._lock:
            self._collectors.append(entry)

        def unregister() -> None:
            with self._lock:
                if entry in self._collectors:
                    self._collectors.remove(entry)

        return unregister

    @property
    def names(self) -> list[str]:
        return [c.name for c in self._collectors]

    def __len__(self) -> int:
        return len(self._collectors)

    def collect(self, ctx: FailureContext) -> list[Diagnostic]:
        with self._lock:
            collectors = list(self._collectors)
        out: list[Diagnostic] = []
        for c in collectors:
            out.extend(_run(c, ctx))
        return out


def _run(c: _Registered, ctx: FailureContext) -> list[Diagnostic]:
    result: dict[str, Any] = {}
    start = time.monotonic()

    def target() -> None:
        try:
            result["value"] = c.fn(ctx)
        except BaseException as exc:  # a collector must never hide the failure it documents
            result["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target, name=f"diagnostics-{c.name}", daemon=True)
    thread.start()
    thread.join(c.timeout)
    took = time.monotonic() - start
    if thread.is_alive():
        return [Diagnostic(c.name, c.name, None, f"no answer within {c.timeout:g}s (left running)", took)]
    if "error" in result:
        return [Diagnostic(c.name, c.name, None, redact(result["error"]), took)]
    value = result.get("value")
    if not isinstance(value, Mapping):
        return [Diagnostic(c.name, c.name, None, f"returned {type(value).__name__}, expected {{title: content}}", took)]
    return [Diagnostic(c.name, redact(str(title)), _clip(content), None, took) for title, content in value.items()]

"""Evidence: what each Gherkin step did and saw, with secrets redacted before anything is stored.

Fed by pytest-bdd's step hooks (step text, times, status; :mod:`runbook.evidence.hooks`) and by the steps
themselves through the ``evidence`` fixture (calls made, outputs, compared values, attachments, probe
records). Rendered into the pytest-html report (:mod:`runbook.evidence.render`) and the evidence bundle
(:mod:`runbook.evidence.bundle`).

    evidence.call("GET /health", response.text)
    evidence.verdict(checks.health_body(...))          # a Verdict from runbook.checks (via judge())
    evidence.attach("caddy config", config)              # JSON-like or text, kept inline
    evidence.attach_file(tmp_path / "pod.yaml")          # copied into the bundle (text redacted)
    evidence.attach_probe(probe_dir, cutover_events=["blue healthy", "shift", "green stopped"])
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runbook.checks.core import Verdict
from runbook.errors import RunbookError
from runbook.evidence.artifacts import Artifact, ArtifactStore, is_text, media_type
from runbook.evidence.diagnostics import Diagnostic
from runbook.evidence.redact import REDACTED, redact, redact_obj
from runbook.evidence.timeline import EVENTS, REQUESTS, ProbeSummary, read_probe

__all__ = ["REDACTED", "Entry", "Recorder", "ScenarioInfo", "StepRecord", "redact", "redact_obj"]

EntryKind = Literal["call", "compare", "note", "attachment", "file", "probe"]
INLINE_LIMIT = 64_000  # characters of a file kept inline when there is no bundle to copy it into
PROBE_FAILURES_KEPT = 1_000  # failed requests listed in the bundle's JSON (all of them are in the records)


@dataclass(frozen=True)
class Entry:
    kind: EntryKind
    title: str
    data: Any
    t: float = field(default_factory=time.time)
    html: str | None = field(default=None, compare=False, repr=False)  # pre-rendered (a timeline); not serialised

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "t": self.t, "data": self.data}


@dataclass
class StepRecord:
    text: str
    start: float
    end: float | None = None
    status: str = "running"  # passed | failed | skipped | running (until the step ends)
    error: str = ""
    entries: list[Entry] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end, "status": self.status, "error": self.error,
                "entries": [e.to_dict() for e in self.entries], "diagnostics": [d.to_dict() for d in self.diagnostics]}


@dataclass(frozen=True)
class ScenarioInfo:
    """The Gherkin scenario behind a test: feature, name, tags and every step it would run."""

    feature: str
    feature_file: str
    name: str
    keyword: str = "Scenario"
    line: int = 0
    tags: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "feature_file": self.feature_file, "name": self.name,
                "keyword": self.keyword, "line": self.line, "tags": list(self.tags), "steps": list(self.steps)}


class Recorder:
    """Evidence of one test (one scenario)."""

    def __init__(self, name: str, *, artifacts: ArtifactStore | None = None) -> None:
        self.name = name
        self.steps: list[StepRecord] = []
        self.scenario: ScenarioInfo | None = None
        self.outcome: str | None = None  # passed | failed | skipped | error | xfailed | xpassed
        self.reason: str | None = None
        self.diagnostics: list[Diagnostic] = []  # collected when the test failed outside a step
        self.artifacts: list[Artifact] = []
        self.start = time.time()
        self.end: float | None = None
        self._store = artifacts
        self._loose = StepRecord(text="(outside steps)", start=self.start)

    @property
    def current(self) -> StepRecord:
        if self.steps and self.steps[-1].status == "running":
            return self.steps[-1]
        return self._loose

    # -- fed by the hooks --------------------------------------------------------------------
    def plan(self, info: ScenarioInfo) -> None:
        self.scenario = info

    def begin_step(self, text: str) -> None:
        self.steps.append(StepRecord(text=redact(text), start=time.time()))

    def end_step(self, *, error: BaseException | None = None) -> None:
        step = self.current
        step.end = time.time()
        step.status = "failed" if error else "passed"
        step.error = redact(f"{type(error).__name__}: {error}") if error else ""

    def add_diagnostics(self, found: Sequence[Diagnostic], *, step: bool = True) -> None:
        """Diagnostics of a failure: on the current (failed) step, else on the scenario."""
        target = self.steps[-1].diagnostics if step and self.steps else self.diagnostics
        target.extend(found)

    @property
    def has_diagnostics(self) -> bool:
        return bool(self.diagnostics) or any(s.diagnostics for s in self.steps)

    def finish(self, outcome: str, reason: str | None = None) -> None:
        """The test's outcome; a step still running is marked skipped (pytest.skip) or failed."""
        self.outcome = outcome
        self.reason = redact(reason) if reason else None
        self.end = time.time()
        self._loose.end = self.end
        self._loose.status = "failed" if outcome == "error" else "passed"  # fixtures' evidence, outside steps
        for s in self.steps:
            if s.status == "running":
                s.end = self.end
                s.status = "skipped" if outcome in ("skipped", "xfailed") else "failed"
                s.error = s.error or (self.reason or "")

    # -- used by steps -----------------------------------------------------------------------
    def call(self, title: str, output: Any = None) -> None:
        """A command or API call made, with its output."""
        self.current.entries.append(Entry("call", redact(title), redact_obj(output)))

    def verdict(self, v: Verdict) -> None:
        """A check's verdict, exactly as the check computed it (:mod:`runbook.checks.core`): there is no way
        to record an outcome by hand. Skipped checks are shown as skipped, with the reason."""
        data = {"expected": redact_obj(v.expected), "observed": redact_obj(v.observed), "ok": v.ok,
                "status": v.status, "check": v.check, "problems": redact_obj(list(v.problems)),
                "skipped": redact(v.skipped)}
        self.current.entries.append(Entry("compare", redact(v.title), data))

    def note(self, text: str) -> None:
        self.current.entries.append(Entry("note", redact(text), None))

    def verdict_statuses(self) -> dict[str, str]:
        """Check name -> the status of its last verdict recorded in this test (every step, fixtures too)."""
        out: dict[str, str] = {}
        for step in [self._loose, *self.steps]:
            for e in step.entries:
                if e.kind == "compare" and isinstance(e.data, dict) and e.data.get("check"):
                    out[str(e.data["check"])] = str(e.data.get("status"))
        return out

    def attach(self, title: str, content: Any) -> None:
        """Text or a JSON-like value (a config snapshot, pod status), kept inline."""
        self.current.entries.append(Entry("attachment", redact(title), redact_obj(content)))

    def attach_file(self, path: str | Path, *, title: str | None = None) -> Artifact | None:
        """A file, copied into the bundle now (text redacted on the way); inline when there is no bundle."""
        src = Path(path)
        if not src.is_file():
            raise RunbookError(f"cannot attach {src}: not a file", obj=str(src))
        label = redact(title or src.name)
        if self._store is None:
            text = src.read_text("utf-8", "replace")[:INLINE_LIMIT] if is_text(src) else None
            data = {"source": str(src), "bytes": src.stat().st_size, "media_type": media_type(src),
                    "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                    "inline": redact(text) if text is not None else None}
            self.current.entries.append(Entry("file", label, data))
            return None
        art = self._store.copy(src)
        self.artifacts.append(art)
        data = {**art.to_dict(), "href": self._store.href(art)}
        if art.media_type.startswith("text/") or art.media_type.endswith("json") or is_text(src):
            data["preview"] = (self._store.root / art.path).read_text("utf-8", "replace")[:4000]
        self.current.entries.append(Entry("file", label, data))
        return art

    def attach_probe(self, path: str | Path, *, title: str = "zero-drop probe",
                     cutover_events: Sequence[str] | None = None,
                     upstream_names: Mapping[str, str] | None = None) -> ProbeSummary:
        """A prober directory: its timeline goes into the report, its records into the bundle.

        ``cutover_events`` names the events that make up the cutover (during = first to last of them;
        every event when None); ``upstream_names`` labels upstream addresses (``{"127.0.0.1:8899": "green"}``).
        """
        from runbook.evidence.timeline_svg import render_timeline, timeline_page

        src = Path(path)
        summary = read_probe(src, cutover_events=cutover_events)
        files: list[dict[str, Any]] = []
        href: str | None = None
        if self._store is not None:
            sub = self._store.subdir("probe")
            # the records and whatever else the prober wrote beside them (prober.json, its summary.json)
            for f in sorted(p for p in src.iterdir() if p.is_file()):
                art = self._store.copy(f, subdir=sub)
                self.artifacts.append(art)
                files.append(art.to_dict())
                if f.name == REQUESTS:
                    href = self._store.href(art)
            page = timeline_page(summary, title=title, upstream_names=upstream_names, records_href=REQUESTS,
                                 links=[(name, name) for name in (REQUESTS, EVENTS) if (src / name).is_file()])
            for name, text, media in (("timeline.html", page, "text/html"),
                                      ("timeline.json", json.dumps(summary.to_dict(), indent=1), "application/json")):
                art = self._store.write_text(name, text, media=media, subdir=sub)
                self.artifacts.append(art)
                files.append(art.to_dict())
        prefix = self._store.href_prefix if self._store else ""
        links = [(f["path"].rsplit("/", 1)[1], prefix + f["path"]) for f in files]
        fragment = render_timeline(summary, title=title, upstream_names=upstream_names, records_href=href,
                                   links=links)
        data = summary.to_dict()
        data["failures"] = data["failures"][:PROBE_FAILURES_KEPT]
        data.update(cutover_events=list(cutover_events) if cutover_events is not None else None,
                    upstream_names=dict(upstream_names or {}), files=files)
        self.current.entries.append(Entry("probe", redact(title), redact_obj(data), html=fragment))
        return summary

    # -- output ------------------------------------------------------------------------------
    def all_steps(self) -> list[StepRecord]:
        """Recorded steps, then the scenario's steps that never ran (skipped), the loose entries first."""
        loose = [self._loose] if (self._loose.entries or self._loose.diagnostics) else []
        planned = self.scenario.steps if self.scenario else ()
        ran = len(self.steps)
        not_run = [StepRecord(text=text, start=self.end or self.start, end=self.end or self.start, status="skipped",
                              error="not run") for text in planned[ran:]]
        return loose + self.steps + not_run

    def to_dict(self) -> dict[str, Any]:
        end = self.end
        return {
            "name": self.name,
            "nodeid": self.name,
            "scenario": self.scenario.to_dict() if self.scenario else None,
            "outcome": self.outcome or "unknown",
            "reason": self.reason,
            "start": self.start,
            "end": end,
            "duration_s": round(end - self.start, 3) if end else None,
            "steps": [s.to_dict() for s in self.all_steps()],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "artifacts": [a.path for a in self.artifacts],
        }

    def to_html(self) -> str:
        from runbook.evidence.render import render_scenario

        return render_scenario(self)

"""Evidence: what each Gherkin step did and saw, with secrets redacted before anything is stored.

Fed by pytest-bdd's step hooks (step text, times, status) and by the steps themselves (calls made,
outputs, compared values, attachments). The plugin renders it into the pytest-html report.
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# ---------------------------------------------------------------------------------- redaction
_KEYPAIR_ARRAY = re.compile(r"\[\s*(?:\d{1,3}\s*,\s*){31,}\d{1,3}\s*\]")  # id.json: 64 ints
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
_SECRET_FIELD = re.compile(
    r"(?i)(\"?(?:secret|secret_key|private_key|privkey|token|password|authorization|bearer)\"?\s*[:=]\s*)"
    r"(\"[^\"]*\"|'[^']*'|\S+)"
)
_BASE58_SECRET = re.compile(r"\b[1-9A-HJ-NP-Za-km-z]{86,90}\b")  # a 64-byte keypair in base58
_SEED_FIELD = re.compile(r"(?i)(\"?[\w-]*seed\"?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|\S+)")
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """Remove key material and tokens from any text that may reach a log or report."""
    text = _PEM.sub(REDACTED, text)
    text = _KEYPAIR_ARRAY.sub(REDACTED, text)
    text = _SECRET_FIELD.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BASE58_SECRET.sub(REDACTED, text)
    return _SEED_FIELD.sub(lambda m: m.group(1) + REDACTED, text)


def redact_obj(obj: Any) -> Any:
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: (REDACTED if re.search(r"(?i)secret|private|token|password|seed", str(k)) else redact_obj(v))
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------- model
EntryKind = Literal["call", "compare", "note", "attachment"]


@dataclass
class Entry:
    kind: EntryKind
    title: str
    data: Any
    t: float = field(default_factory=time.time)


@dataclass
class StepRecord:
    text: str
    start: float
    end: float | None = None
    status: str = "running"  # passed | failed | running
    error: str = ""
    entries: list[Entry] = field(default_factory=list)


class Recorder:
    """Evidence of one test (one scenario)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps: list[StepRecord] = []
        self._loose = StepRecord(text="(outside steps)", start=time.time())

    @property
    def current(self) -> StepRecord:
        if self.steps and self.steps[-1].status == "running":
            return self.steps[-1]
        return self._loose

    def begin_step(self, text: str) -> None:
        self.steps.append(StepRecord(text=text, start=time.time()))

    def end_step(self, *, error: BaseException | None = None) -> None:
        step = self.current
        step.end = time.time()
        step.status = "failed" if error else "passed"
        step.error = redact(str(error)) if error else ""

    def call(self, title: str, output: Any = None) -> None:
        """A command or API call made, with its output."""
        self.current.entries.append(Entry("call", redact(title), redact_obj(output)))

    def compare(self, title: str, *, expected: Any, observed: Any, ok: bool) -> None:
        data = {"expected": redact_obj(expected), "observed": redact_obj(observed), "ok": ok}
        self.current.entries.append(Entry("compare", redact(title), data))

    def note(self, text: str) -> None:
        self.current.entries.append(Entry("note", redact(text), None))

    def attach(self, title: str, content: Any) -> None:
        self.current.entries.append(Entry("attachment", redact(title), redact_obj(content)))

    # -- rendering -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        steps = ([self._loose] if self._loose.entries else []) + self.steps
        return {"name": self.name, "steps": [asdict(s) for s in steps]}

    def to_html(self) -> str:
        rows = []
        for s in self.to_dict()["steps"]:
            took = f"{(s['end'] - s['start']) * 1000:.0f} ms" if s["end"] else ""
            colour = {"passed": "#1a7f37", "failed": "#cf222e"}.get(s["status"], "#9a6700")
            items = []
            for e in s["entries"]:
                body = e["data"] if isinstance(e["data"], str) else json.dumps(e["data"], indent=1, default=str)
                mark = ""
                if e["kind"] == "compare":
                    mark = " ✔" if e["data"]["ok"] else " ✘"
                items.append(f"<li><b>{e['kind']}</b> {html.escape(e['title'])}{mark}"
                             + (f"<pre>{html.escape(str(body))[:20000]}</pre>" if e["data"] is not None else "")
                             + "</li>")
            err = f"<pre style='color:#cf222e'>{html.escape(s['error'])}</pre>" if s["error"] else ""
            rows.append(f"<div class='rb-step'><span style='color:{colour}'>●</span> <b>{html.escape(s['text'])}</b>"
                        f" <small>{s['status']} {took}</small>{err}<ul>{''.join(items)}</ul></div>")
        return "<div class='rb-evidence'>" + "".join(rows) + "</div>"

"""HTML for people: a scenario's Gherkin steps with their evidence, and the run's summary.

Everything here is already-redacted data escaped into static HTML (no script; the report's own
pytest-html script only shows and hides rows). Long outputs fold into ``<details>``; compared values
sit side by side; a failed step's diagnostics are open under it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from runbook.evidence.diagnostics import Diagnostic
from runbook.evidence.style import CSS

if TYPE_CHECKING:
    from runbook.evidence.recorder import Entry, Recorder, StepRecord

OK, BAD, SKIP = "\u2714", "\u2718", "\u2298"
MARKS = {"passed": OK, "failed": BAD, "skipped": SKIP, "running": "\u2026"}
KEYWORDS = ("Given", "When", "Then", "And", "But", "*")
HTML_LIMIT = 100_000  # characters of one output shown in the report (the bundle keeps it whole)
FOLD_LINES, FOLD_CHARS = 8, 700


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _text(data: Any) -> str:
    """Text as is; JSON on one line when short, indented otherwise."""
    if isinstance(data, str):
        return data
    flat = json.dumps(data, default=str, ensure_ascii=False)
    if len(flat) <= 110:
        return flat
    return json.dumps(data, indent=2, default=str, ensure_ascii=False)


def _pre(body: str) -> str:
    if len(body) > HTML_LIMIT:
        body = body[:HTML_LIMIT] + f"\n... {len(body) - HTML_LIMIT:,} more characters in the evidence bundle"
    return f"<pre>{_e(body)}</pre>"


def _took(start: float, end: float | None) -> str:
    if end is None:
        return ""
    s = end - start
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s" if s < 60 else f"{int(s // 60)} min {s % 60:.0f} s"


def _block(kind: str, title: str, data: Any) -> str:
    """An entry with a body: inline when short, folded (collapsible) when long."""
    head = f'<span class="rb-entry-kind">{_e(kind)}</span> {_e(title)}'
    if data is None:
        return f'<div class="rb-entry">{head}</div>'
    body = _text(data)
    lines = body.count("\n") + 1
    if lines <= FOLD_LINES and len(body) <= FOLD_CHARS:
        return f'<div class="rb-entry">{head}{_pre(body)}</div>'
    return (f'<details class="rb-entry rb-fold"><summary>{head} <span class="rb-dim">({lines:,} lines, '
            f"{len(body):,} characters)</span></summary>{_pre(body)}</details>")


def _value(v: Any) -> str:
    body = _text(v)
    if "\n" in body or len(body) > 80:
        return _pre(body)
    return f"<code>{_e(body)}</code>"


def _compares(entries: Sequence[Entry]) -> str:
    rows = []
    for e in entries:
        d = e.data if isinstance(e.data, Mapping) else {}
        status = str(d.get("status") or ("passed" if d.get("ok") else "failed"))
        cls, mark = {"passed": ("rb-good", OK), "skipped": ("rb-skip", SKIP)}.get(status, ("rb-bad", BAD))
        observed = _value(d.get("observed"))
        if d.get("problems"):
            observed += _value({"problems": d["problems"]})
        if status == "skipped":
            observed = f'<span class="rb-dim">not checked here: {_e(str(d.get("skipped")))}</span>'
        name = f'<br><span class="rb-dim">{_e(str(d["check"]))}</span>' if d.get("check") else ""
        rows.append(f'<tr class="{status}"><td>{_e(e.title)}{name}</td><td>{_value(d.get("expected"))}</td>'
                    f'<td>{observed}</td><td class="rb-ok {cls}">{mark}</td></tr>')
    return ('<table class="rb-cmp"><colgroup><col class="rb-c-title"><col><col><col class="rb-c-ok"></colgroup>'
            "<tr><th>check</th><th>expected</th><th>observed</th><th></th></tr>" + "".join(rows) + "</table>")


def _file(e: Entry) -> str:
    d = e.data if isinstance(e.data, Mapping) else {}
    size = d.get("bytes")
    facts = [f"{size:,} bytes" if isinstance(size, int) else "", str(d.get("media_type") or "")]
    if d.get("sha256"):
        facts.append(f"sha256 {str(d['sha256'])[:16]}\u2026")
    if d.get("redacted"):
        facts.append("redacted")
    link = f' <a href="{_e(d["href"])}">open</a>' if d.get("href") else ""
    head = (f'<span class="rb-entry-kind">file</span> {_e(e.title)} '
            f'<span class="rb-dim">({_e(", ".join(f for f in facts if f))})</span>{link}')
    preview = d.get("preview") if d.get("preview") is not None else d.get("inline")
    if preview is None:
        return f'<div class="rb-entry">{head}</div>'
    return f'<details class="rb-entry rb-fold"><summary>{head}</summary>{_pre(str(preview))}</details>'


def _probe(e: Entry) -> str:
    if e.html:
        return f'<div class="rb-entry">{e.html}</div>'
    return _block("probe", e.title, e.data)


def render_entries(entries: Sequence[Entry]) -> str:
    out: list[str] = []
    i = 0
    while i < len(entries):
        e = entries[i]
        if e.kind == "compare":
            j = i
            while j < len(entries) and entries[j].kind == "compare":
                j += 1
            out.append(_compares(entries[i:j]))
            i = j
            continue
        if e.kind == "file":
            out.append(_file(e))
        elif e.kind == "probe":
            out.append(_probe(e))
        elif e.kind == "note":
            out.append(f'<div class="rb-entry"><span class="rb-entry-kind">note</span> {_e(e.title)}</div>')
        else:
            out.append(_block("call" if e.kind == "call" else "attached", e.title, e.data))
        i += 1
    return f'<div class="rb-entries">{"".join(out)}</div>' if out else ""


def render_diagnostics(found: Sequence[Diagnostic], *, title: str = "Diagnostics collected at the failure") -> str:
    if not found:
        return ""
    parts = []
    for d in found:
        head = f"<h5>{_e(d.title)} <span class=\"rb-dim\">({_e(d.collector)}, {d.took_s:.2f} s)</span></h5>"
        body = f'<pre class="rb-error">{_e(d.error)}</pre>' if d.error else _pre(_text(d.content))
        parts.append(head + body)
    return f'<details class="rb-diag" open><summary>{_e(title)} ({len(found)})</summary>{"".join(parts)}</details>'


def _step(s: StepRecord) -> str:
    word, _, rest = s.text.partition(" ")
    text = (f'<span class="rb-kw">{_e(word)}</span> {_e(rest)}' if word in KEYWORDS else _e(s.text))
    took = _took(s.start, s.end) if s.status != "skipped" else ("not run" if s.error == "not run" else "skipped")
    err = ""
    if s.error and s.error != "not run":
        err = (f'<pre class="rb-error">{_e(s.error)}</pre>' if s.status == "failed"
               else f'<div class="rb-dim">{_e(s.error)}</div>')
    return (f'<li class="rb-step {_e(s.status)}"><div class="rb-line"><span class="rb-mark">'
            f'{MARKS.get(s.status, "?")}</span><span class="rb-text">{text}</span><span class="rb-took">{took}</span>'
            f"</div>{err}{render_entries(s.entries)}{render_diagnostics(s.diagnostics)}</li>")


def render_scenario(rec: Recorder) -> str:
    """One test's evidence: its scenario, every Gherkin step (run or not) with what it did and saw."""
    info = rec.scenario
    if info is not None:
        tags = "".join(f'<span class="rb-tag">@{_e(t)}</span>' for t in info.tags)
        head = (f'<div class="rb-head"><span class="rb-feature">Feature: {_e(info.feature)} \u203a</span> '
                f"<b>{_e(info.keyword)}: {_e(info.name)}</b>{tags}"
                f'<div class="rb-dim">{_e(rec.name)}</div></div>')
    else:
        head = f'<div class="rb-head"><b>{_e(rec.name)}</b></div>'
    reason = ""
    if rec.outcome in ("skipped", "xfailed") and rec.reason:
        reason = f'<div class="rb-reason">Skipped: {_e(rec.reason)}</div>'
    elif rec.outcome in ("failed", "error") and rec.reason:
        reason = f'<div class="rb-reason failed">{_e(rec.outcome.capitalize())}: {_e(_first_line(rec.reason))}</div>'
    steps = "".join(_step(s) for s in rec.all_steps())
    diag = render_diagnostics(rec.diagnostics, title="Diagnostics collected when the scenario failed")
    return f'<div class="rb-ev">{head}{reason}<ol class="rb-steps">{steps}</ol>{diag}</div>'


def render_summary(doc: Mapping[str, Any], *, bundle_href: str | None, digest: str | None,
                   errors: Sequence[str] = ()) -> str:
    """The top of the report: scenario counts, failures and skips with reasons, environment, commit, bundle."""
    summary = doc.get("summary", {})
    counts = "".join(
        f'<span class="rb-pill {k}">{MARKS.get(k, "!")} {summary.get(k, 0)} {k}</span>'
        for k in ("passed", "failed", "error", "skipped") if summary.get(k) or k in ("passed", "failed"))
    env = doc.get("environment", {})
    run_env = env.get("env") or {}
    git = env.get("git") or {}
    commit = git.get("commit")
    commit_txt = (f"{commit[:12]}{' (dirty: uncommitted changes)' if git.get('dirty') else ''}" if commit
                  else f"unknown ({git.get('error') or 'not a git checkout'})")
    if git.get("branch"):
        commit_txt += f" on {git['branch']}"
    python = env.get("python") or {}
    caddy = (env.get("caddy") or {}).get("version") or (env.get("caddy") or {}).get("error") or "unknown"
    kube = run_env.get("kube_context")
    images = run_env.get("images") or []
    run = doc.get("run", {})
    rows = [("environment", f"{run_env.get('name') or 'unknown'}"
             + (" (PRODUCTION)" if run_env.get("production") else "")
             + (f" — {run_env.get('source')}" if run_env.get("source") else "")),
            ("commit", commit_txt), ("caddy", caddy),
            ("python", f"{python.get('version', '?')} ({python.get('implementation', '')})"),
            ("kube context", f"{kube} / {run_env.get('namespace') or '-'}" if kube else "none (no Kubernetes API)"),
            ("images", ", ".join(images) if images else "none named by the env"),
            ("run", f"{str(run.get('started', '?'))[:19].replace('T', ' ')} UTC, {run.get('duration_s', 0):.1f} s: "
                    f"pytest {' '.join(run.get('args', []))}")]
    kv = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    if bundle_href:
        kv += (f'<tr><th>evidence bundle</th><td><a href="{_e(bundle_href)}/bundle.json">{_e(bundle_href)}/</a>'
               + (f' &nbsp;<span class="rb-digest">sha256(SHA256SUMS) {_e(digest)}</span>' if digest else "")
               + "</td></tr>")
    failed = [s for s in doc.get("scenarios", []) if s.get("outcome") in ("failed", "error")]
    skipped = [s for s in doc.get("scenarios", []) if s.get("outcome") in ("skipped", "xfailed")]
    parts = [f"<style>{CSS}</style>", '<div class="rb-summary">',
             f'<div class="rb-counts"><b>{summary.get("scenarios", 0)} scenarios</b> &nbsp;{counts}</div>',
             f'<table class="rb-kv">{kv}</table>']
    if failed:
        items = "".join(f"<li><b>{_e(_title(s))}</b>{_e(_failed_step(s))}: "
                        f"{_e(_first_line(s.get('reason') or ''))}</li>" for s in failed)
        parts.append(f'<h3 class="rb-bad">Failed</h3><ul>{items}</ul>')
    if skipped:
        items = "".join(f"<li>{_e(_title(s))}: <span class=\"rb-warn\">{_e(s.get('reason') or 'no reason given')}"
                        "</span></li>" for s in skipped)
        parts.append(f'<h3 class="rb-warn">Skipped</h3><ul>{items}</ul>')
    if errors:
        parts.append('<h3 class="rb-bad">Evidence problems</h3><ul>'
                     + "".join(f"<li>{_e(x)}</li>" for x in errors) + "</ul>")
    parts.append("</div>")
    return "".join(parts)


def _title(s: Mapping[str, Any]) -> str:
    sc = s.get("scenario") or {}
    return f"{sc.get('feature')}: {sc.get('name')}" if sc else str(s.get("nodeid"))


def _failed_step(s: Mapping[str, Any]) -> str:
    step = next((st for st in s.get("steps", []) if st.get("status") == "failed"), None)
    return f" at \u201c{step['text']}\u201d" if step else ""


def _first_line(text: str, limit: int = 240) -> str:
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[:limit] + "\u2026"

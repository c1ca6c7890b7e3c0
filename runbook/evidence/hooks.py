"""The evidence plugin: pytest-bdd's step hooks feed a Recorder per test; the report and bundle come out.

Loaded with the runbook plugin (``pytest_plugins = ["runbook.plugin", "runbook.evidence.hooks", ...]``)
or alone with ``-p runbook.evidence.hooks``. For every run (not ``--collect-only``) it writes:

- into the pytest-html report: a summary at the top (scenarios passed/failed/skipped with reasons,
  environment, commit, the bundle's digest) and each test's Gherkin steps with their evidence as extras;
- ``--evidence-bundle`` (default: ``bundle/`` next to the ``--html`` report, else ``reports/bundle``):
  bundle.json, artifacts/, SHA256SUMS (:mod:`runbook.evidence.bundle`);
- ``--evidence-dir`` (default: ``evidence/`` next to the report): one JSON per test, as each ends.

Every report pytest makes is redacted as it is made (captured output, failure text, extras), so JUnit
XML, cucumber JSON and the HTML report never carry key material even when a step printed some.

Diagnostics: ``register_diagnostics(config, collector)`` or the session fixture ``diagnostics``
(``diagnostics.register(collector)``); collectors run when a step fails (or a test fails outside steps).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runbook.errors import ConfigError
from runbook.evidence.artifacts import slug
from runbook.evidence.bundle import BundleResult, BundleWriter
from runbook.evidence.diagnostics import Collector, DiagnosticsRegistry, FailureContext
from runbook.evidence.fingerprint import fingerprint
from runbook.evidence.recorder import Recorder, ScenarioInfo
from runbook.evidence.redact import redact
from runbook.evidence.render import render_summary

RECORDER_KEY = pytest.StashKey[Recorder]()
PHASES_KEY = pytest.StashKey[dict[str, tuple[str, str | None]]]()


@dataclass
class EvidenceSession:
    bundle: BundleWriter
    evidence_dir: Path
    report_path: Path | None
    diagnostics: DiagnosticsRegistry = field(default_factory=DiagnosticsRegistry)
    started: float = field(default_factory=time.time)
    active: bool = True
    environment: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    result: BundleResult | None = None
    document: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


SESSION_KEY = pytest.StashKey[EvidenceSession]()


# ------------------------------------------------------------------------------- public API
def register_diagnostics(config: pytest.Config, collector: Collector, *, name: str | None = None,
                         timeout: float = 20.0) -> Any:
    """Run ``collector`` on every failed step; returns a function that unregisters it."""
    return config.stash[SESSION_KEY].diagnostics.register(collector, name=name, timeout=timeout)


def add_fingerprint(config: pytest.Config, key: str, value: Any) -> None:
    """Add a fact to the bundle's environment fingerprint (``environment.extra``), e.g. running images."""
    config.stash[SESSION_KEY].extra[key] = value


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Recorder:
    """The current test's evidence recorder."""
    return _recorder(request.node)


@pytest.fixture(scope="session")
def diagnostics(pytestconfig: pytest.Config) -> DiagnosticsRegistry:
    """Where the runtime registers diagnostics collectors: ``diagnostics.register(fn, name="pods")``."""
    return pytestconfig.stash[SESSION_KEY].diagnostics


# ------------------------------------------------------------------------------- options, session
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("runbook-evidence", "runbook evidence")
    group.addoption("--evidence-dir", default=None, metavar="DIR",
                    help="where each test's evidence JSON is written as it ends (default: evidence/ next to the "
                         "--html report, else reports/evidence; relative to the project root)")
    group.addoption("--evidence-bundle", default=None, metavar="DIR",
                    help="the evidence bundle directory, replaced at each run (default: bundle/ next to the "
                         "--html report, else reports/bundle; relative to the project root)")


def _resolve(value: str | None, root: Path) -> Path | None:
    if not value:
        return None
    p = Path(os.path.expandvars(value)).expanduser()
    return p if p.is_absolute() else root / p


def pytest_configure(config: pytest.Config) -> None:
    root = Path(config.rootpath)
    html = config.getoption("htmlpath", None)
    report = (Path.cwd() / Path(os.path.expandvars(html)).expanduser()).resolve() if html else None
    base = report.parent if report else root / "reports"
    bundle_dir = _resolve(config.getoption("evidence_bundle"), root) or base / "bundle"
    evidence_dir = _resolve(config.getoption("evidence_dir"), root) or base / "evidence"
    href = os.path.relpath(bundle_dir, report.parent).replace(os.sep, "/") + "/" if report else ""
    sess = EvidenceSession(bundle=BundleWriter(bundle_dir, href_prefix=href), evidence_dir=evidence_dir,
                           report_path=report)
    sess.active = not config.getoption("collectonly") and not hasattr(config, "workerinput")
    config.stash[SESSION_KEY] = sess
    if config.pluginmanager.hasplugin("html"):
        config.pluginmanager.register(_HtmlSummary(config), "runbook-evidence-html")


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    sess = config.stash[SESSION_KEY]
    if not sess.active:
        return
    try:
        sess.bundle.prepare()
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    sess.evidence_dir.mkdir(parents=True, exist_ok=True)
    for old in sess.evidence_dir.glob("*.json"):
        old.unlink()
    sess.environment = fingerprint(root=Path(config.rootpath), env=_runbook_env(config),
                                   env_name=_option(config, "env"))
    try:
        from pytest_metadata.plugin import metadata_key

        meta = config.stash[metadata_key]
        env, git = sess.environment["env"], sess.environment["git"]
        meta["Runbook env"] = str(env.get("name") or "(none loaded)")
        meta["Git commit"] = (f"{git['commit']}{' (dirty)' if git.get('dirty') else ''}" if git.get("commit")
                              else f"unknown ({git.get('error')})")
        meta["Caddy"] = str(sess.environment["caddy"].get("version") or sess.environment["caddy"].get("error"))
    except (ImportError, KeyError):
        pass


def _option(config: pytest.Config, name: str) -> str | None:
    try:
        value = config.getoption(name)
    except ValueError:
        return None
    return str(value) if value is not None else None


def _runbook_env(config: pytest.Config) -> Any:
    """The Env the runbook plugin loaded, when it is loaded (without importing it: it pulls the adapters)."""
    plugin = sys.modules.get("runbook.plugin")
    key = getattr(plugin, "ENV_KEY", None)
    return config.stash.get(key, None) if key is not None else None


def _recorder(item: pytest.Item) -> Recorder:
    if RECORDER_KEY not in item.stash:
        sess = item.config.stash.get(SESSION_KEY, None)
        store = sess.bundle.store(item.nodeid) if sess is not None and sess.active else None
        item.stash[RECORDER_KEY] = Recorder(item.nodeid, artifacts=store)
    return item.stash[RECORDER_KEY]


# ------------------------------------------------------------------------------- pytest-bdd hooks
def _is_scenario(item: pytest.Item) -> bool:
    return "_pytest_bdd_example" in getattr(item, "fixturenames", ())


def _info(feature: Any, scenario: Any) -> ScenarioInfo:
    return ScenarioInfo(
        feature=str(feature.name or feature.rel_filename), feature_file=str(feature.rel_filename),
        name=str(scenario.name), keyword=str(scenario.keyword), line=int(scenario.line_number),
        tags=tuple(sorted(set(scenario.tags) | set(feature.tags))),
        steps=tuple(redact(f"{s.keyword} {s.name}") for s in scenario.steps),
    )


def _info_from_item(item: pytest.Item) -> ScenarioInfo | None:
    """The scenario of a test that never started (skipped at setup), from pytest-bdd's registry."""
    try:
        from pytest_bdd.scenario import scenario_wrapper_template_registry

        template = scenario_wrapper_template_registry.get(getattr(item, "obj", None))  # type: ignore[arg-type]
        if template is None:
            return None
        callspec = getattr(item, "callspec", None)
        params = callspec.params.get("_pytest_bdd_example", {}) if callspec is not None else {}
        rendered = template.render(params or {})
        return _info(rendered.feature, rendered)
    except Exception:  # an older or newer pytest-bdd: the scenario is still listed, without its steps
        return None


def pytest_bdd_before_scenario(request: pytest.FixtureRequest, feature: Any, scenario: Any) -> None:
    _recorder(request.node).plan(_info(feature, scenario))


def pytest_bdd_before_step(request: pytest.FixtureRequest, feature: Any, scenario: Any, step: Any,
                           step_func: Any) -> None:
    _recorder(request.node).begin_step(f"{step.keyword} {step.name}")


def pytest_bdd_after_step(request: pytest.FixtureRequest, feature: Any, scenario: Any, step: Any,
                          step_func: Any, step_func_args: Any) -> None:
    _recorder(request.node).end_step()


def pytest_bdd_step_error(request: pytest.FixtureRequest, feature: Any, scenario: Any, step: Any,
                          step_func: Any, step_func_args: Any, exception: BaseException) -> None:
    rec = _recorder(request.node)
    rec.end_step(error=exception)
    _collect(request.node, rec, when="step", step=f"{step.keyword} {step.name}", error=exception, request=request)


def pytest_bdd_step_func_lookup_error(request: pytest.FixtureRequest, feature: Any, scenario: Any, step: Any,
                                      exception: BaseException) -> None:
    rec = _recorder(request.node)
    rec.begin_step(f"{step.keyword} {step.name}")
    rec.end_step(error=exception)


def _collect(item: pytest.Item, rec: Recorder, *, when: str, step: str | None, error: object,
             request: pytest.FixtureRequest | None = None) -> None:
    sess = item.config.stash.get(SESSION_KEY, None)
    if sess is None or not len(sess.diagnostics):
        return
    name = rec.scenario.name if rec.scenario else item.nodeid
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    ctx = FailureContext(nodeid=item.nodeid, scenario=name, step=step, when=when, error=redact(text), request=request)
    rec.add_diagnostics(sess.diagnostics.collect(ctx), step=step is not None)


# ------------------------------------------------------------------------------- reports
def _reason(report: pytest.TestReport) -> str | None:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    if hasattr(report, "wasxfail") and report.skipped:
        return f"expected failure: {report.wasxfail}" if report.wasxfail else "expected failure"
    crash = getattr(lr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    text = report.longreprtext
    return text.strip().splitlines()[-1] if text.strip() else None


def _redact_report(report: pytest.TestReport) -> None:
    """Captured output, failure text and extras of every report, before JUnit/cucumber/HTML see them."""
    report.sections = [(head, redact(body)) for head, body in report.sections]
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        report.longrepr = (lr[0], lr[1], redact(str(lr[2])))
    elif lr is not None:
        text = str(lr)
        clean = redact(text)
        if clean != text:
            crash = getattr(lr, "reprcrash", None)
            report.longrepr = RedactedRepr(clean, crash)  # type: ignore[assignment]
    for extra in getattr(report, "extras", []):
        if isinstance(extra, dict) and isinstance(extra.get("content"), str) and extra.get("format_type") in (
                "html", "text", "json"):
            extra["content"] = redact(extra["content"])


@dataclass(frozen=True)
class _Crash:
    path: str
    lineno: int
    message: str


class RedactedRepr:
    """A failure's text with secrets removed, still answering ``reprcrash`` (short summary, JUnit message)."""

    def __init__(self, text: str, crash: Any) -> None:
        self.text = text
        self.reprcrash = _Crash(str(crash.path), int(crash.lineno), redact(str(crash.message))) if crash else None

    def toterminal(self, tw: Any) -> None:
        for line in self.text.splitlines():
            tw.line(line, red=line.startswith("E "))

    def __str__(self) -> str:
        return self.text


def _outcome(phases: dict[str, tuple[str, str | None]]) -> tuple[str, str | None]:
    setup = phases.get("setup", ("passed", None))
    if setup[0] == "failed":
        return "error", setup[1]
    if setup[0] == "skipped":
        return "skipped", setup[1] or "skipped"
    call = phases.get("call", ("passed", None))
    teardown = phases.get("teardown", ("passed", None))
    if call[0] != "passed":
        return call
    if teardown[0] == "failed":
        return "error", f"teardown: {teardown[1]}"
    return call


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    reason = _reason(report) if not report.passed or hasattr(report, "wasxfail") else None
    _redact_report(report)
    if RECORDER_KEY not in item.stash and not _is_scenario(item):
        return  # a plain test that recorded no evidence
    rec = _recorder(item)
    if rec.scenario is None and _is_scenario(item):
        rec.scenario = _info_from_item(item)
    state = "xfailed" if hasattr(report, "wasxfail") and report.skipped else (
        "xpassed" if hasattr(report, "wasxfail") and report.passed else report.outcome)
    item.stash.setdefault(PHASES_KEY, {})[report.when] = (state, redact(reason) if reason else None)
    if report.failed and not rec.has_diagnostics and report.when in ("setup", "call"):
        _collect(item, rec, when=report.when, step=None, error=reason or "failed")
    if report.when != "teardown":
        return
    final, why = _outcome(item.stash[PHASES_KEY])
    rec.finish(final, why)
    _publish(item, rec, report)


def _publish(item: pytest.Item, rec: Recorder, report: pytest.TestReport) -> None:
    sess = item.config.stash.get(SESSION_KEY, None)
    try:
        from pytest_html import extras as html_extras

        report.extras = [*getattr(report, "extras", []), html_extras.html(rec.to_html())]  # type: ignore[attr-defined]
    except ImportError:  # pytest-html not installed: the bundle still has everything
        pass
    if sess is None or not sess.active:
        return
    doc = rec.to_dict()
    sess.bundle.add(doc, rec.artifacts)
    (sess.evidence_dir / f"{slug(item.nodeid, 150)}.json").write_text(json.dumps(doc, indent=1, default=str))


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, tz=datetime.UTC).isoformat()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    sess = config.stash.get(SESSION_KEY, None)
    if sess is None or not sess.active:
        return
    end = time.time()
    run = {"started": _iso(sess.started), "finished": _iso(end), "duration_s": round(end - sess.started, 3),
           "exit_status": int(exitstatus), "args": [redact(a) for a in config.invocation_params.args],
           "rootdir": str(config.rootpath), "report": str(sess.report_path) if sess.report_path else None,
           "evidence_dir": str(sess.evidence_dir)}
    environment = {**sess.environment, "extra": {**sess.environment.get("extra", {}), **sess.extra}}
    sess.result = sess.bundle.finish(run=run, environment=environment)
    sess.document = sess.bundle.document(run=run, environment=environment)
    sess.problems.extend(sess.result.problems)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    sess = config.stash.get(SESSION_KEY, None)
    if sess is None or sess.result is None:
        return
    r = sess.result
    terminalreporter.write_sep("-", f"evidence bundle: {r.root} ({r.files} files, sha256 of SHA256SUMS {r.digest})")
    for problem in sess.problems:
        terminalreporter.write_line(f"EVIDENCE PROBLEM: {problem}", red=True)


class _HtmlSummary:
    """pytest-html's summary hook, registered only when pytest-html is active."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_html_report_title(self, report: Any) -> None:
        sess = self.config.stash.get(SESSION_KEY, None)
        name = (sess.environment.get("env") or {}).get("name") if sess is not None else None
        report.title = f"Runbook evidence: {name}" if name else "Runbook evidence"

    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str],
                                    session: pytest.Session) -> None:
        sess = self.config.stash.get(SESSION_KEY, None)
        if sess is None or sess.document is None:
            return
        href = sess.bundle.href_prefix.rstrip("/") or str(sess.bundle.root)
        digest = sess.result.digest if sess.result else None
        prefix.append(render_summary(sess.document, bundle_href=href, digest=digest, errors=sess.problems))

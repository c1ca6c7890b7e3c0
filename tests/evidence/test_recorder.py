"""The Recorder API the steps use, the diagnostics registry, and the HTML a person reads."""

from __future__ import annotations

import threading
from pathlib import Path

from runbook.checks.core import equal
from runbook.evidence.artifacts import ArtifactStore
from runbook.evidence.diagnostics import DiagnosticsRegistry, FailureContext
from runbook.evidence.recorder import Recorder, ScenarioInfo
from runbook.evidence.render import BAD, OK
from tests.evidence.probegen import Failure, ProbeSpec, write_probe
from tests.evidence.sample_project import make_secrets

INFO = ScenarioInfo(feature="Upgrade", feature_file="upgrade.feature", name="shift", tags=("mutating",),
                    steps=("Given blue is healthy", "When traffic shifts", "Then nothing dropped"))


def test_steps_entries_and_not_run_steps() -> None:
    rec = Recorder("features/test_x.py::test_shift")
    rec.plan(INFO)
    rec.note("before any step")  # a fixture's evidence lands outside steps
    rec.begin_step("Given blue is healthy")
    rec.call("GET /health", "ok")
    rec.verdict(equal("body", expected="ok", observed="ok"))
    rec.end_step()
    rec.begin_step("When traffic shifts")
    rec.verdict(equal("upstream order", expected=["blue", "green"], observed=["green", "blue"]))
    rec.end_step(error=AssertionError("order unchanged"))
    rec.finish("failed", "AssertionError: order unchanged")
    d = rec.to_dict()
    assert [s["status"] for s in d["steps"]] == ["passed", "passed", "failed", "skipped"]
    assert d["steps"][0]["text"] == "(outside steps)" and d["steps"][3]["error"] == "not run"
    assert d["steps"][2]["error"] == "AssertionError: order unchanged"
    assert d["scenario"]["tags"] == ["mutating"] and d["outcome"] == "failed"
    html = rec.to_html()
    assert OK in html and BAD in html and "rb-cmp" in html and "not run" in html and "@mutating" in html


def test_a_step_still_running_when_skipped_is_skipped() -> None:
    rec = Recorder("t")
    rec.begin_step("Given the doublezero0 interface exists")
    rec.finish("skipped", "needs CAP_NET_ADMIN")
    step = rec.to_dict()["steps"][0]
    assert step["status"] == "skipped" and step["error"] == "needs CAP_NET_ADMIN"


def test_long_output_folds_and_secrets_never_stored(tmp_path: Path) -> None:
    s = make_secrets()
    rec = Recorder("t")
    rec.begin_step("When the identity file is read")
    rec.call("journalctl -u doublezerod", "\n".join(f"line {i}" for i in range(200)))
    rec.attach("id.json", s.id_json)
    key = tmp_path / "id.json"
    key.write_text(s.id_json)
    rec.attach_file(key)  # no bundle: kept inline, redacted
    rec.end_step()
    text = str(rec.to_dict()) + rec.to_html()
    assert s.id_json not in text and str(list(s.keypair)) not in text and "<details" in text


def test_files_and_probes_go_into_the_bundle(tmp_path: Path) -> None:
    rec = Recorder("features/t.py::test_p", artifacts=ArtifactStore(tmp_path / "bundle", "features/t.py::test_p",
                                                                      href_prefix="bundle/"))
    probe = tmp_path / "probe"
    write_probe(probe, ProbeSpec(duration_s=2.0, events=((1.0, "shift", ""),), failures=(Failure(10),)))
    rec.begin_step("Given a prober ran")
    summary = rec.attach_probe(probe, cutover_events=["shift"])
    rec.end_step()
    assert summary.failures_total == 1
    paths = sorted(a.path.rsplit("/", 1)[1] for a in rec.artifacts)
    assert paths == ["events.jsonl", "requests.jsonl", "timeline.html", "timeline.json"]
    assert all((tmp_path / "bundle" / a.path).is_file() for a in rec.artifacts)
    entry = rec.to_dict()["steps"][0]["entries"][0]
    assert entry["kind"] == "probe" and entry["data"]["failures_total"] == 1 and len(entry["data"]["files"]) == 4
    assert "<svg" in rec.to_html() and 'href="bundle/artifacts/' in rec.to_html()


def test_diagnostics_registry() -> None:
    s = make_secrets()
    reg = DiagnosticsRegistry()
    stop = threading.Event()
    reg.register(lambda ctx: {"pod status": {"phase": "Running", "step": ctx.step}}, name="pods")
    reg.register(lambda: {"caddy upstreams": f"auth token={s.token}"}, name="caddy")
    reg.register(lambda ctx: 1 / 0, name="broken")  # type: ignore[arg-type]
    undo = reg.register(lambda ctx: stop.wait(5) and {}, name="hangs", timeout=0.2)  # type: ignore[arg-type]
    reg.register(lambda ctx: ["not", "a", "mapping"], name="wrong")  # type: ignore[arg-type]
    ctx = FailureContext(nodeid="n", scenario="s", step="Then nothing dropped", when="step", error="boom")
    found = {d.collector: d for d in reg.collect(ctx)}
    stop.set()
    assert found["pods"].content == {"phase": "Running", "step": "Then nothing dropped"} and found["pods"].error is None
    assert s.token not in str(found["caddy"].content)
    assert "ZeroDivisionError" in (found["broken"].error or "")
    assert "no answer within 0.2s" in (found["hangs"].error or "")
    assert "expected {title: content}" in (found["wrong"].error or "")
    undo()
    assert "hangs" not in reg.names and len(reg) == 4

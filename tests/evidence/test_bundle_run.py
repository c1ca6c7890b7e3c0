"""A real run of the sample project: the bundle validates, verifies and says what happened; the report shows it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from runbook.evidence.bundle import digest_of, validate, verify
from tests.evidence.conftest import SampleRun


def _bundle(run: SampleRun) -> dict[str, Any]:
    return json.loads((run.bundle / "bundle.json").read_text())


def _scenario(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["scenarios"] if s["scenario"]["name"] == name)


def test_bundle_matches_schema_and_its_digests(sample_run: SampleRun) -> None:
    doc = _bundle(sample_run)
    assert validate(doc) == []
    assert verify(sample_run.bundle) == []
    assert f"sha256 of SHA256SUMS {digest_of(sample_run.bundle)}" in sample_run.result.stdout
    assert "EVIDENCE PROBLEM" not in sample_run.result.stdout
    listed = {a["path"] for a in doc["artifacts"]}
    sums = {line.split("  ", 1)[1] for line in (sample_run.bundle / "SHA256SUMS").read_text().splitlines()}
    assert listed | {"bundle.json"} == sums


def test_a_changed_byte_or_a_bad_document_is_caught(sample_run: SampleRun, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(sample_run.bundle, copy)
    victim = next(p for p in sorted(copy.rglob("requests.jsonl")))
    data = bytearray(victim.read_bytes())
    data[10] ^= 1
    victim.write_bytes(bytes(data))
    (copy / "artifacts" / "extra.txt").write_text("slipped in")
    problems = verify(copy)
    assert any("requests.jsonl: sha256 differs" in p for p in problems)
    assert any("extra.txt: not listed" in p for p in problems)
    doc = _bundle(sample_run)
    doc["summary"]["passed"] = -1
    doc["scenarios"][0]["outcome"] = "maybe"
    assert any("summary/passed" in p for p in validate(doc)) and any("outcome" in p for p in validate(doc))


def test_every_scenario_with_its_outcome(sample_run: SampleRun) -> None:
    doc = _bundle(sample_run)
    assert doc["summary"] == {"scenarios": 4, "passed": 2, "failed": 1, "error": 0, "skipped": 1, "xfailed": 0,
                              "xpassed": 0}
    skipped = _scenario(doc, "A check that needs CAP_NET_ADMIN")
    assert skipped["outcome"] == "skipped" and "CAP_NET_ADMIN" in skipped["reason"]
    assert [s["text"] for s in skipped["steps"]] == ["Given the doublezero0 interface exists"]
    assert skipped["scenario"]["tags"] == ["netadmin"]

    failed = _scenario(doc, "A failing check collects diagnostics")
    assert failed["outcome"] == "failed" and failed["reason"].startswith("AssertionError: /health said 'behind'")
    given, then, and_ = failed["steps"]
    assert (given["status"], then["status"], and_["status"]) == ("passed", "failed", "skipped")
    assert and_["error"] == "not run"
    compare = next(e for e in then["entries"] if e["kind"] == "compare")
    assert compare["data"] == {"expected": "ok", "observed": "behind", "ok": False, "status": "failed",
                               "check": "core.equal", "problems": ["expected 'ok', observed 'behind'"],
                               "skipped": ""}
    diags = {d["title"]: d for d in then["diagnostics"]}
    assert {"pod agave-green-7d9f (status)", "events (agave namespace)", "process log (agave, last lines)",
            "caddy upstreams", "kube events"} <= set(diags)
    assert diags["failed step"]["content"] == 'Then the health body is "ok" (step)'
    assert "ConnectionError: kube API unreachable" in diags["kube events"]["error"]

    probe = next(e for e in _scenario(doc, "The cutover timeline")["steps"][0]["entries"] if e["kind"] == "probe")
    data = probe["data"]
    assert data["requests"] == 2400 and data["failures_total"] == 3 and [p["name"] for p in data["phases"]] == [
        "before", "during", "after"]
    assert {f["seq"] for f in data["failures"]} == {1203, 1205, 1380}
    assert (sample_run.bundle / data["files"][0]["path"]).is_file()


def test_environment_fingerprint(sample_run: SampleRun) -> None:
    env = _bundle(sample_run)["environment"]
    assert env["python"]["version"].count(".") == 2
    assert env["packages"]["pytest-bdd"].startswith("9.")
    assert env["caddy"]["version"] or env["caddy"]["error"]
    assert env["git"]["commit"] is None and "not a git repository" in env["git"]["error"]  # a tmp dir


def test_report_is_self_contained_and_shows_the_evidence(sample_run: SampleRun) -> None:
    html = (sample_run.reports / "report.html").read_text()
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|<img[^>]+src=(\"|&#34;)https?:", html)
    assert not re.search(r"(src|href)=(\"|&#34;|\\\")https?://(?!pypi\.python\.org)", html)
    for text in ("4 scenarios", "Skipped", "needs CAP_NET_ADMIN", "Diagnostics collected at the failure",
                 "the health body is", "zero-drop probe through Caddy", "rb-timeline", "sha256(SHA256SUMS)",
                 "Runbook evidence"):
        assert text in html or text.replace('"', "&#34;") in html, text
    assert (sample_run.reports / "junit.xml").is_file()
    cucumber = json.loads((sample_run.reports / "cucumber.json").read_text())
    assert len(cucumber[0]["elements"]) == 3  # pytest-bdd's cucumber JSON has the scenarios that ran
    assert len(list((sample_run.reports / "evidence").glob("*.json"))) == 4

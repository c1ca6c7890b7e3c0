"""The strict zero-drop verdict over a prober's records: lost by cause, slowest answer and longest gap per
phase, against the client timeout and the gap bound; each condition fails on its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runbook.checks import zero_drop
from runbook.checks.core import judge_all
from runbook.errors import CheckFailed
from runbook.probes.summary import summarize


def _run(tmp_path: Path, recs: list[dict[str, Any]], events: tuple[tuple[float, str], ...] = (),
         client_timeout: float = 2.0) -> zero_drop.Verdict:
    meta = {"url": "http://x", "rate": 100, "client_timeout": client_timeout}
    (tmp_path / "prober.json").write_text(json.dumps(meta))
    (tmp_path / "events.jsonl").write_text("".join(json.dumps({"t": t, "name": n}) + "\n" for t, n in events))
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return zero_drop.verdict(summarize(tmp_path), max_gap=0.5)


def _rec(seq: int, sched: float, latency: float = 0.005, verdict: str = "ok",
         status: int | None = 200) -> dict[str, Any]:
    return {"seq": seq, "sched": sched, "sent": sched, "done": sched + latency, "latency_ms": latency * 1000,
            "kind": "GET /health", "status": status, "upstream": "a", "ok": verdict == "ok", "verdict": verdict,
            "error": "" if verdict == "ok" else verdict}


def _steady(n: int = 100, step: float = 0.01) -> list[dict[str, Any]]:
    return [_rec(i, i * step) for i in range(n)]


def test_a_clean_run_passes_with_its_figures_per_phase(tmp_path: Path) -> None:
    v = _run(tmp_path, _steady(), ((0.5, "shift"),))
    assert v.ok and v.lost == 0 and [p.name for p in v.phases] == ["before shift", "after shift"]
    assert all(r.ok for r in judge_all(None, zero_drop.no_request_lost(v)))
    rows = v.rows()
    assert [r[0].split(" (")[0] for r in rows] == ["zero-drop, phase 'before shift'", "zero-drop, phase 'after shift'",
                                                   "zero-drop, phase 'whole run'"]
    assert all(ok for *_, ok in rows) and rows[0][2]["lost"] == 0 and rows[0][1]["lost"] == "0"
    assert json.loads(v.write(tmp_path).read_text())["ok"] is True


@pytest.mark.parametrize("cause", ["needed_retry", "late", "conn_error", "behind"])
def test_one_lost_request_fails_its_phase_by_cause(tmp_path: Path, cause: str) -> None:
    recs = _steady()
    recs[70] = _rec(70, 0.70, verdict=cause)
    v = _run(tmp_path, recs, ((0.5, "caddy config change"),))
    before, after = v.phases
    assert before.ok and not after.ok and after.lost == {cause: 1} and not v.ok
    rows = zero_drop.no_request_lost(v)
    assert [r.status for r in rows] == ["passed", "failed", "failed"]
    lost = f"    #70 t=0.700s GET /health {cause} upstream=a status=200: {cause}"
    assert rows[-1].observed["lost requests"] == [lost]
    with pytest.raises(CheckFailed, match=rf"phase 'after caddy config change'.*1 request\(s\) lost: {cause} 1"):
        judge_all(None, rows)
    assert "1 of 100 requests lost" in v.describe()
    assert v.lost_requests == (f"    #70 t=0.700s GET /health {cause} upstream=a status=200: {cause}",)


def test_the_lost_requests_are_named_up_to_a_bound_and_the_rest_counted(tmp_path: Path) -> None:
    recs = _steady()
    for i in range(20, 20 + zero_drop.LISTED + 7):
        recs[i] = _rec(i, i * 0.01, verdict="conn_error", status=None)
    v = _run(tmp_path, recs)
    text = v.describe()
    named = [line for line in text.splitlines() if line.startswith("    #")]
    assert len(named) == zero_drop.LISTED and named[0].startswith("    #20 t=0.200s GET /health conn_error"), text
    assert text.endswith("    ... and 7 more (all in requests.jsonl)"), text
    assert json.loads(v.write(tmp_path).read_text())["lost_requests"][-1].endswith("and 7 more (all in requests.jsonl)")
    assert _run(tmp_path, _steady()).lost_requests == ()  # a clean run names none


def test_a_stall_answered_within_the_client_timeout_fails_on_the_gap(tmp_path: Path) -> None:
    recs = _steady()
    for i in range(40, 60):  # every request of 0.4..0.6 s answered at 1.2 s: late for nobody, a stall all the same
        recs[i] = _rec(i, i * 0.01, latency=1.2 - i * 0.01)
    v = _run(tmp_path, recs, ((0.5, "shift"),))
    assert v.lost == 0 and not v.ok
    assert all(not p.ok and p.longest_gap.seconds > 0.5 for p in v.phases)  # the gap spans the event: both
    with pytest.raises(CheckFailed, match=r"ms without a successful answer .* longer than the 0.5 s bound"):
        judge_all(None, zero_drop.no_request_lost(v))
    ok = _run(tmp_path, _steady(), ((0.5, "shift"),))  # the same run without the stall passes
    assert ok.ok


def test_an_answer_slower_than_the_client_timeout_fails_even_if_the_record_says_ok(tmp_path: Path) -> None:
    recs = _steady()
    recs[10] = _rec(10, 0.1, latency=0.2)
    v = _run(tmp_path, recs, client_timeout=0.1)
    assert not v.ok and "later than the client's 0.1 s timeout" in v.describe()


def test_no_request_is_no_verdict(tmp_path: Path) -> None:
    v = _run(tmp_path, [])
    assert not v.ok
    with pytest.raises(CheckFailed, match="nothing proves nothing"):
        judge_all(None, zero_drop.no_request_lost(v))

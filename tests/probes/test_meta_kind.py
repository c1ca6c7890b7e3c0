"""Seed 003's probe kinds: a read of each service through the gateway counts only when the answer is that
service's (a gateway that routes to the wrong Service, or answers 200 with an error page, is caught)."""

from __future__ import annotations

import json

from runbook.probes.summary import KINDS, META_MIX, judge


def _judge(kind: str, status: int, body: object) -> tuple[str, str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    verdict, error, _ = judge(KINDS[kind], status, raw, max_slot=0, stale_slots=0)
    return verdict, error


def test_a_services_answer_counts_only_when_it_names_that_service() -> None:
    assert META_MIX == ("GET /storage/probe", "GET /schema/probe")
    assert _judge("GET /storage/probe", 200, {"component": "storage", "colour": "blue"}) == ("ok", "")
    verdict, error = _judge("GET /schema/probe", 200, {"component": "storage"})
    assert verdict == "bad_body" and "not an answer of schema" in error
    assert _judge("GET /storage/probe", 200, b"<html>oops</html>")[0] == "bad_body"
    assert _judge("GET /storage/probe", 502, {"error": "no upstream"})[0] == "http_error"

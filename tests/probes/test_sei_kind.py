"""Seeds 001/002's probe kind: a node's ``GET /status`` counts only when it is Tendermint's, with a height (an error
page with status 200, or an answer without a height, is caught)."""

from __future__ import annotations

import json

from runbook.probes.summary import KINDS, SEI_MIX, judge


def _judge(status: int, body: object) -> tuple[str, str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    verdict, error, _ = judge(KINDS["GET /status"], status, raw, max_slot=0, stale_slots=0)
    return verdict, error


def test_a_status_counts_only_with_a_height() -> None:
    assert SEI_MIX == ("GET /status",)
    good = {"jsonrpc": "2.0", "id": -1, "result": {"sync_info": {"latest_block_height": "1234", "catching_up": False}}}
    assert _judge(200, good) == ("ok", "")
    assert _judge(200, b"<html>oops</html>")[0] == "bad_body"
    verdict, error = _judge(200, {"result": {"sync_info": {}}})
    assert verdict == "bad_body" and "not a Tendermint /status" in error
    assert _judge(200, {"result": {"sync_info": {"latest_block_height": "0"}}})[0] == "bad_body"
    assert _judge(503, {"error": "no endpoints"})[0] == "http_error"

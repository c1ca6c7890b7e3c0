"""Run inside the node's network namespace (``nsenter --net=...``): one validator's ``/health`` and JSON-RPC
``getVersion``, ``getIdentity`` and ``getSlot`` through the runbook's own RPC client, printed as JSON.

    python tests/container/netns_rpc.py http://127.0.0.1:8899
"""

from __future__ import annotations

import json
import sys
from typing import Any

from runbook.adapters.rpc import RpcClient
from runbook.errors import RunbookError


def probe(url: str) -> dict[str, Any]:
    out: dict[str, Any] = {"url": url}
    with RpcClient(url=url, timeout=5.0) as rpc:
        try:
            out["health"] = rpc.health().verdict
            version = rpc.get_version()
            out["solana_core"], out["feature_set"] = version.solana_core, version.feature_set
            out["identity"] = rpc.get_identity()
            out["slot"] = rpc.get_slot()
        except RunbookError as exc:
            out["error"] = str(exc)
    return out


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))

"""The Sei network's RPC (seeds 001/002), as the runner reaches it (``hardfork.network_rpc``): the tip (Tendermint's
``GET /status``) and the upgrade plan on chain (x/upgrade's ``GET /cosmos/upgrade/v1beta1/current_plan``). A
failure to reach it or an answer without what was asked is an :class:`~runbook.errors.AdapterError` naming the URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from runbook.errors import AdapterError


@dataclass(frozen=True)
class Plan:
    name: str
    height: int


class SeiNetwork:
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def _get(self, path: str) -> Any:
        url = f"{self.url}{path}"
        try:
            r = httpx.get(url, timeout=self.timeout)
            r.raise_for_status()
            return r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise AdapterError(f"GET {url}: {exc}", obj=url) from exc

    def tip(self) -> int:
        """The network's latest height."""
        doc = self._get("/status")
        try:
            return int(doc["result"]["sync_info"]["latest_block_height"])
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterError(f"{self.url}/status: no latest_block_height in {str(doc)[:200]}") from exc

    def plan(self) -> Plan | None:
        """The upgrade plan on chain, None when there is none."""
        doc = self._get("/cosmos/upgrade/v1beta1/current_plan")
        plan = doc.get("plan") if isinstance(doc, dict) else None
        if not plan:
            return None
        try:
            return Plan(str(plan["name"]), int(plan["height"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterError(f"{self.url}: malformed upgrade plan {plan!r}") from exc

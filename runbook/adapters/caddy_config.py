"""Reading Caddy's JSON config: which reverse_proxy serves a site, and the order switch (two handlers, the
first under a file matcher) of the production Caddyfile. Pure functions over the config; the admin API is
:mod:`runbook.adapters.ingress`, the audit :mod:`runbook.checks.caddy_audit`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

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
    return listen_key(address)


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


_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}


def listen_key(address: str) -> str:
    """A Caddy listen address (``tcp/localhost:2019``) or URL netloc, comparable: loopback names equal."""
    address = address.removeprefix("tcp/").removeprefix("tcp4/").removeprefix("tcp6/")
    host, sep, port = address.rpartition(":")
    if not sep:
        return address
    return f"{'loopback' if host in _LOOPBACK_NAMES else host}:{port}"

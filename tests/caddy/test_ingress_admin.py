"""CaddyAdmin against a mock transport (errors, the PATCH it sends) and against a real Caddy on loopback.

The real-Caddy tests start ``caddy run`` on free loopback ports, load our config and the seed's through
the admin API, and check trap 1 with two tiny upstreams whose /health answers 200 ``behind`` and ``ok``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbook.adapters.base import Ingress, UpstreamStat
from runbook.adapters.caddy_config import find_reverse_proxy, find_site_proxy
from runbook.adapters.host import TestinfraHost
from runbook.adapters.ingress import CaddyAdmin
from runbook.checks.caddy_audit import audit
from runbook.env import Env, load_env
from runbook.errors import AdapterError, WaitTimeout
from runbook.testbed import caddy
from runbook.wait import wait_for

pytestmark = pytest.mark.caddy



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(*, site: int, admin: int, green: int, blue: int) -> Env:
    base = load_env("local")
    deployments = base.deployments.model_copy(
        update={
            "green": base.deployments.green.model_copy(update={"rpc_port": green}),
            "blue": base.deployments.blue.model_copy(update={"rpc_port": blue}),
        }
    )
    order_file = Path(tempfile.mkdtemp(prefix="caddy-order-")) / "blue-first"  # never the testbed's own
    ingress = base.ingress.model_copy(
        update={"url": f"http://127.0.0.1:{site}", "admin": f"http://127.0.0.1:{admin}", "order_file": str(order_file)}
    )
    return base.model_copy(update={"ingress": ingress, "deployments": deployments})


def _config(env: Env, template: Path = caddy.TEMPLATE) -> dict[str, Any]:
    return caddy.adapt(caddy.render(template, env, health_interval="250ms", health_timeout="250ms"))


# --------------------------------------------------------------------------- unit: mock transport


def _mock(handler: Any) -> CaddyAdmin:
    return CaddyAdmin("http://127.0.0.1:2019", transport=httpx.MockTransport(handler))


def test_caddy_admin_is_an_ingress() -> None:
    assert isinstance(_mock(lambda r: httpx.Response(200, json={})), Ingress)


def test_non_2xx_names_admin_url_call_and_caddys_error() -> None:
    admin = _mock(lambda r: httpx.Response(400, json={"error": "loading config: bad thing"}))
    with pytest.raises(AdapterError) as info:
        admin.load({"apps": {}})
    message = str(info.value)
    assert "http://127.0.0.1:2019" in message and "POST /load" in message and "bad thing" in message
    assert info.value.obj == "http://127.0.0.1:2019"


@pytest.mark.parametrize(
    "admin_section",
    [None, {"listen": "127.0.0.1:12020"}, {"listen": "127.0.0.1:12019", "disabled": True}],
    ids=["absent", "moved", "disabled"],
)
def test_load_refuses_a_config_that_would_lose_the_admin_api(admin_section: Any) -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    transport = httpx.MockTransport(record)
    admin = CaddyAdmin("http://127.0.0.1:12019", transport=transport)
    config: dict[str, Any] = {"apps": {}}
    if admin_section is not None:
        config["admin"] = admin_section
    with pytest.raises(AdapterError, match="refusing POST /load"):
        admin.load(config)
    assert sent == []
    admin.load({"admin": {"listen": "localhost:12019"}, "apps": {}})  # same endpoint, other spelling
    assert len(sent) == 1


def test_connection_refused_is_an_adapter_error() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with CaddyAdmin(url, timeout=2.0) as admin, pytest.raises(AdapterError, match=r"GET /config/ failed"):
        admin.config()


def test_upstreams_parse_caddys_shape() -> None:
    body = [{"address": "127.0.0.1:1", "num_requests": 2, "fails": 1}, {"address": "127.0.0.1:2"}]
    admin = _mock(lambda r: httpx.Response(200, json=body))
    assert admin.upstreams() == [UpstreamStat("127.0.0.1:1", 2, 1), UpstreamStat("127.0.0.1:2", 0, 0)]
    bad = _mock(lambda r: httpx.Response(200, json={"address": "x"}))
    with pytest.raises(AdapterError, match="expected a list"):
        bad.upstreams()


def test_set_upstream_order_patches_only_the_upstreams_with_if_match() -> None:
    """A config without the order switch (the seed's) is reordered by PATCH, its upstreams only."""
    env = _env(site=18080, admin=2019, green=1001, blue=1002)
    live = _config(env, caddy.SEED_TEMPLATE)
    handler_path = find_reverse_proxy(live).config_path
    live_etag = '"/config/ abc123"'
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/config/":
            return httpx.Response(200, json=live, headers={"Etag": live_etag})
        sent.append(request)
        find_reverse_proxy(live).handler["upstreams"] = json.loads(request.content)
        return httpx.Response(200)

    admin = _mock(handler)
    admin.set_upstream_order(["127.0.0.1:1001", "127.0.0.1:1002"])  # already so: nothing sent
    assert sent == []
    admin.set_upstream_order(["127.0.0.1:1002", "127.0.0.1:1001"])
    (req,) = sent
    assert (req.method, req.url.path) == ("PATCH", handler_path + "/upstreams")
    assert req.headers["If-Match"] == live_etag
    assert json.loads(req.content) == [{"dial": "127.0.0.1:1002"}, {"dial": "127.0.0.1:1001"}]
    with pytest.raises(AdapterError, match="distinct"):
        admin.set_upstream_order(["127.0.0.1:1002", "127.0.0.1:1002"])


# --------------------------------------------------------------------------- integration: real Caddy


@dataclass(frozen=True)
class LiveCaddy:
    env: Env
    admin: CaddyAdmin
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def green(self) -> str:
        return f"127.0.0.1:{self.env.deployments.green.rpc_port}"

    @property
    def blue(self) -> str:
        return f"127.0.0.1:{self.env.deployments.blue.rpc_port}"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCaddy]:
    state = tmp_path_factory.mktemp("caddy-state")
    env = _env(site=_free_port(), admin=_free_port(), green=_free_port(), blue=_free_port())
    config_path = state / "Caddyfile"
    config_path.write_text(caddy.render(caddy.SEED_TEMPLATE, env))
    log = state / "caddy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            caddy.run_argv(config_path),
            env={"PATH": "/usr/bin:/bin", "HOME": str(state), **caddy.run_env(state)},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=state,
        )
    admin = CaddyAdmin(env.ingress.admin, site_url=env.ingress.url, files=TestinfraHost("local://"), timeout=2.0)
    try:
        try:
            wait_for(admin.config, lambda c: bool(c), timeout=15, interval=0.1,
                     what="Caddy admin API", tolerate=(AdapterError,))
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}\nCaddy log:\n{log.read_text()[-3000:]}") from exc
        yield LiveCaddy(env=env, admin=admin, proc=proc, log=log)
    finally:
        admin.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.integration
def test_storage_and_autosave_stay_in_the_state_dir(live: LiveCaddy) -> None:
    live.admin.load(_config(live.env))
    autosave = Path(caddy.run_env(live.log.parent)["XDG_CONFIG_HOME"]) / "caddy" / "autosave.json"
    wait_for(autosave.is_file, bool, timeout=5, what="Caddy's autosave.json under the state dir")


@pytest.mark.integration
def test_load_ours_read_back_and_audit_passes(live: LiveCaddy) -> None:
    live.admin.load(_config(live.env))
    config = live.admin.config()
    report = audit(config, expected_upstreams=[live.green, live.blue], site_url=live.env.ingress.url,
                   served_order=live.admin.upstream_order())
    assert report.ok, report.summary()
    assert live.admin.upstream_order() == [live.green, live.blue]


@pytest.mark.integration
def test_set_upstream_order_switches_by_the_file_with_no_config_change(live: LiveCaddy) -> None:
    """Our config's order switch: the order file on Caddy's host picks the blue-first handler per request;
    the config is never changed (no reload), and requests through Caddy follow the file."""
    live.admin.load(_config(live.env))
    before = live.admin.config()
    order_file = Path(live.env.ingress.order_file)
    assert find_site_proxy(before, live.env.ingress.url).order_file == str(order_file)
    live.admin.set_upstream_order([live.blue, live.green])
    assert order_file.exists() and live.admin.upstream_order() == [live.blue, live.green]
    assert live.admin.config() == before  # no config change at all
    report = audit(live.admin.config(), expected_upstreams=[live.blue, live.green], site_url=live.env.ingress.url,
                   served_order=live.admin.upstream_order())
    assert report.ok, report.summary()
    live.admin.set_upstream_order([live.green, live.blue])
    assert not order_file.exists() and live.admin.upstream_order() == [live.green, live.blue]
    assert live.admin.config() == before
    with pytest.raises(AdapterError, match="refusing a config change"):
        live.admin.set_upstream_order([live.green, "127.0.0.1:1"])


@pytest.mark.integration
def test_upstreams_lists_both_addresses(live: LiveCaddy) -> None:
    live.admin.load(_config(live.env))
    stats = live.admin.upstreams()
    assert {live.green, live.blue} <= {s.address for s in stats}
    assert all(isinstance(s, UpstreamStat) and s.num_requests >= 0 for s in stats)


@pytest.mark.integration
def test_admin_error_body_is_reported(live: LiveCaddy) -> None:
    before = live.admin.config()
    bad = {
        "admin": before["admin"],
        "apps": {"http": {"servers": {"srv0": {"listen": ["not an address"]}}}},
    }
    with pytest.raises(AdapterError, match=r"POST /load returned HTTP 4\d\d: .*not an address"):
        live.admin.load(bad)
    assert live.admin.config() == before  # still up, old config kept


# --------------------------------------------------------------------------- trap 1, behaviourally


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    health_body = b""
    name = b""

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(self.health_body if self.path == "/health" else self.name)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(self.name)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def two_upstreams(live: LiveCaddy) -> Iterator[None]:
    """Green answers /health `behind` (HTTP 200, as agave does), blue answers `ok`."""
    servers = []
    for port, health, name in ((live.env.deployments.green.rpc_port, b"behind", b"green"),
                               (live.env.deployments.blue.rpc_port, b"ok", b"blue")):
        handler = type(f"Upstream_{name.decode()}", (_Upstream,), {"health_body": health, "name": name})
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        yield
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _who_served(client: httpx.Client, n: int) -> list[tuple[str, str | None]]:
    out = []
    for i in range(n):
        rpc = {"jsonrpc": "2.0", "id": i, "method": "getSlot"}
        r = client.post("/", json=rpc) if i % 2 else client.get("/")
        assert r.status_code == 200, r.text
        out.append((r.text, r.headers.get("X-Upstream")))
    return out


@pytest.mark.integration
def test_trap1_ours_routes_only_to_the_ok_upstream(live: LiveCaddy, two_upstreams: None) -> None:
    live.admin.load(_config(live.env))
    with httpx.Client(base_url=live.env.ingress.url, timeout=5) as client:
        # the first active check (250 ms) has to run before the `behind` upstream is known unhealthy
        wait_for(lambda: client.get("/").text, lambda body: body == "blue", timeout=5, interval=0.1,
                 what="traffic to leave the `behind` upstream")
        served = _who_served(client, 30)
    assert served == [("blue", live.blue)] * 30


@pytest.mark.integration
def test_trap1_seed_routes_to_the_behind_upstream(live: LiveCaddy, two_upstreams: None) -> None:
    live.admin.load(_config(live.env, caddy.SEED_TEMPLATE))
    with httpx.Client(base_url=live.env.ingress.url, timeout=5) as client:
        served = _who_served(client, 30)
    # the seed checks status only: `behind` answers 200, so the first upstream keeps all the traffic
    assert served == [("green", None)] * 30

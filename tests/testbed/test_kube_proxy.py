"""The testbed's kube-proxy (runbook/testbed/kube_proxy.py) as a real program on loopback: real HTTP servers as
the pods (on 127.0.9.x, one address each, as the local kubelet gives pods), the pod records written by hand in
the kubelet's shape, connections through the proxy's port. New connections are spread over the ready
endpoints, a pod that turns not-ready gets no new one within the proxy's staleness bound while a connection
already open to it stays, a Service with no ready endpoint refuses connections, and the scrape targets file
follows the pods. Every wait has a deadline; no sleeps."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runbook.env import PROJECT_ROOT
from runbook.errors import ConfigError
from runbook.testbed.kube_proxy import Listen, proxy_program
from runbook.testbed.kube_services import LocalServices
from runbook.testbed.supervisor import Supervisor
from runbook.wait import wait_for
from tests.testbed.test_kube_services import PROD, service, write_pod

STALENESS = 1.0  # deadline for the proxy to follow a pod's change (its bound is --refresh 0.05 plus a read)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Pod:
    """One pod's HTTP server on its own loopback address: answers with its name, keeps connections alive."""

    def __init__(self, name: str, ip: str) -> None:
        pod = name

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = pod.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.name, self.ip = name, ip
        self.server = ThreadingHTTPServer((ip, 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def record(self, kube: Path, **kw: Any) -> None:
        write_pod(kube, self.name, ip=self.ip, labels=kw.pop("labels", PROD), ports={"http": self.port}, **kw)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kube(tmp_path: Path) -> Path:
    (tmp_path / "kube" / "pods").mkdir(parents=True)
    return tmp_path / "kube"


@pytest.fixture
def pods(kube: Path) -> Iterator[list[Pod]]:
    started = [Pod(f"zai-proxy-{i}", f"127.0.9.{i + 1}") for i in range(4)]
    try:
        yield started
    finally:
        for p in started:
            p.stop()


def start_proxy(kube: Path, listen: str, targets: Path) -> subprocess.Popen[bytes]:
    _, argv = proxy_program(kube, [listen], targets)
    log = (kube.parent / "kube-proxy.log").open("wb")
    return subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, stdout=log,
                            stderr=subprocess.STDOUT)


@pytest.fixture
def proxy(kube: Path) -> Iterator[tuple[str, int, Path]]:
    """The proxy serving Service zai-proxy on 127.0.9.100:<free port>, writing scrape targets."""
    host, port = "127.0.9.100", free_port("127.0.9.100")
    targets = kube.parent / "prometheus" / "pods.json"
    proc = start_proxy(kube, f"zai-proxy={host}:{port}", targets)
    try:
        yield host, port, targets
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=10) == 0, "the proxy stops on SIGTERM with exit status 0"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def hit(host: str, port: int) -> str:
    """One request on a new connection: the name of the pod that answered."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_new_connections_are_spread_over_the_ready_endpoints(kube: Path, pods: list[Pod],
                                                             proxy: tuple[str, int, Path]) -> None:
    host, port, _ = proxy
    for p in pods[:3]:
        p.record(kube)
    pods[3].record(kube, ready=False)  # selected, not ready: never sent a connection
    LocalServices(kube).apply(service())
    wait_for(lambda: refused(host, port), lambda r: not r, timeout=STALENESS * 5, interval=0.02,
             what="the proxy listening once the Service has endpoints")
    seen = Counter(hit(host, port) for _ in range(90))
    assert set(seen) == {"zai-proxy-0", "zai-proxy-1", "zai-proxy-2"}, seen  # P(an endpoint missed) ~ 1e-16
    assert min(seen.values()) >= 10, f"random per connection, about 30 each: {seen}"


def test_a_pod_turning_not_ready_gets_no_new_connection_but_keeps_its_open_one(
        kube: Path, pods: list[Pod], proxy: tuple[str, int, Path]) -> None:
    host, port, _ = proxy
    for p in pods[:2]:
        p.record(kube)
    LocalServices(kube).apply(service())
    wait_for(lambda: refused(host, port), lambda r: not r, timeout=STALENESS * 5, interval=0.02,
             what="the proxy listening")
    kept = None
    for _ in range(60):  # a kept-alive connection that landed on pod 0 (random: 1 in 2 each)
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/")
        if conn.getresponse().read() == b"zai-proxy-0":
            kept = conn
            break
        conn.close()
    assert kept is not None, "60 connections and none went to zai-proxy-0"
    try:
        pods[0].record(kube, ready=False)
        wait_for(lambda: Counter(hit(host, port) for _ in range(20)), lambda c: set(c) == {"zai-proxy-1"},
                 timeout=STALENESS, interval=0, what="no new connection sent to the not-ready pod")
        assert set(hit(host, port) for _ in range(40)) == {"zai-proxy-1"}
        pods[0].record(kube, ready=False, terminating=True)
        for _ in range(3):  # conntrack: the open connection stays with its pod
            kept.request("GET", "/")
            assert kept.getresponse().read() == b"zai-proxy-0"
    finally:
        kept.close()


def test_no_ready_endpoint_refuses_connections_and_a_dead_endpoint_is_not_retried(
        kube: Path, pods: list[Pod], proxy: tuple[str, int, Path]) -> None:
    host, port, _ = proxy
    services = LocalServices(kube)
    services.apply(service())
    assert refused(host, port), "a Service with no endpoints: connection refused"
    pods[0].record(kube)
    wait_for(lambda: refused(host, port), lambda r: not r, timeout=STALENESS, interval=0.02,
             what="the proxy listening once a pod is ready")
    assert hit(host, port) == "zai-proxy-0"
    pods[0].record(kube, ready=False)
    wait_for(lambda: refused(host, port), bool, timeout=STALENESS, interval=0.02,
             what="connections refused once the only pod is not ready")
    pods[1].record(kube)
    wait_for(lambda: refused(host, port), lambda r: not r, timeout=STALENESS, interval=0.02,
             what="listening again")
    services.delete("zai-proxy")
    wait_for(lambda: refused(host, port), bool, timeout=STALENESS, interval=0.02,
             what="connections refused once the Service is deleted")
    services.apply(service())
    pods[0].record(kube)
    pods[1].stop()  # ready in its record, its server gone: the SYN gets a reset, passed on, no other pod tried
    wait_for(lambda: refused(host, port), lambda r: not r, timeout=STALENESS, interval=0.02, what="listening")

    def outcome() -> str:
        try:
            return hit(host, port)
        except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
            return "reset"

    seen = Counter(outcome() for _ in range(60))
    assert set(seen) == {"reset", "zai-proxy-0"}, f"about half reset (random per connection), no retry: {seen}"


def test_a_half_close_passes_through(kube: Path, pods: list[Pod], proxy: tuple[str, int, Path]) -> None:
    """The client's FIN reaches the pod (DNAT passes it on): a keep-alive server then sees the end of requests and
    closes, so the client reads the answer and then the end of the stream."""
    host, port, _ = proxy
    pods[0].record(kube)
    LocalServices(kube).apply(service())
    wait_for(lambda: refused(host, port), lambda r: not r, timeout=STALENESS * 5, interval=0.02, what="listening")
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: zai-proxy\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := s.recv(4096):  # times out (5 s) if the FIN never reached the pod
            received += chunk
    assert received.startswith(b"HTTP/1.0 200") or received.startswith(b"HTTP/1.1 200"), received
    assert received.endswith(b"zai-proxy-0")


def test_the_scrape_targets_file_follows_the_pods(kube: Path, pods: list[Pod],
                                                  proxy: tuple[str, int, Path]) -> None:
    _, _, targets = proxy
    wait_for(lambda: targets.read_text() if targets.exists() else None, lambda t: t is not None and
             json.loads(t) == [], timeout=STALENESS * 5, interval=0.02, what="an empty targets file at start")
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(pods[0].port)}
    pods[0].record(kube, annotations=scrape)
    pods[1].record(kube, annotations={"prometheus.io/scrape": "false"})

    def read() -> Any:
        return json.loads(targets.read_text())  # never half a file: the proxy writes through a rename

    expected = [{"targets": [f"127.0.9.1:{pods[0].port}"],
                 "labels": {"pod": "zai-proxy-0", "app_version": "1.2.0", "namespace": "default"}}]
    assert wait_for(read, lambda t: t == expected, timeout=STALENESS, interval=0.02,
                    what="the annotated pod in the targets file") == expected
    (kube / "pods" / "zai-proxy-0.json").unlink()  # deleted: gone from the targets
    wait_for(read, lambda t: t == [], timeout=STALENESS, interval=0.02, what="the deleted pod gone")
    assert [p.name for p in targets.parent.iterdir()] == ["pods.json"], "no temporary file left behind"


def test_the_proxy_program_runs_under_supervisord(kube: Path, pods: list[Pod], tmp_path: Path) -> None:
    host, port = "127.0.9.101", free_port("127.0.9.101")
    name, argv = proxy_program(kube, {"zai-proxy:http": f"{host}:{port}"}, tmp_path / "targets.json")
    assert name == "kube-proxy" and argv[:3] == [sys.executable, "-m", "runbook.testbed.kube_proxy"]
    pods[2].record(kube)
    LocalServices(kube).apply(service())
    sup = Supervisor(state_dir=tmp_path / "sup", port=free_port())
    (tmp_path / "sup").mkdir()
    try:
        sup.start()
        sup.add(name, argv, env={"PYTHONPATH": str(PROJECT_ROOT)})
        sup.wait_running(name, timeout=10)
        assert wait_for(lambda: hit(host, port), lambda pod: pod == "zai-proxy-2", timeout=10, interval=0.05,
                        tolerate=(OSError,), what="a request through the supervised proxy") == "zai-proxy-2"
        assert "endpoints 127.0.9.3" in sup.tail(name, 20)
    finally:
        sup.shutdown()
    assert refused(host, port), "stopped with supervisord"


def test_bad_listen_specs_are_refused(kube: Path) -> None:
    assert Listen.parse("zai-proxy:metrics=127.0.0.1:30090") == Listen("zai-proxy", "metrics", "127.0.0.1", 30090)
    assert Listen.parse("zai-proxy:8080=127.0.0.1:30080").port == 8080
    for bad in ("zai-proxy", "zai-proxy=127.0.0.1", "=127.0.0.1:80", "zai-proxy=127.0.0.1:http"):
        with pytest.raises(ConfigError, match="expected <service>"):
            proxy_program(kube, [bad])
    proc = subprocess.run([sys.executable, "-m", "runbook.testbed.kube_proxy", "--kube-dir", str(kube), "--listen",
                           "zai-proxy"], env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 2 and "expected <service>[:<port>]=<host>:<port>" in proc.stderr

"""Seed 003's stand-ins as real programs over real HTTP: the storage/schema service (runbook.testbed.meta_service)
and the gateway (runbook.testbed.meta_gateway), each on a loopback address of its own (127.13.x.y, as the local
kubelet gives pods one), the service behind the gateway on the same port on two addresses (blue and green).

The service answers with its component, colour (read from its service.properties), version and pod; warms up
(503) for --warm-up; crashes with exit 1 after --crash-after; finishes an in-flight request on SIGTERM. The
gateway routes by the config file, re-reads it when the file changes (in place, or a ConfigMap volume's
``..data`` symlink swap), passes the service's headers on with X-Meta-Upstream, answers 502 with the reason
when the upstream cannot be resolved or connected to, and ``meta-gateway config`` reports what the process
has loaded, not what the file says. Every wait has a deadline; every process is stopped in teardown."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from runbook.env import PROJECT_ROOT
from runbook.wait import wait_for

DEADLINE = 15.0


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path
    host: str
    port: int

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def address() -> str:
    """A loopback address of the test's own (127.13.0.0/16, as the kubelet gives each pod one)."""
    return f"127.13.{random.randint(1, 254)}.{random.randint(1, 254)}"


def get(host: str, port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def answers(host: str, port: int, path: str = "/health") -> int | None:
    try:
        return get(host, port, path, timeout=2)[0]
    except OSError:
        return None


class Procs:
    def __init__(self, tmp: Path) -> None:
        self.tmp, self.started, self.n = tmp, list[Proc](), 0

    def start(self, module: str, args: list[str], *, host: str, port: int, env: Mapping[str, str] | None = None,
              wait: bool = True, health: str = "/health") -> Proc:
        self.n += 1
        log = self.tmp / f"{module.rsplit('.', 1)[-1]}-{self.n}.log"
        environ = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "POD_IP", "RUNBOOK_IMAGE_VERSION")}
        environ.update({"PYTHONPATH": str(PROJECT_ROOT), **(env or {})})
        with log.open("wb") as out:
            popen = subprocess.Popen([sys.executable, "-m", module, *args, "--bind", host, "--port", str(port)],
                                     stdout=out, stderr=subprocess.STDOUT, env=environ)
        proc = Proc(popen, log, host, port)
        self.started.append(proc)
        if wait:
            wait_for(lambda: answers(host, port, health) is not None or popen.poll() is not None, bool,
                     timeout=DEADLINE, interval=0.05, what=f"{module} to listen on {host}:{port}")
            assert popen.poll() is None, proc.text()
        return proc

    def close(self) -> None:
        for p in self.started:
            if p.popen.poll() is None:
                p.popen.kill()
            p.popen.wait(timeout=10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.close()


PORT = 8080  # (no env uses it) one port on many addresses, as every pod of a Service listens on its targetPort


def props(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def service(procs: Procs, tmp: Path, component: str, colour: str, *extra: str, host: str | None = None,
            env: Mapping[str, str] | None = None, wait: bool = True) -> Proc:
    cfg = props(tmp / f"{component}-{colour}-{procs.n}.properties", f"COMPONENT={component}\nCOLOUR={colour}\n")
    return procs.start("runbook.testbed.meta_service", ["--component", component, "--config", str(cfg), *extra],
                       host=host or address(), port=PORT, env=env, wait=wait)


# --------------------------------------------------------------------------- the service


def test_the_service_answers_with_its_component_colour_version_and_pod(procs: Procs, tmp_path: Path) -> None:
    svc = service(procs, tmp_path, "schema", "green",
                  env={"RUNBOOK_IMAGE_VERSION": "1.1.0", "POD_NAME": "meta-schema-green-6d9f-x2k4p"})
    status, headers, body = get(svc.host, PORT, "/tables/t1?x=1")
    assert status == 200
    assert json.loads(body) == {"component": "schema", "colour": "green", "version": "1.1.0",
                                "pod": "meta-schema-green-6d9f-x2k4p", "path": "/tables/t1"}
    assert (headers["x-meta-version"], headers["x-meta-colour"]) == ("1.1.0", "green")
    assert get(svc.host, PORT, "/health")[:3:2] == (200, b"ok\n")
    flag = service(procs, tmp_path, "storage", "blue", "--version", "1.2.0-slow",
                   env={"RUNBOOK_IMAGE_VERSION": "1.2.0"})
    assert get(flag.host, PORT, "/")[1]["x-meta-version"] == "1.2.0-slow"  # --version wins over the image's env


def test_a_slow_build_is_unready_while_it_warms_up_then_ready(procs: Procs, tmp_path: Path) -> None:
    svc = service(procs, tmp_path, "storage", "blue", "--version", "1.1.0-slow", "--warm-up", "3")
    status, headers, body = get(svc.host, PORT, "/health")
    assert (status, body) == (503, b"warming up\n")
    assert headers["x-meta-colour"] == "blue"
    assert get(svc.host, PORT, "/data")[0] == 200  # it serves; only its readiness says no
    wait_for(lambda: answers(svc.host, PORT), lambda s: s == 200, timeout=DEADLINE, interval=0.1,
             what="the warmed-up service to be ready")


def test_a_crash_build_exits_1_after_its_delay(procs: Procs, tmp_path: Path) -> None:
    svc = service(procs, tmp_path, "schema", "blue", "--version", "1.1.0-crash", "--crash-after", "0.5", wait=False)
    code = wait_for(svc.popen.poll, lambda c: c is not None, timeout=DEADLINE, interval=0.05, what="the crash")
    assert code == 1
    assert "crashing 0.5s after start (injected: --crash-after)" in svc.text()


def test_a_service_without_its_config_does_not_start(procs: Procs, tmp_path: Path) -> None:
    p = procs.start("runbook.testbed.meta_service", ["--component", "storage", "--version", "1.0.0",
                                                     "--config", str(tmp_path / "absent.properties")],
                    host=address(), port=PORT, wait=False)
    assert p.popen.wait(timeout=DEADLINE) == 2
    assert "cannot read the service's config" in p.text()
    q = procs.start("runbook.testbed.meta_service", ["--component", "storage", "--version", "1.0.0", "--config",
                                                     str(props(tmp_path / "no-colour", "COMPONENT=storage\n"))],
                    host=address(), port=PORT, wait=False)
    assert q.popen.wait(timeout=DEADLINE) == 2


def in_flight(host: str, port: int, path: str) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(get(host, port, path))
        except OSError as exc:
            out.append(exc)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_sigterm_finishes_the_request_in_flight_and_exits_0(procs: Procs, tmp_path: Path) -> None:
    svc = service(procs, tmp_path, "storage", "blue", "--version", "1.0.0")
    t, out = in_flight(svc.host, PORT, "/slow?delay=1.5")
    wait_for(svc.text, lambda s: "answering /slow in 1.5s" in s, timeout=DEADLINE, interval=0.02,
             what="the request to be in flight")
    svc.popen.send_signal(signal.SIGTERM)
    assert svc.popen.wait(timeout=DEADLINE) == 0
    t.join(timeout=DEADLINE)
    assert len(out) == 1 and isinstance(out[0], tuple), out
    status, _, body = out[0]
    assert status == 200 and json.loads(body)["path"] == "/slow"
    assert answers(svc.host, PORT) is None  # no longer listening


# --------------------------------------------------------------------------- the gateway


def gateway(procs: Procs, config: Path, *extra: str, host: str | None = None, admin_port: int = 8081,
            env: Mapping[str, str] | None = None) -> Proc:
    return procs.start("runbook.testbed.meta_gateway",
                       ["--config", str(config), "--upstream-port", str(PORT), "--admin-port", str(admin_port),
                        *extra], host=host or address(), port=PORT, env=env, health="/healthz")


def cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("POD_IP", "META_GATEWAY_ADMIN")}
    environ.update({"PYTHONPATH": str(PROJECT_ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", "runbook.testbed.meta_gateway", "config", *args], env=environ,
                          capture_output=True, text=True, timeout=DEADLINE, check=False)


def loaded(gw: Proc) -> dict[str, object]:
    """``meta-gateway config`` as it runs in the gateway's pod: POD_IP is its address, nothing else given."""
    res = cli(env={"POD_IP": gw.host})
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout)
    return out


def config_volume(root: Path, text: str, generation: int) -> None:
    """What a kubelet's configMap volume does: files in ``..<ts>``, ``..data`` swapped by a rename."""
    root.mkdir(exist_ok=True)
    ts = root / f"..2026_11_30_{generation:02d}"
    ts.mkdir()
    (ts / "config.properties").write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(ts.name)
    tmp.rename(root / "..data")
    if not (root / "config.properties").is_symlink():
        (root / "config.properties").symlink_to("..data/config.properties")


def hosts(storage: str, schema: str) -> str:
    return f"STORAGE_SERVICE_HOST={storage}\nSCHEMA_SERVICE_HOST={schema}\n"


def test_the_gateway_routes_passes_headers_and_follows_a_configmap_switch(procs: Procs, tmp_path: Path) -> None:
    blue = {c: service(procs, tmp_path, c, "blue", "--version", "1.0.0") for c in ("storage", "schema")}
    green = {c: service(procs, tmp_path, c, "green", "--version", "1.1.0") for c in ("storage", "schema")}
    volume = tmp_path / "etc-meta"
    config_volume(volume, hosts(blue["storage"].host, blue["schema"].host), 1)
    gw = gateway(procs, volume / "config.properties", env={"RUNBOOK_IMAGE_VERSION": "1.0.0"})
    status, headers, body = get(gw.host, PORT, "/storage/buckets/b1?delay=0")
    assert status == 200 and json.loads(body) == {**json.loads(body), "component": "storage", "colour": "blue",
                                                   "version": "1.0.0", "path": "/buckets/b1"}
    assert (headers["x-meta-upstream"], headers["x-meta-colour"], headers["x-meta-version"]) == (
        blue["storage"].host, "blue", "1.0.0")
    assert headers["x-meta-component"] == "storage" and headers["content-type"] == "application/json"
    assert get(gw.host, PORT, "/schema/t")[1]["x-meta-upstream"] == blue["schema"].host
    first = loaded(gw)
    assert {k: first[k] for k in ("storage", "schema", "reloads", "version")} == {
        "storage": blue["storage"].host, "schema": blue["schema"].host, "reloads": 1, "version": "1.0.0"}

    config_volume(volume, hosts(green["storage"].host, green["schema"].host), 2)  # the switch
    wait_for(lambda: get(gw.host, PORT, "/schema/t")[1]["x-meta-colour"], lambda c: c == "green", timeout=DEADLINE,
             interval=0.05, what="the gateway to route to green")
    after = loaded(gw)
    assert (after["storage"], after["schema"], after["reloads"]) == (green["storage"].host, green["schema"].host, 2)
    assert isinstance(after["loaded_at"], float) and isinstance(first["loaded_at"], float)
    assert after["loaded_at"] > first["loaded_at"]
    assert "config reloaded: storage=" in gw.text()

    (volume / "..data" / "config.properties").write_text(hosts(blue["storage"].host, "x"))  # a write in place
    wait_for(lambda: loaded(gw)["schema"], lambda s: s == "x", timeout=DEADLINE, interval=0.05,
             what="the gateway to re-read a file written in place")
    (volume / "..data" / "config.properties").write_text("SCHEMA_SERVICE_HOST=y\n")  # broken: the last one stays
    wait_for(lambda: loaded(gw)["error"], bool, timeout=DEADLINE, interval=0.05, what="the bad config reported")
    assert loaded(gw)["schema"] == "x"


def test_an_upstream_that_cannot_be_resolved_or_reached_is_a_502_with_the_reason(procs: Procs,
                                                                                  tmp_path: Path) -> None:
    nobody = address()  # no process listens there
    cfg = props(tmp_path / "config.properties", hosts("meta-storage-nowhere.invalid", nobody))
    gw = gateway(procs, cfg)
    status, headers, body = get(gw.host, PORT, "/storage/x")
    assert status == 502 and headers["x-meta-upstream"] == "meta-storage-nowhere.invalid"
    assert body.decode().startswith(f"bad gateway: upstream meta-storage-nowhere.invalid:{PORT}: ConnectError: ")
    assert ": [Errno -" in body.decode()  # the resolver's own error (EAI_NONAME, or EAI_AGAIN without DNS)
    status, headers, body = get(gw.host, PORT, "/schema/x")
    assert (status, headers["x-meta-upstream"]) == (502, nobody)
    assert "[Errno 111] Connect call failed" in body.decode()  # ECONNREFUSED
    assert get(gw.host, PORT, "/other")[0] == 404


def test_the_gateway_resolves_names_by_dns(procs: Procs, tmp_path: Path) -> None:
    svc = service(procs, tmp_path, "storage", "blue", "--version", "1.0.0", host="127.0.0.1")
    gw = gateway(procs, props(tmp_path / "c.properties", hosts("localhost", "localhost")))
    status, headers, _ = get(gw.host, PORT, "/storage/")
    assert (status, headers["x-meta-upstream"], headers["x-meta-colour"]) == (200, "localhost", "blue")
    assert svc.popen.poll() is None


def test_the_config_cli_reports_what_the_process_loaded_not_the_file(procs: Procs, tmp_path: Path) -> None:
    cfg = props(tmp_path / "config.properties", hosts("meta-storage-blue", "meta-schema-blue"))
    gw = gateway(procs, cfg, "--poll", "3600")  # read at start, not again within the test
    cfg.write_text(hosts("meta-storage-green", "meta-schema-green"))
    out = loaded(gw)
    assert (out["storage"], out["schema"], out["config"]) == ("meta-storage-blue", "meta-schema-blue", str(cfg))
    assert get(gw.host, PORT, "/storage/x")[1]["x-meta-upstream"] == "meta-storage-blue"
    explicit = cli("--admin", f"{gw.host}:8081")
    assert explicit.returncode == 0 and json.loads(explicit.stdout)["storage"] == "meta-storage-blue"
    assert json.loads(cli(env={"META_GATEWAY_ADMIN": f"{gw.host}:8081"}).stdout)["schema"] == "meta-schema-blue"
    absent = cli("--admin", f"{address()}:8081")
    assert absent.returncode == 1 and "no answer from the gateway" in absent.stderr


def test_the_gateway_is_unready_until_it_has_a_config(procs: Procs, tmp_path: Path) -> None:
    cfg = tmp_path / "config.properties"
    gw = gateway(procs, cfg)
    status, _, body = get(gw.host, PORT, "/healthz")
    assert status == 503 and b"cannot be read" in body
    assert get(gw.host, PORT, "/storage/x")[0] == 503
    props(cfg, hosts("a", "b"))
    wait_for(lambda: answers(gw.host, PORT, "/healthz"), lambda s: s == 200, timeout=DEADLINE, interval=0.05,
             what="the gateway to load the config that appeared")


def test_the_gateway_finishes_a_request_in_flight_on_sigterm(procs: Procs, tmp_path: Path) -> None:
    svc = service(procs, tmp_path, "storage", "blue", "--version", "1.0.0")
    gw = gateway(procs, props(tmp_path / "c.properties", hosts(svc.host, svc.host)))
    t, out = in_flight(gw.host, PORT, "/storage/slow?delay=1.5")
    wait_for(svc.text, lambda s: "answering /slow in 1.5s" in s, timeout=DEADLINE, interval=0.02,
             what="the request to reach the service")
    gw.popen.send_signal(signal.SIGTERM)
    assert gw.popen.wait(timeout=DEADLINE) == 0
    t.join(timeout=DEADLINE)
    assert len(out) == 1 and isinstance(out[0], tuple) and out[0][0] == 200, out

"""The ssh runner model through a real sshd (Debian's openssh-server, runbook/testbed/sshd.py) as a non-root
user with passwordless sudo, as an operator's machine reaches biscayne: root commands need ``root=True``
(``sudo -n``), and the host's loopback endpoints are reached through ssh tunnels (runbook/adapters/tunnel.py)
that close when the runner is done, exits, or dies. Skipped, with the reason, without root or sshd.

Run under the testbed lock (it creates a user and a sudoers drop-in):
``flock /tmp/runbook-testbed.lock .venv/bin/pytest tests/testbed/test_ssh_runner.py``"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psutil
import pytest

from runbook.adapters.factory import Adapters, connect
from runbook.adapters.host import TestinfraHost
from runbook.adapters.tunnel import RUNNER_LOOPBACK, SshTunnels
from runbook.env import HOST_LOOPBACK, PROJECT_ROOT, Env, load_env
from runbook.errors import AdapterError, CommandFailed
from runbook.testbed.sshd import Sshd, missing
from runbook.wait import wait_for

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"real sshd: {missing()}")

ENV_FILE = Path(__file__).parent / "envs" / "ssh-runner.yaml"
USER = "rbtest-op"  # not the testbed's runbook-op: this module creates and removes its own


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    server = Sshd(PROJECT_ROOT / ".testbed" / "ssh-runner", user=USER)
    try:
        yield server.up()
    finally:
        server.down()
        assert server.leftovers() == []


@pytest.fixture(scope="module")
def env(sshd: Sshd) -> Env:
    env = load_env(str(ENV_FILE))
    assert env.host_target.option("ssh_config") is not None and sshd.ssh_config.exists()
    return env


@pytest.fixture
def root_file(tmp_path: Path) -> Iterator[Path]:
    """A file only root may write, in a directory the user can reach."""
    tmp_path.chmod(0o755)
    f = tmp_path / "root-owned"
    f.write_text("before\n")
    f.chmod(0o644)
    yield f


class _Answer(BaseHTTPRequestHandler):
    """A loopback HTTP server standing in for a host-side endpoint: it answers with what it saw."""

    def do_GET(self) -> None:
        body = b"ok" if self.path == "/health" else json.dumps({"host": self.headers["Host"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server(request: pytest.FixtureRequest) -> Iterator[int]:
    port = getattr(request, "param", 0)
    server = ThreadingHTTPServer((HOST_LOOPBACK, port), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _closed(port: int) -> bool:
    try:
        httpx.get(f"http://{RUNNER_LOOPBACK}:{port}/", timeout=2)
    except httpx.HTTPError:
        return True
    return False


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---------------------------------------------------------------------------------------- root through sudo


def test_the_host_user_is_not_root_and_root_commands_go_through_sudo(env: Env) -> None:
    host = TestinfraHost(env.host, env_name=env.name)
    assert host.run("id -un").stdout.strip() == USER
    assert host.run("id -un", root=True).stdout.strip() == "root"


def test_a_command_kept_running_as_root_runs_through_sudo_and_ends_with_its_stdin(env: Env) -> None:
    """What the journal's lock does: a shell held open on the host while the runner keeps its stdin."""
    host = TestinfraHost(env.host, env_name=env.name)
    for root, who in ((False, USER), (True, "root")):
        proc = host.spawn("id -un; exec cat >/dev/null", root=root)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == who
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0


def test_without_sudo_a_root_owned_file_cannot_be_written_and_with_sudo_it_can(env: Env, root_file: Path) -> None:
    host = TestinfraHost(env.host, env_name=env.name)
    with pytest.raises(CommandFailed, match="Permission denied") as denied:
        host.run(f"echo user >> {root_file}")
    assert "root=True" in str(denied.value)  # the message says how to ask for root
    assert root_file.read_text() == "before\n"
    host.run(f"echo root >> {root_file}", root=True)
    assert root_file.read_text() == "before\nroot\n"
    assert root_file.stat().st_uid == 0


def test_a_host_url_without_sudo_runs_root_commands_as_the_user_and_says_so(sshd: Sshd, root_file: Path) -> None:
    host = TestinfraHost(sshd.host_url(sudo=False))
    with pytest.raises(CommandFailed, match=r"add \?sudo=true"):
        host.run(f"echo root >> {root_file}", root=True)
    assert root_file.read_text() == "before\n"


def test_a_host_without_a_sudo_rule_is_an_error_naming_the_rule(env: Env, sshd: Sshd, root_file: Path) -> None:
    host = TestinfraHost(env.host, env_name=env.name)
    kept = sshd.sudoers.read_text()
    sshd.sudoers.unlink()
    try:
        for check in (True, False):  # not the command's answer: an error even when the caller checks nothing
            with pytest.raises(AdapterError, match=r"sudo refused .* needs a sudoers rule"):
                host.run(f"echo root >> {root_file}", root=True, check=check)
    finally:
        sshd.sudoers.write_text(kept)
        sshd.sudoers.chmod(0o440)
    assert root_file.read_text() == "before\n"


# ---------------------------------------------------------------------------------------- tunnels


def test_a_tunnel_reaches_a_host_loopback_server_and_closes(env: Env, http_server: int) -> None:
    reach = SshTunnels(env.host_target, env_name=env.name)
    host_url = f"http://{HOST_LOOPBACK}:{http_server}/x"
    url = reach.url(host_url)
    try:
        assert url != host_url and url.endswith("/x")
        assert httpx.get(url, timeout=5).json() == {"host": url.split("/")[2]}
        (tunnel,) = reach.tunnels()
        assert reach.url(host_url) == url  # one tunnel per endpoint, reused
        assert psutil.Process(tunnel.proc.pid).name() == "ssh"
    finally:
        reach.close()
    assert tunnel.proc.poll() is not None
    assert _closed(tunnel.runner_port)


@pytest.mark.parametrize("end", ["exit", "SIGKILL"])
def test_a_tunnel_ends_with_the_runner(env: Env, http_server: int, end: str) -> None:
    """Closed at exit (atexit), and when the runner is killed (its stdin pipe closes, so does the session)."""
    script = ("import os, signal, sys\n"
              "from runbook.adapters.tunnel import SshTunnels\n"
              "r = SshTunnels(sys.argv[1]); r.url(sys.argv[2]); (t,) = r.tunnels()\n"
              "print(t.proc.pid, t.runner_port, flush=True)\n"
              "sys.stdin.readline()\n"
              "os.kill(os.getpid(), signal.SIGKILL) if sys.argv[3] == 'SIGKILL' else sys.exit(0)\n")
    runner = subprocess.Popen([sys.executable, "-c", script, env.host, f"http://{HOST_LOOPBACK}:{http_server}/",
                               end], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    assert runner.stdout is not None and runner.stdin is not None
    pid, port = (int(x) for x in runner.stdout.readline().split())
    assert httpx.get(f"http://{RUNNER_LOOPBACK}:{port}/", timeout=5).status_code == 200
    runner.stdin.write("\n")
    runner.stdin.flush()
    runner.wait(timeout=30)
    wait_for(lambda: _gone(pid), bool, timeout=20, interval=0.1, what=f"the tunnel's ssh (pid {pid}) to end")
    assert _closed(port)


def test_a_tunnel_to_nothing_fails_the_request_not_the_run(env: Env) -> None:
    reach = SshTunnels(env.host_target, env_name=env.name)
    try:
        with pytest.raises(httpx.HTTPError):
            httpx.get(reach.url(f"http://{HOST_LOOPBACK}:1/"), timeout=5)
    finally:
        reach.close()


def test_a_tunnel_over_a_host_that_refuses_the_runner_names_the_ssh_command(sshd: Sshd, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(sshd.ssh_config.read_text().replace(str(sshd.client_key), str(tmp_path / "no-such-key")))
    reach = SshTunnels(f"ssh://{sshd.alias}?ssh_config={config}", connect_timeout=20)
    with pytest.raises(AdapterError, match=r"cannot open an ssh tunnel .* Permission denied"):
        reach.url(f"http://{HOST_LOOPBACK}:2019/")


# ---------------------------------------------------------------------------------------- the factory


@pytest.fixture
def caddy(env: Env, tmp_path: Path) -> Iterator[None]:
    """Real Caddy with its admin API where the env says, on the host's loopback."""
    config = tmp_path / "caddy.json"
    config.write_text(json.dumps({"admin": {"listen": env.ingress.admin.split("://", 1)[1]}}))
    proc = subprocess.Popen([str(PROJECT_ROOT / ".venv" / "bin" / "caddy"), "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _admin_answers(env.ingress.admin), bool, timeout=20, interval=0.1, what="Caddy's admin API")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _admin_answers(url: str) -> bool:
    try:
        return httpx.get(url + "/config/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def adapters(env: Env) -> Iterator[Adapters]:
    # no testbed: only host, reach, ingress (and no host programs of a testbed's on the host's PATH)
    stand_in = SimpleNamespace(netns=None, workloads=None, storage=None, host_bin=Path("/nonexistent"))
    a = connect(env, testbed=stand_in)  # type: ignore[arg-type]
    try:
        yield a
    finally:
        a.close()


@pytest.mark.parametrize("http_server", [18799], indirect=True)  # the env's green rpc_port
def test_the_factory_on_an_ssh_env_reaches_rpc_and_admin_through_tunnels(
        env: Env, adapters: Adapters, caddy: None, http_server: int) -> None:
    assert adapters.host.run("id -un").stdout.strip() == USER
    green = adapters.rpc_url("green")
    assert green != env.rpc_url("green") and green.startswith(f"http://{RUNNER_LOOPBACK}:")
    with adapters.rpc("green") as rpc:
        assert rpc.url == green
        assert rpc.health().body == "ok"
    with adapters.rpc("blue") as rpc, pytest.raises(AdapterError):  # nothing on blue's port on the host
        rpc.health()
    assert adapters.ingress.config()["admin"]["listen"] == env.ingress.admin.split("://", 1)[1]
    tunnelled = {(t.host, t.port) for t in adapters.reach.tunnels()}  # type: ignore[attr-defined]
    assert tunnelled == {(HOST_LOOPBACK, 18799), (HOST_LOOPBACK, 18797), (HOST_LOOPBACK, env.ingress.admin_port)}
    with adapters.public_rpc() as public:  # the public URL is a client's, never tunnelled
        assert public.url == env.ingress.url


def test_the_admin_api_refuses_a_tunnelled_url_without_the_host_side_host_header(env: Env, adapters: Adapters,
                                                                                  caddy: None) -> None:
    """Why the ingress adapter takes a transport instead of the runner-side URL: Caddy checks Host."""
    runner_side = adapters.reach.url(env.ingress.admin)
    assert runner_side != env.ingress.admin
    refused = httpx.get(runner_side + "/config/", timeout=5)
    assert refused.status_code == 403 and "host not allowed" in refused.text
    assert "admin" in adapters.ingress.config()

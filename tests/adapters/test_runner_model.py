"""Unit tests of the runner model's pieces that need no sshd: the host URL as the env reads it, how a root
command is written, which URLs are on the host's loopback, and the transport that keeps the Host header.
The real ssh way is tested in ``tests/testbed/test_ssh_runner.py``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from runbook.adapters.host import TestinfraHost, as_root
from runbook.adapters.tunnel import Direct, SshTunnels, ThroughTunnels, on_host_loopback, reach_for
from runbook.env import PROJECT_ROOT, load_env, parse_host
from runbook.errors import ConfigError


def test_the_three_shipped_envs_say_where_the_runner_is() -> None:
    assert load_env("local").host_target.remote is False
    assert load_env("kind").host_target.remote is False  # kind maps the node's ports to the runner
    biscayne = load_env("biscayne").host_target
    assert (biscayne.scheme, biscayne.name, biscayne.remote) == ("ssh", "biscayne", True)


def test_an_ssh_host_url_is_read_with_user_port_sudo_and_options() -> None:
    t = parse_host("ssh://op@biscayne:2222?sudo=true&ssh_config=.testbed/x/ssh_config")
    assert (t.user, t.name, t.port, t.sudo, t.display) == ("op", "biscayne", 2222, True, "ssh://op@biscayne:2222")
    # sudo is the host adapter's (only commands asked as root get it), not testinfra's (every command)
    assert t.testinfra_url() == f"ssh://op@biscayne:2222?ssh_config={PROJECT_ROOT}/.testbed/x/ssh_config"


@pytest.mark.parametrize(("url", "problem"), [
    ("ssh://biscayne?sudo=yes", "use sudo=true or sudo=false"),
    ("ssh://biscayne?sduo=true", "unknown option 'sduo'"),
    ("ftp://biscayne", "not a host URL"),
    ("biscayne", "not a host URL"),
    ("ssh://", "no host name"),
    ("docker://node?sudo=true", "docker exec already runs as the container's root"),
])
def test_a_wrong_host_url_is_refused_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_host(url)


def test_a_wrong_host_url_in_an_env_file_names_the_field(tmp_path: Path) -> None:
    data = (PROJECT_ROOT / "envs" / "biscayne.yaml").read_text().replace("host: ssh://biscayne",
                                                                         "host: ssh://biscayne?sudo=yes")
    (tmp_path / "bad.yaml").write_text(data)
    with pytest.raises(ConfigError, match=r"field host: .*sudo=true or sudo=false"):
        load_env(str(tmp_path / "bad.yaml"))


def test_a_root_command_is_sudo_n_only_with_sudo() -> None:
    assert as_root("zfs snapshot a@b && echo 'x y'", sudo=True) == \
        "sudo -n -- sh -c 'zfs snapshot a@b && echo '\"'\"'x y'\"'\"''"
    assert as_root("zfs snapshot a@b", sudo=False) == "zfs snapshot a@b"
    assert TestinfraHost("local://").root_command("id -u") == "id -u"
    assert TestinfraHost("local://?sudo=true").root_command("id -u") == "sudo -n -- sh -c 'id -u'"


def test_a_local_host_runs_root_commands_as_the_runner() -> None:
    host = TestinfraHost("local://")
    assert host.run("id -u", root=True).stdout.strip() == host.run("id -u").stdout.strip()


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:2019", True), ("http://localhost:8899/x", True), ("http://[::1]:8897", True),
    ("http://127.0.1.1:80", True), ("https://biscayne.vaasl.io", False), ("http://10.0.0.5:2019", False),
])
def test_which_urls_are_on_the_host_loopback(url: str, loopback: bool) -> None:
    assert on_host_loopback(url) is loopback


def test_local_and_kind_reach_every_url_unchanged() -> None:
    for name in ("local", "kind"):
        env = load_env(name)
        reach = reach_for(env)
        assert isinstance(reach, Direct)
        assert reach.url(env.ingress.admin) == env.ingress.admin
        assert reach.url(env.rpc_url("green")) == env.rpc_url("green")
        assert reach.transport() is None


def test_an_ssh_env_reaches_a_url_off_the_host_loopback_unchanged_without_opening_a_tunnel() -> None:
    reach = reach_for(load_env("biscayne"))
    assert isinstance(reach, SshTunnels)
    assert reach.url("https://biscayne.vaasl.io/health") == "https://biscayne.vaasl.io/health"
    assert reach.tunnels() == []


def test_the_ssh_command_carries_the_env_connection_options() -> None:
    reach = SshTunnels("ssh://op@biscayne:2222?ssh_config=/etc/x/cfg&ssh_identity_file=/k/id&timeout=7")
    assert reach.ssh_argv() == ["ssh", "-F", "/etc/x/cfg", "-i", "/k/id", "-l", "op", "-p", "2222",
                                "-o", "ConnectTimeout=7"]


class _Shifted:
    """A Reach that moves one host-side port to another (what a tunnel does), for the transport's unit test."""

    def url(self, host_url: str) -> str:
        return host_url.replace(":2019", ":40001")

    def transport(self) -> None:
        return None

    def close(self) -> None:
        pass


def test_the_transport_sends_to_the_runner_side_url_with_the_host_side_host_header() -> None:
    seen: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers["Host"]))
        return httpx.Response(200, json={"ok": True})

    with httpx.Client(base_url="http://127.0.0.1:2019",
                      transport=ThroughTunnels(_Shifted(), httpx.MockTransport(answer))) as client:
        assert json.loads(client.get("/config/").text) == {"ok": True}
    # Caddy's admin API answers 403 "host not allowed" to any Host but its listen address
    assert seen == [("http://127.0.0.1:40001/config/", "127.0.0.1:2019")]

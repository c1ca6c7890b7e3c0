"""The stand-in doublezerod and doublezero CLI, run as real processes; the tunnel read from the kernel."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import base58
import pytest
from nacl.signing import SigningKey

from runbook.testbed import netns
from runbook.testbed.doublezero_cli import DaemonUnreachable, query
from runbook.testbed.keypair import read_pubkey, write_keypair
from runbook.wait import wait_for

SEED = bytes.fromhex("49ff73a5302136aa018dd9059cadc96d1f6f3f309b97fd876eca2526672dffa0")
OTHER_SEED = bytes(range(32))
DEVICE = "laconic-mia-sw01"

needs_net_admin = pytest.mark.skipif(
    not netns.has_net_admin(), reason=f"needs CAP_NET_ADMIN for network namespaces: {netns.net_admin_reason()}"
)


def _pubkey(seed: bytes) -> str:
    """Independent of the module under test: pynacl + base58 directly."""
    return base58.b58encode(bytes(SigningKey(seed).verify_key)).decode()


@pytest.fixture
def config_dir() -> Iterator[Path]:
    # Short path under /tmp: a unix socket path must fit in 107 bytes.
    d = Path(tempfile.mkdtemp(prefix="rbdz-", dir="/tmp"))
    write_keypair(d / "id.json", SEED)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _env(config_dir: Path, version: str = "0.6.0") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBOOK_", "DOUBLEZERO_"))}
    return {**env, "DOUBLEZERO_CONFIG_DIR": str(config_dir), "RUNBOOK_IMAGE_VERSION": version}


def cli(
    config_dir: Path, *args: str, version: str = "0.6.0", pod: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`doublezero ...` exec'd the way the testbed runs it "inside the container": with its environment."""
    argv = [sys.executable, "-m", "runbook.testbed.doublezero_cli", *args]
    env = _env(config_dir, version) | ({"RUNBOOK_POD": pod} if pod else {})
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20)


Starter = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_daemon(config_dir: Path) -> Iterator[Starter]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        *args: str, version: str = "0.6.0", netns_name: str | None = None, pod: str | None = None
    ) -> subprocess.Popen[bytes]:
        env = _env(config_dir, version)
        if netns_name:
            env["RUNBOOK_NETNS"] = netns_name
        if pod:
            env["RUNBOOK_POD"] = pod
        env["RUNBOOK_DZ_DEVICE"] = DEVICE
        argv = [sys.executable, "-m", "runbook.testbed.doublezerod", "--session-delay", "0.3", *args]
        log = open(config_dir / f"doublezerod-{len(procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def ns_name() -> Iterator[str]:
    name = f"rbtest-{uuid.uuid4().hex[:10]}"
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def wait_session_up(config_dir: Path, proc: subprocess.Popen[bytes], sock: Path | None = None) -> dict[str, object]:
    """Poll the daemon's /info until this process reports the session up (logs: the fixture's config dir)."""

    def observe() -> dict[str, object]:
        if proc.poll() is not None:
            raise AssertionError(f"doublezerod exited {proc.returncode}: {_logs(config_dir)}")
        info = query(sock or config_dir / "doublezerod.sock", "/info", timeout=2.0)
        assert isinstance(info, dict)
        return info

    return wait_for(
        observe,
        lambda info: info["pid"] == proc.pid and info["session"]["state"] == "BGP Session Up",  # type: ignore[index]
        timeout=10,
        interval=0.05,
        what="doublezerod's BGP session",
        tolerate=(DaemonUnreachable,),
    )


def _logs(config_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(config_dir.glob("doublezerod-*.log")))


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=5)


def _row(status_stdout: str) -> dict[str, str]:
    """Parse the real CLI's table (header line + one row) into column -> cell."""
    header, row, *_ = status_stdout.splitlines()
    return dict(zip([h.strip() for h in header.split("|")], [c.strip() for c in row.split("|")], strict=True))


# --------------------------------------------------------------------------- identity


def test_address_is_the_public_key_of_the_seed(config_dir: Path) -> None:
    res = cli(config_dir, "address")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == _pubkey(SEED) == "DkNx7RQDpQiL7tqoZsCfwgBUYsywKuuwehJXFjSgQS9N"


def test_keypair_file_is_solana_format_with_mode_0600(config_dir: Path) -> None:
    path = config_dir / "id.json"
    data = json.loads(path.read_text())
    assert len(data) == 64 and bytes(data[:32]) == SEED
    assert base58.b58encode(bytes(data[32:])).decode() == _pubkey(SEED)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_pubkey(path) == _pubkey(SEED)


def _malformed(kind: str) -> str:
    good = list(SEED) + list(SigningKey(SEED).verify_key.encode())
    other_pub = list(SigningKey(OTHER_SEED).verify_key.encode())
    return {
        "truncated": json.dumps(good[:63]),
        "mismatched": json.dumps(list(SEED) + other_pub),
        "out-of-range": json.dumps([*good[:10], 256, *good[11:]]),
        "not-json": ",".join(map(str, good)) + "]",
        "object": json.dumps({"secret": good}),
    }[kind]


@pytest.mark.parametrize("kind", ["truncated", "mismatched", "out-of-range", "not-json", "object"])
def test_malformed_id_json_fails_without_printing_key_bytes(config_dir: Path, kind: str) -> None:
    (config_dir / "id.json").write_text(_malformed(kind))
    res = cli(config_dir, "address")
    assert res.returncode != 0
    assert "keypair file" in res.stderr and res.stdout == ""
    output = res.stdout + res.stderr
    leaks = [
        ",".join(map(str, SEED[:4])),
        ", ".join(map(str, SEED[:4])),
        SEED.hex(),
        SEED[:8].hex(),
        base58.b58encode(SEED).decode(),
    ]
    assert not [leak for leak in leaks if leak in output], output


def test_daemon_refuses_to_start_without_an_identity(config_dir: Path, start_daemon: Starter) -> None:
    (config_dir / "id.json").unlink()
    proc = start_daemon()
    assert proc.wait(timeout=10) == 1
    logs = _logs(config_dir)
    assert "cannot start" in logs and "does not exist" in logs
    assert not (config_dir / "doublezerod.sock").exists()


# --------------------------------------------------------------------------- status and version


def test_version_in_the_real_cli_format(config_dir: Path) -> None:
    assert cli(config_dir, "--version", version="v0.6.3").stdout == "DoubleZero 0.6.3\n"
    assert cli(config_dir, "--cli-version", "0.7.1", "--version").stdout == "DoubleZero 0.7.1\n"


def test_status_shows_session_up_and_device_then_fails_when_daemon_stops(
    config_dir: Path, start_daemon: Starter
) -> None:
    proc = start_daemon()
    info = wait_session_up(config_dir, proc)
    assert info["tunnel"] == {  # no netns: still runs, the tunnel reported absent with a reason
        "present": False,
        "up": False,
        "managed": False,
        "netns": None,
        "interface": "doublezero0",
        "ifindex": None,
        "reason": "no network namespace configured (RUNBOOK_NETNS unset)",
    }

    res = cli(config_dir, "status")
    assert res.returncode == 0, res.stderr
    row = _row(res.stdout)
    assert row["Tunnel status"] == "BGP Session Up"
    assert row["Current Device"] == DEVICE
    assert row["Tunnel Name"] == ""  # absent tunnel
    assert res.stdout.splitlines()[0].split("|")[0].strip() == "Tunnel status"

    as_json = json.loads(cli(config_dir, "status", "--json").stdout)
    assert as_json[0]["response"]["doublezero_status"]["session_status"] == "BGP Session Up"

    assert _stop(proc) == 0
    down = cli(config_dir, "status")
    assert down.returncode == 1
    assert "doublezero service is not accessible" in down.stderr
    assert "BGP Session Up" not in down.stdout


def test_status_reports_connection_failure_on_a_stale_socket(config_dir: Path) -> None:
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(config_dir / "doublezerod.sock"))  # bound, never listening: connection refused
    try:
        res = cli(config_dir, "status")
    finally:
        stale.close()
    assert res.returncode == 1
    assert "Unable to connect to doublezero daemon" in res.stderr


def test_two_pods_sharing_a_long_config_dir_each_reach_their_own_daemon(
    config_dir: Path, start_daemon: Starter
) -> None:
    # Blue and green mount the same doublezero-config (one identity); testbed paths run through a
    # container rootfs and exceed sun_path's 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="rbdz-", dir="/tmp"))
    shared = base / ("containers-" + "x" * 60) / "doublezerod" / "root" / ".config" / "doublezero"
    try:
        write_keypair(shared / "id.json", SEED)
        assert len(str(shared / "doublezerod.agave-green-0.sock")) > 107
        procs = {pod: start_daemon("--config-dir", str(shared), pod=pod) for pod in ("agave-green-0", "agave-blue-0")}
        for pod, proc in procs.items():
            info = wait_session_up(config_dir, proc, sock=shared / f"doublezerod.{pod}.sock")
            assert info["pid"] == proc.pid
            res = cli(shared, "status", pod=pod)
            assert res.returncode == 0, res.stderr
            assert _row(res.stdout)["Tunnel status"] == "BGP Session Up"
        assert cli(shared, "status", pod="agave-other-0").returncode == 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- the tunnel survives a restart


@pytest.mark.netadmin
@needs_net_admin
def test_tunnel_and_routes_survive_a_daemon_restart(config_dir: Path, start_daemon: Starter, ns_name: str) -> None:
    first = start_daemon(netns_name=ns_name, version="0.6.0")
    wait_session_up(config_dir, first)
    before = netns.interface(ns_name, "doublezero0")
    routes_before = netns.routes(ns_name, "doublezero0")
    assert before is not None and before.up
    assert {"192.0.2.10/32", "192.0.2.11/32", "198.51.100.20/32"} <= set(routes_before)

    assert _stop(first) == 0
    # Daemon gone: the kernel still has the link and every route, like the GRE tunnel on biscayne.
    during = netns.interface(ns_name, "doublezero0")
    assert during is not None and during.ifindex == before.ifindex
    assert netns.routes(ns_name, "doublezero0") == routes_before

    second = start_daemon(netns_name=ns_name, version="0.6.3")
    info = wait_session_up(config_dir, second)
    after = netns.interface(ns_name, "doublezero0")
    assert after is not None and after.ifindex == before.ifindex
    assert netns.routes(ns_name, "doublezero0") == routes_before
    assert info["version"] == "0.6.3" and info["tunnel"]["ifindex"] == before.ifindex  # type: ignore[index]
    assert "already present, kept" in _logs(config_dir)

    row = _row(cli(config_dir, "status", version="0.6.3").stdout)
    assert (row["Tunnel status"], row["Tunnel Name"], row["Current Device"]) == (
        "BGP Session Up",
        "doublezero0",
        DEVICE,
    )


@pytest.mark.netadmin
@needs_net_admin
def test_session_reads_down_when_the_kernel_link_is_gone(config_dir: Path, start_daemon: Starter, ns_name: str) -> None:
    proc = start_daemon(netns_name=ns_name)
    wait_session_up(config_dir, proc)
    subprocess.run(["ip", "-n", ns_name, "link", "del", "doublezero0"], check=True)
    row = _row(cli(config_dir, "status").stdout)
    assert row["Tunnel status"] == "BGP Session Down"
    assert row["Tunnel Name"] == ""

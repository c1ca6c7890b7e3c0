"""The host-backed journal over real ssh: a throwaway sshd on 127.0.0.1 (skipped when sshd is not installed),
reached through the host adapter exactly as biscayne is (``ssh://<alias>?ssh_config=...``). The journal is
read and written on the "host", the lock is ``flock`` held there by the runner's ssh session: a second run
is refused naming the holder, and when the holder is killed its session ends and the host frees the lock.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.adapters.host import TestinfraHost
from runbook.env import PROJECT_ROOT, load_env
from runbook.procedures import journal_store
from runbook.procedures.journal import HostStore, Journal, JournalCorrupt, Locked
from runbook.wait import wait_for

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not os.path.exists(SSHD) or os.geteuid() != 0,
                                reason="needs sshd (openssh-server) and root to run a throwaway one")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            return s.recv(4).startswith(b"SSH")
    except OSError:
        return False


@pytest.fixture(scope="module")
def ssh_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "id")], check=True)
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PasswordAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        f"PidFile none\n")
    (d / "ssh_config").write_text(
        f"Host journal-host\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {d / 'id'}\n"
        f"  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        f"  ControlPath {d}/cm-%C\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _accepts(port), bool, timeout=20, interval=0.1, what="the throwaway sshd to listen")
        yield f"ssh://journal-host?ssh_config={d / 'ssh_config'}"
    finally:
        sshd.terminate()
        sshd.wait(timeout=20)
        subprocess.run(["ssh", "-F", str(d / "ssh_config"), "-O", "exit", "journal-host"], capture_output=True,
                       check=False)  # testinfra's ControlMaster, if one persists


@pytest.fixture
def journal(ssh_url: str, tmp_path: Path) -> Journal:
    return Journal(store=HostStore(TestinfraHost(ssh_url), str(tmp_path / "var-lib-runbook" / "env")),
                   name="agave-upgrade.json")


def test_the_journal_is_read_and_written_on_the_host(journal: Journal, ssh_url: str) -> None:
    state = {"procedure": "agave-upgrade", "status": "running", "params": {"target_version": "v2.2.1"},
             "completed": ["snapshot"], "acted": ["snapshot"], "facts": {"run_id": "r1", "note": "a 'quoted' $HOME"}}
    assert journal.load() == {}
    journal.save(state)
    assert journal.load() == state
    assert journal.path.is_file()  # the same machine here: the file is where the host put it
    assert journal.store.names() == ["agave-upgrade.json"]
    assert journal.where == f"ssh://journal-host:{journal.path}"  # the host, not its ssh options
    journal.store.write(journal.name, "{not json")
    with pytest.raises(JournalCorrupt, match=f"the journal ssh://journal-host:{journal.path} is corrupt"):
        journal.load()
    journal.clear()
    assert journal.load() == {} and journal.store.names() == []


HOLDER = """
import sys
from runbook.adapters.host import TestinfraHost
from runbook.procedures.journal import HostStore, Journal
j = Journal(store=HostStore(TestinfraHost(sys.argv[1]), sys.argv[2]), name="agave-upgrade.json")
with j.lock("agave-upgrade", "run"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_is_refused_while_a_run_holds_the_lock_on_the_host(journal: Journal, ssh_url: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, ssh_url, str(journal.store.directory)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        held_by = rf"agave-upgrade run by \S+@\S+ \(pid {holder.pid}\) since 20"
        with pytest.raises(Locked, match=held_by) as refused, journal.lock("agave-upgrade", "rollback"):
            pass
        assert f"ssh://journal-host:{journal.store.directory}/lock" in str(refused.value)

        os.kill(holder.pid, signal.SIGKILL)  # the runner dies: its ssh session ends, the host frees the lock

        def free() -> bool:
            try:
                with journal.lock("agave-upgrade", "run"):
                    return True
            except Locked:
                return False

        wait_for(free, bool, timeout=30, interval=0.2, what="the host to free a killed runner's lock")
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=30)


def test_an_ssh_env_keeps_its_journals_on_the_host() -> None:
    store = journal_store(load_env("biscayne"))
    assert isinstance(store, HostStore)
    assert str(store.directory) == "/var/lib/runbook/biscayne"

"""The accounts copy over real ssh, as on biscayne: a throwaway sshd on 127.0.0.1 (skipped without sshd or
root), the host reached through the host adapter (``ssh://<alias>?ssh_config=...``), every command with
``sudo -n``. rsync runs on the far side and its progress lines stream back through the ssh session while
it copies (TestinfraHost.spawn), not at the end."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.adapters.accounts_copy import AccountsCopy, CopyProgress
from runbook.adapters.host import TestinfraHost
from runbook.wait import wait_for
from tests.adapters.test_accounts_copy import agave_accounts, walk_figures

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not os.path.exists(SSHD) or os.geteuid() != 0 or not shutil.which("sudo"),
                                reason="needs sshd (openssh-server), sudo and root to run a throwaway sshd")


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
    for key in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PasswordAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nPidFile none\n")
    (d / "ssh_config").write_text(
        f"Host accounts-host\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {d / 'id'}\n"
        f"  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        f"  ControlPath {d}/cm-%C\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _accepts(port), bool, timeout=20, interval=0.1, what="the throwaway sshd to listen")
        yield f"ssh://accounts-host?ssh_config={d / 'ssh_config'}"
    finally:
        sshd.terminate()
        sshd.wait(timeout=20)
        subprocess.run(["ssh", "-F", str(d / "ssh_config"), "-O", "exit", "accounts-host"], capture_output=True,
                       check=False)  # testinfra's ControlMaster, if one persists


class RunOnly:
    """A host port that can only run a command to its end (no spawn): the negative case for streaming."""

    def __init__(self, host: TestinfraHost) -> None:
        self.url, self.run = host.url, host.run


def _copy(host: object, src: Path, dst: Path) -> tuple[AccountsCopy, list[CopyProgress], int]:
    """Copy; the progress seen and how many data bytes the destination held at the first callback."""
    c = AccountsCopy(host, str(src), str(dst), sudo=True, interval=0, margin_min=2**20)  # type: ignore[arg-type]
    c.preflight()
    seen: list[CopyProgress] = []
    there_at_first: list[int] = []

    def progress(p: CopyProgress) -> None:
        if not seen:  # if rsync's first line arrived only when rsync ended, the copy would be complete
            there_at_first.append(walk_figures(dst)[0])
        seen.append(p)

    c.copy(progress)
    return c, seen, there_at_first[0]


def test_the_copy_over_ssh_with_sudo_streams_progress_and_verifies(ssh_url: str, tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts", files=12, size=20 * 2**20)
    data, names, inodes = walk_figures(src)
    c, seen, there_at_first = _copy(TestinfraHost(ssh_url), src, tmp_path / "blue" / "accounts")
    assert there_at_first < data, "the progress arrived only after rsync had copied everything"
    done = [p.bytes for p in seen]
    assert done == sorted(done) and len(set(done)) >= 3, done
    assert seen[-1].final and seen[-1].percent == 100.0 and seen[-1].bytes == data
    assert walk_figures(Path(c.dst)) == (data, names, inodes)
    assert c.is_done()
    c.remove()
    assert list(Path(c.dst).iterdir()) == [] and walk_figures(src) == (data, names, inodes)


def test_without_spawn_the_figures_arrive_only_at_the_end(ssh_url: str, tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts", files=12, size=20 * 2**20)
    data = walk_figures(src)[0]
    c, seen, there_at_first = _copy(RunOnly(TestinfraHost(ssh_url)), src, tmp_path / "blue")
    assert there_at_first == data  # the probe above tells streaming from a report at the end
    assert [p.bytes for p in seen] == [data, data] and seen[-1].final and c.is_done()

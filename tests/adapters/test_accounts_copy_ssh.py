"""The accounts copy over real ssh, as on biscayne: the testbed's sshd (runbook.testbed.sshd: Debian's sshd,
a non-root user with passwordless sudo), reached through the host adapter with ``?sudo=true``, so every
command but the meminfo read runs as ``sudo -n --``. rsync runs on the far side and its progress lines
stream back through the ssh session while it copies (TestinfraHost.spawn), not at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.adapters.accounts_copy import AccountsCopy, CopyProgress
from runbook.adapters.host import TestinfraHost
from runbook.errors import AdapterError
from runbook.testbed.sshd import Sshd, missing
from tests.adapters.test_accounts_copy import agave_accounts, walk_figures

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"a real sshd cannot run here: {missing()}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    d = Sshd(tmp_path_factory.mktemp("sshd"), user="runbook-acct", alias="accounts-host")
    try:
        yield d.up()
    finally:
        d.down()
        assert d.leftovers() == []


class RunOnly:
    """A host port that can only run a command to its end (no spawn): the negative case for streaming."""

    def __init__(self, host: TestinfraHost) -> None:
        self.url, self.run, self.sudo = host.url, host.run, host.sudo


def _copy(host: object, src: Path, dst: Path) -> tuple[AccountsCopy, list[CopyProgress], int]:
    """Copy; the progress seen and how many data bytes the destination held at the first callback."""
    c = AccountsCopy(host, str(src), str(dst), interval=0, margin_min=2**20)  # type: ignore[arg-type]
    c.preflight()
    seen: list[CopyProgress] = []
    there_at_first: list[int] = []

    def progress(p: CopyProgress) -> None:
        if not seen:  # if rsync's first line arrived only when rsync ended, the copy would be complete
            there_at_first.append(walk_figures(dst)[0])
        seen.append(p)

    c.copy(progress)
    return c, seen, there_at_first[0]


def test_the_copy_over_ssh_with_sudo_streams_progress_and_verifies(sshd: Sshd, tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts", files=12, size=20 * 2**20)  # under root's 0700 pytest dir
    data, names, inodes = walk_figures(src)
    c, seen, there_at_first = _copy(TestinfraHost(sshd.host_url()), src, tmp_path / "blue" / "accounts")
    assert there_at_first < data, "the progress arrived only after rsync had copied everything"
    done = [p.bytes for p in seen]
    assert done == sorted(done) and len(set(done)) >= 3, done
    assert seen[-1].final and seen[-1].percent == 100.0 and seen[-1].bytes == data
    assert walk_figures(Path(c.dst)) == (data, names, inodes)
    assert c.is_done()
    assert c.plan_lines("copy")[1].startswith("sudo -n -- sh -c 'timeout 86400 rsync -aH --delete ")
    c.remove()
    assert list(Path(c.dst).iterdir()) == [] and walk_figures(src) == (data, names, inodes)


def test_without_sudo_the_ssh_user_cannot_measure_the_accounts(sshd: Sshd, tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts", files=2)
    c = AccountsCopy(TestinfraHost(sshd.host_url(sudo=False)), str(src), str(tmp_path / "blue"))
    with pytest.raises(AdapterError, match="Permission denied"):
        c.preflight()


def test_without_spawn_the_figures_arrive_only_at_the_end(sshd: Sshd, tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts", files=12, size=20 * 2**20)
    data = walk_figures(src)[0]
    c, seen, there_at_first = _copy(RunOnly(TestinfraHost(sshd.host_url())), src, tmp_path / "blue")
    assert there_at_first == data  # the probe above tells streaming from a report at the end
    assert [p.bytes for p in seen] == [data, data] and seen[-1].final and c.is_done()

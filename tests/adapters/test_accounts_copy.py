"""The accounts copier with real rsync, du, df and find through the local host port, on real directories
laid out like agave's accounts (storage files in run/, hard-linked from every snapshot/<slot>/), and on
real small RAM-backed filesystems (tmpfs, zram) mounted here and removed in teardown."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from runbook.adapters.accounts_copy import AccountsCopy, CopyFailed, CopyProgress, CopyRefused
from runbook.adapters.base import CommandResult
from runbook.adapters.host import TestinfraHost
from runbook.errors import AdapterError, CheckFailed

ROOT = os.geteuid() == 0
MiB = 2**20


@pytest.fixture(scope="module")
def host() -> TestinfraHost:
    return TestinfraHost("local://")


def agave_accounts(root: Path, *, files: int = 6, size: int = 2 * MiB,
                   slots: tuple[int, ...] = (100, 200, 300)) -> Path:
    """run/<slot>.<id> storage files; snapshot/<slot>/ hard-links the files that existed at that slot."""
    run = root / "run"
    run.mkdir(parents=True)
    for i in range(files):
        (run / f"{90 + i * 40}.{i}").write_bytes(os.urandom(size + i * 4096))
    (run / "tmp").mkdir()
    for slot in slots:
        snap = root / "snapshot" / str(slot)
        snap.mkdir(parents=True)
        for f in run.iterdir():
            if f.is_file() and int(f.name.split(".")[0]) <= slot:
                os.link(f, snap / f.name)
    (root / "snapshot" / "latest").symlink_to(str(slots[-1]))
    return root


def walk_figures(root: Path) -> tuple[int, int, int]:
    """(data bytes with each inode once, names, distinct inodes), counted by Python, not by the adapter."""
    seen: dict[tuple[int, int], int] = {}
    names = 0
    for d, _, fs in os.walk(root):
        for f in fs:
            st = os.lstat(os.path.join(d, f))
            if not os.path.islink(os.path.join(d, f)):
                names += 1
                seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values()), names, len(seen)


@contextmanager
def mounted(source: str, path: Path, *options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *options, source, str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


needs_root = pytest.mark.skipif(not ROOT, reason="mounting a tmpfs or zram needs root")


def test_the_copy_keeps_hard_links_streams_progress_and_verifies(host: TestinfraHost, tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts")
    data, names, inodes = walk_figures(src)
    assert names > inodes  # the layout really shares inodes
    c = AccountsCopy(host, str(src), str(tmp_path / "blue" / "accounts"), interval=0, margin_min=MiB)
    pf = c.preflight()
    assert (pf.source.data_bytes, pf.source.files, pf.source.inodes, pf.source.symlinks) == (data, names, inodes, 1)
    assert not pf.dest.ram_backed or pf.dest.mem_available  # whatever /tmp is here, the figures are read
    seen: list[CopyProgress] = []
    result = c.copy(seen.append)
    assert result.bytes == data and result.seconds > 0 and result.rate > 0
    done = [p.bytes for p in seen]
    assert done == sorted(done) and len(set(done)) >= 3, done  # live, increasing
    assert seen[-1].final and seen[-1].percent == 100.0 and seen[-1].bytes == data and seen[-1].total == data
    assert all(p.percent < 100 for p in seen[:-1])
    assert seen[-1].rsync_percent < 100  # rsync's own percent counts every hard-linked name
    copy_data, copy_names, copy_inodes = walk_figures(Path(c.dst))
    assert (copy_data, copy_names, copy_inodes) == (data, names, inodes)
    v = c.verify(check=True)
    assert v.ok and v.copy is not None and v.copy.inodes == inodes
    assert c.is_done()


def test_progress_reaches_the_callback_at_most_every_interval(host: TestinfraHost, tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts")
    seen: list[CopyProgress] = []
    c = AccountsCopy(host, str(src), str(tmp_path / "blue"), interval=3600, margin_min=MiB)
    c.preflight()
    c.copy(seen.append)
    assert [p.final for p in seen] == [False, True]  # the first line, then nothing for an hour but the end


def test_a_second_run_converges_deleting_what_the_source_no_longer_has(host: TestinfraHost, tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts")
    dst = tmp_path / "blue"
    c = AccountsCopy(host, str(src), str(dst), margin_min=MiB)
    c.copy()
    (dst / "stale-file").write_bytes(b"x" * 1000)
    (dst / "snapshot" / "50").mkdir()
    (dst / "snapshot" / "50" / "40.9").write_bytes(b"y")
    for f in (src / "snapshot" / "100").iterdir():
        f.unlink()
    (src / "snapshot" / "100").rmdir()
    changed = src / "run" / "410.8"
    changed.write_bytes(os.urandom(3 * MiB))
    assert not c.is_done()  # observed, not remembered
    result = c.copy()
    assert not (dst / "stale-file").exists() and not (dst / "snapshot" / "50").exists()
    assert not (dst / "snapshot" / "100").exists()
    assert result.bytes == 3 * MiB  # only the new file travelled
    assert c.verify(check=True).ok and c.is_done()


def test_a_copy_without_hard_links_fails_the_verification(host: TestinfraHost, tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts")
    dst = tmp_path / "blue"
    data, names, inodes = walk_figures(src)
    subprocess.run(["rsync", "-a", "--delete", f"{src}/", f"{dst}/"], check=True)  # the trap: no -H
    c = AccountsCopy(host, str(src), str(dst))
    v = c.verify()
    assert not v.ok and v.differences["inodes"] == (inodes, names)
    assert v.differences["data_bytes"][1] > data  # the copy multiplied
    assert not c.is_done()
    why = rf"inodes {inodes} in the source, {names} in the copy \(a copy without hard links has one inode per name\)"
    with pytest.raises(CheckFailed, match=why):
        c.verify(check=True)
    c.copy()  # the real copier on top: -H re-links, --delete drops nothing, the copy converges
    assert c.verify(check=True).ok


@needs_root
def test_preflight_refuses_a_tmpfs_too_small_with_both_figures(host: TestinfraHost, tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts", files=8)  # about 16 MiB
    with mounted("tmpfs", tmp_path / "ram", "-t", "tmpfs", "-o", "size=8m") as ram:
        c = AccountsCopy(host, str(src), str(ram / "blue" / "accounts"), margin_min=0)
        pf = c.preflight(check=False)
        assert pf.dest.fstype == "tmpfs" and pf.dest.ram_backed and pf.dest.avail == 8 * MiB
        assert pf.dest.mem_available is not None and pf.dest.mem_available > 0
        assert pf.dest.path == str(ram)  # the nearest existing directory was measured
        with pytest.raises(CopyRefused, match=rf"has {8 * MiB} bytes .* free; the copy needs {pf.needed} "):
            c.preflight()
        small = agave_accounts(tmp_path / "small", files=2, size=MiB, slots=(100,))
        fits = AccountsCopy(host, str(small), str(ram / "blue" / "accounts"), margin_min=0).preflight()
        assert fits.ok and fits.needed < 8 * MiB


@needs_root
def test_without_preflight_rsync_fills_the_ramdisk_and_fails_with_its_exit_code(host: TestinfraHost,
                                                                                  tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts", files=8)
    with mounted("tmpfs", tmp_path / "ram", "-t", "tmpfs", "-o", "size=8m") as ram:
        c = AccountsCopy(host, str(src), str(ram / "accounts"))
        with pytest.raises(CopyFailed, match=r"rsync exited 11 \(error in file I/O") as failed:
            c.copy()
        assert failed.value.rc == 11 and any("No space left on device" in x for x in failed.value.stderr_tail)


@needs_root
def test_preflight_refuses_when_memory_is_short_though_the_tmpfs_is_large(host: TestinfraHost, tmp_path: Path) -> None:
    mem = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    src = tmp_path / "accounts"
    src.mkdir()
    with (src / "huge").open("wb") as f:  # sparse: larger than the machine's memory, nothing written
        f.truncate(2 * mem)
    with mounted("tmpfs", tmp_path / "ram", "-t", "tmpfs", "-o", f"size={4 * mem}") as ram:
        c = AccountsCopy(host, str(src), str(ram / "accounts"))
        pf = c.preflight(check=False)
        assert pf.dest.avail >= pf.needed  # df alone would let it start
        assert pf.dest.mem_available is not None and pf.dest.mem_available < pf.needed
        assert len(pf.short) == 1 and "MemAvailable" in pf.short[0]
        with pytest.raises(CopyRefused, match=rf"MemAvailable \d+ bytes .*; the copy needs {pf.needed} "):
            c.preflight()


@pytest.fixture
def zram_ext4(tmp_path: Path) -> Iterator[Path]:
    control = Path("/sys/class/zram-control")
    if not ROOT or not control.exists():
        pytest.skip("needs root and the zram module")
    n = (control / "hot_add").read_text().strip()
    try:
        Path(f"/sys/block/zram{n}/disksize").write_text("32M")
        subprocess.run(["mkfs.ext4", "-q", f"/dev/zram{n}"], check=True)
        with mounted(f"/dev/zram{n}", tmp_path / "zram") as mnt:
            yield mnt
    finally:
        Path(f"/sys/block/zram{n}/reset").write_text("1")
        (control / "hot_remove").write_text(n)


def test_a_zram_destination_is_ram_backed(host: TestinfraHost, tmp_path: Path, zram_ext4: Path) -> None:
    src = agave_accounts(tmp_path / "accounts", files=16)  # about 32 MiB: more than the fs holds
    c = AccountsCopy(host, str(src), str(zram_ext4 / "accounts"), margin_min=0)
    pf = c.preflight(check=False)
    assert pf.dest.fstype == "ext4" and pf.dest.source.startswith("/dev/zram") and pf.dest.ram_backed
    assert pf.dest.mem_available is not None
    with pytest.raises(CopyRefused, match=r"\(ext4 on /dev/zram\d+\) has \d+ bytes"):
        c.preflight()


def test_a_missing_source_is_refused_before_and_fails_rsync_during(host: TestinfraHost, tmp_path: Path) -> None:
    c = AccountsCopy(host, str(tmp_path / "nope"), str(tmp_path / "blue"))
    with pytest.raises(CopyRefused, match="is not a directory"):
        c.preflight()
    with pytest.raises(CopyFailed, match=r"rsync exited 23 .*No such file or directory") as failed:
        c.copy()
    assert failed.value.rc == 23


def test_remove_empties_only_the_copy(host: TestinfraHost, tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts")
    dst = tmp_path / "blue"
    c = AccountsCopy(host, str(src), str(dst))
    c.copy()
    (dst / ".hidden").write_text("x")
    (dst / "..dots").write_text("x")
    before = walk_figures(src)
    c.remove(str(dst) + "/")
    assert dst.is_dir() and list(dst.iterdir()) == []
    assert walk_figures(src) == before
    AccountsCopy(host, str(src), str(tmp_path / "never-made" / "blue")).remove()  # nothing there: nothing to do


@pytest.mark.parametrize(("src", "dst", "path", "why"), [
    ("/srv/accounts", "/", None, "top-level"),
    ("/srv/accounts", "/srv", None, "top-level"),
    ("/srv/accounts", "/srv/accounts", None, "overlaps its source"),
    ("/srv/accounts", "/srv/accounts/blue", None, "overlaps its source"),
    ("/srv/accounts/blue", "/srv/accounts", None, "overlaps its source"),
    ("/srv/accounts", "srv/blue", None, "absolute"),
    ("/srv/accounts", "/srv/blue/../accounts", None, "overlaps its source"),
    ("/srv/accounts", "/srv/blue", "/srv/accounts", "this accounts copy is /srv/blue"),
    ("/srv/accounts", "/srv/blue", "/", "this accounts copy is /srv/blue"),
])
def test_remove_refuses_a_bad_path(host: TestinfraHost, src: str, dst: str, path: str | None, why: str) -> None:
    with pytest.raises(CopyRefused, match=why):
        AccountsCopy(host, src, dst).remove(path)


def test_remove_refuses_a_destination_reached_through_a_symlink(host: TestinfraHost, tmp_path: Path) -> None:
    src = agave_accounts(tmp_path / "accounts")
    (tmp_path / "blue").symlink_to(src)
    with pytest.raises(CopyRefused, match=f"resolves to {src}"):
        AccountsCopy(host, str(src), str(tmp_path / "blue")).remove()
    assert (src / "run").is_dir() and any((src / "run").iterdir())


def test_plan_lines_are_the_commands_run() -> None:
    c = AccountsCopy(TestinfraHost("ssh://biscayne?sudo=true"), "/srv/solana/accounts", "/srv/solana-blue/accounts",
                     timeout=7200)  # no connection is made for a plan
    assert c.plan_lines("copy") == [
        "sudo -n -- sh -c 'mkdir -p -- /srv/solana-blue/accounts'",
        "sudo -n -- sh -c 'timeout 7200 rsync -aH --delete --numeric-ids --info=progress2 --no-inc-recursive "
        "/srv/solana/accounts/ /srv/solana-blue/accounts/'"]
    pre = c.plan_lines("preflight", sudo=False)
    assert pre[0].startswith("du -sb -- /srv/solana/accounts/ && find /srv/solana/accounts/ -printf ")
    assert pre[1] == "du -sb -- /srv/solana-blue/accounts/"
    assert "df -B1 --output=avail,fstype,source" in pre[2] and pre[3].startswith("grep MemAvailable /proc/meminfo")
    assert c.plan_lines("remove", sudo=False) == [
        "readlink -f -- /srv/solana-blue/accounts",
        "find /srv/solana-blue/accounts -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system -- {} +"]
    assert c.plan_lines("all")[3].startswith("grep MemAvailable")  # never as root
    local = AccountsCopy(TestinfraHost("local://"), "/a/b", "/c/d")
    assert not any("sudo" in line for line in local.plan_lines("all"))


class ScriptedHost:
    """Adapter unit test only: answers the measure command with what du and find print on a live tree."""

    url = "local://scripted"
    sudo = False

    def __init__(self, stdout: str, stderr: str, rc: int) -> None:
        self.answer = (stdout, stderr, rc)

    def run(self, command: str, *, check: bool = True, timeout: float = 60.0, root: bool = False) -> CommandResult:
        return CommandResult(command, self.answer[2], self.answer[0], self.answer[1])


def test_files_vanishing_during_the_walk_do_not_fail_the_measure() -> None:
    out = "4096000\t/srv/accounts/\n12 6 4000000 5 1\n"
    vanished = "du: cannot access '/srv/accounts/run/410.8': No such file or directory\n"
    got = AccountsCopy(ScriptedHost(out, vanished, 1), "/srv/accounts", "/srv/blue").measure("/srv/accounts")  # type: ignore[arg-type]
    assert got is not None and (got.files, got.inodes, got.data_bytes) == (12, 6, 4000000)
    denied = "find: '/srv/accounts/run': Permission denied\n"
    with pytest.raises(AdapterError, match="Permission denied"):
        AccountsCopy(ScriptedHost(out, denied, 1), "/srv/accounts", "/srv/blue").measure("/srv/accounts")  # type: ignore[arg-type]
    gone = "du: cannot access '/srv/accounts/': No such file or directory\n"
    assert AccountsCopy(ScriptedHost("", gone, 1), "/srv/accounts", "/srv/blue").measure("/srv/accounts") is None  # type: ignore[arg-type]

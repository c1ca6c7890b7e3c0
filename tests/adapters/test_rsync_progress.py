"""The progress2 parser on lines rsync 3.5.0 printed here (copied from its output, \\r turned into lines),
and on a whole captured output. The copier's tests (test_accounts_copy.py) run rsync itself."""

from __future__ import annotations

import pytest

from runbook.adapters.rsync_progress import RsyncProgress, last_progress, parse_progress2

MIB = 2**20

# rsync -aH --delete --numeric-ids --info=progress2 --no-inc-recursive on 5 x 20 MB files, each
# hard-linked from two snapshot directories (15 names): its percent stops at 33
REAL = [
    ("         32,768   0%    0.00kB/s    0:00:00  ", RsyncProgress(32768, 0, 0.0, 0.0)),
    ("     20,000,000   6%   45.12MB/s    0:00:00 (xfr#1, to-chk=4/20)",
     RsyncProgress(20_000_000, 6, 45.12 * MIB, 0.0, 1, 4, 20)),
    ("     43,997,696  14%   40.05MB/s    0:00:06  ", RsyncProgress(43_997_696, 14, 40.05 * MIB, 6.0)),
    ("    100,000,000  33%  821.86MB/s    0:00:00 (xfr#5, to-chk=0/20)",
     RsyncProgress(100_000_000, 33, 821.86 * MIB, 0.0, 5, 0, 20)),
    # the same tree without -H: every name copied, 300 MB
    ("    300,000,000 100%  851.40MB/s    0:00:00 (xfr#15, to-chk=0/20)",
     RsyncProgress(300_000_000, 100, 851.40 * MIB, 0.0, 15, 0, 20)),
    # a second run with nothing to transfer
    ("              0   0%    0.00kB/s    0:00:00 (xfr#0, to-chk=0/20)", RsyncProgress(0, 0, 0.0, 0.0, 0, 0, 20)),
    # 1.2 GB on tmpfs: the last line's time is the elapsed total
    ("  1,200,000,000 100%  241.53MB/s    0:00:04 (xfr#1, to-chk=0/2)",
     RsyncProgress(1_200_000_000, 100, 241.53 * MIB, 4.0, 1, 0, 2)),
    # with -hh (sizes in units of 1000)
    ("        534.84M  46%  534.81MB/s    0:00:01  ", RsyncProgress(534_840_000, 46, 534.81 * MIB, 1.0)),
]


@pytest.mark.parametrize(("line", "expected"), REAL, ids=[str(i) for i in range(len(REAL))])
def test_real_progress2_lines(line: str, expected: RsyncProgress) -> None:
    got = parse_progress2(line)
    assert got is not None
    assert got.bytes == expected.bytes and got.percent == expected.percent and got.eta == expected.eta
    assert got.rate == pytest.approx(expected.rate)
    assert (got.transferred_files, got.to_check, got.files) == (
        expected.transferred_files, expected.to_check, expected.files)


@pytest.mark.parametrize("line", [
    "",
    "sending incremental file list",
    "rsync: [receiver] write failed on \"/tmp/tm/c/big\": No space left on device (28)",
    "rsync error: error in file IO (code 11) at receiver.c(657) [receiver=3.5.0]",
    "run/101.1",
])
def test_other_lines_are_not_progress(line: str) -> None:
    assert parse_progress2(line) is None


def test_older_rsync_and_other_locales() -> None:
    old = parse_progress2("   1,048,576 100%   12.50MB/s    0:00:00 (xfer#3, to-check=7/12)")
    assert old is not None and (old.transferred_files, old.to_check, old.files) == (3, 7, 12)
    unknown = parse_progress2("       1.048.576  10%    1,50GB/s      ??:??:??  ")
    assert unknown is not None and unknown.bytes == 1_048_576 and unknown.eta is None
    assert unknown.rate == pytest.approx(1.5 * 2**30)


def test_last_progress_of_a_captured_output() -> None:
    out = ("\r         32,768   0%    0.00kB/s    0:00:00  \r     20,000,000   6%   45.12MB/s    0:00:00 "
           "(xfr#1, to-chk=4/20)\r    100,000,000  33%  821.86MB/s    0:00:00 (xfr#5, to-chk=0/20)\n")
    last = last_progress(out)
    assert last is not None and last.bytes == 100_000_000 and last.to_check == 0
    assert last_progress("rsync: change_dir \"/nope\" failed\n") is None

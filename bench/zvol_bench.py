"""Snapshot, clone and mount times of the zvol model for 1 GiB and 8 GiB volumes. A script, not a test.

    .venv/bin/python bench/zvol_bench.py [--sizes 1G,8G] [--data 256M] [--pool 12G] [--repeat 3]

Per size: a fresh pool (XFS with reflink=1 on zram, runbook.testbed.zvolpool), one sparse volume carrying
XFS, mounted, with ``--data`` of random data written into it (fsync'd) so the image has real extents; then
the snapshot of the mounted volume (xfs_freeze + cp --reflink=always + thaw), the clone, the clone's mount
with nouuid, its unmount, the identity read (FIEMAP) and the clone's destroy are timed, ``--repeat`` times,
and the pool is removed. Needs root (zram, loop devices, mounts); the RAM used is about the data written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from runbook.adapters.storage import ZvolStorage
from runbook.testbed import zvolpool
from runbook.testbed.loopfs import parse_size

CHUNK = 8 * 2**20


def fill(path: Path, nbytes: int) -> None:
    block = os.urandom(CHUNK)
    with (path / "ledger.bin").open("wb") as fh:
        left = nbytes
        while left > 0:
            fh.write(block[: min(CHUNK, left)])
            left -= min(CHUNK, left)
        fh.flush()
        os.fsync(fh.fileno())


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(size: int, data: int, pool_size: int, repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in ("snapshot", "clone", "mount", "unmount", "identity", "destroy")}
    with tempfile.TemporaryDirectory(prefix="zvol-bench-") as tmp:
        state = Path(tmp) / "state"
        try:
            st = ZvolStorage(zvolpool.up(state, pool_size).mountpoint)
            st.ensure_volume("pool/green", size)
            green = Path(tmp) / "green"
            st.mount("pool/green", str(green))
            fill(green, data)
            for i in range(repeat):
                snap = f"pool/green@s{i}"
                times["snapshot"].append(timed(partial(st.snapshot, "pool/green", f"s{i}")))
                times["clone"].append(timed(partial(st.clone, snap, "pool/blue")))
                times["mount"].append(timed(lambda: st.mount("pool/blue", str(Path(tmp) / "blue"))))
                times["unmount"].append(timed(lambda: st.unmount("pool/blue")))
                times["identity"].append(timed(partial(st.identity, snap)))
                times["destroy"].append(timed(lambda: st.destroy("pool/blue")))
                st.destroy(snap)
            st.unmount("pool/green")
        finally:
            zvolpool.down(state)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1G,8G", help="volume sizes (sparse)")
    ap.add_argument("--data", default="256M", help="random data written into each volume")
    ap.add_argument("--pool", default="12G", help="zram disksize of the pool (RAM is used only for data)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    ok, why = zvolpool.available()
    if not ok:
        print(f"zvol bench: cannot run here: {why}", file=sys.stderr)
        return 2
    data = parse_size(args.data)
    print(f"zvol model: {args.data} of data per volume, {args.repeat} runs, median (min-max) seconds")
    for text in args.sizes.split(","):
        times = bench(parse_size(text), data, parse_size(args.pool), args.repeat)
        cols = "  ".join(f"{k} {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})" for k, v in times.items())
        print(f"{text:>5}: {cols}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

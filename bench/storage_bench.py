"""Clone time against data size, per storage backend, next to a plain copy. A script, not a test.

    .venv/bin/python bench/storage_bench.py [--sizes 100M,1G,4G] [--dir /var/tmp]

btrfs (snapshot + writable clone in a loop image, when root) should stay flat as data grows; a plain
copy grows with the data. Data is written with fsync and the page cache is dropped before each copy
(when root), so copies read from disk. Everything it makes is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from runbook.adapters.storage import make_storage
from runbook.testbed import loopfs

CHUNK = 8 * 2**20


def parse_size(text: str) -> int:
    return loopfs.parse_size(text)


def fill(path: Path, nbytes: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    block = os.urandom(CHUNK)
    written, i = 0, 0
    while written < nbytes:
        n = min(CHUNK * 16, nbytes - written)  # 128 MiB files, like ledger shards
        with (path / f"data-{i:04d}.bin").open("wb") as fh:
            left = n
            while left > 0:
                fh.write(block[: min(CHUNK, left)])
                left -= min(CHUNK, left)
            fh.flush()
            os.fsync(fh.fileno())
        written += n
        i += 1


def drop_caches() -> None:
    if os.geteuid() == 0:
        subprocess.run(["sync"], check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def bench_backend(backend: str, root: Path, size: int) -> tuple[float, float]:
    storage = make_storage(backend, root)
    ds = storage.ensure_dataset("volumes/solana")
    fill(Path(ds.path) / "ledger", size)
    drop_caches()
    snap_s = timed(lambda: storage.snapshot("volumes/solana", "bench"))
    clone_s = timed(lambda: storage.clone("volumes/solana@bench", "volumes/solana-blue"))
    storage.destroy("volumes/solana-blue", recursive=True)
    storage.destroy("volumes/solana", recursive=True)
    return snap_s, clone_s


def bench_plain_copy(base: Path, size: int) -> float:
    src, dst = base / "src", base / "dst"
    fill(src, size)
    drop_caches()
    took = timed(lambda: subprocess.run(["cp", "-a", "--reflink=never", str(src), str(dst)], check=True))
    shutil.rmtree(src)
    shutil.rmtree(dst)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="100M,1G,4G")
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="runbook-storage-bench-", dir=args.dir))
    rows: list[tuple[str, str, str, str]] = []
    mounted = False
    try:
        for size in sizes:
            label = f"{size / 2**20:.0f} MiB"
            copy_s = bench_plain_copy(work / "plain", size)
            rows.append((label, "plain copy (cp --reflink=never, ext4)", "-", f"{copy_s:.3f}"))
            if os.geteuid() == 0 and shutil.which("mkfs.btrfs"):
                image, mnt = work / "btrfs.img", work / "btrfs"
                loopfs.up(image=image, mountpoint=mnt, size=int(size * 1.3) + 512 * 2**20)
                mounted = True
                try:
                    snap_s, clone_s = bench_backend("btrfs", mnt, size)
                    rows.append((label, "btrfs snapshot + clone (loop image)", f"{snap_s:.3f}", f"{clone_s:.3f}"))
                finally:
                    loopfs.down(image=image, mountpoint=mnt)
                    mounted = False
            snap_c, clone_c = bench_backend("copy", work / "copy", size)
            rows.append((label, "copy backend snapshot + clone (ext4)", f"{snap_c:.3f}", f"{clone_c:.3f}"))
    finally:
        if mounted:
            loopfs.down(image=work / "btrfs.img", mountpoint=work / "btrfs")
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'data':>10}  {'method':40} {'snapshot s':>11} {'clone/copy s':>13}")
    for label, method, snap, clone in rows:
        print(f"{label:>10}  {method:40} {snap:>11} {clone:>13}")


if __name__ == "__main__":
    main()

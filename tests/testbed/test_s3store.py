"""The testbed's S3 store: moto's real S3 server as a process on a loopback address, the MinIO client against it."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.errors import AdapterError, ConfigError
from runbook.testbed.s3store import S3Server, SnapshotNotFound, SnapshotStore, parse_s3_url, s3_program, server_binary

pytestmark = pytest.mark.integration

ADDRESS = "127.77.12.1"  # no env uses 127.77.12.x


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    log = tmp_path_factory.mktemp("s3") / "s3.log"
    server = S3Server(ADDRESS, free_port(ADDRESS), log).start()
    try:
        yield server
    finally:
        server.stop()


def make_home(root: Path, height: int) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "data" / "seid-state.json").write_text(f'{{"height": {height}}}\n')
    (root / "config").mkdir()
    (root / "config" / "blob.bin").write_bytes(os.urandom(70_000))
    return root


def test_program_runs_the_real_server() -> None:
    name, argv = s3_program("127.77.12.9", 19555)
    assert name == "s3" and argv == [str(server_binary()), "-H", "127.77.12.9", "-p", "19555"]
    assert os.access(argv[0], os.X_OK)
    with pytest.raises(ValueError):
        s3_program("not-an-address", 19555)


def test_snapshot_round_trip(s3: S3Server, tmp_path: Path) -> None:
    store = SnapshotStore(s3.endpoint)
    store.ensure_bucket("snaps")
    store.ensure_bucket("snaps")  # idempotent
    home = make_home(tmp_path / "home", 1200)
    assert store.put_snapshot("snaps", 1200, home) == "snapshots/1200.tar"
    store.put_snapshot("snaps", 1500, make_home(tmp_path / "later", 1500))
    assert "snaps" in store.list_buckets()
    assert store.heights("snaps") == [1200, 1500]
    assert store.latest_snapshot("snaps", 1499) == 1200
    assert store.latest_snapshot("snaps", 1500) == 1500
    out = store.fetch_snapshot("snaps", 1200, tmp_path / "restored")
    assert (out / "data" / "seid-state.json").read_text() == '{"height": 1200}\n'
    assert (out / "config" / "blob.bin").read_bytes() == (home / "config" / "blob.bin").read_bytes()


def test_errors_name_bucket_key_and_endpoint(s3: S3Server, tmp_path: Path) -> None:
    store = SnapshotStore(s3.endpoint)
    store.ensure_bucket("sparse")
    store.put_snapshot("sparse", 50, make_home(tmp_path / "h", 50))
    with pytest.raises(SnapshotNotFound) as none:
        store.latest_snapshot("sparse", 49)
    assert "below height 49" in str(none.value) and s3.endpoint in str(none.value)
    with pytest.raises(AdapterError) as missing:
        store.fetch_snapshot("sparse", 51, tmp_path / "out")
    assert "NoSuchKey" in str(missing.value) and "s3://sparse/snapshots/51.tar" in str(missing.value)
    with pytest.raises(AdapterError) as bucket:
        store.heights("no-such-bucket")
    assert "NoSuchBucket" in str(bucket.value) and "s3://no-such-bucket/" in str(bucket.value)


def test_unreachable_endpoint_fails_fast() -> None:
    endpoint = f"http://{ADDRESS}:{free_port(ADDRESS)}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(AdapterError) as err:
        SnapshotStore(endpoint, retries=0).latest_snapshot("snaps", 10)
    assert endpoint in str(err.value) and "s3://snaps/snapshots/" in str(err.value)
    assert time.monotonic() - started < 5


def test_locations_are_parsed_strictly() -> None:
    assert parse_s3_url("http://127.77.12.1:9000/sei-snapshots") == ("http://127.77.12.1:9000", "sei-snapshots")
    for bad in ("127.77.12.1:9000/b", "http://127.77.12.1:9000", "http://h:1/a/b", "s3://bucket"):
        with pytest.raises(ConfigError):
            parse_s3_url(bad)

"""The testbed's S3-compatible snapshot store: a real S3 API server (moto's server mode) and a small client.

The server is moto's ``moto_server`` (Werkzeug, S3 REST API: buckets, objects, user metadata, ListObjectsV2,
SigV4 requests). moto pins ``python-dateutil<3`` through botocore, which the project's ``kubernetes`` client
cannot share (it needs ``>=3``), so the server lives in its own virtualenv beside the project's
(``<project>/.venv/s3-server``, made by ``python -m runbook.testbed.s3store setup``, which ``.ci/setup`` runs); the
project only starts it as a program, like Caddy or Prometheus. ``RUNBOOK_S3_SERVER`` names another
``moto_server`` executable. Its objects live in memory: a restarted server is empty.

The client is MinIO's Python SDK (any S3 endpoint, SigV4-signed requests)::

    store = SnapshotStore("http://127.77.4.1:19401")
    store.ensure_bucket("sei-snapshots")
    store.put_snapshot("sei-snapshots", 1200, home)        # snapshots/1200.tar, metadata height=1200
    store.latest_snapshot("sei-snapshots", 1500)           # -> 1200 (the newest <= 1500)
    store.fetch_snapshot("sei-snapshots", 1200, new_home)  # the tar, unpacked
    store.delete_snapshot("sei-snapshots", 1200)

Every failure is an :class:`~runbook.errors.AdapterError` naming the bucket, key and endpoint.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import MinioException

from runbook.errors import AdapterError, ConfigError, TestbedError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVER_VENV = PROJECT_ROOT / ".venv" / "s3-server"  # inside the ignored .venv: rebuilt with it
SERVER_REQUIREMENTS = ("moto[s3]>=5.1,<6", "flask>=3,<4", "flask-cors>=5,<7")
PREFIX = "snapshots/"
HEIGHT_META = "height"
DEFAULT_ACCESS_KEY = "testbed"  # moto accepts any credentials; the real bucket's come from the environment
DEFAULT_SECRET_KEY = "testbed-secret"  # not a secret: the local server checks none
_KEY = re.compile(r"^snapshots/(\d+)\.tar$")


class SnapshotNotFound(AdapterError):
    """No snapshot at or below the asked height in the bucket."""


# --------------------------------------------------------------------------- the server


def server_binary() -> Path:
    """The ``moto_server`` executable: ``RUNBOOK_S3_SERVER``, else the one in ``<project>/.venv/s3-server``."""
    override = os.environ.get("RUNBOOK_S3_SERVER")
    path = Path(override) if override else SERVER_VENV / "bin" / "moto_server"
    if not os.access(path, os.X_OK):
        raise TestbedError(f"the S3 server {path} is missing: run `.venv/bin/python -m runbook.testbed.s3store setup`"
                           " (.ci/setup does)", obj=str(path))
    return path


def s3_program(address: str, port: int, *, name: str = "s3") -> tuple[str, list[str]]:
    """The supervisord program for the S3 server on ``address:port``: ``(name, argv)``."""
    ipaddress.ip_address(address)  # refused here, not in the program's log
    if not 0 < port < 65536:
        raise ConfigError(f"S3 server port {port} is out of range")
    return name, [str(server_binary()), "-H", address, "-p", str(port)]


class S3Server:
    """The S3 server as a child process (tests; the testbed runs :func:`s3_program` under supervisord)."""

    def __init__(self, address: str, port: int, log: Path) -> None:
        self.address, self.port, self.log = address, port, log
        self.endpoint = f"http://{address}:{port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 20.0) -> S3Server:
        from runbook.wait import wait_for

        _, argv = s3_program(self.address, self.port)
        self._log = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        client = SnapshotStore(self.endpoint, retries=0)

        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise TestbedError(f"S3 server exited {self._proc.returncode}: {self.log.read_text()[-2000:]}")
            client.list_buckets()
            return True

        wait_for(ready, bool, timeout=timeout, interval=0.1, what=f"S3 server at {self.endpoint}",
                 tolerate=(AdapterError,))
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def setup_server(venv: Path = SERVER_VENV) -> Path:
    """Make the server's virtualenv with :data:`SERVER_REQUIREMENTS` (idempotent); returns ``moto_server``."""
    binary = venv / "bin" / "moto_server"
    if binary.exists():
        return binary
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *SERVER_REQUIREMENTS], check=True)
    return binary


# --------------------------------------------------------------------------- the client


def parse_s3_url(url: str) -> tuple[str, str]:
    """``http://host:port/bucket`` (or ``https://``) -> ``("http://host:port", "bucket")``."""
    parts = urlsplit(url)
    bucket = parts.path.strip("/")
    if parts.scheme not in ("http", "https") or not parts.netloc or not bucket or "/" in bucket:
        raise ConfigError(f"not an S3 location {url!r}: expected http(s)://HOST:PORT/BUCKET")
    return f"{parts.scheme}://{parts.netloc}", bucket


def snapshot_key(height: int) -> str:
    return f"{PREFIX}{int(height)}.tar"


class SnapshotStore:
    """Snapshots of a node's home directory in an S3 bucket, as ``snapshots/<height>.tar``."""

    def __init__(self, endpoint: str, *, access_key: str | None = None, secret_key: str | None = None,
                 region: str = "us-east-1", timeout: float = 10.0, retries: int = 2) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"not an S3 endpoint {endpoint!r}: expected http(s)://HOST:PORT")
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=min(timeout, 3.0), read=timeout),
                                   retries=urllib3.Retry(total=retries, backoff_factor=0.1,
                                                         status_forcelist=[500, 502, 503, 504]))
        self._client = Minio(
            parts.netloc,
            access_key=access_key or os.environ.get("AWS_ACCESS_KEY_ID") or DEFAULT_ACCESS_KEY,
            secret_key=secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY") or DEFAULT_SECRET_KEY,
            secure=parts.scheme == "https",
            region=region,
            http_client=http,
        )

    def _error(self, what: str, exc: Exception, bucket: str | None = None, key: str | None = None) -> AdapterError:
        where = f"s3://{bucket}/{key or ''}" if bucket else self.endpoint
        return AdapterError(f"S3 {what} failed at {self.endpoint}: {exc}", obj=where)

    def list_buckets(self) -> list[str]:
        try:
            return [b.name for b in self._client.list_buckets()]
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._error("ListBuckets", exc) from exc

    def ensure_bucket(self, bucket: str) -> None:
        try:
            if not self._client.bucket_exists(bucket):
                self._client.make_bucket(bucket)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._error("CreateBucket", exc, bucket) from exc

    def put_snapshot(self, bucket: str, height: int, path: Path | str) -> str:
        """Upload a tar of the directory ``path`` (its contents at the archive's root) as
        ``snapshots/<height>.tar`` with ``height`` in its metadata; returns the key."""
        root, key = Path(path), snapshot_key(height)
        if not root.is_dir():
            raise AdapterError(f"snapshot source {root} is not a directory", obj=f"s3://{bucket}/{key}")
        with tempfile.TemporaryDirectory(prefix="snapshot-") as tmp:
            archive = Path(tmp) / "snapshot.tar"
            with tarfile.open(archive, "w") as tar:
                for child in sorted(root.iterdir()):
                    tar.add(child, arcname=child.name)
            try:
                self._client.fput_object(bucket, key, str(archive), content_type="application/x-tar",
                                         metadata={HEIGHT_META: str(int(height))})
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise self._error("PutObject", exc, bucket, key) from exc
        return key

    def heights(self, bucket: str) -> list[int]:
        """The heights of every snapshot in ``bucket``, ascending."""
        try:
            keys = [o.object_name or "" for o in self._client.list_objects(bucket, prefix=PREFIX)]
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._error("ListObjectsV2", exc, bucket, PREFIX) from exc
        return sorted(int(m.group(1)) for k in keys if (m := _KEY.match(k)))

    def latest_snapshot(self, bucket: str, max_height: int) -> int:
        """The newest snapshot height ``<= max_height``; :class:`SnapshotNotFound` when there is none."""
        found = [h for h in self.heights(bucket) if h <= max_height]
        if not found:
            raise SnapshotNotFound(f"no snapshot at or below height {max_height} in bucket {bucket} at {self.endpoint}",
                                   obj=f"s3://{bucket}/{PREFIX}")
        return found[-1]

    def delete_snapshot(self, bucket: str, height: int) -> None:
        """Remove ``snapshots/<height>.tar`` (S3 DeleteObject: a missing key is no error)."""
        key = snapshot_key(height)
        try:
            self._client.remove_object(bucket, key)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._error("DeleteObject", exc, bucket, key) from exc

    def fetch_snapshot(self, bucket: str, height: int, dest_dir: Path | str) -> Path:
        """Download ``snapshots/<height>.tar``, check its metadata height, unpack it into ``dest_dir``."""
        key, dest = snapshot_key(height), Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="snapshot-") as tmp:
            archive = Path(tmp) / "snapshot.tar"
            try:
                stat = self._client.stat_object(bucket, key)
                self._client.fget_object(bucket, key, str(archive))
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise self._error("GetObject", exc, bucket, key) from exc
            meta = {k.lower(): v for k, v in (stat.metadata or {}).items()}
            recorded = meta.get(f"x-amz-meta-{HEIGHT_META}")
            if recorded != str(int(height)):
                raise AdapterError(f"snapshot {key} at {self.endpoint} records height {recorded!r}, not {height}",
                                   obj=f"s3://{bucket}/{key}")
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(dest, filter="data")
            except (tarfile.TarError, OSError) as exc:
                raise AdapterError(f"snapshot {key} from {self.endpoint} does not unpack: {exc}",
                                   obj=f"s3://{bucket}/{key}") from exc
        return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runbook.testbed.s3store")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help=f"make {SERVER_VENV} with the S3 server ({', '.join(SERVER_REQUIREMENTS)})")
    args = parser.parse_args(argv)
    if args.command == "setup":
        print(f"S3 server: {setup_server()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

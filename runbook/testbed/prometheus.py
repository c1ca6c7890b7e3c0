"""Real Prometheus (Debian's ``prometheus`` package, the ``prometheus`` binary) for the canary gates, and a
small client of its HTTP API that answers in :mod:`runbook.canary.promql`'s parsed results.

:class:`Prometheus` runs one server: a generated configuration (:func:`render_config`) scraping the given
:class:`ScrapeJob` s (a job name, ``host:port`` targets, extra target labels) every ``scrape_interval``
seconds (1 s on the testbed), its TSDB under ``<state_dir>/data``, its log in ``<state_dir>/prometheus.log``,
listening on ``host:port`` (a free port when none is given) with ``--web.enable-lifecycle``. ``start()``
waits (:func:`runbook.wait.wait_for`, with a deadline) for ``/-/ready`` and for every configured target to be
``up`` in ``/api/v1/targets``; ``stop()`` sends SIGTERM (Prometheus closes its TSDB), waits, and kills on
timeout. It is a context manager::

    jobs = [ScrapeJob("zai-proxy", ("127.0.0.1:8001", "127.0.0.1:8002"))]
    with Prometheus(jobs, state_dir=tmp, scrape_interval=1.0) as prom, prom.client() as api:
        api.query(promql.requests_counter("canary")).vector

:class:`PrometheusClient` sends ``/api/v1/query`` and ``/api/v1/query_range`` (or any
:class:`~runbook.canary.promql.ApiCall`, as a plan prints it) over httpx and returns
:class:`~runbook.canary.promql.QueryResult`; its errors (:class:`~runbook.canary.promql.PrometheusError`)
name the URL and Prometheus's own error text.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from runbook.adapters.prometheus import PrometheusClient
from runbook.canary.promql import PrometheusError, duration
from runbook.errors import TestbedError
from runbook.wait import wait_for

__all__ = ["Prometheus", "PrometheusClient", "ScrapeJob", "find_binary", "render_config"]


# --------------------------------------------------------------------------- the configuration
@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: ``targets`` as ``host:port``, ``labels`` added to every series scraped from them
    (target labels win over the scraped ones: a label the target exports itself, such as the proxy's
    ``variant``, is renamed ``exported_<name>``, so do not repeat it here)."""

    job: str
    targets: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"


def render_config(jobs: Sequence[ScrapeJob], *, scrape_interval: float = 15.0,
                  evaluation_interval: float | None = None) -> str:
    """``prometheus.yml`` for ``jobs`` (JSON, which is YAML). The scrape timeout is the interval, capped at
    Prometheus's default of 10 s (a timeout longer than the interval is a configuration error)."""
    if not jobs:
        raise ValueError("Prometheus needs at least one scrape job")
    names = [j.job for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique: {names}")
    interval = duration(scrape_interval)
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": duration(min(scrape_interval, 10.0)),
                   "evaluation_interval": duration(evaluation_interval or scrape_interval)},
        "scrape_configs": [
            {"job_name": j.job, "metrics_path": j.metrics_path,
             "static_configs": [{"targets": list(j.targets), "labels": dict(j.labels)}]}
            for j in jobs],
    }
    return json.dumps(config, indent=2) + "\n"


def find_binary() -> str | None:
    """The ``prometheus`` binary: ``$PROMETHEUS`` when set, else the one on PATH (Debian: /usr/bin)."""
    return os.environ.get("PROMETHEUS") or shutil.which("prometheus")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the process
class Prometheus:
    """One Prometheus server scraping ``jobs``, its state (config, TSDB, log) under ``state_dir``."""

    def __init__(self, jobs: Sequence[ScrapeJob], *, state_dir: Path, scrape_interval: float = 1.0,
                 host: str = "127.0.0.1", port: int | None = None, binary: str | None = None,
                 start_timeout: float = 30.0, stop_timeout: float = 10.0, retention: str = "1d") -> None:
        self.jobs = tuple(jobs)
        self.state_dir = Path(state_dir)
        self.scrape_interval = scrape_interval
        self.host = host
        self.port = port
        self.binary = binary or find_binary()
        self.start_timeout, self.stop_timeout, self.retention = start_timeout, stop_timeout, retention
        self.config_file = self.state_dir / "prometheus.yml"
        self.data_dir = self.state_dir / "data"
        self.log_file = self.state_dir / "prometheus.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None  # seconds from exec to every target up

    @property
    def url(self) -> str:
        if self.port is None:
            raise TestbedError("Prometheus has no port until it is started")
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        if not self.binary:
            raise TestbedError("no prometheus binary: install Debian's prometheus package (.ci/setup) or set "
                               "$PROMETHEUS")
        return [self.binary, f"--config.file={self.config_file}", f"--storage.tsdb.path={self.data_dir}",
                f"--storage.tsdb.retention.time={self.retention}", f"--web.listen-address={self.host}:{self.port}",
                "--web.enable-lifecycle", "--log.level=info"]

    def client(self, *, timeout: float = 5.0) -> PrometheusClient:
        return PrometheusClient(self.url, timeout=timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> Prometheus:
        """Write the config, exec Prometheus, wait until it is ready and every target is up."""
        if self.popen is not None:
            raise TestbedError(f"Prometheus already started ({self.url})")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.config_file.write_text(render_config(self.jobs, scrape_interval=self.scrape_interval))
        if self.port is None:
            self.port = _free_port(self.host)
        argv = self.argv()
        t0 = time.monotonic()
        with open(self.log_file, "ab") as log:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=self.state_dir, start_new_session=True)
        try:
            self.wait_ready(timeout=self.start_timeout)
            self.wait_targets_up(timeout=max(1.0, self.start_timeout - (time.monotonic() - t0)))
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        return self

    def _alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise TestbedError(f"Prometheus ({' '.join(self.argv())}) exited {self.popen.returncode}:\n"
                               f"{self.log_tail()}")

    def wait_ready(self, *, timeout: float) -> None:
        with self.client(timeout=2.0) as api:
            def observe() -> bool:
                self._alive()
                return api.ready()

            wait_for(observe, bool, timeout=timeout, interval=0.05, tolerate=(PrometheusError,),
                     what=f"Prometheus {self.url}/-/ready", obj=self.url)

    def wait_targets_up(self, *, timeout: float) -> list[dict[str, Any]]:
        """Wait until every configured target is ``up``; return the targets. On timeout the error's last
        state lists each target's health and last scrape error."""
        want = sum(len(j.targets) for j in self.jobs)
        with self.client(timeout=2.0) as api:
            def observe() -> list[dict[str, Any]]:
                self._alive()
                return api.targets()

            def all_up(targets: list[dict[str, Any]]) -> bool:
                return len(targets) == want and all(t.get("health") == "up" for t in targets)

            try:
                return wait_for(observe, all_up, timeout=timeout, interval=0.1, tolerate=(PrometheusError,),
                                what=f"all {want} targets up in {self.url}/api/v1/targets", obj=self.url)
            except Exception as exc:
                last = getattr(exc, "last_state", None)
                if isinstance(last, list):  # name each target's state rather than the whole JSON
                    states = "; ".join(f"{t.get('scrapeUrl')}: {t.get('health')} {t.get('lastError') or ''}".strip()
                                       for t in last) or "no target discovered yet (Prometheus applies its targets "\
                                                         "on a 5 s tick)"
                    raise TestbedError(f"Prometheus {self.url}: not every target up within {timeout:g}s "
                                       f"({len(last)} of {want} known): {states}") from exc
                raise

    def stop(self) -> int | None:
        """SIGTERM, wait up to ``stop_timeout``, then SIGKILL; the exit status (None if never started)."""
        popen, self.popen = self.popen, None
        if popen is None:
            return None
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)
        return popen.returncode

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

"""Shared, expensive inputs of the evidence tests: one run of the sample project, one six-hour probe file."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.evidence.probegen import Failure, ProbeSpec, Truth, write_probe
from tests.evidence.sample_project import Secrets, make_secrets, run_project


@dataclass(frozen=True)
class SampleRun:
    root: Path
    reports: Path
    secrets: Secrets
    result: subprocess.CompletedProcess[str]

    @property
    def bundle(self) -> Path:
        return self.reports / "bundle"


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> SampleRun:
    """The sample project run once: a passing, a failing, a skipped and a probed scenario."""
    base = tmp_path_factory.mktemp("sample")
    secrets = make_secrets()
    result = run_project(base / "project", base / "reports", secrets)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # one scenario fails on purpose
    return SampleRun(root=base / "project", reports=base / "reports", secrets=secrets, result=result)


SIX_HOURS = 6 * 3600.0
BIG_REQUESTS = 1_200_000
BIG_EVENTS = ((0.0, "probe started", ""), (10_790.0, "blue healthy", "blue answered ok"),
              (10_800.0, "upstreams reordered", "blue first"), (10_830.0, "green stopped", "SIGTERM"),
              (SIX_HOURS, "probe stopped", ""))
BIG_FAILURES = tuple(Failure(599_800 + 37 * i, "conn_error", f"reset #{i}", None, None) for i in range(25))


@pytest.fixture(scope="session")
def big_probe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    """Six hours at ~55 requests/s: 1.2 million request lines, 25 failures around the cutover."""
    d = tmp_path_factory.mktemp("big-probe")
    truth = write_probe(d, ProbeSpec(duration_s=SIX_HOURS, rate=BIG_REQUESTS / SIX_HOURS, shift_at=10_800.0,
                                     events=BIG_EVENTS, failures=BIG_FAILURES, spike=(10_800.0, 10_801.0, 250.0)))
    return d, truth

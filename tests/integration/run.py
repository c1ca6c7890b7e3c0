"""Run the suite or the CLI in a subprocess, as a user would, and capture what they would see."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from runbook.env import PROJECT_ROOT

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Ran:
    rc: int
    out: str

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.out


def run(argv: list[str], *, timeout: float = 240) -> Ran:
    proc = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    return Ran(proc.returncode, proc.stdout + proc.stderr)


def report_args(out: Path) -> list[str]:
    """Send a nested run's reports to ``out`` so they never overwrite the outer session's."""
    return [f"--html={out / 'report.html'}", f"--junitxml={out / 'junit.xml'}",
            f"--cucumberjson={out / 'cucumber.json'}", f"--evidence-dir={out / 'evidence'}"]


def pytest(*args: str, reports: Path, timeout: float = 240) -> Ran:
    return run([str(BIN / "pytest"), "-p", "no:cacheprovider", *report_args(reports), *args], timeout=timeout)


def cli(*args: str, timeout: float = 240) -> Ran:
    return run([str(BIN / "runbook"), *args], timeout=timeout)

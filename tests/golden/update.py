"""The golden transcripts of ``runbook plan`` on biscayne, and how to regenerate them.

Each ``plan-biscayne-<case>.txt`` is exactly what ``runbook plan`` prints (stdout) for its arguments below;
``tests/integration/test_plan_golden.py`` compares them and fails with a diff on any difference. After a
deliberate change to a plan, regenerate them, read the diff line by line as a reviewer would, and commit:

    .venv/bin/python -m tests.golden.update
"""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

CASES: dict[str, list[str]] = {
    "agave-upgrade": ["plan", "agave-upgrade", "--env=biscayne", "--target-version=v2.2.1"],
    "agave-upgrade-cleanup-destroy": ["plan", "agave-upgrade", "--env=biscayne", "--target-version=v2.2.1",
                                      "--cleanup=destroy"],
    "agave-rollback": ["plan", "agave-rollback", "--env=biscayne", "--target-version=v2.2.1"],
    "dz-upgrade": ["plan", "dz-upgrade", "--env=biscayne", "--target-version=v0.6.1"],
}


def path(case: str) -> Path:
    return GOLDEN_DIR / f"plan-biscayne-{case}.txt"


def render(case: str) -> str:
    """``runbook plan`` as a user runs it: its stdout, exactly."""
    ran = subprocess.run([str(BIN / "runbook"), *CASES[case]], capture_output=True, text=True, check=False,
                         stdin=subprocess.DEVNULL, timeout=120)
    if ran.returncode != 0:
        raise RuntimeError(f"runbook {' '.join(CASES[case])} exited {ran.returncode}: {ran.stderr}")
    return ran.stdout


def difference(case: str, got: str) -> str:
    """'' when ``got`` is the golden transcript of ``case`` exactly; else a unified diff golden -> got."""
    want = path(case).read_text() if path(case).is_file() else ""
    if got == want:
        return ""
    return "".join(difflib.unified_diff(want.splitlines(keepends=True), got.splitlines(keepends=True),
                                        fromfile=str(path(case)), tofile=f"runbook {' '.join(CASES[case])}"))


def main() -> None:
    for case in CASES:
        path(case).write_text(render(case))
        print(f"wrote {path(case).relative_to(GOLDEN_DIR.parent.parent)}")


if __name__ == "__main__":
    main()

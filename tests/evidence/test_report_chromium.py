"""The report renders in a real browser: headless Chromium runs pytest-html's script over our extras.

Skipped where no Chromium is installed (Debian: ``apt-get install -y chromium``). Set RB_REPORT_SCREENSHOT
to a path to keep the screenshot (the project keeps one in reports/screenshot-report.png).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.evidence.conftest import SampleRun

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium here (apt-get install -y chromium)")


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert BROWSER is not None
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120, check=False)


def test_report_renders_with_every_part(sample_run: SampleRun, tmp_path: Path) -> None:
    url = (sample_run.reports / "report.html").as_uri() + "?collapsed="  # every row expanded
    dom = _chromium("--dump-dom", url).stdout
    assert dom.count('class="rb-ev"') == 4  # each scenario's evidence, inserted by the report's script
    for text in ("Diagnostics collected at the failure", "Skipped: needs CAP_NET_ADMIN", "4 scenarios",
                 "requests/s by serving upstream", "3 failed request(s)", "not run"):
        assert text in dom, text
    assert "<svg" in dom and "[REDACTED]" in dom
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1400,5200", url)
    assert shot.is_file() and shot.stat().st_size > 50_000
    keep = os.environ.get("RB_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)

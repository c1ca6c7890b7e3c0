"""After a run that handled an id.json and a token, no key material is anywhere under reports/."""

from __future__ import annotations

import re
from pathlib import Path

from tests.evidence.conftest import SampleRun
from tests.evidence.sample_project import Secrets


def leaks(root: Path, s: Secrets) -> list[str]:
    """Every file under ``root`` holding the keypair (as a JSON int array, base58 or hex) or the token."""
    ints = [str(b) for b in s.keypair]
    array = re.compile(r"\s*,\s*".join(ints[:12]).encode())  # any formatting of the id.json array
    needles = {"base58 keypair": s.base58.encode(), "hex keypair": s.keypair.hex().encode(),
               "token": s.token.encode(), "raw keypair": s.keypair}
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if array.search(data):
            found.append(f"{path}: id.json int array")
        found += [f"{path}: {what}" for what, needle in needles.items() if needle in data]
    return found


def test_the_detector_detects(sample_run: SampleRun, tmp_path: Path) -> None:
    s = sample_run.secrets
    for i, text in enumerate((s.id_json, ",".join(str(b) for b in s.keypair), s.base58, f"Bearer {s.token}")):
        (tmp_path / f"{i}.txt").write_text(text)
    assert len(leaks(tmp_path, s)) == 4


def test_nothing_secret_under_reports(sample_run: SampleRun) -> None:
    # the run really handled the secrets: printed, logged, attached, copied, in a call and a failure message
    steps = (sample_run.root / "steps.py").read_text()
    for handled in ("print(\"id.json:\"", "log.warning", "evidence.attach(\"id.json", "attach_file(path",
                    "Bearer {TOKEN}"):
        assert handled in steps
    files = [p.name for p in sample_run.reports.rglob("*") if p.is_file()]
    assert {"report.html", "junit.xml", "cucumber.json", "bundle.json", "id.json", "SHA256SUMS"} <= set(files)
    assert leaks(sample_run.reports, sample_run.secrets) == []
    assert "[REDACTED]" in (sample_run.reports / "junit.xml").read_text()

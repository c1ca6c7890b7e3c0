"""The evidence bundle: one directory a reviewer can archive, verify and read without the report.

    <bundle>/bundle.json        every scenario (steps, evidence, diagnostics; skipped ones with their
                                reason), the run, the environment fingerprint and an index of artifacts
    <bundle>/artifacts/<test>/  attached files and probe records (text redacted), rendered timelines
    <bundle>/SHA256SUMS         sha256 of every file above (``cd <bundle> && sha256sum -c SHA256SUMS``)

The bundle's digest is the sha256 of SHA256SUMS: one value that pins every byte of the bundle; the report
and the terminal print it. bundle.json is validated against ``schema/bundle.schema.json`` (JSON Schema
2020-12) when it is written; problems are reported, never hidden.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from runbook.errors import ConfigError
from runbook.evidence.artifacts import Artifact, ArtifactStore, sha256_file

FORMAT = "runbook-evidence-bundle/1"
BUNDLE_JSON = "bundle.json"
SUMS = "SHA256SUMS"
SCHEMA_PATH = Path(__file__).with_name("schema") / "bundle.schema.json"
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


@dataclass(frozen=True)
class BundleResult:
    root: Path
    digest: str
    files: int
    problems: tuple[str, ...]


@cache
def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return schema


def validate(doc: Any) -> list[str]:
    """Schema problems of a bundle document (empty when it is valid)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(load_schema())
    return [f"{'/'.join(str(p) for p in err.absolute_path) or '(root)'}: {err.message[:300]}"
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def verify(root: str | Path) -> list[str]:
    """Re-hash a bundle against its SHA256SUMS; also flags files that are not listed. Empty when intact."""
    root = Path(root)
    sums = root / SUMS
    if not sums.is_file():
        return [f"{sums} is missing"]
    listed: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        digest, _, rel = line.partition("  ")
        listed[rel] = digest
    problems = []
    for rel, digest in listed.items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: listed but missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 differs from {SUMS}")
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel != SUMS and rel not in listed:
            problems.append(f"{rel}: not listed in {SUMS}")
    return problems


def digest_of(root: str | Path) -> str:
    return sha256_file(Path(root) / SUMS)


class BundleWriter:
    """Collects scenarios during a run and writes the bundle at the end."""

    def __init__(self, root: Path, *, href_prefix: str = "") -> None:
        self.root = root
        self.href_prefix = href_prefix  # how the HTML report reaches the bundle root, e.g. "bundle/"
        self.scenarios: list[dict[str, Any]] = []
        self._artifacts: dict[str, tuple[Artifact, str]] = {}

    def prepare(self) -> None:
        """Start empty: remove a previous bundle, refuse to touch a directory that is not one."""
        if self.root.exists():
            if not self.root.is_dir():
                raise ConfigError(f"evidence bundle path {self.root} exists and is not a directory",
                                  obj=str(self.root))
            ours = (self.root / BUNDLE_JSON).exists() or (self.root / SUMS).exists() or (
                self.root / "artifacts").is_dir()
            if not ours and any(self.root.iterdir()):
                raise ConfigError(f"refusing to replace {self.root}: it is not an evidence bundle "
                                  "(choose another --evidence-bundle directory)", obj=str(self.root))
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)

    def store(self, name: str) -> ArtifactStore:
        return ArtifactStore(self.root, name, href_prefix=self.href_prefix)

    def add(self, scenario: dict[str, Any], artifacts: list[Artifact]) -> None:
        self.scenarios.append(scenario)
        for art in artifacts:
            self._artifacts[art.path] = (art, str(scenario.get("nodeid")))

    def document(self, *, run: dict[str, Any], environment: dict[str, Any]) -> dict[str, Any]:
        counts = Counter(str(s.get("outcome")) for s in self.scenarios)
        summary = {"scenarios": len(self.scenarios), **{k: counts.get(k, 0) for k in OUTCOMES}}
        index = [{**art.to_dict(), "scenario": owner} for art, owner in
                 sorted(self._artifacts.values(), key=lambda pair: pair[0].path)]
        return {"format": FORMAT, "run": run, "environment": environment, "summary": summary,
                "scenarios": self.scenarios, "artifacts": index}

    def finish(self, *, run: dict[str, Any], environment: dict[str, Any]) -> BundleResult:
        """Write bundle.json and SHA256SUMS; validate; return the digest."""
        doc = self.document(run=run, environment=environment)
        try:
            problems = [f"bundle.json does not match its schema: {p}" for p in validate(doc)]
        except ImportError:
            problems = ["bundle.json was not validated: the jsonschema package is not installed"]
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / BUNDLE_JSON).write_text(json.dumps(doc, indent=1, default=str, ensure_ascii=False) + "\n")
        known = {path: art.sha256 for path, (art, _) in self._artifacts.items()}
        lines = []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            rel = path.relative_to(self.root).as_posix()
            if rel == SUMS:
                continue
            try:
                digest = known.get(rel) or sha256_file(path)
            except FileNotFoundError:  # another run replaced the bundle directory under us
                problems.append(f"{rel} vanished while the bundle was written (another run using {self.root}?)")
                continue
            lines.append(f"{digest}  {rel}\n")
        data = "".join(lines).encode()
        (self.root / SUMS).write_bytes(data)
        return BundleResult(root=self.root, digest=hashlib.sha256(data).hexdigest(), files=len(lines),
                            problems=tuple(problems))

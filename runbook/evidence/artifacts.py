"""Files in an evidence bundle: copied in at once (the source may be gone by the end of the run), text
redacted on the way, each with its sha256, size and media type.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runbook.errors import RunbookError
from runbook.evidence.redact import redact

CHUNK = 1 << 20
_PEM_BEGIN = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_END = re.compile(rb"-----END [A-Z0-9 ]*PRIVATE KEY-----")


@dataclass(frozen=True)
class Artifact:
    """A file in the bundle: ``path`` is relative to the bundle root (forward slashes)."""

    path: str
    sha256: str
    bytes: int
    media_type: str
    redacted: bool
    source: str

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes, "media_type": self.media_type,
                "redacted": self.redacted, "source": self.source}


def slug(text: str, limit: int = 80) -> str:
    """A file-name-safe form of a test id or title (keeps the tail, where the parameters are)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
    return s[-limit:].lstrip("._-") or "x"


def media_type(path: Path) -> str:
    if path.suffix in (".jsonl", ".ndjson"):
        return "application/x-ndjson"
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def is_text(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(8192)
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(head) - 4  # a multi-byte character cut at the end of the sample
    return True


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _text_chunks(src: Path) -> Iterator[bytes]:
    """Line-aligned chunks of about 1 MiB; a PEM private key is never split between two chunks."""
    with src.open("rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                return
            chunk += f.readline()
            # an unfinished PEM block: read on to its END line (or the end of the file)
            while (begins := list(_PEM_BEGIN.finditer(chunk))) and not _PEM_END.search(chunk, begins[-1].end()):
                more = f.read(CHUNK)
                if not more:
                    break
                chunk += more + f.readline()
            yield chunk


class ArtifactStore:
    """One scenario's directory in a bundle: ``<bundle>/artifacts/<scenario>/``."""

    def __init__(self, bundle_root: Path, name: str, *, href_prefix: str = "") -> None:
        self.root = bundle_root
        self.rel = f"artifacts/{slug(name)}"
        self.href_prefix = href_prefix  # from where the report is to the bundle root, e.g. "bundle/"
        self._taken: set[str] = set()

    def href(self, art: Artifact) -> str:
        return f"{self.href_prefix}{art.path}"

    @property
    def directory(self) -> Path:
        return self.root / self.rel

    def subdir(self, name: str) -> str:
        """A fresh sub-directory name (``probe``, ``probe-2``, ...) for a group of files."""
        base = slug(name, 60)
        candidate, n = base, 1
        while candidate in self._taken or (self.directory / candidate).exists():
            n += 1
            candidate = f"{base}-{n}"
        self._taken.add(candidate)
        return candidate

    def _target(self, name: str, subdir: str | None = None) -> tuple[Path, str]:
        folder = f"{self.rel}/{subdir}" if subdir else self.rel
        base = slug(name, 100)
        stem, dot, ext = base.rpartition(".")
        candidate, n = base, 1
        while f"{folder}/{candidate}" in self._taken or (self.root / folder / candidate).exists():
            n += 1
            candidate = f"{stem}-{n}.{ext}" if dot and stem else f"{base}-{n}"
        self._taken.add(f"{folder}/{candidate}")
        (self.root / folder).mkdir(parents=True, exist_ok=True)
        return self.root / folder / candidate, f"{folder}/{candidate}"

    def copy(self, src: str | Path, name: str | None = None, *, subdir: str | None = None) -> Artifact:
        """Copy a file in; text is redacted on the way (line by line in 1 MiB chunks: flat memory)."""
        src = Path(src)
        if not src.is_file():
            raise RunbookError(f"cannot attach {src}: not a file", obj=str(src))
        dest, rel = self._target(name or src.name, subdir)
        h = hashlib.sha256()
        size = 0
        changed = False
        text = is_text(src)
        with dest.open("wb") as out:
            if text:
                for chunk in _text_chunks(src):
                    clean = redact(chunk.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
                    changed = changed or clean != chunk
                    out.write(clean)
                    h.update(clean)
                    size += len(clean)
            else:
                with src.open("rb") as f:
                    while chunk := f.read(CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        size += len(chunk)
        return Artifact(path=rel, sha256=h.hexdigest(), bytes=size, media_type=media_type(src), redacted=changed,
                        source=str(src))

    def write_text(self, name: str, text: str, *, media: str = "text/plain", subdir: str | None = None) -> Artifact:
        """Write generated text (a rendered timeline, a JSON summary) into the bundle, redacted."""
        dest, rel = self._target(name, subdir)
        data = redact(text).encode("utf-8")
        dest.write_bytes(data)
        return Artifact(path=rel, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), media_type=media,
                        redacted=False, source="generated")

"""Files copied into a bundle: redacted on the way, hashed, never split mid-key."""

from __future__ import annotations

import hashlib
from pathlib import Path

from runbook.evidence.artifacts import CHUNK, ArtifactStore, sha256_file
from tests.evidence.sample_project import make_secrets


def test_text_copy_is_redacted_and_hashed(tmp_path: Path) -> None:
    s = make_secrets()
    src = tmp_path / "id.json"
    src.write_text(s.id_json)
    store = ArtifactStore(tmp_path / "bundle", "features/x.py::test_y[a b]", href_prefix="bundle/")
    art = store.copy(src)
    copied = (tmp_path / "bundle" / art.path).read_text()
    assert art.redacted and str(s.keypair[0]) + "," not in copied and "[REDACTED]" in copied
    assert art.sha256 == sha256_file(tmp_path / "bundle" / art.path)
    assert art.path.startswith("artifacts/features_x.py_test_y_a_b/") and store.href(art) == "bundle/" + art.path
    assert store.copy(src).path != art.path  # a second copy of the same name does not overwrite the first


def test_pem_key_spanning_a_chunk_boundary(tmp_path: Path) -> None:
    body = "\n".join("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2" for _ in range(200))
    filler = "log line\n" * ((CHUNK - 3000) // 9)
    src = tmp_path / "big.log"
    src.write_text(filler + f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----\nafter\n")
    art = ArtifactStore(tmp_path / "b", "t").copy(src)
    out = (tmp_path / "b" / art.path).read_text()
    assert "QUJDREVG" not in out and out.endswith("[REDACTED]\nafter\n") and out.startswith("log line\n")


def test_binary_copied_verbatim(tmp_path: Path) -> None:
    data = bytes(range(256)) * 100
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    art = ArtifactStore(tmp_path / "b", "t").copy(src)
    assert (tmp_path / "b" / art.path).read_bytes() == data
    assert art.sha256 == hashlib.sha256(data).hexdigest() and not art.redacted

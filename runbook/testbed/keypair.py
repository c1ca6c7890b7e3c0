"""Solana-format keypair files (``id.json``): a JSON array of 64 integers, the 32-byte ed25519 seed
followed by the 32-byte public key, exactly as ``solana-keygen`` writes them.

The secret half never leaves this module: no message, log line or exception raised here contains a key
byte or the file's content. Public keys (base58) are not secret and are named freely.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import base58
from nacl.signing import SigningKey

from runbook.errors import ConfigError

SEED_LEN = 32
KEYPAIR_LEN = 64
MAX_FILE_BYTES = 4096  # a 64-int JSON array is under 300 bytes; anything larger is not a keypair


def pubkey_from_seed(seed: bytes) -> str:
    """The base58 public key of an ed25519 seed (what ``solana-keygen pubkey`` prints)."""
    if len(seed) != SEED_LEN:
        raise ConfigError(f"an ed25519 seed is {SEED_LEN} bytes, got {len(seed)}")
    return base58.b58encode(bytes(SigningKey(seed).verify_key)).decode("ascii")


def write_keypair(path: str | os.PathLike[str], seed: bytes) -> str:
    """Write a Solana id.json for ``seed`` with mode 0600 (atomically); return its base58 public key."""
    if len(seed) != SEED_LEN:
        raise ConfigError(f"an ed25519 seed is {SEED_LEN} bytes, got {len(seed)}", obj=str(path))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    public = bytes(SigningKey(seed).verify_key)
    payload = json.dumps(list(seed + public), separators=(",", ":")).encode("ascii")
    fd, tmp = tempfile.mkstemp(prefix=".id-", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.chmod(target, 0o600)
    return base58.b58encode(public).decode("ascii")


def read_pubkey(path: str | os.PathLike[str]) -> str:
    """The base58 public key of a Solana id.json, derived from its seed and checked against its public half.

    Raises :class:`~runbook.errors.ConfigError` naming the file and the problem (never its content)
    when the file is missing, unreadable, not a 64-byte JSON array, or inconsistent.
    """
    p = Path(path)
    raw = _read_bytes(p)
    seed, stored_public = raw[:SEED_LEN], raw[SEED_LEN:]
    derived = pubkey_from_seed(seed)
    stored = base58.b58encode(stored_public).decode("ascii")
    if derived != stored:
        raise ConfigError(
            f"keypair file {p}: its public half ({stored}) does not match the key derived from its "
            f"secret half ({derived}); the file is corrupt or was assembled from two keys",
            obj=str(p),
        )
    return derived


def _read_bytes(p: Path) -> bytes:
    problem = _problem(p)
    if isinstance(problem, str):
        raise ConfigError(f"keypair file {p}: {problem}", obj=str(p))
    return problem


def _problem(p: Path) -> bytes | str:
    """The 64 key bytes, or a description of what is wrong that contains no key material."""
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return "does not exist (expected a Solana id.json: a JSON array of 64 integers)"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or type(exc).__name__}"
    if not p.is_file():
        return "is not a regular file"
    if size > MAX_FILE_BYTES:
        return f"is {size} bytes, too large for a Solana keypair (a JSON array of 64 integers)"
    try:
        text = p.read_text(encoding="ascii")
    except OSError as exc:
        return f"cannot be read: {exc.strerror or type(exc).__name__}"
    except UnicodeDecodeError:
        return "is not ASCII text (expected a JSON array of 64 integers)"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # exc.msg and the position are safe; exc.doc (the content) is never used.
        return f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    if not isinstance(data, list):
        return f"holds a JSON {type(data).__name__}, expected an array of {KEYPAIR_LEN} integers"
    if len(data) != KEYPAIR_LEN:
        return f"holds {len(data)} elements, expected {KEYPAIR_LEN} (32-byte seed + 32-byte public key)"
    for i, v in enumerate(data):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 255:
            return f"element {i} is not an integer in 0..255"
    return bytes(data)


def colour_seed(testbed_seed: bytes, colour: str) -> bytes:
    """A testbed colour's own validator identity seed, derived from the testbed's seed: each colour its own
    keypair, as an operator provisions them (agave's gossip makes the older instance of an identity exit)."""
    import hashlib

    return hashlib.sha256(testbed_seed + colour.encode()).digest()

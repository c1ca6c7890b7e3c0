"""Redaction: remove key material and credentials from anything that may reach a log, report or bundle.

Applied before evidence is stored (the recorder), to every pytest report's captured output and failure
text (the evidence hooks), and to every text file copied into an evidence bundle. It errs on the side of
removing too much: a redacted harmless value costs a reviewer a glance, a leaked id.json costs a validator.

What it removes:
- PEM private keys (also a dangling ``BEGIN ... PRIVATE KEY`` whose end was cut off);
- Solana keypairs: a JSON array of 32 or more small integers (id.json), the base58 form of a 64-byte
  keypair (86 to 90 characters), the hex form of a 64-byte key;
- the value of any field, flag or variable whose name says secret, token, password, api key,
  authorization, credential, cookie, private key or seed (``"token": "x"``, ``--password=x``,
  ``GITHUB_TOKEN=x``, ``Authorization: Bearer x``);
- ``Bearer``/``Basic`` credentials anywhere, JWTs, and the password in ``scheme://user:password@host``.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"

_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----", re.S)
_PEM_DANGLING = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*", re.S)
_KEYPAIR_ARRAY = re.compile(r"\[\s*(?:\d{1,3}\s*,\s*){31,}\d{1,3}\s*,?\s*\]")  # id.json: 64 ints
_BASE58_KEYPAIR = re.compile(r"\b[1-9A-HJ-NP-Za-km-z]{86,90}\b")  # a 64-byte keypair in base58
_HEX_KEYPAIR = re.compile(r"\b[0-9a-fA-F]{128}\b")  # a 64-byte keypair in hex
_JWT = re.compile(r"\beyJ[\w-]{5,}\.eyJ[\w-]{5,}\.[\w-]{5,}")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=-]{6,}")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@\"']+):([^@\s/\"']+)@")

_KEYWORD = (r"(?:secret|token|passw(?:or)?d|passphrase|api[_-]?key|authorization|credential|cookie"
            r"|private[_-]?key|privkey|seed)")
_SECRET_KEY = re.compile(rf"(?i)^[\w.-]*{_KEYWORD}[\w.-]*$")
# name: value, name = value, "name": "value", name='value' (the name may have a prefix: access_token);
# the value keeps its quotes. The pattern starts at the keyword: a leading [\w.-]* would make it 10x slower.
_SECRET_FIELD = re.compile(
    rf"(?i)(?P<key>{_KEYWORD}[\w.-]*[\"']?\s*[:=]\s*)"
    r"(?:(?P<q>[\"'])(?P<quoted>(?:\\.|(?!(?P=q)).)*)(?P=q)|(?P<bare>[^\s,;}\])\"']+))"
)
# --password x, --token=x (-p is too ambiguous to touch)
_SECRET_FLAG = re.compile(
    rf"(?i)(?P<flag>--[\w.-]*{_KEYWORD}[\w.-]*)(?P<sep>=|\s+)(?P<value>\"[^\"]*\"|'[^']*'|[^\s\"']+)"
)

# A screen on bytes (C speed: lower(), translate(), find()) decides which patterns can match at all, so
# that megabytes of probe records without a keyword cost milliseconds. It must find a superset of what
# the patterns find: every pattern below is guarded by one of these tests.
_KEYWORDS = (b"secret", b"token", b"passw", b"passphrase", b"apikey", b"api_key", b"api-key", b"authorization",
             b"credential", b"cookie", b"privatekey", b"private_key", b"private-key", b"privkey", b"seed",
             b"bearer", b"basic")
_B58_ALPHABET = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_RUN = bytes(ord("a") if i in _B58_ALPHABET else ord(" ") for i in range(256))
_HEX_RUN = bytes(ord("a") if i in b"0123456789abcdefABCDEF" else ord(" ") for i in range(256))


def _screen(text: str) -> set[str]:
    raw = text.encode("utf-8", "surrogatepass")
    low = raw.lower()
    found: set[str] = set()
    if b"-----begin" in low:
        found.add("pem")
    if b"[" in raw and _KEYPAIR_ARRAY.search(text):
        found.add("array")
    if b"eyj" in low:
        found.add("jwt")
    if b"@" in raw:
        found.add("url")
    if any(k in low for k in _KEYWORDS):
        found.add("field")
    if b"a" * 86 in raw.translate(_B58_RUN):
        found.add("b58")
    if b"a" * 128 in raw.translate(_HEX_RUN):
        found.add("hex")
    return found


def _field(m: re.Match[str]) -> str:
    if m.group("q"):
        if not m.group("quoted"):
            return m.group(0)  # an empty value hides nothing
        return f"{m.group('key')}{m.group('q')}{REDACTED}{m.group('q')}"
    bare = m.group("bare")
    if bare.lower() in ("bearer", "basic", "token", "null", "none", "true", "false") or bare == REDACTED:
        return m.group(0)  # the credential after a scheme word is removed by _AUTH_SCHEME
    return f"{m.group('key')}{REDACTED}"


def redact(text: str) -> str:
    """Remove key material and credentials from any text that may reach a log, report or bundle."""
    if not text:
        return text
    hits = _screen(text)
    if not hits:
        return text
    if "pem" in hits:
        text = _PEM_DANGLING.sub(REDACTED, _PEM.sub(REDACTED, text))
    if "array" in hits:
        text = _KEYPAIR_ARRAY.sub(REDACTED, text)
    if "jwt" in hits:
        text = _JWT.sub(REDACTED, text)
    if "url" in hits:
        text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{REDACTED}@", text)
    if "field" in hits:
        text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        text = _SECRET_FLAG.sub(lambda m: f"{m.group('flag')}{m.group('sep')}{REDACTED}", text)
        text = _SECRET_FIELD.sub(_field, text)
    if "b58" in hits:
        text = _BASE58_KEYPAIR.sub(REDACTED, text)
    if "hex" in hits:
        text = _HEX_KEYPAIR.sub(REDACTED, text)
    return text


_TOKEN_COUNT = re.compile(r"(?i)^[\w.-]*_tokens$")  # an LLM's usage: prompt_tokens, completion_tokens, total_tokens


def _token_count(name: object, value: object) -> bool:
    """``"total_tokens": 12``: a count of a model's tokens (an integer under a ``*_tokens`` name), not a secret."""
    return (isinstance(name, str) and bool(_TOKEN_COUNT.match(name)) and isinstance(value, int)
            and not isinstance(value, bool))


def is_secret_name(name: object) -> bool:
    """True for a field name whose value is a secret (``token``, ``db_password``, ``identity_seed``...)."""
    return isinstance(name, str) and bool(_SECRET_KEY.match(name))


def _looks_like_key_bytes(seq: list[Any] | tuple[Any, ...]) -> bool:
    return len(seq) >= 32 and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in seq)


def redact_obj(obj: Any) -> Any:
    """Redact a JSON-like value: strings by :func:`redact`, values under secret names, byte-like arrays."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
        try:
            return redact(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return f"<{len(raw)} bytes, not shown>"
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_name(k) and v not in (None, True, False, "") and not _token_count(k, v)
                    else redact_obj(v)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        if _looks_like_key_bytes(obj):
            return REDACTED
        return [redact_obj(v) for v in obj]
    return obj

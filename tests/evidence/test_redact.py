"""Redaction: key material and credentials go, everything else stays byte for byte."""

from __future__ import annotations

import json
import time

import pytest

from runbook.evidence.redact import REDACTED, redact, redact_obj
from tests.evidence.sample_project import make_secrets

SECRETS = make_secrets()
PEM = ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbe\n"
       "-----END PRIVATE KEY-----")


@pytest.mark.parametrize("text, gone", [
    (SECRETS.id_json, SECRETS.id_json),
    (json.dumps(list(SECRETS.keypair), indent=2), "\n  " + str(SECRETS.keypair[1])),
    (f"keypair: {SECRETS.base58}", SECRETS.base58),
    (f"raw {SECRETS.keypair.hex()}", SECRETS.keypair.hex()),
    (f"x\n{PEM}\ny", "MC4CAQAw"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA (cut off", "b3BlbnNzaC1"),
    (f"Authorization: Bearer {SECRETS.token}", SECRETS.token),
    (f"curl -H 'Authorization: Bearer {SECRETS.token}' https://rpc", SECRETS.token),
    ('{"Authorization": "Basic dXNlcjpwYXNz"}', "dXNlcjpwYXNz"),
    (f"token={SECRETS.token} slot=5", SECRETS.token),
    (f'{{"access_token": "{SECRETS.token}", "slot": 5}}', SECRETS.token),
    (f"--password hunter2 --token={SECRETS.token}", "hunter2"),
    (f"--password hunter2 --token={SECRETS.token}", SECRETS.token),
    (f"GITHUB_TOKEN={SECRETS.token}", SECRETS.token),
    ("postgres://rpc:s3cretpw@db:5432/x", "s3cretpw"),
    ("identity_seed: 49ff73a5302136aa018dd9059cadc96d1f6f3f309b97fd876eca2526672dffa0", "49ff73a5"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "eyJzdWIi"),
])
def test_secrets_are_removed(text: str, gone: str) -> None:
    out = redact(text)
    assert gone not in out
    assert REDACTED in out


@pytest.mark.parametrize("text", [
    "slot 312,445,991 caught up; GET /health -> ok",
    f"identity {SECRETS.pubkey} (a public key is not a secret)",
    "sha256 " + "ab" * 32,
    "the seed procedure: stop A, then start B",
    "[1, 2, 3, 4, 5]",
    '{"status": 200, "upstream": "127.0.0.1:18899", "ok": true}',
    "",
])
def test_ordinary_text_is_untouched(text: str) -> None:
    assert redact(text) == text


def test_quoted_json_stays_json() -> None:
    doc = json.dumps({"token": SECRETS.token, "password": "p", "n": 1})
    assert json.loads(redact(doc)) == {"token": REDACTED, "password": REDACTED, "n": 1}


def test_structured_values() -> None:
    obj = {"id": list(SECRETS.keypair), "raw": SECRETS.keypair, "headers": {"Authorization": "Bearer x"},
           "db_password": "p", "ok": True, "slots": list(range(250, 300)), "note": f"key {SECRETS.base58}"}
    out = redact_obj(obj)
    assert out["id"] == REDACTED
    assert SECRETS.base58 not in json.dumps(out) and "Bearer x" not in json.dumps(out)
    assert out["headers"]["Authorization"] == REDACTED and out["db_password"] == REDACTED
    assert out["ok"] is True and out["slots"] == list(range(250, 300))  # not key bytes: values above 255


def test_megabytes_without_secrets_are_fast() -> None:
    line = ('{"seq": 1, "sched": 0.018, "sent": 0.018080, "done": 0.0201, "latency_ms": 2.1, "kind": "GET /health", '
            '"status": 200, "upstream": "127.0.0.1:18899", "ok": true, "verdict": "ok", "error": null}\n')
    text = line * 40_000  # ~7 MB
    start = time.perf_counter()
    assert redact(text) == text
    assert time.perf_counter() - start < 1.5


def test_a_models_token_counts_are_shown_and_a_token_still_hidden() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert redact_obj({"usage": usage}) == {"usage": usage}
    assert redact_obj({"access_tokens": "abcdef123456", "token": 123456, "auth_tokens": ["x"]}) == {
        "access_tokens": REDACTED, "token": REDACTED, "auth_tokens": REDACTED}

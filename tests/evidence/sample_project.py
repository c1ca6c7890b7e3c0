"""A tiny pytest-bdd project that exercises the evidence plugin the way the suite does.

Four scenarios: one passes and handles an id.json and a token (printed, logged, attached, in a call's
output), one fails and collects diagnostics (one collector leaks a token, one raises), one is skipped
with a reason, one attaches a prober directory. Written into a temporary directory and run in a
subprocess with the same pytest-html, JUnit and cucumber options as the project.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import base58
from nacl.signing import SigningKey

from tests.evidence.probegen import BLUE, GREEN, Failure, ProbeSpec, write_probe

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Secrets:
    keypair: bytes  # 64 bytes: seed + public key, as in id.json
    token: str

    @property
    def id_json(self) -> str:
        return json.dumps(list(self.keypair))

    @property
    def base58(self) -> str:
        return base58.b58encode(self.keypair).decode()

    @property
    def pubkey(self) -> str:
        return base58.b58encode(self.keypair[32:]).decode()


def make_secrets() -> Secrets:
    sk = SigningKey.generate()
    return Secrets(keypair=bytes(sk) + bytes(sk.verify_key), token="rbTok_" + os.urandom(12).hex())


FEATURE = """\
Feature: Evidence demo
  What a reviewer sees for a passing, a failing, a skipped and a probed scenario.

  Scenario: A passing check with evidence
    Given the node answers health "ok"
    When the identity file is read
    Then the health body is "ok"

  Scenario: A failing check collects diagnostics
    Given the node answers health "behind"
    Then the health body is "ok"
    And traffic is still served by green

  @netadmin
  Scenario: A check that needs CAP_NET_ADMIN
    Given the doublezero0 interface exists

  Scenario: The cutover timeline
    Given a prober ran through the cutover
    Then no more than 3 requests failed
"""

STEPS = '''\
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pytest_bdd import given, parsers, then, when

from runbook.checks.core import check, equal, judge, verdict

SECRETS = json.loads(Path(os.environ["RB_SAMPLE_SECRETS"]).read_text())
TOKEN = SECRETS["token"]
log = logging.getLogger("sample")


@given(parsers.parse('the node answers health "{body}"'), target_fixture="health")
def health(body, evidence):
    evidence.call("GET http://127.0.0.1:18899/health", {"status": 200, "body": body,
                                                        "headers": {"Authorization": f"Bearer {TOKEN}"}})
    return body


@when("the identity file is read")
def identity(evidence):
    path = Path(SECRETS["id_json_path"])
    content = path.read_text()
    print("id.json:", content)
    print("keypair (base58):", SECRETS["base58"])
    log.warning("loaded identity %s with token=%s", content, TOKEN)
    evidence.attach("id.json as read", content)
    evidence.attach("id.json parsed", json.loads(content))
    evidence.attach_file(path, title="id.json (copied)")
    evidence.call(f"curl -H 'Authorization: Bearer {TOKEN}' https://rpc/getIdentity",
                  {"result": {"identity": SECRETS["pubkey"]}, "token": TOKEN, "keypair": SECRETS["base58"]})
    judge(evidence, equal("public key of id.json", expected=SECRETS["pubkey"], observed=SECRETS["pubkey"]))
    log_file = path.parent / "validator.log"
    log_file.write_text("".join(f"slot {100 + i}: replayed\\n" for i in range(40)) + f"auth token={TOKEN}\\n")
    evidence.attach_file(log_file)


@then(parsers.parse('the health body is "{expected}"'))
def health_is(health, expected, evidence):
    evidence.verdict(equal("GET /health body", expected=expected, observed=health))
    assert health == expected, f"/health said {health!r}, not {expected!r} (Authorization: Bearer {TOKEN})"


@then("traffic is still served by green")
def served(evidence):
    evidence.note("never reached: the previous step failed")


@given("the doublezero0 interface exists")
def interface(evidence):
    evidence.note("never reached: skipped")


@given("a prober ran through the cutover", target_fixture="probe")
def prober(evidence):
    return evidence.attach_probe(SECRETS["probe_dir"], title="zero-drop probe through Caddy",
                                 cutover_events=["blue healthy", "upstreams reordered", "green stopped"],
                                 upstream_names={SECRETS["green"]: "green", SECRETS["blue"]: "blue"})


@check(negative="tests/evidence/test_bundle_run.py")
def at_most(title, bound, observed):
    return verdict(title, expected=f"<= {bound}", observed=observed,
                   problems=[] if observed <= bound else [f"{observed} > {bound}"])


@then(parsers.parse("no more than {n:d} requests failed"))
def few_failed(probe, n, evidence):
    judge(evidence, at_most("failed requests", n, probe.failures_total))
'''

CONFTEST = '''\
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest_plugins = ["runbook.evidence.hooks", "steps"]
TOKEN = json.loads(Path(os.environ["RB_SAMPLE_SECRETS"]).read_text())["token"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("netadmin"):
            item.add_marker(pytest.mark.skip(reason="needs CAP_NET_ADMIN to create doublezero0; run as root"))


def pods(ctx):
    agave = {"name": "agave", "ready": False, "restartCount": 0,
             "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
    events = ("Warning  Unhealthy  pod/agave-green-7d9f  Readiness probe failed: behind by 412 slots\\n"
              "Normal   Pulled     pod/agave-green-7d9f  Container image laconicnetwork/agave:v2.1.0")
    lines = "".join(f"[2026-01-01T00:00:{i:02d}Z INFO] slot {1000 + i} behind\\n" for i in range(30))
    return {
        "pod agave-green-7d9f (status)": {"phase": "Running", "containerStatuses": [agave],
            "initContainerStatuses": [{"name": "doublezerod", "ready": True, "restartCount": 1}]},
        "events (agave namespace)": events,
        "process log (agave, last lines)": lines + f"env: RPC_TOKEN={TOKEN}\\n",
        "failed step": f"{ctx.step} ({ctx.when})",
    }


def caddy():
    return {"caddy upstreams": [{"address": "127.0.0.1:18899", "num_requests": 0, "fails": 3},
                                {"address": "127.0.0.1:18897", "num_requests": 12, "fails": 0}]}


def broken(ctx):
    raise ConnectionError("kube API unreachable")


@pytest.fixture(scope="session", autouse=True)
def _collectors(diagnostics):
    off = [diagnostics.register(pods, name="pods"), diagnostics.register(caddy, name="caddy"),
           diagnostics.register(broken, name="kube events")]
    yield
    for undo in off:
        undo()
'''

TEST_MODULE = 'from pytest_bdd import scenarios\n\nscenarios("evidence_demo.feature")\n'

INI = """\
[pytest]
addopts = -p no:cacheprovider
bdd_features_base_dir = features/
markers =
    netadmin: needs CAP_NET_ADMIN
log_level = INFO
"""


def write_project(root: Path, secrets: Secrets) -> Path:
    """The project files, id.json, the probe directory and the secrets file the steps read."""
    (root / "features").mkdir(parents=True, exist_ok=True)
    (root / "features" / "evidence_demo.feature").write_text(FEATURE)
    (root / "features" / "test_demo.py").write_text(TEST_MODULE)
    (root / "steps.py").write_text(STEPS)
    (root / "conftest.py").write_text(CONFTEST)
    (root / "pytest.ini").write_text(INI)
    keys = root / "keys"
    keys.mkdir(exist_ok=True)
    id_json = keys / "id.json"
    id_json.write_text(secrets.id_json)
    probe = root / "probe"
    write_probe(probe, ProbeSpec(
        duration_s=12.0, rate=200.0, shift_at=6.02,
        events=((0.0, "probe started", "200 req/s, GET /health + POST getSlot"),
                (4.1, "blue healthy", "blue answered ok"), (6.0, "upstreams reordered", "blue first"),
                (6.9, "green stopped", "SIGTERM, exited 0"), (12.0, "probe stopped", "")),
        failures=(Failure(1203, "conn_error", "connection reset by peer", None, GREEN),
                  Failure(1205, "http_error", "502 Bad Gateway from Caddy", 502, None),
                  Failure(1380, "timeout", "no answer within 2s", None, None)),
        spike=(6.0, 6.12, 48.0)))
    secrets_file = root / "secrets.json"
    secrets_file.write_text(json.dumps({"token": secrets.token, "id_json_path": str(id_json), "base58": secrets.base58,
                                        "pubkey": secrets.pubkey, "probe_dir": str(probe), "green": GREEN,
                                        "blue": BLUE}))
    return secrets_file


def run_project(root: Path, reports: Path, secrets: Secrets, *extra: str) -> subprocess.CompletedProcess[str]:
    secrets_file = write_project(root, secrets)
    env = {**os.environ, "RB_SAMPLE_SECRETS": str(secrets_file),
           "PYTHONPATH": os.pathsep.join([str(root), str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "pytest", "-q", f"--html={reports}/report.html",
            "--self-contained-html", f"--junitxml={reports}/junit.xml", f"--cucumberjson={reports}/cucumber.json",
            "-o", "junit_logging=all", *extra]
    return subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)

"""The zai-proxy stand-in images kind gets (seed 004): built from Dockerfile.standin's zai-proxy targets as
``runbook.testbed.kind_images`` lists them, then run with the canary manifest's arguments. The image reports
its tag as its version, and a failure build fails as its name says (``-errors``: exactly 1 completion in 5
answered 500); the plain build serves every completion.

The container has no network (``--network none``): the probe runs inside it (``docker exec``), so nothing
binds a port of this machine. Every container started here is removed, pass or fail.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook import kustomize as kz
from runbook.testbed.base_image import build_context, build_standin_images, ensure_base_image
from runbook.testbed.docker_engine import DockerEngine
from runbook.testbed.kind_images import CANARY_MANIFESTS, zai_proxy_build
from runbook.wait import wait_for

pytestmark = pytest.mark.container

PROBE = """
import json, sys, urllib.error, urllib.request
base = "http://127.0.0.1:8080"
def get(path):
    with urllib.request.urlopen(base + path, timeout=5) as r:
        return r.status, r.read().decode()
if sys.argv[1] == "health":
    print(json.dumps(get("/health")))
    raise SystemExit
statuses = []
for i in range(int(sys.argv[2])):
    body = json.dumps({"model": "glm-4.6", "messages": [{"role": "user", "content": "hello there"}]}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            statuses.append(r.status)
    except urllib.error.HTTPError as e:
        statuses.append(e.code)
print(json.dumps({"statuses": statuses, "version": json.loads(get("/version")[1]), "metrics": get("/metrics")[1]}))
"""


@pytest.fixture(scope="module")
def images(engine: DockerEngine, figures: dict[str, str]) -> list[str]:
    base = ensure_base_image(engine)
    builds = [zai_proxy_build("1.3.0-errors-canary"), zai_proxy_build("1.3.0")]
    context = build_context(Path(tempfile.mkdtemp(prefix="runbook-zai-context-")) / "context")
    built = build_standin_images(engine, base.tag, builds, context)
    for img in built:
        figures[f"build {img.target} {img.version}"] = f"{img.seconds:.1f}s ({', '.join(img.tags)})"
    return [b.tags[0] for b in builds]


@pytest.fixture
def run(engine: DockerEngine) -> Iterator[list[str]]:
    started: list[str] = []
    yield started
    for name in started:
        engine.docker("rm", "-f", name, check=False, what=f"removing {name}")


def canary_args() -> list[str]:
    dep = next(d for d in kz.build(CANARY_MANIFESTS) if d["kind"] == "Deployment" and d["metadata"]["name"]
               == "zai-proxy-test")
    args: list[str] = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return [a.replace("$(POD_IP)", "127.0.0.1") for a in args]  # what the kubelet expands


def serve(engine: DockerEngine, run: list[str], image: str, requests: int) -> dict[str, object]:
    name = f"runbook-zai-{secrets.token_hex(3)}"
    run.append(name)
    engine.docker("run", "-d", "--name", name, "--network", "none", image, *canary_args(), what=f"running {image}")

    def health() -> str:
        out = engine.docker("exec", name, "python", "-c", PROBE, "health", check=False)
        return out.stdout.strip()

    wait_for(health, lambda s: s == json.dumps([200, "ok"]), timeout=60, interval=0.5,
             what=f"{image} to answer /health")
    out = engine.docker("exec", name, "python", "-c", PROBE, "complete", str(requests), what="completions")
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_failure_build_reports_its_tag_and_fails_one_completion_in_five(
        engine: DockerEngine, images: list[str], run: list[str]) -> None:
    errors, plain = images
    out = serve(engine, run, errors, 20)
    statuses = out["statuses"]
    assert isinstance(statuses, list)
    assert (statuses.count(500), statuses.count(200)) == (4, 16)
    assert isinstance(out["version"], dict) and out["version"]["version"] == "1.3.0-errors-canary"
    assert 'zai_proxy_requests_total{status="500",variant="canary"} 4' in str(out["metrics"])
    healthy = serve(engine, run, plain, 20)
    assert healthy["statuses"] == [200] * 20
    assert isinstance(healthy["version"], dict) and healthy["version"]["version"] == "1.3.0"

"""Seed 003's images for kind (e6data/storage, e6data/schema, e6data/meta-gateway): built from Dockerfile.standin's
meta-* targets as ``runbook.testbed.kind_images.meta_build`` names them, on the session's stand-in build (the
``stack`` fixture's: the ``standin`` stage is cached, each meta image adds only its entrypoint and version), then
run with the release manifests' arguments and mounts.

The service reports the image's tag as its version and its colour from the mounted service.properties; the
``-crash`` build exits 1; the gateway, in the service's network namespace, routes to it by name and its image's
``meta-gateway config`` CLI (exec'd as the runbook execs it) prints the config the process loaded. The
containers have no network (``--network none``, the gateway joining the service's); every one is removed.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbook import kustomize as kz
from runbook.testbed.base_image import build_standin_images
from runbook.testbed.docker_engine import DockerEngine
from runbook.testbed.kind_images import RELEASE_MANIFESTS, meta_build
from runbook.wait import wait_for
from tests.container.conftest import Stack

pytestmark = pytest.mark.container

PROBE = """
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(json.dumps([r.status, dict(r.headers), r.read().decode()]))
except Exception as e:
    print(json.dumps([None, {}, repr(e)]))
"""


@pytest.fixture(scope="module")
def images(stack: Stack, figures: dict[str, str]) -> dict[str, str]:
    builds = {"storage": meta_build("storage", "1.1.0"), "crash": meta_build("schema", "1.1.0-crash"),
              "gateway": meta_build("gateway", "1.1.0")}
    context = stack.work / "context"  # the session's: the same files, so the standin stage is a cache hit
    start = time.monotonic()
    for img in build_standin_images(stack.engine, stack.base.tag, list(builds.values()), context):
        figures[f"build {img.target} {img.version}"] = f"{img.seconds:.1f}s ({', '.join(img.tags)})"
    figures["build meta images"] = f"{time.monotonic() - start:.1f}s for {len(builds)} (standin stage cached)"
    return {k: b.tags[0] for k, b in builds.items()}


@pytest.fixture
def run(engine: DockerEngine) -> Iterator[list[str]]:
    started: list[str] = []
    yield started
    for name in started:
        engine.docker("rm", "-f", name, check=False, what=f"removing {name}")


def container(kustomization: Path, name: str) -> dict[str, Any]:
    dep = next(d for d in kz.kustomize(kustomization) if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
    c: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return c


def args_of(c: dict[str, Any], **replace: str) -> list[str]:
    """The container's args as the kubelet expands them ($(POD_IP): the container's own loopback here)."""
    out = [str(a).replace("$(POD_IP)", "127.0.0.1") for a in c["args"]]
    for flag, value in replace.items():
        out[out.index(f"--{flag}") + 1] = value
    return out


def probe(engine: DockerEngine, name: str, url: str) -> list[Any]:
    out = engine.docker("exec", name, "python", "-c", PROBE, url, check=False)
    return list(json.loads(out.stdout)) if out.stdout.strip() else [None, {}, out.stderr]


def test_service_crash_and_gateway_images(engine: DockerEngine, images: dict[str, str], run: list[str],
                                          tmp_path: Path) -> None:
    svc_c = container(RELEASE_MANIFESTS / "colour", "meta-storage-blue")
    mount = next(m["mountPath"] for m in svc_c["volumeMounts"])
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "service.properties").write_text("COMPONENT=storage\nCOLOUR=green\n")
    svc = f"runbook-meta-{secrets.token_hex(3)}"
    run.append(svc)
    engine.docker("run", "-d", "--name", svc, "--network", "none", "-e", "POD_NAME=meta-storage-green-abc12",
                  "-v", f"{tmp_path / 'svc'}:{mount}:ro", images["storage"], *args_of(svc_c), what="running storage")
    first = wait_for(lambda: probe(engine, svc, "http://127.0.0.1:8080/buckets"), lambda r: r[0] == 200,
                     timeout=60, interval=0.3, what="the storage image to answer")
    assert json.loads(first[2]) == {"component": "storage", "colour": "green", "version": "1.1.0",
                                    "pod": "meta-storage-green-abc12", "path": "/buckets"}

    crash_c = container(RELEASE_MANIFESTS / "colour", "meta-schema-blue")
    crash = f"runbook-meta-{secrets.token_hex(3)}"
    run.append(crash)
    engine.docker("run", "-d", "--name", crash, "--network", "none", "-v", f"{tmp_path / 'svc'}:{mount}:ro",
                  images["crash"], *args_of(crash_c), what="running the crash build")
    code = engine.docker("wait", crash, timeout=60, what="the crash build to exit").stdout.strip()
    assert code == "1"

    gw_c = container(RELEASE_MANIFESTS, "meta-gateway")
    gw_mount = next(m["mountPath"] for m in gw_c["volumeMounts"])
    (tmp_path / "gw").mkdir()
    (tmp_path / "gw" / "config.properties").write_text("STORAGE_SERVICE_HOST=localhost\nSCHEMA_SERVICE_HOST=nowhere\n")
    gw = f"runbook-meta-{secrets.token_hex(3)}"
    run.append(gw)
    engine.docker("run", "-d", "--name", gw, "--network", f"container:{svc}", "-v",
                  f"{tmp_path / 'gw'}:{gw_mount}:ro", images["gateway"], *args_of(gw_c, port="9090"),
                  what="running the gateway")  # beside the service: its own port, the service's on 8080
    routed = wait_for(lambda: probe(engine, svc, "http://127.0.0.1:9090/storage/x"), lambda r: r[0] == 200,
                      timeout=60, interval=0.3, what="the gateway image to route")
    headers = {k.lower(): v for k, v in routed[1].items()}
    assert (headers["x-meta-upstream"], headers["x-meta-colour"], headers["x-meta-version"]) == (
        "localhost", "green", "1.1.0")
    cli = engine.docker("exec", gw, "meta-gateway", "config", what="meta-gateway config")
    loaded = json.loads(cli.stdout)
    assert (loaded["storage"], loaded["schema"], loaded["version"], loaded["config"]) == (
        "localhost", "nowhere", "1.1.0", f"{gw_mount}/config.properties")

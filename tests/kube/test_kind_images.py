"""Every image a scenario deploys on kind is built by the kind testbed, and the never-catching-up build
behaves as on the local testbed (issue 8: the stuck build was not built, so its scenario failed at
ErrImagePull and passed for the wrong reason).

The scan here is independent of :mod:`runbook.testbed.kind_images`: it takes every version and image
reference in features/, envs/ and the CI workflow, and asks that the image a scenario would deploy for it
(the upgrade: green's repository with that tag; the DZ procedure: the sidecar's) is among the built tags.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from runbook.env import PROJECT_ROOT, load_env
from runbook.errors import ConfigError
from runbook.manifests import render_deployment, split_image
from runbook.procedures.bluegreen import image_with_tag
from runbook.testbed import kind, kind_images

VERSION = re.compile(r"\bv\d+\.\d+\.\d+(?:-[a-z][\w]*)?")
IMAGE = re.compile(r"[a-z0-9][a-z0-9.-]*/[a-z0-9][\w.-]*:v\d+\.\d+\.\d+[\w.-]*")


def built_tags(**kw: Any) -> set[str]:
    return {t for _, _, tags in kind.image_builds(load_env("kind"), **kw) for t in tags}


def versions_in(*paths: Path) -> set[str]:
    found = set()
    for root in paths:
        for f in sorted(root.rglob("*") if root.is_dir() else [root]):
            # a hard-fork feature's versions are the Sei node's (tests/testbed/test_hardfork_stack.py scans them)
            if f.suffix in (".feature", ".yaml", ".yml") and not f.name.startswith("hardfork"):
                found |= {m.rstrip(".") for m in VERSION.findall(f.read_text())}
    return found


def deployable(version: str) -> set[str]:
    """The images a scenario on kind deploys for ``version``: the upgrade tags green's image, the DZ
    procedure the sidecar's."""
    env = load_env("kind")
    spec = render_deployment(env, "green")["spec"]["template"]["spec"]
    return {image_with_tag(c["image"], version) for c in [*spec["initContainers"], *spec["containers"]]}


def test_every_version_in_features_envs_and_the_workflow_is_built_for_kind() -> None:
    tags = built_tags()
    versions = versions_in(PROJECT_ROOT / "features", PROJECT_ROOT / "envs")
    for wf in (PROJECT_ROOT / ".github" / "workflows").glob("*.yml"):  # the CI's upgrade target
        versions |= set(re.findall(r"--target-version[= ](v[\w.-]+)", wf.read_text()))
    assert {"v2.2.1-stuck", "v0.6.1", "v2.1.0", "v2.2.1"} <= versions  # the scan sees what the features name
    missing = {v: sorted(deployable(v)) for v in versions if not deployable(v) & tags}
    assert not missing, f"versions a scenario deploys but kind never builds: {missing}"


def test_every_image_reference_in_envs_and_manifests_is_built() -> None:
    tags = built_tags()
    refs = set()
    for f in [*(PROJECT_ROOT / "envs").glob("*.yaml"), *(PROJECT_ROOT / "deploy" / "k8s").rglob("*.yaml")]:
        refs |= {r for r in IMAGE.findall(f.read_text()) if "{" not in r}
    assert "runbook/agave-standin:v2.1.0" in refs
    assert set(kind_images.UPSTREAM_IMAGES) <= refs  # pulled by the node, not built (kind_images.py)
    refs -= set(kind_images.UPSTREAM_IMAGES)
    assert not refs - tags, f"images named but not built: {sorted(refs - tags)}"


def test_the_stuck_build_is_built_under_the_name_the_scenario_deploys() -> None:
    """The old list had laconicnetwork/agave:v2.2.1 but no -stuck tag: ErrImagePull on kind."""
    stuck = image_with_tag(load_env("kind").deployments.green.image or "", "v2.2.1-stuck")
    assert stuck == "runbook/agave-standin:v2.2.1-stuck"
    builds = {b.tags[0]: b for b in kind.image_builds(load_env("kind"))}
    assert stuck in built_tags()
    assert builds["laconicnetwork/agave:v2.2.1-stuck"].target == "agave-stuck"
    assert builds["laconicnetwork/agave:v2.2.1-stuck"].version == "2.2.1"  # reports 2.2.1, as on local


def test_a_version_a_new_feature_names_is_built(tmp_path: Path) -> None:
    (tmp_path / "new.feature").write_text(
        "Feature: x\n  Scenario: y\n    When the agave upgrade runs to \"v2.3.0\"\n"
        "    And the doublezerod sidecar image is patched to v0.7.0 in the running pod\n")
    tags = built_tags(features_dir=tmp_path)
    assert {"runbook/agave-standin:v2.3.0", "laconicnetwork/doublezero:v0.7.0"} <= tags
    assert "laconicnetwork/agave:v0.7.0" not in tags


def test_a_version_with_no_component_before_it_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.feature").write_text("Feature: x\n  Scenario: y\n    When something runs v9.9.9\n")
    with pytest.raises(ConfigError, match=r"bad.feature:3: cannot tell which image v9.9.9 is a version of"):
        kind.image_builds(load_env("kind"), features_dir=tmp_path)


def test_a_variant_the_local_testbed_does_not_define_is_refused(tmp_path: Path) -> None:
    (tmp_path / "v.feature").write_text(
        "Feature: x\n  Scenario: y\n    When the agave upgrade runs to \"v2.2.1-slow\"\n")
    with pytest.raises(ConfigError, match="variant 'slow' has no stand-in behaviour"):
        kind.image_builds(load_env("kind"), features_dir=tmp_path)


def test_the_variant_arguments_are_the_local_testbeds() -> None:
    assert kind_images.variant_args(load_env("local")) == {("agave", "stuck"): ("--fail", "never-healthy"),
                                                           ("sei", "panic-at-upgrade"): ("--fail", "panic-at-upgrade")}


def stage_entrypoint(dockerfile: Path, target: str) -> list[str]:
    """The exec-form ENTRYPOINT of ``target`` in ``dockerfile``."""
    found: list[str] | None = None
    in_stage = False
    for line in dockerfile.read_text().splitlines():
        m = re.match(r"(?i)^FROM\s+\S+(?:\s+AS\s+([\w.-]+))?\s*$", line)
        if m:
            in_stage = m.group(1) == target
        elif in_stage and line.startswith("ENTRYPOINT "):
            found = list(json.loads(line.split(None, 1)[1]))
    assert found is not None, f"stage {target} has no ENTRYPOINT"
    return found


def test_the_stuck_image_runs_the_validator_with_the_local_failure_mode(tmp_path: Path) -> None:
    """Run the variant's entrypoint as the container runtime would (entrypoint + the pod's args) with a
    `python` that prints its argv: the validator gets --fail never-healthy, then the pod's args."""
    base = stage_entrypoint(kind.DOCKERFILE, "agave")
    text = kind_images.variant_dockerfile("runbook/agave-standin:v2.2.1", base, ("--fail", "never-healthy"))
    lines = text.splitlines()
    assert lines[0] == "FROM runbook/agave-standin:v2.2.1"
    entrypoint = json.loads(lines[1].removeprefix("ENTRYPOINT "))
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    pod_args = ["--rpc-port", "8897", "--ledger", "/ledger"]
    out = subprocess.run([*entrypoint, *pod_args], capture_output=True, text=True, check=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin", "RUNBOOK_IMAGE_VERSION": "2.2.1"}).stdout.split()
    assert out[:4] == ["-m", "runbook.testbed.validator", "--version", "2.2.1"]
    assert out[-6:] == ["--fail", "never-healthy", *pod_args]


def test_build_and_load_builds_the_variant_on_its_plain_image(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], bytes | None]] = []
    entrypoint = ["python", "-m", "runbook.testbed.validator"]

    def fake_run(argv: list[str], *, env: Any, what: str, stdin: bytes | None = None, timeout: float = 0) -> str:
        calls.append((list(argv), stdin))
        return json.dumps(entrypoint) if argv[:3] == ["docker", "image", "inspect"] else ""

    monkeypatch.setattr(kind, "_run", fake_run)
    builds = kind.image_builds(load_env("kind"))
    kind._build_and_load(load_env("kind"), "runbook", builds, lambda _: None)
    built = [c for c in calls if c[0][:2] == ["docker", "build"]]
    order = [next(a for a in argv if ":" in a and a.startswith("laconicnetwork/agave")) for argv, _ in built
             if any(a.startswith("laconicnetwork/agave") for a in argv)]
    assert order.index("laconicnetwork/agave:v2.2.1") < order.index("laconicnetwork/agave:v2.2.1-stuck")
    argv, stdin = next(c for c in built if "laconicnetwork/agave:v2.2.1-stuck" in c[0])
    assert argv[-1] == "-" and "--target" not in argv
    assert stdin is not None
    assert stdin.decode().splitlines() == ["FROM laconicnetwork/agave:v2.2.1",
                                           "ENTRYPOINT " + json.dumps([*entrypoint, "--fail", "never-healthy"])]
    load = next(c[0] for c in calls if c[0][:2] == ["kind", "load"])
    assert {"runbook/agave-standin:v2.2.1-stuck", "laconicnetwork/agave:v2.2.1-stuck"} <= set(load)
    for argv, _ in built:
        if "--target" in argv:
            assert argv[argv.index("--target") + 1] in kind_images.dockerfile_targets(kind.DOCKERFILE)
    assert split_image("laconicnetwork/agave:v2.2.1-stuck")[1] == "v2.2.1-stuck"

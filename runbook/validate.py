"""Static validation, offline: every Kubernetes manifest against the API schemas, every workflow against
GitHub's workflow schema.

    python -m runbook.validate            # both; exit 0 only when everything is valid
    python -m runbook.validate manifests  # kubernetes-validate --strict, Kubernetes 1.32 and the newest
    python -m runbook.validate workflows  # check-jsonschema --builtin-schema vendor.github-workflows

Manifests are checked as they are applied: the kustomize builds of base and overlays, the per-namespace
objects, the kind testbed's objects, and the Deployment :func:`runbook.manifests.render_deployment` makes
for every colour of every env. Both tools are dev dependencies (``pip install -e ".[dev]"``); their
schemas ship inside the packages, so nothing is fetched.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from runbook.env import PROJECT_ROOT, known_envs, load_env
from runbook.errors import RunbookError
from runbook.kustomize import kustomize
from runbook.manifests import COLOURS, all_manifests, cluster_manifests, render_deployment

MIN_VERSION = "1.32.0"  # in-place native-sidecar image updates (design trap 5)
WORKFLOW_SCHEMA = "vendor.github-workflows"
RELEASE_DIR = PROJECT_ROOT / "deploy" / "k8s" / "release"


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, manifest) for every manifest the project ships or renders."""
    for source, docs in all_manifests().items():
        for i, doc in enumerate(docs):
            yield f"{source}[{i}]", doc
    # seed 003: the base and the colour template; seed 004's proxy and Prometheus; seeds 001/002's node set
    k8s = RELEASE_DIR.parent
    for release in (RELEASE_DIR, RELEASE_DIR / "colour", k8s / "canary", k8s / "hardfork"):
        for i, doc in enumerate(kustomize(release)):
            yield f"{release.relative_to(PROJECT_ROOT)}[{i}]", doc
    for name in known_envs():
        env = load_env(name)
        for colour in COLOURS:
            yield f"render_deployment(env={name}, colour={colour})", render_deployment(env, colour)
        if env.kube is not None:
            for i, doc in enumerate(cluster_manifests(env)):
                yield f"cluster_manifests(env={name})[{i}]", doc


def schema_versions() -> list[str]:
    from kubernetes_validate.utils import latest_version

    return sorted({MIN_VERSION, latest_version()}, key=lambda v: tuple(int(x) for x in v.split(".")))


def validate_manifests() -> list[str]:
    """Problems found (empty: all valid), strict mode: unknown fields are errors."""
    try:
        import kubernetes_validate
    except ImportError:
        return ["kubernetes-validate is not installed (pip install -e '.[dev]')"]
    problems = []
    versions = schema_versions()
    count = 0
    for where, doc in manifests():
        count += 1
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path) or "(top)"
                problems.append(f"{where}: Kubernetes {version}: {path}: {exc.message}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.VersionNotSupportedError) as exc:
                problems.append(f"{where}: Kubernetes {version}: {exc.message}")
    print(f"manifests: {count} checked against Kubernetes {' and '.join(versions)} (strict): "
          f"{'ok' if not problems else f'{len(problems)} problem(s)'}")
    return problems


def validate_workflows() -> list[str]:
    files = sorted(str(p) for p in (PROJECT_ROOT / ".github" / "workflows").glob("*.y*ml"))
    if not files:
        return ["no workflow under .github/workflows"]
    out = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", WORKFLOW_SCHEMA, *files],
                         capture_output=True, text=True, timeout=120)
    print(f"workflows: {len(files)} checked against {WORKFLOW_SCHEMA}: {'ok' if out.returncode == 0 else 'FAILED'}")
    if out.returncode != 0:
        return [(out.stdout + out.stderr).strip() or f"check-jsonschema exited {out.returncode}"]
    return []


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    what = set(args) or {"manifests", "workflows"}
    unknown = what - {"manifests", "workflows"}
    if unknown:
        print(f"usage: python -m runbook.validate [manifests] [workflows] (unknown: {', '.join(sorted(unknown))})",
              file=sys.stderr)
        return 2
    try:
        problems = (validate_manifests() if "manifests" in what else []) + (
            validate_workflows() if "workflows" in what else [])
    except RunbookError as exc:
        problems = [str(exc)]
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

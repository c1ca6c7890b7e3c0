"""The kind testbed: ``runbook testbed up --env=kind`` / ``down``.

``up`` needs ``kind`` and a working container engine (Docker). Without them it stops at once with one
message saying exactly what is missing. With them it creates the cluster (``deploy/kind/kind-config.yaml``,
named after the env's ``kind-<name>`` context), builds the stand-in images (``deploy/kind/Dockerfile.standin``)
under their stand-in and production names (every image a scenario can deploy, derived from the env, its
manifests and the features: :mod:`runbook.testbed.kind_images`) and loads them into the node, prepares
the node's host paths and the DZ identity, applies the namespace and RBAC, Caddy (from the production
template) and the cluster-tip stand-in, deploys green, and waits until the ingress answers ``ok``.
"""

from __future__ import annotations

import copy
import json
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from runbook.env import PROJECT_ROOT, Env, load_env
from runbook.errors import ConfigError, KubeError, TestbedError
from runbook.manifests import cluster_manifests, load_documents, render_deployment
from runbook.testbed import kind_images
from runbook.testbed.kind_images import ImageBuild
from runbook.wait import wait_for

KIND_DIR = PROJECT_ROOT / "deploy" / "kind"
KIND_CONFIG = KIND_DIR / "kind-config.yaml"
DOCKERFILE = KIND_DIR / "Dockerfile.standin"
TESTBED_MANIFESTS = KIND_DIR / "testbed.yaml"
STANDIN_IMAGE = "runbook/standin:kind"
AGAVE_VERSIONS = ("2.1.0", "2.2.1")
DOUBLEZERO_VERSIONS = ("0.6.0", "0.6.1")
DZ_CONFIG_DIR = "/srv/deployments/agave/data/doublezero-config"

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# --------------------------------------------------------------------------- prerequisites


def missing_prerequisites(*, timeout: float = 5.0) -> list[str]:
    """What this machine lacks to run a kind cluster, one line per missing thing (empty: nothing)."""
    missing = []
    if shutil.which("kind") is None:
        missing.append("`kind` is not on PATH (install it: https://kind.sigs.k8s.io/docs/user/quick-start/)")
    docker = shutil.which("docker")
    if docker is None:
        missing.append("no container engine: the `docker` CLI is not on PATH")
    else:
        try:
            out = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                                 text=True, timeout=timeout)
            problem = "" if out.returncode == 0 else (out.stderr.strip().splitlines() or ["no answer"])[-1]
        except subprocess.TimeoutExpired:
            problem = f"no answer within {timeout:g}s"
        if problem:
            missing.append(f"no container engine: `docker info` fails ({problem})")
    return missing


def cluster_name(env: Env) -> str:
    """The kind cluster of a testbed env (its ``kind-<name>`` context). A production env is refused: biscayne
    runs in a kind cluster too, and the testbed must never create, load into or delete that one."""
    if env.production:
        raise TestbedError(f"env {env.name} is production: the kind testbed never creates, changes or deletes "
                           "its cluster", env=env.name)
    if env.kube is None or not env.kube.context.startswith("kind-"):
        context = env.kube.context if env.kube else "none"
        raise ConfigError(f"env {env.name} is not a kind env: its kube context must be kind-<cluster> "
                          f"(is {context})", env=env.name)
    return env.kube.context.removeprefix("kind-")


def _require(env: Env) -> str:
    name = cluster_name(env)
    missing = missing_prerequisites()
    if missing:
        raise TestbedError(f"cannot run the kind testbed on this machine: {'; '.join(missing)}", env=env.name)
    return name


def _run(argv: Sequence[str], *, env: Env, what: str, stdin: bytes | None = None, timeout: float = 900.0) -> str:
    try:
        out = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"{what}: `{' '.join(argv[:3])} ...` took over {timeout:g}s", env=env.name) from None
    if out.returncode != 0:
        err = out.stderr.decode(errors="replace").strip()[-800:]
        raise TestbedError(f"{what}: `{' '.join(argv)}` exited {out.returncode}: {err}", env=env.name)
    return out.stdout.decode(errors="replace")


def _kubeconfig_args(env: Env) -> list[str]:
    return ["--kubeconfig", str(Path(env.kube.kubeconfig).expanduser())] if env.kube and env.kube.kubeconfig else []


# --------------------------------------------------------------------------- images


def image_builds(env: Env, agave_versions: Sequence[str] = AGAVE_VERSIONS,
                 doublezero_versions: Sequence[str] = DOUBLEZERO_VERSIONS, *,
                 features_dir: Path = kind_images.FEATURES_DIR) -> list[ImageBuild]:
    """(target, version, tags) for every stand-in image a scenario on ``env`` can deploy, under production
    names and ``runbook/*-standin``: derived from the env, its manifests and the features
    (:mod:`runbook.testbed.kind_images`), plus the versions given (the CI's target)."""
    extra = {"agave": agave_versions, "doublezero": doublezero_versions}
    if env.hardfork is not None:  # seeds 001/002: the incumbents' and the hard fork's releases
        extra["sei"] = kind_images.SEI_VERSIONS
    wants = kind_images.wanted(env, extra=extra, features_dir=features_dir)
    return [ImageBuild("standin", "", [STANDIN_IMAGE]),
            *kind_images.builds(wants, kind_images.variant_args(load_env("local"))),
            *kind_images.zai_proxy_builds(),  # seed 004's proxy (deploy/k8s/canary)
            *kind_images.meta_builds(),  # seed 003's application "meta" (deploy/k8s/release)
            *(kind_images.hardfork_builds() if env.hardfork is not None else [])]  # seeds 001/002's S3 store


def _build_variant(env: Env, build: ImageBuild, built: Sequence[ImageBuild]) -> None:
    """``<target>-<variant>`` with no stage of that name in Dockerfile.standin: the plain image of the same
    version with the local testbed's variant arguments appended to its entrypoint."""
    component, _, variant = build.target.partition("-")
    base = next((b.tags[0] for b in built if b.target == component and b.version == build.version), None)
    if base is None:
        raise TestbedError(f"{build.tags[0]}: its plain image ({component} {build.version}) is not built",
                           env=env.name, obj=build.tags[0])
    args = kind_images.variant_args(load_env("local"))[(component, variant)]
    entrypoint = json.loads(_run(["docker", "image", "inspect", "-f", "{{json .Config.Entrypoint}}", base], env=env,
                                 what=f"reading the entrypoint of {base}"))
    dockerfile = kind_images.variant_dockerfile(base, entrypoint, args)
    _run(["docker", "build", *(x for t in build.tags for x in ("-t", t)), "-"], env=env,
         what=f"building the {build.target} stand-in image", stdin=dockerfile.encode())


def _build_and_load(env: Env, name: str, builds: Sequence[ImageBuild], say: Progress) -> None:
    targets = kind_images.dockerfile_targets(DOCKERFILE)
    for i, build in enumerate(builds):
        target, version, tags = build
        say(f"building {', '.join(tags)}")
        if target not in targets:
            _build_variant(env, build, builds[:i])
            continue
        argv = ["docker", "build", "-f", str(DOCKERFILE), "--target", target]
        if version:
            argv += ["--build-arg", f"RUNBOOK_IMAGE_VERSION={version}"]
        for t in tags:
            argv += ["-t", t]
        _run([*argv, str(PROJECT_ROOT)], env=env, what=f"building the {target} stand-in image")
    every = [t for _, _, tags in builds for t in tags]
    say(f"loading {len(every)} images into kind cluster {name}")
    _run(["kind", "load", "docker-image", "--name", name, *every], env=env, what="loading images into kind")


# --------------------------------------------------------------------------- manifests


def caddyfile(env: Env) -> str:
    """The production Caddyfile template rendered for Caddy inside the kind node: listening on the node's
    addresses (so the host's port mappings reach it), admin origins the suite's loopback URL."""
    from runbook.testbed import caddy

    site_port, admin_port = env.ingress.port, env.ingress.admin_port
    admin = (f"0.0.0.0:{admin_port} {{\n\t\torigins 127.0.0.1:{admin_port} localhost:{admin_port}\n\t}}")
    return caddy.render(env.ingress.template, env, site=f"http://:{site_port}", admin=admin,
                        global_options="\tauto_https off\n\tskip_install_trust\n")


def testbed_manifests(env: Env, caddyfile_text: str) -> list[dict[str, Any]]:
    """Caddy (ConfigMap + Deployment) and the cluster-tip stand-in, in the env's namespace."""
    assert env.kube is not None
    port = urlsplit(env.cluster_rpc[0]).port or 80
    docs = copy.deepcopy(load_documents(TESTBED_MANIFESTS))
    for d in docs:
        d["metadata"]["namespace"] = env.kube.namespace
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "caddy":
            d["data"]["Caddyfile"] = caddyfile_text
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "cluster-rpc":
            d["spec"]["template"]["spec"]["containers"][0]["args"] = [
                "runbook.testbed.cluster", "--port", str(port), "--bind", "0.0.0.0"]
    return docs


SYSTEMS = {"canary": PROJECT_ROOT / "deploy" / "k8s" / "canary",  # seed 004's proxy, its Services, Prometheus
           "release": PROJECT_ROOT / "deploy" / "k8s" / "release",  # seed 003's common ConfigMap and gateway
           "hardfork": PROJECT_ROOT / "deploy" / "k8s" / "hardfork"}  # seeds 001/002: S3, validator, incumbents


def system_manifests(env: Env) -> list[dict[str, Any]]:
    """The other systems' always-there objects, for those the env has a section for, in the env's namespace
    (their colours, revisions and releases are the procedures' to make)."""
    from runbook.kustomize import kustomize

    assert env.kube is not None
    docs = []
    for section, directory in SYSTEMS.items():
        if getattr(env, section) is None:
            continue
        for d in kustomize(directory):
            if d.get("kind") not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
                d.setdefault("metadata", {})["namespace"] = env.kube.namespace
            docs.append(d)
    return docs


def _server_side_apply(env: Env, docs: Sequence[dict[str, Any]]) -> None:
    """Server-side apply (idempotent: a re-run of ``up`` converges) of any kind of object."""
    from kubernetes import dynamic
    from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError

    from runbook.adapters.kube_api import call, connect

    api_client, target = connect(env)
    try:
        client = dynamic.DynamicClient(api_client)
    except (DynamicApiError, OSError) as exc:
        raise KubeError(f"cannot discover the API of {target.server} (context {target.context}): {exc}",
                        env=env.name) from None
    for d in docs:
        obj = f"{d['kind'].lower()}/{d['metadata']['name']}"
        try:
            resource = client.resources.get(api_version=d["apiVersion"], kind=d["kind"])
        except ResourceNotFoundError:
            raise KubeError(f"the cluster has no {d['apiVersion']} {d['kind']}", env=env.name, obj=obj) from None
        call(client.server_side_apply, resource, body=d, name=d["metadata"]["name"],
             namespace=d["metadata"].get("namespace"), field_manager="runbook", force_conflicts=True,
             action="apply", obj=obj, target=target, timeout=30.0)


# --------------------------------------------------------------------------- up / down


def _identity_seed(env: Env, seed: str | None) -> bytes:
    """The throwaway DZ identity of the testbeds (the local env's), checked against the env's expectation."""
    from runbook.testbed import keypair

    if seed is None:
        local = load_env("local")
        if local.testbed is None:
            raise TestbedError("the local env has no testbed.identity_seed to share with kind", env=env.name)
        seed = local.testbed.identity_seed
    raw = bytes.fromhex(seed)
    if keypair.pubkey_from_seed(raw) != env.doublezero.expected_identity:
        raise TestbedError(f"the testbed identity is not doublezero.expected_identity of env {env.name}",
                           env=env.name)
    return raw


def _prepare_node(env: Env, node: str, seed: bytes, say: Progress) -> None:
    import tempfile

    from runbook.testbed import keypair

    green = env.deployments.green
    dirs = ["/srv/solana/ledger", "/srv/solana/snapshots", green.accounts, DZ_CONFIG_DIR]
    say(f"preparing host paths on node {node}: {', '.join(dirs)}")
    _run(["docker", "exec", node, "mkdir", "-p", *dirs], env=env, what="preparing the node's host paths")
    keys = {f"{DZ_CONFIG_DIR}/id.json": seed}  # the DZ identity (both colours' sidecars share it)
    for colour in ("green", "blue"):  # each colour's own validator identity, as an operator provisions them
        ident = env.deployments.colour(colour).identity
        if ident:
            keys[ident] = keypair.colour_seed(seed, colour)
    with tempfile.TemporaryDirectory() as tmp:
        for target, key_seed in keys.items():
            path = Path(tmp) / "id.json"
            keypair.write_keypair(path, key_seed)
            # through stdin: the private key is never on a command line or in a log
            where = shlex.quote(target)
            _run(["docker", "exec", "-i", node, "sh", "-c",
                  f"umask 077; mkdir -p \"$(dirname {where})\"; cat > {where}"],
                 env=env, what=f"installing a keypair at {target}", stdin=path.read_bytes())


def up(env: Env, *, progress: Progress | None = None, identity_seed: str | None = None,
       agave_versions: Sequence[str] = AGAVE_VERSIONS,
       doublezero_versions: Sequence[str] = DOUBLEZERO_VERSIONS) -> None:
    """Create (or reuse) the kind cluster and bring green, Caddy and the cluster tip up, healthy."""
    from runbook.adapters.kube import KubeWorkloads

    say = progress or _quiet
    name = _require(env)
    seed = _identity_seed(env, identity_seed)
    clusters = _run(["kind", "get", "clusters"], env=env, what="listing kind clusters").split()
    if name in clusters:
        say(f"kind cluster {name} exists: reusing it")
    else:
        say(f"creating kind cluster {name} ({KIND_CONFIG.relative_to(PROJECT_ROOT)})")
        _run(["kind", "create", "cluster", "--name", name, "--config", str(KIND_CONFIG), "--wait", "180s",
              *_kubeconfig_args(env)], env=env, what="creating the kind cluster")
    _build_and_load(env, name, image_builds(env, agave_versions, doublezero_versions), say)
    _prepare_node(env, f"{name}-control-plane", seed, say)
    say("applying namespace, RBAC, Caddy and the cluster tip")
    _server_side_apply(env, [*cluster_manifests(env), *testbed_manifests(env, caddyfile(env))])
    say("applying the other systems' objects (" + ", ".join(str(d.relative_to(PROJECT_ROOT)) for s, d in
                                                       SYSTEMS.items() if getattr(env, s) is not None) + ")")
    _server_side_apply(env, system_manifests(env))
    workloads = KubeWorkloads(env)
    say(f"deploying green ({env.deployments.green.name})")
    workloads.apply_deployment(render_deployment(env, "green"))
    for deployment in ("cluster-rpc", "caddy", env.deployments.green.name):
        say(f"waiting for {deployment} to roll out")
        workloads.wait_rollout(deployment, timeout=env.timeouts.rollout)
    health = f"{env.ingress.url}/health"
    say(f"waiting for {health} to answer ok")

    def probe() -> str:
        return httpx.get(health, timeout=5.0).text.strip()

    wait_for(probe, lambda body: body == "ok", timeout=env.timeouts.healthy, interval=2.0,
             what=f"{health} to answer ok", tolerate=(httpx.HTTPError,), env=env.name)
    say(f"kind testbed up: {env.ingress.url} -> {env.deployments.green.name}")


def down(env: Env, *, progress: Progress | None = None) -> None:
    """Delete the kind cluster (and with it everything ``up`` made). Absent: nothing to do."""
    say = progress or _quiet
    name = cluster_name(env)
    if shutil.which("kind") is None:
        raise TestbedError("cannot remove the kind testbed: `kind` is not on PATH", env=env.name)
    if name not in _run(["kind", "get", "clusters"], env=env, what="listing kind clusters").split():
        say(f"kind cluster {name} does not exist: nothing to remove")
        return
    say(f"deleting kind cluster {name}")
    _run(["kind", "delete", "cluster", "--name", name, *_kubeconfig_args(env)], env=env,
         what="deleting the kind cluster")


__all__ = ["caddyfile", "cluster_name", "down", "image_builds", "missing_prerequisites",
           "testbed_manifests", "up"]

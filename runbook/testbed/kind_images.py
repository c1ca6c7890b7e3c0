"""Which stand-in images the kind testbed builds: every image a scenario can deploy, derived, never listed.

Sources, so that a new image cannot be forgotten:

- the env's deployment images and the images of the manifests it deploys (``deploy/k8s``);
- every version a feature names (``features/*.feature``), as a version of the component the line names
  last before it: ``doublezero``, ``sidecar`` or ``dz`` (the doublezerod sidecar), ``agave`` (the
  validator) or ``sei``/``seid`` (seeds 001/002's node; in ``hardfork*.feature`` the default); a version with
  no such word before it is refused (:class:`ConfigError`), not guessed;
- the versions the caller adds (the CI's ``--target-version``).

A version with a suffix (``v2.2.1-stuck``) is a *variant*: the local testbed's image map
(``envs/local.yaml`` ``testbed.images``) says what it is, as extra arguments to the plain version's
command (``--fail never-healthy``). On kind it is built from the plain image with those arguments
appended to its entrypoint, so it behaves exactly as on the local testbed. When ``Dockerfile.standin``
has a target of the variant's name (``agave-stuck``) that target is built instead.

The zai-proxy stand-in of seed 004 (:func:`zai_proxy_builds`): ``ronaldraygun/zai-proxy:<tag>`` for the
production and canary versions and their failure builds (``-errors``, ``-slow``, ``-notokens``), each from
a ``Dockerfile.standin`` target (``zai-proxy``, ``zai-proxy-<failure>``) with the tag as its version.

Seed 003's application "meta" (:func:`meta_builds`): ``e6data/storage:<tag>`` and ``e6data/schema:<tag>`` for
every release number a release scenario can deploy, each plain and as its failure builds (``-crash``,
``-slow``), and ``e6data/meta-gateway:<tag>``, from the ``meta-<component>[-<failure>]`` targets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from runbook.env import PROJECT_ROOT, Env
from runbook.errors import ConfigError
from runbook.manifests import render_deployment, split_image

FEATURES_DIR = PROJECT_ROOT / "features"
VERSION = re.compile(r"(?<![\w.{])v(\d+\.\d+\.\d+)(?:-([a-z]\w*(?:[.-]\w+)*))?(?![\w-]|\.\d)")
STANDIN_REPOS = {"agave": ("laconicnetwork/agave", "runbook/agave-standin"),
                 "doublezero": ("laconicnetwork/doublezero", "runbook/doublezero-standin"),
                 "sei": ("sei", "runbook/sei-standin")}  # seeds 001/002's node (deploy/k8s/hardfork)
COMPONENT_WORDS = re.compile(r"\b(?:(?P<doublezero>doublezero\w*|sidecar|dz)|(?P<agave>agave)|(?P<sei>seid?))\b",
                             re.I)


class ImageBuild(NamedTuple):
    """One ``docker build``: a Dockerfile.standin target (or ``<target>-<variant>``), its version, its tags."""

    target: str
    version: str
    tags: list[str]


class Wanted(NamedTuple):
    component: str  # agave | doublezero
    version: str  # 2.2.1
    variant: str  # "" or stuck


def component_of(image: str) -> str | None:
    """``laconicnetwork/agave:v2.1.0`` / ``runbook/agave-standin:v2.1.0`` -> agave."""
    last = split_image(image)[0].rsplit("/", 1)[-1].removesuffix("-standin")
    return last if last in STANDIN_REPOS else None


def _parse_tag(tag: str) -> tuple[str, str] | None:
    m = VERSION.fullmatch(tag)
    return (m.group(1), m.group(2) or "") if m else None


def from_images(images: Iterable[str]) -> set[Wanted]:
    out = set()
    for image in images:
        component, parsed = component_of(image), _parse_tag(split_image(image)[1])
        if component and parsed:
            out.add(Wanted(component, *parsed))
    return out


def from_features(features_dir: Path = FEATURES_DIR) -> set[Wanted]:
    """Every version a feature names, as the image it is a version of."""
    out = set()
    for path in sorted(features_dir.glob("*.feature")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in VERSION.finditer(line):
                named = list(COMPONENT_WORDS.finditer(line, 0, m.start()))
                if not named and not path.name.startswith("hardfork"):
                    raise ConfigError(f"{path.name}:{n}: cannot tell which image {m.group(0)} is a version of: "
                                      f"no `agave`, `doublezero`, `sidecar`, `dz` or `sei` before it in "
                                      f"{line.strip()!r}", obj=str(path))
                # a hard-fork feature's versions are the Sei node's unless the line names another component
                component = next(k for k, v in named[-1].groupdict().items() if v) if named else "sei"
                out.add(Wanted(component, m.group(1), m.group(2) or ""))
    return out


def variant_args(local: Env) -> dict[tuple[str, str], tuple[str, ...]]:
    """(component, variant) -> the arguments the local testbed adds to the plain version's command."""
    images = local.testbed.images if local.testbed else {}
    out: dict[tuple[str, str], tuple[str, ...]] = {}
    for pattern, argv in images.items():
        name, tag, _ = split_image(pattern)
        m = re.fullmatch(r"v\{version\}-([a-z][\w.-]*)", tag)
        component = component_of(name + ":v0.0.0")
        if not m or component is None:
            continue
        plain = list(images.get(f"{name}:v{{version}}", []))
        if not plain or list(argv[:len(plain)]) != plain:
            raise ConfigError(f"testbed.images of env {local.name}: {pattern!r} must be {name}:v{{version}}'s "
                              f"command with arguments appended", env=local.name, obj=pattern)
        out[(component, m.group(1))] = tuple(argv[len(plain):])
    return out


def wanted(env: Env, *, extra: Mapping[str, Sequence[str]], features_dir: Path = FEATURES_DIR) -> set[Wanted]:
    """Every (component, version, variant) a scenario on ``env`` can deploy."""
    images = [d.image for d in (env.deployments.green, env.deployments.blue) if d.image]
    for colour in ("green", "blue"):
        spec = render_deployment(env, colour)["spec"]["template"]["spec"]
        images += [c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]]
    if getattr(env, "hardfork", None) is not None:  # seeds 001/002: the node set's images (sei:vX)
        images += hardfork_images()
    found = from_images(images) | from_features(features_dir)
    for component, default in (("agave", env.target_version), ("doublezero", env.doublezero.target_version)):
        if default:  # the env's default upgrade targets (the operator scenarios' on a testbed)
            found |= {Wanted(component, *(_parse_tag(default) or (default.removeprefix("v"), "")))}
    for component, versions in extra.items():
        found |= {Wanted(component, v.removeprefix("v"), "") for v in versions if v}
    return found | {Wanted(w.component, w.version, "") for w in found if w.variant}  # a variant needs its base


def builds(wants: Iterable[Wanted], variants: Mapping[tuple[str, str], tuple[str, ...]]) -> list[ImageBuild]:
    """The builds for ``wants``: plain versions first (a variant is built on top of its plain image)."""
    plain, derived = [], []
    for w in sorted(set(wants)):
        tag = f"v{w.version}" + (f"-{w.variant}" if w.variant else "")
        tags = [f"{repo}:{tag}" for repo in STANDIN_REPOS[w.component]]
        if not w.variant:
            plain.append(ImageBuild(w.component, w.version, tags))
        elif (w.component, w.variant) not in variants and w.component == "sei":
            continue  # a tag the local images map does not match (sei:v6.3.0-missing): ImagePullBackOff on both
        elif (w.component, w.variant) not in variants:
            raise ConfigError(f"image {tags[0]}: variant {w.variant!r} has no stand-in behaviour in the local "
                              f"testbed's testbed.images (e.g. {STANDIN_REPOS[w.component][0]}:v{{version}}-"
                              f"{w.variant}: the plain command plus its arguments)", obj=tags[0])
        else:
            derived.append(ImageBuild(f"{w.component}-{w.variant}", w.version, tags))
    return plain + derived


def dockerfile_targets(dockerfile: Path) -> set[str]:
    return set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+([\w.-]+)\s*$", dockerfile.read_text()))


def variant_dockerfile(base_image: str, entrypoint: Sequence[str], args: Sequence[str]) -> str:
    """A variant image: the plain image with ``args`` appended to its entrypoint (before the pod's args, as
    ``sh -c '... "$@"' name`` and exec-form entrypoints both pass them on)."""
    return f"FROM {base_image}\nENTRYPOINT {json.dumps([*entrypoint, *args])}\n"


# --------------------------------------------------------------------------- the zai-proxy stand-in (seed 004)

ZAI_PROXY_REPOS = ("ronaldraygun/zai-proxy", "runbook/zai-proxy-standin")
ZAI_PROXY_VERSIONS = ("1.2.0", "1.3.0")  # production's version in deploy/k8s/canary, and the one promoted
# failure builds: the suffix of the tag -> the stand-in's flags (Dockerfile.standin's zai-proxy-<suffix>)
ZAI_PROXY_FAILURES: dict[str, tuple[str, ...]] = {
    "errors": ("--error-rate", "0.2"), "slow": ("--latency", "0.3"), "notokens": ("--no-token-metrics",)}
CANARY_MANIFESTS = PROJECT_ROOT / "deploy" / "k8s" / "canary"
# Published upstream images the manifests run under their own names: the kind node pulls them (kind needs a
# registry anyway, for kindest/node); nothing is built for them. Prometheus is not a stand-in: Debian's
# build (the local testbed's) has no Kubernetes service discovery, the pinned upstream image has.
UPSTREAM_IMAGES = ("prom/prometheus:v2.55.1",)
_ZAI_TAG = re.compile(r"(\d+\.\d+\.\d+)(?:-(?!canary$)([a-z]+))?(-canary)?")


def zai_proxy_build(tag: str) -> ImageBuild:
    """The build of one zai-proxy tag: ``1.3.0``, ``1.3.0-canary``, ``1.3.0-<failure>[-canary]``. The image's
    version (``--version``: /version, X-Zai-Proxy-Version, build_info) is the whole tag, as the seed's
    images report it; a failure build's target adds that failure's flags to the entrypoint."""
    m = _ZAI_TAG.fullmatch(tag)
    failure = m.group(2) if m else None
    if m is None or (failure is not None and failure not in ZAI_PROXY_FAILURES):
        raise ConfigError(f"zai-proxy image tag {tag!r}: expected X.Y.Z[-<failure>][-canary], <failure> one of "
                          f"{', '.join(ZAI_PROXY_FAILURES)}", obj=f"{ZAI_PROXY_REPOS[0]}:{tag}")
    target = f"zai-proxy-{failure}" if failure else "zai-proxy"
    return ImageBuild(target, tag, [f"{repo}:{tag}" for repo in ZAI_PROXY_REPOS])


def zai_proxy_tags(manifests_dir: Path = CANARY_MANIFESTS) -> list[str]:
    """Every zai-proxy tag a canary scenario can deploy: each version plain and ``-canary``, each failure
    build of the promoted version plain and ``-canary``, and every tag the canary manifests name."""
    tags = {f"{v}{c}" for v in ZAI_PROXY_VERSIONS for c in ("", "-canary")}
    tags |= {f"{ZAI_PROXY_VERSIONS[-1]}-{f}{c}" for f in ZAI_PROXY_FAILURES for c in ("", "-canary")}
    for f in sorted(manifests_dir.glob("*.yaml")) if manifests_dir.is_dir() else []:
        for ref in re.findall(rf"(?<![\w/.-]){re.escape(ZAI_PROXY_REPOS[0])}:([\w.-]+)", f.read_text()):
            tags.add(ref)
    return sorted(tags)


def zai_proxy_builds(manifests_dir: Path = CANARY_MANIFESTS) -> list[ImageBuild]:
    return [zai_proxy_build(t) for t in zai_proxy_tags(manifests_dir)]


# --------------------------------------------------------------------------- seed 003's application "meta"

META_REPOS = {"storage": "e6data/storage", "schema": "e6data/schema", "gateway": "e6data/meta-gateway"}
META_VERSIONS = ("1.0.0", "1.1.0", "1.2.0")  # the first release (deploy/k8s/release) and the next ones
# failure builds of storage and schema: the suffix of the tag -> the service's flags (Dockerfile.standin's
# meta-<component>-<suffix>, the local testbed's e6data/<component>:{version}-<suffix>)
META_FAILURES: dict[str, tuple[str, ...]] = {"crash": ("--crash-after", "0.5"), "slow": ("--warm-up", "8")}
RELEASE_MANIFESTS = PROJECT_ROOT / "deploy" / "k8s" / "release"
_META_TAG = re.compile(r"(\d+\.\d+\.\d+)(?:-([a-z]+))?")
# a release number in a release feature (not an agave/doublezero v-version), with a failure suffix or none
_RELEASE_VERSION = re.compile(rf"(?<![\w.-])(\d+\.\d+\.\d+(?:-(?:{'|'.join(META_FAILURES)}))?)(?![\w.-])")


def meta_build(component: str, tag: str) -> ImageBuild:
    """The build of one image of the application: ``storage``/``schema`` at ``1.1.0`` or ``1.1.0-<failure>``,
    ``gateway`` at a release number. The image's version (RUNBOOK_IMAGE_VERSION) is the whole tag."""
    m = _META_TAG.fullmatch(tag)
    failure = m.group(2) if m else None
    if component not in META_REPOS or m is None or (failure is not None and (
            failure not in META_FAILURES or component == "gateway")):
        raise ConfigError(f"meta image {component}:{tag}: expected storage or schema at X.Y.Z[-<failure>] "
                          f"(<failure> one of {', '.join(META_FAILURES)}), or gateway at X.Y.Z",
                          obj=f"{META_REPOS.get(component, component)}:{tag}")
    target = f"meta-{component}" + (f"-{failure}" if failure else "")
    return ImageBuild(target, tag, [f"{META_REPOS[component]}:{tag}"])


def meta_tags(manifests_dir: Path = RELEASE_MANIFESTS, features_dir: Path = FEATURES_DIR,
              versions: Iterable[str] = ()) -> dict[str, list[str]]:
    """component -> every tag a release scenario can deploy: the release numbers (META_VERSIONS, ``versions``
    and those the release features name) for storage and schema each plain and as every failure build, and
    every tag the release manifests name (the gateway's included). A tag no scenario names (9.9.9-missing)
    is not built: ImagePullBackOff, as on the local testbed."""
    releases = set(META_VERSIONS) | set(versions)
    named: set[str] = set()
    for path in sorted(features_dir.glob("release*.feature")) if features_dir.is_dir() else []:
        named |= set(_RELEASE_VERSION.findall(path.read_text()))
    releases |= {t.partition("-")[0] for t in named}
    services = {f"{v}{s}" for v in releases for s in ("", *(f"-{f}" for f in META_FAILURES))}
    out = {"storage": set(services), "schema": set(services), "gateway": {META_VERSIONS[0]}}
    by_repo = {repo: c for c, repo in META_REPOS.items()}
    for f in sorted(manifests_dir.rglob("*.yaml")) if manifests_dir.is_dir() else []:
        for repo, tag in re.findall(r"(?<![\w/.-])(e6data/[\w.-]+):([\w.-]+)", f.read_text()):
            if repo in by_repo:
                out[by_repo[repo]].add(tag)
    return {c: sorted(tags) for c, tags in out.items()}


def meta_builds(manifests_dir: Path = RELEASE_MANIFESTS, features_dir: Path = FEATURES_DIR,
                versions: Iterable[str] = ()) -> list[ImageBuild]:
    return [meta_build(c, t) for c, tags in meta_tags(manifests_dir, features_dir, versions).items() for t in tags]


# --------------------------------------------------------------------------- seeds 001/002's Sei node set

HARDFORK_MANIFESTS = PROJECT_ROOT / "deploy" / "k8s" / "hardfork"
SEI_VERSIONS = ("6.3.0", "6.4.0")  # the incumbents' release (deploy/k8s/hardfork) and the hard fork's
S3_SERVER_REPO = "runbook/s3-server"
_IMAGE_LINE = re.compile(r"""(?m)^\s*(?:-\s*)?image:\s*["']?([^\s"'#]+)""")


def hardfork_images(manifests_dir: Path = HARDFORK_MANIFESTS) -> list[str]:
    """Every image the hard-fork manifests name (the node's sei:vX, the S3 server's)."""
    return sorted({m for f in sorted(manifests_dir.glob("*.yaml")) if manifests_dir.is_dir()
                   for m in _IMAGE_LINE.findall(f.read_text())})


def hardfork_builds(manifests_dir: Path = HARDFORK_MANIFESTS) -> list[ImageBuild]:
    """The S3 snapshot store's image at every tag the manifests name, from the ``s3-server`` target (the sei
    images are :func:`wanted`'s, as agave's)."""
    tags = sorted(i.rsplit(":", 1)[1] for i in hardfork_images(manifests_dir) if split_image(i)[0] == S3_SERVER_REPO)
    return [ImageBuild("s3-server", tag, [f"{S3_SERVER_REPO}:{tag}"]) for tag in tags]

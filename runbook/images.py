"""Image references, normalised: the one comparison every check, procedure and evidence row uses.

containerd's CRI reports a container's image in pod status as the image's first repo tag, fully
qualified (``docker.io/laconicnetwork/doublezero:v0.6.1``), and its imageID as a digest
(``docker.io/laconicnetwork/doublezero@sha256:...`` or ``sha256:...``), while a manifest says
``laconicnetwork/doublezero:v0.6.1``. Raw string comparison of the two is always "different" (design
trap 11). :func:`same_image` compares them as Docker's reference grammar defines them:

- no registry (no ``.``/``:`` in the first component and not ``localhost``) means ``docker.io``;
- a one-component name on docker.io is ``library/<name>``;
- no tag and no digest means ``:latest``;
- a reference pinned by digest equals another only by that digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runbook.errors import ConfigError

DEFAULT_REGISTRY = "docker.io"
_LEGACY_REGISTRIES = {"index.docker.io", "registry-1.docker.io"}
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


@dataclass(frozen=True)
class ImageRef:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """``docker.io/laconicnetwork/doublezero``."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse(reference: str) -> ImageRef:
    """Parse and normalise ``reference``; a malformed one is a :class:`ConfigError` naming it."""
    ref = reference.strip()
    if not ref:
        raise ConfigError("empty image reference")
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
        if not _DIGEST.match(digest):
            raise ConfigError(f"image reference {reference!r}: malformed digest {digest!r}")
    tag = None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref, tag = ref.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ConfigError(f"image reference {reference!r}: malformed tag {tag!r}")
    parts = ref.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, path = parts[0], parts[1:]
    else:
        registry, path = DEFAULT_REGISTRY, parts
    if registry in _LEGACY_REGISTRIES:
        registry = DEFAULT_REGISTRY
    if not path or not all(_COMPONENT.match(p) for p in path):
        raise ConfigError(f"image reference {reference!r}: malformed repository {'/'.join(path)!r}")
    if registry == DEFAULT_REGISTRY and len(path) == 1:
        path = ["library", *path]
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry=registry, repository="/".join(path), tag=tag, digest=digest)


def normalise(reference: str) -> str:
    """Fully qualified: ``laconicnetwork/doublezero:v0.6.1`` -> ``docker.io/laconicnetwork/doublezero:v0.6.1``."""
    return str(parse(reference))


def same_image(a: str, b: str) -> bool:
    """Do ``a`` and ``b`` name the same image? Empty on either side is never the same."""
    if not a or not b:
        return False
    try:
        ra, rb = parse(a), parse(b)
    except ConfigError:
        return a == b
    if ra.name != rb.name:
        return False
    if ra.digest and rb.digest:
        return ra.digest == rb.digest
    if ra.digest or rb.digest:  # one side pinned by digest, the other by tag: not comparable as equal
        return False
    return ra.tag == rb.tag

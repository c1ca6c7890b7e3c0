"""One image-reference normaliser for every comparison (design trap 11): containerd reports the fully
qualified first repo tag and a digest; manifests say the short name."""

from __future__ import annotations

import pytest

from runbook.errors import ConfigError
from runbook.images import normalise, same_image

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("ref", "full"), [
    ("laconicnetwork/doublezero:v0.6.1", "docker.io/laconicnetwork/doublezero:v0.6.1"),
    ("docker.io/laconicnetwork/doublezero:v0.6.1", "docker.io/laconicnetwork/doublezero:v0.6.1"),
    ("index.docker.io/laconicnetwork/doublezero:v0.6.1", "docker.io/laconicnetwork/doublezero:v0.6.1"),
    ("python:3.11-slim", "docker.io/library/python:3.11-slim"),
    ("busybox", "docker.io/library/busybox:latest"),
    ("localhost:5000/agave:v2", "localhost:5000/agave:v2"),
    ("ghcr.io/org/img", "ghcr.io/org/img:latest"),
    (f"laconicnetwork/agave@{DIGEST}", f"docker.io/laconicnetwork/agave@{DIGEST}"),
])
def test_normalise(ref: str, full: str) -> None:
    assert normalise(ref) == full


def test_same_image_across_cri_and_manifest_forms() -> None:
    assert same_image("docker.io/laconicnetwork/doublezero:v0.6.1", "laconicnetwork/doublezero:v0.6.1")
    assert same_image("docker.io/library/busybox:latest", "busybox")


@pytest.mark.parametrize(("a", "b"), [
    ("laconicnetwork/doublezero:v0.6.1", "laconicnetwork/doublezero:v0.6.0"),   # another tag
    ("laconicnetwork/doublezero:v0.6.1", "otherorg/doublezero:v0.6.1"),         # another repository
    ("laconicnetwork/doublezero:v0.6.1", "ghcr.io/laconicnetwork/doublezero:v0.6.1"),  # another registry
    (f"laconicnetwork/agave@{DIGEST}", "laconicnetwork/agave:v2.2.1"),          # digest vs tag: unknowable
    ("", "laconicnetwork/agave:v2.2.1"),                                          # nothing observed
])
def test_different_images_are_different(a: str, b: str) -> None:
    assert not same_image(a, b)


@pytest.mark.parametrize("bad", ["", "UPPER/case:tag", "repo:bad tag", "repo@sha256:xyz"])
def test_malformed_references_are_named(bad: str) -> None:
    with pytest.raises(ConfigError):
        normalise(bad)

"""canary-promote derives what it promotes from the live Deployments, and refuses before anything changes when
the canary's release is not the operator's, has no canary tag, or production gave no release to promote."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from runbook.adapters.base import RolloutStatus
from runbook.env import load_env
from runbook.errors import PreconditionFailed
from runbook.procedures import canary_promote as cp


def _dep(image: str, version: str) -> dict[str, Any]:
    return {"spec": {"template": {"metadata": {"labels": {"version": version}},
                                  "spec": {"containers": [{"name": "proxy", "image": image}]}}}}


@dataclass
class Fake:
    canary_image: str = "ronaldraygun/zai-proxy:1.3.0-canary"
    production: bool = False
    env: Any = field(init=False)

    def __post_init__(self) -> None:
        env = load_env("local")
        self.env = env.model_copy(update={"production": self.production})
        self.canary = env.canary
        self.workloads = self
        self.rollouts = self

    def deployment(self, name: str) -> dict[str, Any]:
        if name == "zai-proxy-test":
            return _dep(self.canary_image, "x")
        return _dep("ronaldraygun/zai-proxy:1.2.0", "1.2.0")

    def rollout_status(self, name: str) -> RolloutStatus:
        return RolloutStatus(name, 4, 4, 3, 3, 3, 3, 3, 4)


def _prepare(fake: Fake, **params: Any) -> cp.CanaryFacts:
    ctx = cp.PROCEDURE.context(fake, params)  # type: ignore[arg-type]
    cp.prepare(ctx)
    return ctx.facts


def test_the_release_is_the_canarys_tag_without_the_suffix() -> None:
    f = _prepare(Fake())
    assert (f.target_image, f.target_version, f.old_image, f.old_version, f.old_revision, f.tag) == (
        "ronaldraygun/zai-proxy:1.3.0", "1.3.0", "ronaldraygun/zai-proxy:1.2.0", "1.2.0", 4, "v1.3.0")
    assert _prepare(Fake(), target_version="v1.3.0").target_version == "1.3.0"


def test_a_canary_without_the_suffix_has_nothing_to_promote() -> None:
    with pytest.raises(PreconditionFailed, match="does not end with -canary"):
        _prepare(Fake("ronaldraygun/zai-proxy:1.3.0"))


def test_another_release_than_the_operators_is_refused() -> None:
    with pytest.raises(PreconditionFailed, match="refusing to promote another release"):
        _prepare(Fake(), target_version="1.3.1")


def test_production_needs_the_operators_release() -> None:
    with pytest.raises(PreconditionFailed, match="is production: name the release"):
        _prepare(Fake(production=True))
    assert _prepare(Fake(production=True), target_version="1.3.0").target_version == "1.3.0"

"""The ``canary`` section of an environment: the canary promotion of seed 004 (an OpenAI-compatible proxy with a
production and a canary Deployment, gated on Prometheus).

    canary:
      production: zai-proxy            # the production Deployment (RollingUpdate) and its container
      canary: zai-proxy-test
      container: proxy
      service: zai-proxy               # the Service clients use, and where the runner reaches it
      url: http://127.0.0.1:18180
      prometheus: http://127.0.0.1:19090
      repo: canary-release             # the git repository finalization writes (VERSION, tag); relative: under the
                                       # testbed's state dir on a testbed, the project's root elsewhere
      gates: {max_error_rate: 5%, confidence: 95%, min_requests: 200, window: 20s, ...}

An env without the section cannot run ``canary-promote`` (the procedure says so).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator


def _fraction(value: object) -> float:
    """``"5%"``, ``0.05`` -> 0.05."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return float(value.strip()[:-1]) / 100.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"not a fraction: {value!r} (use e.g. 5% or 0.05)")


def _duration(value: object) -> float:
    from runbook.env import parse_duration

    return parse_duration(value)


def http_url(v: str) -> str:
    """An http(s) URL with a host, without its trailing slash (every URL an env names)."""
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {v!r}")
    return v.rstrip("/")


Fraction = Annotated[float, BeforeValidator(_fraction)]
Seconds = Annotated[float, BeforeValidator(_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CanaryGates(_Model):
    """What the promotion's gates hold the production variant to while and after it rolls out."""

    # the seed's threshold: 5xx answers below 5%, held at this one-sided confidence (Wilson bounds)
    max_error_rate: Fraction = Field(default=0.05, gt=0, lt=1)
    confidence: Fraction = Field(default=0.95, gt=0.5, lt=1)
    # fewer requests than this in a gate's span: inconclusive, whatever the bounds say (the promotion stops)
    min_requests: int = Field(default=200, ge=1)
    # the quantile may be at most latency_ratio times production's baseline, or the baseline plus the tolerance
    latency_quantile: Fraction = Field(default=0.95, gt=0, lt=1)
    latency_ratio: float = Field(default=1.2, ge=1)
    latency_tolerance: Seconds = Field(default=0.005, ge=0)
    # the moving error-rate window (a burst shorter than the run is seen) and how far it moves (the range step)
    window: Seconds = Field(default=30.0, gt=0)
    step: Seconds = Field(default=5.0, gt=0)
    baseline: Seconds = Field(default=30.0, gt=0)  # how long before the rollout production's baseline spans
    soak: Seconds = Field(default=20.0, ge=0)  # how long the gates keep judging after the rollout is done
    check_every: Seconds = Field(default=5.0, gt=0)  # how often the gates are evaluated while the rollout runs

    @model_validator(mode="after")
    def _step_within_window(self) -> CanaryGates:
        if self.step > self.window:
            raise ValueError(f"gates.step ({self.step:g}s) must not be longer than gates.window ({self.window:g}s)")
        return self


class CanaryConfig(_Model):
    production: str = "zai-proxy"
    canary: str = "zai-proxy-test"
    container: str = "proxy"
    service: str = "zai-proxy"
    url: str = Field(description="the Service as the runner (and the prober) reaches it")
    canary_url: str = Field(description="the canary's Service (the seed's canary endpoint), as the runner reaches it")
    prometheus: str = Field(description="Prometheus's HTTP API as the runner reaches it")
    variant: str = Field(default="production", description="the production pods' `variant` metric label")
    canary_variant: str = Field(default="canary", description="the canary pods' `variant` metric label")
    suffix: str = Field(default="-canary", description="the canary tag's suffix, dropped on promotion")
    repo: str = Field(description="the git repository finalization writes: VERSION committed and an annotated tag")
    remote: str | None = Field(default=None, description="push the tag there (the seed's `git push origin vX.Y.Z`)")
    gates: CanaryGates = CanaryGates()
    rollout: Seconds = Field(default=120.0, gt=0, description="deadline for the rolling update (and for an undo)")

    @field_validator("url", "canary_url", "prometheus")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v)

    @model_validator(mode="after")
    def _two_deployments(self) -> CanaryConfig:
        if self.production == self.canary:
            raise ValueError(f"canary.production and canary.canary are both {self.production!r}: two Deployments")
        return self

    def url_port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def prometheus_port(self) -> int:
        parts = urlsplit(self.prometheus)
        return parts.port or (443 if parts.scheme == "https" else 80)

"""The ``release`` section of an environment: seed 003's operator-style blue-green release of an application of two
services (storage and schema) whose clients read a common ConfigMap naming the active colour's Services.

    release:
      app: meta                      # <app>-<component>-<colour>: each colour's Deployments, ConfigMaps, Services
      workspace: demo                # the common ConfigMap clients read: <workspace>-common
      components: [storage, schema]
      images: {storage: e6data/storage, schema: e6data/schema}   # repositories; a release sets their tags
      gateway: meta-gateway          # the clients' Deployment (they read the common ConfigMap)
      url: http://127.0.0.1:18280    # the gateway's Service as the runner (and the prober) reaches it
      grace: 2m                      # ready, held this long, before the switch (the seed's grace period)
      ready_timeout: 5m              # from the new colour's creation: not ready and held by then is a failure
      switch_timeout: 3m             # every client on the new colour's Services (ConfigMap volumes lag)
      history: 10                    # release records kept

An env without the section cannot run ``release`` (the procedure says so).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runbook.env_canary import Seconds, http_url

COLOURS = ("blue", "green")


class ReleaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    app: str = "meta"
    workspace: str = "demo"
    components: tuple[str, ...] = ("storage", "schema")
    images: dict[str, str] = Field(default_factory=lambda: {"storage": "e6data/storage", "schema": "e6data/schema"})
    gateway: str = "meta-gateway"
    gateway_container: str = "gateway"
    url: str = Field(description="the gateway's Service as the runner (and the prober) reaches it")
    grace: Seconds = Field(default=120.0, ge=0, description="the seed's grace period: ready, held, before the switch")
    ready_timeout: Seconds = Field(default=300.0, gt=0, description="deadline for the new colour, from its creation")
    switch_timeout: Seconds = Field(default=180.0, gt=0, description="deadline for every client to switch")
    max_restarts: int = Field(default=3, ge=1, description="a container restarted this often is crash-looping")
    history: int = Field(default=10, ge=1, description="release records kept (the seed keeps 10)")
    template: str = Field(default="deploy/k8s/release/colour",
                          description="kustomize dir of one colour (blue): the first release's objects")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v)

    @model_validator(mode="after")
    def _images_per_component(self) -> ReleaseConfig:
        if not self.components:
            raise ValueError("release.components names no component")
        missing = [c for c in self.components if c not in self.images]
        if missing:
            raise ValueError(f"release.images has no repository for {', '.join(missing)}")
        if self.ready_timeout <= self.grace:
            raise ValueError(f"release.ready_timeout ({self.ready_timeout:g}s) must be longer than release.grace "
                             f"({self.grace:g}s): the new colour must be able to be ready and held in time")
        return self

    def name(self, component: str, colour: str) -> str:
        return f"{self.app}-{component}-{colour}"

    @property
    def common(self) -> str:
        return f"{self.workspace}-common"

    @property
    def state(self) -> str:
        """The ConfigMap holding the release state machine and its history."""
        return f"{self.app}-release"

"""The ``hardfork`` section of an environment: seeds 001/002's Sei node set, upgraded across a hard fork at height H
through a bootstrap Job (the incumbent binary to H-1) and a StatefulSet on the new binary.

    hardfork:
      app: sei-rpc                      # the node set: StatefulSets <app>-<revision>, pods labelled app=<app>
      revision_label: sei.io/revision   # the label the Service's selector pins (a revision per StatefulSet)
      service: sei-rpc                  # the Service clients use (its selector pins a revision)
      container: seid                   # the node's container in the StatefulSet's template
      image: sei                        # the repository; an upgrade sets the entrant's tag
      rpc: http://127.0.0.1:18266       # the Service as the runner (and the prober) reaches it
      network_rpc: http://127.0.0.1:18267   # the network's RPC (a validator or seed) as the runner reaches it:
                                        # the tip, the on-chain upgrade plan
      snapshot_s3: http://sei-s3.agave.svc:9000/sei-snapshots   # where a bootstrap restores from (as pods see it)
      governance: sei-governance        # testbed only: the ConfigMap the network's validator reads its plan from
      network: [sei-validator, sei-s3]  # testbed only: the network's and the snapshot store's Deployments
      running_timeout: 90s              # AwaitRunning: after the chain reaches H, entrants Running by then
      bootstrap_timeout: 60s            # a bootstrap pod not running (or not past its snapshot) by then has failed
      poll: 1s                          # how often AwaitRunning looks (and prints progress)

An env without the section cannot run ``hardfork-upgrade`` (the procedure says so).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runbook.env_canary import Seconds, http_url


class HardforkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    app: str = "sei-rpc"
    revision_label: str = "sei.io/revision"
    service: str = "sei-rpc"
    container: str = "seid"
    image: str = "sei"
    rpc: str = Field(description="the Service as the runner (and the prober) reaches it")
    network_rpc: str = Field(description="the network's RPC as the runner reaches it: the tip and the upgrade plan")
    snapshot_s3: str = Field(description="the snapshot bucket a bootstrap restores from, as a pod reaches it")
    governance: str = Field(default="sei-governance",
                            description="testbed only: the ConfigMap the network's validator reads its plan from")
    network: tuple[str, ...] = Field(default=("sei-validator", "sei-s3"),
                                     description="testbed only: the Deployments of the network's validator and of "
                                                 "the snapshot store (deploy/k8s/hardfork), not the node set's")
    running_timeout: Seconds = Field(default=300.0, gt=0,
                                     description="entrants Running this long after the chain reached H, or failed")
    bootstrap_timeout: Seconds = Field(default=180.0, gt=0,
                                       description="a bootstrap pod not running by then has failed (image, config)")
    poll: Seconds = Field(default=1.0, gt=0, description="AwaitRunning's look interval (and progress lines)")

    @field_validator("rpc", "network_rpc", "snapshot_s3")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v)

    def statefulset(self, revision: str) -> str:
        return f"{self.app}-{revision}"

    def selector(self, revision: str) -> dict[str, str]:
        """The Service's selector that pins ``revision``."""
        return {"app": self.app, self.revision_label: revision}

    def bootstrap_job(self, revision: str, ordinal: int) -> str:
        return f"{self.app}-{revision}-{ordinal}-bootstrap"

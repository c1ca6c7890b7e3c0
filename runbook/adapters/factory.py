"""The one place where environment kinds differ: which adapter serves each port.

Steps and procedures receive an :class:`Adapters` and never ask which environment they run on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from runbook.adapters.base import Host, Ingress, Storage, Workloads
from runbook.adapters.host import TestinfraHost
from runbook.adapters.ingress import CaddyAdmin
from runbook.adapters.rpc import RpcClient
from runbook.env import Env

if TYPE_CHECKING:
    from runbook.testbed.stack import Testbed


@dataclass(frozen=True)
class Adapters:
    env: Env
    host: Host
    workloads: Workloads
    ingress: Ingress
    storage: Storage

    def rpc(self, colour: str) -> RpcClient:
        """JSON-RPC straight to one colour's validator (not through the ingress)."""
        port = self.env.deployments.colour(colour).rpc_port
        return RpcClient(url=f"http://127.0.0.1:{port}")

    def public_rpc(self) -> RpcClient:
        """JSON-RPC through the public ingress, as clients see it."""
        return RpcClient(url=self.env.ingress.url)


def connect(env: Env, testbed: Testbed | None = None) -> Adapters:
    if testbed is not None:
        return Adapters(
            env=env,
            host=TestinfraHost(env.host, netns=testbed.netns, env_name=env.name),
            workloads=testbed.workloads,
            ingress=CaddyAdmin(env.ingress.admin),
            storage=testbed.storage,
        )
    from runbook.adapters.kube import KubeWorkloads
    from runbook.adapters.storage import storage_for

    host = TestinfraHost(env.host, env_name=env.name)
    return Adapters(
        env=env,
        host=host,
        workloads=KubeWorkloads(env),
        ingress=CaddyAdmin(env.ingress.admin),
        storage=storage_for(env, host),
    )

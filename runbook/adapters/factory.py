"""The one place where environment kinds differ: which adapter serves each port.

Steps and procedures receive an :class:`Adapters` and never ask which environment they run on. Where the
runner runs is the env's ``host`` (:class:`runbook.env.HostTarget`): host commands go through
:class:`~runbook.adapters.host.TestinfraHost` (``root=True`` for those that need root), and the host's own
HTTP endpoints (the ingress admin API, both colours' RPC) through ``Adapters.reach``
(:mod:`runbook.adapters.tunnel`: unchanged on ``local://``, ssh tunnels on ``ssh://``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runbook.adapters.base import Batch, CommandResult, Host, Ingress, Objects, Rollouts, Storage, Workloads
from runbook.adapters.host import TestinfraHost
from runbook.adapters.ingress import CaddyAdmin
from runbook.adapters.reference import ReferenceTip
from runbook.adapters.rpc import RpcClient
from runbook.adapters.tunnel import Direct, Reach, reach_for
from runbook.env import Env
from runbook.env_canary import CanaryConfig
from runbook.env_hardfork import HardforkConfig
from runbook.env_release import ReleaseConfig
from runbook.errors import ConfigError, RunbookError

if TYPE_CHECKING:
    import httpx

    from runbook.adapters.prometheus import PrometheusClient
    from runbook.adapters.sei import SeiNetwork
    from runbook.testbed.stack import Testbed


@dataclass(frozen=True)
class Adapters:
    env: Env
    host: Host
    workloads: Workloads
    ingress: Ingress
    storage: Storage
    reach: Reach = field(default_factory=Direct)  # host-side URL -> runner-side URL
    # a host path (an env's accounts dir, a hostPath) -> where the host port finds it: the same path on a real
    # host; on the local testbed its stand-in under the state dir (testbed.host_paths, as the kubelet mounts it)
    host_path: Callable[[str], str] = field(default=str)

    def rpc_url(self, colour: str) -> str:
        """One colour's JSON-RPC URL as the runner reaches it (its host-side URL through ``reach``)."""
        return self.reach.url(self.env.rpc_url(colour))

    def rpc(self, colour: str, *, timeout: float = 5.0) -> RpcClient:
        """JSON-RPC straight to one colour's validator (not through the ingress)."""
        return RpcClient(url=self.rpc_url(colour), timeout=timeout)

    def close(self) -> None:
        """Close what the adapters opened to the host (tunnels; also closed at exit)."""
        self.reach.close()

    def public_rpc(self, *, timeout: float = 5.0) -> RpcClient:
        """JSON-RPC through the public ingress, as clients see it (``health().header(upstream_header)``: which
        upstream served it)."""
        return RpcClient(url=self.env.ingress.url, timeout=timeout)

    # -- seed 004's canary promotion ---------------------------------------------------------------
    @property
    def canary(self) -> CanaryConfig:
        """The env's ``canary`` section; an env without one cannot run the canary procedures."""
        if self.env.canary is None:
            raise ConfigError(f"env {self.env.name} has no canary section (runbook.env_canary): nothing to promote "
                              "there", env=self.env.name)
        return self.env.canary

    @property
    def rollouts(self) -> Rollouts:
        """The workloads port's rollout verbs (RollingUpdate Deployments and their Services)."""
        if not isinstance(self.workloads, Rollouts):
            raise RunbookError(f"the workloads port of env {self.env.name} has no rollout verbs "
                               f"({type(self.workloads).__name__})", env=self.env.name)
        return self.workloads

    # -- seed 003's blue-green release ------------------------------------------------------------
    @property
    def release(self) -> ReleaseConfig:
        """The env's ``release`` section; an env without one cannot run the release procedure."""
        if self.env.release is None:
            raise ConfigError(f"env {self.env.name} has no release section (runbook.env_release): nothing to "
                              "release there", env=self.env.name)
        return self.env.release

    # -- seeds 001/002's hard fork ----------------------------------------------------------------
    @property
    def hardfork(self) -> HardforkConfig:
        """The env's ``hardfork`` section; an env without one cannot run the hard-fork procedure."""
        if self.env.hardfork is None:
            raise ConfigError(f"env {self.env.name} has no hardfork section (runbook.env_hardfork): no Sei node set "
                              "there", env=self.env.name)
        return self.env.hardfork

    def sei_network(self, *, timeout: float = 5.0) -> SeiNetwork:
        """The Sei network's RPC (``hardfork.network_rpc``): its tip and the upgrade plan on chain."""
        from runbook.adapters.sei import SeiNetwork

        return SeiNetwork(self.hardfork.network_rpc, timeout=timeout)

    @property
    def objects(self) -> Objects:
        """The workloads port's ConfigMaps and Services (seed 003's release)."""
        if not isinstance(self.workloads, Objects):
            raise RunbookError(f"the workloads port of env {self.env.name} has no ConfigMaps and Services "
                               f"({type(self.workloads).__name__})", env=self.env.name)
        return self.workloads

    @property
    def batch(self) -> Batch:
        """The workloads port's Jobs, StatefulSets and PersistentVolumeClaims (seed 001's hard fork)."""
        if not isinstance(self.workloads, Batch):
            raise RunbookError(f"the workloads port of env {self.env.name} has no Jobs, StatefulSets and claims "
                               f"({type(self.workloads).__name__})", env=self.env.name)
        return self.workloads

    def prometheus(self, *, timeout: float = 5.0) -> PrometheusClient:
        """Prometheus's HTTP API (``canary.prometheus``), as the runner reaches it."""
        from runbook.adapters.prometheus import PrometheusClient

        return PrometheusClient(self.canary.prometheus, timeout=timeout)

    def service_http(self, which: str = "production", *, timeout: float = 5.0) -> httpx.Client:
        """HTTP to the production Service (``canary.url``) or the canary's (``canary.canary_url``), as a worker
        reaches it."""
        import httpx

        url = self.canary.url if which == "production" else self.canary.canary_url
        return httpx.Client(base_url=url, timeout=timeout)

    def reference(self) -> ReferenceTip:
        """The cluster tip from the env's reference RPCs (``cluster_rpc``), polled every ``reference_poll``."""
        return ReferenceTip.for_env(self.env)


def connect(env: Env, testbed: Testbed | None = None) -> Adapters:
    reach = reach_for(env)
    # the admin API keeps its host-side URL (Caddy checks the Host header, and it names the API in messages);
    # the transport sends it through reach
    if testbed is not None:
        from runbook.testbed.host import TestbedHost  # its systemctl first on PATH: on the testbed only

        host: TestinfraHost = TestbedHost(env.host, bin_dir=testbed.host_bin, netns=testbed.netns, env_name=env.name)
        return Adapters(
            env=env,
            host=host,
            workloads=testbed.workloads,
            ingress=CaddyAdmin(env.ingress.admin, site_url=env.ingress.url, files=host, transport=reach.transport()),
            storage=testbed.storage,
            reach=reach,
            host_path=lambda p: str(testbed.host_path(p)),
        )
    from runbook.adapters.kube import KubeWorkloads
    from runbook.adapters.storage import storage_for

    host = TestinfraHost(env.host, env_name=env.name)
    return Adapters(
        env=env,
        host=host,
        workloads=KubeWorkloads(env),
        ingress=CaddyAdmin(env.ingress.admin, site_url=env.ingress.url, files=host, transport=reach.transport()),
        storage=storage_for(env, host),
        reach=reach,
    )


class _Unconnected:
    """Stands in for a port that ``plan`` must not touch: any use is a bug, and says so."""

    def __init__(self, port: str) -> None:
        self._port = port

    def __getattr__(self, name: str) -> Any:
        raise RunbookError(f"plan must not touch the {self._port} port (called {name})")


class _PlanHost:
    """The host as ``plan`` sees it: it answers every read as "absent" (exit 3, what the directory backends'
    reads take for a missing file or directory), so a plan assumes nothing exists beyond what the procedure
    itself creates, and it runs nothing."""

    ABSENT = 3

    def __init__(self, url: str) -> None:
        self.url = url

    def run(self, command: str, *, check: bool = True, timeout: float = 60.0, root: bool = False) -> CommandResult:
        if check:
            raise RunbookError(f"plan must not run commands on {self.url} (asked: {command})")
        return CommandResult(command, self.ABSENT, "", "plan: not connected (read as absent)")

    def __getattr__(self, name: str) -> Any:
        raise RunbookError(f"plan must not touch the host port (called {name})")


def plan_adapters(env: Env) -> Adapters:
    """Adapters for ``runbook plan``: storage renders commands, nothing connects to anything."""
    from runbook.adapters.storage import make_storage, storage_for

    if env.testbed is not None:
        from runbook.testbed.stack import Testbed

        tb = Testbed(env)
        storage = tb.storage if tb.running() else make_storage("copy", tb.state_dir / "storage")
    else:
        storage = storage_for(env, _PlanHost(env.host))
    return Adapters(env=env, host=_Unconnected("host"), workloads=_Unconnected("workloads"),
                    ingress=_Unconnected("ingress"), storage=storage)

"""Typed environments, loaded from ``envs/<name>.yaml`` and validated on load.

An environment names everything a procedure touches; nothing is hard-coded in steps. A wrong field is
reported with the file, the dotted field path and the problem (:class:`~runbook.errors.ConfigError`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import base58
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from runbook.env_canary import CanaryConfig, http_url
from runbook.env_hardfork import HardforkConfig
from runbook.env_release import ReleaseConfig
from runbook.errors import ConfigError, UnknownEnvironment

PROJECT_ROOT = Path(__file__).resolve().parent.parent

CATCH_UP_OVER_RETRY = 3
"""How many times the ingress's retry window a catch-up must last at least (production: thousands)."""
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """``"6h"``, ``"10m"``, ``"30s"``, ``"250ms"`` or a number of seconds -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 10m, 6h)")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KubeConfig(_Model):
    context: str
    namespace: str
    kubeconfig: str | None = None


class IngressConfig(_Model):
    kind: Literal["caddy"] = "caddy"
    url: str
    admin: str
    upstream_header: str = "X-Upstream"
    template: str = "deploy/caddy/Caddyfile.tmpl"
    health_interval: Duration = Field(default=1.0, gt=0, description="Caddy's active health check interval")
    try_duration: Duration = Field(default=5.0, gt=0, description="Caddy's retry window (lb_try_duration)")
    order_file: str = Field(default="/var/lib/caddy-runbook/blue-first", description="a path on Caddy's host, "
                            "seen by Caddy at the same path: while it exists the Caddyfile's blue-first reverse_proxy "
                            "serves (the order switch: no config reload); relative: under the testbed's state_dir. "
                            "Kept across reboots: it says which colour is preferred")

    @field_validator("url", "admin")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v)

    @property
    def admin_port(self) -> int:
        return _url_port(self.admin)

    @property
    def port(self) -> int:
        return _url_port(self.url)


def _url_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


class DeploymentConfig(_Model):
    name: str
    rpc_port: Port
    data: str = Field(description="storage dataset holding the ledger")
    accounts: str = Field(description="accounts directory (not on the dataset: copied, not cloned)")
    image: str | None = None
    identity: str | None = Field(None, description="host path of the colour's validator identity keypair: each "
                                 "colour its own (agave's gossip kills the older instance of an identity)")
    mount: str | None = Field(None, description="where the colour's data (a zvol's XFS) is mounted on the host, "
                              "when the storage is a volume: the clone is mounted there for the idle colour")
    gossip_port: Port | None = None
    dynamic_port_range: str | None = Field(None, pattern=r"^\d+-\d+$", description="agave's LO-HI")

    def port_range(self) -> tuple[int, int] | None:
        if self.dynamic_port_range is None:
            return None
        lo, hi = self.dynamic_port_range.split("-")
        return int(lo), int(hi)


class Deployments(_Model):
    green: DeploymentConfig
    blue: DeploymentConfig

    @model_validator(mode="after")
    def _colours_apart(self) -> Deployments:
        """Both colours run on one host network at once: their ports must not meet, and each runs under its own
        identity (agave's gossip makes the older instance of an identity exit, design trap 9)."""
        g, b = self.green, self.blue
        if (g.identity is None) != (b.identity is None):
            raise ValueError("deployments: give both colours an identity, or neither")
        if g.identity is not None and g.identity == b.identity:
            raise ValueError(f"deployments: both colours use the identity {g.identity}: blue would make green exit")
        if (g.gossip_port is None) != (b.gossip_port is None):
            raise ValueError("deployments: give both colours a gossip_port, or neither")
        taken: dict[int, str] = {}
        for c in (g, b):
            lo, hi = c.port_range() or (1, 0)
            if c.dynamic_port_range is not None and lo > hi:
                raise ValueError(f"deployments.{c.name}: dynamic_port_range {c.dynamic_port_range} is empty")
            for port in {c.rpc_port, *([c.gossip_port] if c.gossip_port else []), *range(lo, hi + 1)}:
                if taken.get(port, c.name) != c.name:
                    raise ValueError(f"deployments: port {port} of {c.name} is also {taken[port]}'s (one host network)")
                taken[port] = c.name
        return self

    def colour(self, name: str) -> DeploymentConfig:
        if name not in ("green", "blue"):
            raise ConfigError(f"unknown colour {name!r}: expected green or blue")
        return self.green if name == "green" else self.blue


class StorageConfig(_Model):
    backend: Literal["zfs", "zvol", "btrfs", "reflink", "copy", "auto"]
    snapshot_prefix: str = "pre-upgrade"
    min_free_mb: int = Field(1024, ge=0, description="free space the pool must keep for the idle colour's writes "
                             "(at least; a tenth of the live data's size when that is more), checked before the "
                             "snapshot and the clone")
    snapshot_root: str | None = Field(None, description="snapshot this dataset recursively (``zfs snapshot -r``: the "
                                      "validator and DZ config with the ledger), not the live colour's data alone")


def _base58_pubkey(v: str) -> str:
    try:
        raw = base58.b58decode(v)
    except ValueError as exc:
        raise ValueError(f"not base58: {exc}") from exc
    if len(raw) != 32:
        raise ValueError(f"a Solana public key is 32 bytes; {v!r} decodes to {len(raw)}")
    return v


class DoubleZeroConfig(_Model):
    expected_identity: Annotated[str, BeforeValidator(_base58_pubkey)]
    expected_device: str
    interface: str = "doublezero0"
    sidecar: str = "doublezerod"
    host_service: str = "doublezerod"
    config_dir: str = "/root/.config/doublezero"
    target_version: str | None = Field(default=None, description="default dz-upgrade target (disposable envs; "
                                       "production needs --dz-target-version)")


class ProbeConfig(_Model):
    """The client the zero-drop verdict stands for: one that does not retry (issue 9).

    ``client_timeout`` 2 s: an RPC client polling a validator (getSlot, getHealth, a bot or a wallet
    refreshing) gives up after a few slot times (0.4 s each) and goes to another endpoint; 2 s is 5 slots,
    and well under the 5 s a request can wait in Caddy's retry loop, so such a stall fails instead of
    passing as answered. ``max_gap`` 1 s: no second without a successful answer at any time (at 150
    requests/s one is due every 7 ms), so a stall fails even when every request is answered in the end."""

    client_timeout: Duration = Field(default=2.0, gt=0, description="answers later than this are lost (late)")
    max_gap: Duration = Field(default=1.0, gt=0, description="longest allowed time between successful answers")


def _one_or_more_urls(value: object) -> list[str]:
    """``cluster_rpc``: one http(s) URL (as before) or a non-empty list of them."""
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list) or not urls:
        raise ValueError(f"expected an http(s) URL or a non-empty list of them, got {value!r}")
    for url in urls:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
    return [str(u).rstrip("/") for u in urls]


class Timeouts(_Model):
    catch_up: Duration = 6 * 3600.0
    healthy: Duration = 600.0
    rollout: Duration = 300.0
    sidecar_restart: Duration = 120.0


class TestbedConfig(_Model):
    """How the local testbed stands in for a cluster. Absent on real environments."""

    __test__ = False

    state_dir: str = ".testbed/local"
    namespace: str = Field(default="default", description="the namespace the testbed's API store and kubelet keep "
                           "objects in when the env has no kube section (kind's kube.namespace, so manifests naming "
                           "it apply as they do there)")
    supervisor_port: Port
    cluster_port: Port
    genesis_time: float = 1767225600.0  # 2026-01-01T00:00:00Z, shared by every stand-in
    slot_time: Duration = 0.4
    replay_speed: float = 8.0
    health_distance: int = 150
    startup_delay: Duration = 0.0  # the stand-in validator answers `unknown` this long (loading a snapshot)
    accounts_mb: int = 16  # data seeded in green's accounts directory (copied, not cloned, by upgrades)
    identity_seed: str = Field(description="hex seed of the testbed's DZ id.json (a throwaway key)")
    storage_size: str = "1G"
    volume_size: str = Field(default="512M", description="size of green's ledger volume, when the colours' data is a "
                             "volume mounted at deployments.<colour>.mount (storage.backend zvol; XFS: 320M at least)")
    ramdisk_size: str | None = Field(default=None, description="each colour's accounts directory's parent on its own "
                                     "RAM-backed block device (a zram device with ext4) of this size; unset: plain "
                                     "directories")
    sshd: bool = Field(default=False, description="the env's host is this testbed's own sshd (runbook.testbed.sshd: "
                       "a non-root user with passwordless sudo), started by up and removed by down; the host URL's "
                       "ssh_config must be <state_dir>/sshd/ssh_config")
    caddy_upstream_host: str = Field(default="127.0.0.1", description="how Caddy's site names the colours' upstreams "
                                     "(the seed's site writes localhost:<port>)")
    images: dict[str, list[str]] = Field(description="image -> stand-in command (argv template)")
    host_paths: dict[str, str] = Field(default_factory=dict, description="hostPath prefix -> local path")
    cluster_rate_limit: float = Field(default=4.0, ge=0, description="requests/s per client address the cluster "
                                      "stand-in answers before HTTP 429 + Retry-After, as a public RPC; 0: no limit")
    configmap_sync: Duration = Field(default=2.0, gt=0, description="how often the testbed's kubelet refreshes a "
                                     "pod's configMap volumes from their ConfigMaps (per pod, from its creation): "
                                     "a client sees a ConfigMap change this late at most (a real kubelet: its sync "
                                     "period plus its ConfigMap cache TTL, ~60-90 s)")
    service_cidr: str = Field(default="127.240.0.0/16", description="the Services' clusterIPs (the API server's "
                              "--service-cluster-ip-range): a loopback range the kube-proxy listens in, outside the "
                              "controller's pod IPs (127.20-219.x.y)")
    dns_ip: str = Field(default="127.240.0.10", description="the cluster DNS (runbook.testbed.kube_dns), port 53: the "
                        "nameserver of a pod's ClusterFirst resolv.conf (kind's is 10.96.0.10)")

    @field_validator("service_cidr")
    @classmethod
    def _loopback_range(cls, v: str) -> str:
        import ipaddress
        net = ipaddress.IPv4Network(v)  # ValueError: pydantic names the field
        if not net.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")) or net.num_addresses < 16:
            raise ValueError(f"{v} must be a loopback range (inside 127.0.0.0/8) of 16 addresses at least")
        return str(net)

    @field_validator("dns_ip")
    @classmethod
    def _loopback_ip(cls, v: str) -> str:
        import ipaddress
        if not ipaddress.IPv4Address(v).is_loopback:
            raise ValueError(f"{v} must be a loopback address (the testbed's DNS listens on this machine)")
        return v


HOST_LOOPBACK = "127.0.0.1"
"""Where the colours' RPC ports are on their host (hostNetwork pods bind them there; Caddy's upstreams dial
them there): the host-side address that :meth:`Env.rpc_url` names. The runner reaches it through
:mod:`runbook.adapters.tunnel` (unchanged on ``local://``, an ssh tunnel on ``ssh://``)."""

HOST_SCHEMES = ("local", "ssh", "docker")
_HOST_OPTIONS = ("sudo", "ssh_config", "ssh_identity_file", "timeout", "controlpersist")


@dataclass(frozen=True)
class HostTarget:
    """The env's ``host`` URL, read: where host commands run and where the runner stands.

    - ``local://``: the runner is on the host (the testbed, or an operator logged in on biscayne);
    - ``ssh://[user@]host[:port]``: the runner is on an operator's machine; host commands go over ssh, and
      the endpoints the env puts on the host's loopback (ingress admin, both colours' RPC) through ssh
      tunnels (:mod:`runbook.adapters.tunnel`);
    - ``docker://<container>``: a kind node; its ports are mapped to the runner's loopback by kind.

    Query options: ``sudo=true`` (the connection's user is not root: commands asked as root run with
    ``sudo -n``), testinfra's ``ssh_config``, ``ssh_identity_file`` (relative: under the project),
    ``timeout`` and ``controlpersist``. Anything else is refused, so a typo cannot silently drop sudo."""

    url: str
    scheme: str
    name: str
    user: str | None = None
    port: int | None = None
    sudo: bool = False
    options: tuple[tuple[str, str], ...] = ()

    @property
    def remote(self) -> bool:
        """The runner is not on the host: host-side loopback endpoints are reached through ssh tunnels."""
        return self.scheme == "ssh"

    @property
    def display(self) -> str:
        """The URL without its options (``ssh://biscayne``), for messages."""
        return self.url.split("?", 1)[0]

    def option(self, key: str) -> str | None:
        return dict(self.options).get(key)

    def testinfra_url(self) -> str:
        """The URL testinfra connects with: sudo is ours (only commands asked as root get it), paths absolute."""
        opts = [(k, str(project_path(v)) if k in ("ssh_config", "ssh_identity_file") else v) for k, v in self.options]
        query = "&".join(f"{k}={v}" for k, v in opts)
        return self.display + (f"?{query}" if query else "")


def project_path(value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def parse_host(url: str) -> HostTarget:
    """Read a ``host`` URL (see :class:`HostTarget`); ValueError naming the problem."""
    parts = urlsplit(url)
    if parts.scheme not in HOST_SCHEMES or "://" not in url:
        raise ValueError(f"not a host URL: {url!r} (use local://, ssh://[user@]host[:port][?sudo=true] or "
                         "docker://<container>)")
    options: list[tuple[str, str]] = []
    sudo = False
    for item in filter(None, parts.query.split("&")):
        key, _, value = item.partition("=")
        if key not in _HOST_OPTIONS:
            raise ValueError(f"host {url!r}: unknown option {key!r} (known: {', '.join(_HOST_OPTIONS)})")
        if key == "sudo":
            if value.lower() not in ("true", "false"):
                raise ValueError(f"host {url!r}: sudo={value!r}: use sudo=true or sudo=false")
            sudo = value.lower() == "true"
        else:
            options.append((key, value))
    if sudo and parts.scheme == "docker":
        raise ValueError(f"host {url!r}: sudo=true with docker:// (docker exec already runs as the container's root)")
    if parts.scheme != "local" and not parts.hostname:
        raise ValueError(f"host {url!r}: no host name")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"host {url!r}: {exc}") from exc
    return HostTarget(url=url, scheme=parts.scheme, name=parts.hostname or "", user=parts.username, port=port,
                      sudo=sudo, options=tuple(options))


class Env(_Model):
    name: str
    production: bool = False
    disposable: bool = Field(default=False, description="a throwaway testbed: mutating scenarios run by default")
    kube: KubeConfig | None = None
    host: str = Field(default="local://", description="where host commands run and the runner stands: local:// "
                      "(on the host), ssh://[user@]host[:port][?sudo=true] (an operator's machine: root commands "
                      "with sudo -n, the host's loopback endpoints through ssh tunnels), docker://<kind node>")
    ingress: IngressConfig
    deployments: Deployments
    storage: StorageConfig
    doublezero: DoubleZeroConfig
    cluster_rpc: Annotated[list[str], BeforeValidator(_one_or_more_urls)] = Field(
        description="the reference RPC(s) giving the cluster tip, in order of preference (one URL or a list)")
    reference_poll: Duration = Field(default=2.0, ge=0.5, le=300.0, description="seconds between calls to the "
                                     "reference RPC while catching up (a public RPC answers 429 above a few a second)")
    entrypoints: list[str] = Field(default_factory=list, description="the cluster's gossip entrypoints "
                                   "(HOST:PORT) the validator joins; empty keeps the manifest's --entrypoint")
    target_version: str | None = Field(default=None, description="default upgrade target (disposable envs)")
    catch_up_distance: int = Field(default=150, ge=0, description="slots behind the tip that count as caught up")
    timeouts: Timeouts = Timeouts()
    probe: ProbeConfig = ProbeConfig()
    testbed: TestbedConfig | None = None
    canary: CanaryConfig | None = Field(default=None, description="seed 004's canary promotion (runbook.env_canary)")
    release: ReleaseConfig | None = Field(default=None, description="seed 003's release (runbook.env_release)")
    hardfork: HardforkConfig | None = Field(default=None, description="seeds 001/002 (runbook.env_hardfork)")
    source: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _entrypoints_reach_the_testbeds_cluster(self) -> Env:
        """On a testbed, a loopback entrypoint must be the testbed's own cluster stand-in: a copied env with
        its ports moved but not its entrypoint would start validators that wait for a cluster never there."""
        if self.testbed is not None:
            for ep in self.entrypoints:
                host, _, port = ep.rpartition(":")
                if host in ("127.0.0.1", "localhost") and port != str(self.testbed.cluster_port):
                    raise ValueError(f"entrypoints: {ep} is not this testbed's cluster stand-in "
                                     f"(testbed.cluster_port is {self.testbed.cluster_port})")
        return self

    @model_validator(mode="after")
    def _production_order_of_durations(self) -> Env:
        """Production's order: catch-up (hours) far longer than the ingress's retry window, itself longer
        than its health check interval. A testbed compresses time, but never so far that the retry window
        holds a whole catch-up: a shift before the new colour is caught up would then be answered late
        instead of failing, hiding what production would show."""
        ing = self.ingress
        catch_up, what = ((self.testbed.startup_delay, "testbed.startup_delay (the shortest catch-up: the "
                           "stand-in answers `unknown` that long)") if self.testbed is not None
                          else (self.timeouts.catch_up, "timeouts.catch_up"))
        problems = []
        if not ing.try_duration > ing.health_interval:
            problems.append(f"ingress.try_duration ({ing.try_duration:g}s) must be longer than ingress.health_interval "
                            f"({ing.health_interval:g}s): a retry must outlast a health check")
        if catch_up < CATCH_UP_OVER_RETRY * ing.try_duration:
            problems.append(f"{what} is {catch_up:g}s: catch-up must be at least {CATCH_UP_OVER_RETRY}x the ingress's "
                            f"retry window (ingress.try_duration {ing.try_duration:g}s), or the retry window can hide "
                            "a shift made before the new colour caught up")
        if problems:
            raise ValueError("durations out of production's order: " + "; ".join(problems))
        return self

    @field_validator("host")
    @classmethod
    def _host_url(cls, v: str) -> str:
        parse_host(v)
        return v

    @property
    def namespace(self) -> str:
        """The namespace objects live in: the kube section's, else the testbed's, else ``default``."""
        if self.kube is not None and self.kube.namespace:
            return self.kube.namespace
        return self.testbed.namespace if self.testbed is not None else "default"

    @property
    def host_target(self) -> HostTarget:
        """The ``host`` URL read: scheme, name, user, port, ``sudo`` and the ssh options."""
        return parse_host(self.host)

    def rpc_url(self, colour: str) -> str:
        """A colour's JSON-RPC URL as its host sees it (the runner-side URL: ``Reach.url`` of this)."""
        return f"http://{HOST_LOOPBACK}:{self.deployments.colour(colour).rpc_port}"

    def port_settings(self) -> list[tuple[str, int]]:
        """Every (setting, port) this env binds locally, for collision checks and messages."""
        out = [
            ("ingress.url", self.ingress.port),
            ("ingress.admin", self.ingress.admin_port),
            ("deployments.green.rpc_port", self.deployments.green.rpc_port),
            ("deployments.blue.rpc_port", self.deployments.blue.rpc_port),
        ]
        out += [(f"deployments.{c}.gossip_port", p) for c in ("green", "blue")
                if (p := self.deployments.colour(c).gossip_port) is not None]
        if self.testbed is not None:
            out += [
                ("testbed.supervisor_port", self.testbed.supervisor_port),
                ("testbed.cluster_port", self.testbed.cluster_port),
            ]
        if self.canary is not None and self.testbed is not None:
            c = self.canary
            out += [("canary.url", _url_port(c.url)), ("canary.canary_url", _url_port(c.canary_url)),
                    ("canary.prometheus", _url_port(c.prometheus))]
        if self.release is not None and self.testbed is not None:
            out += [("release.url", _url_port(self.release.url))]
        if self.hardfork is not None and self.testbed is not None:
            out += [("hardfork.rpc", _url_port(self.hardfork.rpc)),
                    ("hardfork.network_rpc", _url_port(self.hardfork.network_rpc))]
        return out

    def setting_for_port(self, port: int) -> str:
        names = [name for name, p in self.port_settings() if p == port]
        return " / ".join(names) if names else "(not an env setting)"


def shift_ports(data: dict[str, Any], shift: int) -> None:
    """Move every local port of a testbed env's raw data (as loaded from YAML) by ``shift``, in place: a second
    testbed beside the first (tests, benches). Ingress, admin, both colours' RPC and gossip ports and dynamic
    ranges, the supervisor, and the cluster stand-in with the entrypoints and reference that name it."""
    def moved(url: str) -> str:
        parts = urlsplit(url)
        return parts._replace(netloc=f"{parts.hostname}:{(parts.port or 80) + shift}").geturl()

    data["ingress"]["url"] = moved(data["ingress"]["url"])
    data["ingress"]["admin"] = moved(data["ingress"]["admin"])
    for colour in ("green", "blue"):
        dep = data["deployments"][colour]
        dep["rpc_port"] += shift
        if dep.get("gossip_port") is not None:
            dep["gossip_port"] += shift
        if dep.get("dynamic_port_range"):
            lo, hi = (int(x) + shift for x in str(dep["dynamic_port_range"]).split("-"))
            dep["dynamic_port_range"] = f"{lo}-{hi}"
    tb = data["testbed"]
    tb["supervisor_port"] += shift
    tb["cluster_port"] += shift
    # the cluster's Services and DNS sit on addresses, not ports: a second testbed gets its own /16 and DNS address
    second = 241 + (shift // 100) % 14
    tb["service_cidr"] = f"127.{second}.0.0/16"
    tb["dns_ip"] = f"127.{second}.0.10"
    data["cluster_rpc"] = f"http://127.0.0.1:{tb['cluster_port']}"
    data["entrypoints"] = [f"127.0.0.1:{tb['cluster_port']}"]
    if data.get("canary"):
        for key in ("url", "canary_url", "prometheus"):
            data["canary"][key] = moved(data["canary"][key])
    if data.get("release"):
        data["release"]["url"] = moved(data["release"]["url"])
    if data.get("hardfork"):
        for key in ("rpc", "network_rpc"):
            data["hardfork"][key] = moved(data["hardfork"][key])


def envs_dir() -> Path:
    return Path(os.environ.get("RUNBOOK_ENVS_DIR", PROJECT_ROOT / "envs"))


def known_envs(directory: Path | None = None) -> list[str]:
    d = directory or envs_dir()
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_env(name_or_path: str, directory: Path | None = None) -> Env:
    """Load and validate an env by name (``envs/<name>.yaml``) or by path to a YAML file."""
    d = directory or envs_dir()
    candidate = Path(name_or_path)
    path = candidate if candidate.suffix in (".yaml", ".yml") else d / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(known_envs(d)) or "(none)"
        raise UnknownEnvironment(f"unknown environment {name_or_path!r}: known environments are {known} ({d})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Env.model_validate({**data, "source": str(path)})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            got = f" (got {err['input']!r})" if err["type"] not in ("missing",) else ""
            problems.append(f"{path}: field {field}: {err['msg']}{got}")
        name = str(data.get("name", ""))
        raise ConfigError("invalid environment file:\n  " + "\n  ".join(problems), env=name) from exc

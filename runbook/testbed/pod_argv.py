"""A Deployment's pod spec as ``docker run`` argument lists: what a kubelet would give each container.

:func:`plan_pod` turns a rendered Deployment (``runbook.manifests.render_deployment``) into a
:class:`PodPlan`: a pause container holding the pod's namespaces, then the init containers in order
(native sidecars, ``restartPolicy: Always``, among them), then the app containers. Each container gets
exactly what its manifest gives it, nothing else:

- image and pull policy (Kubernetes' default: ``Always`` for ``:latest`` or no tag, else ``IfNotPresent``);
- ``command`` replaces the image's ENTRYPOINT and drops its CMD, ``args`` replace CMD, both with
  ``$(VAR)`` expanded from the container's env, as the kubelet does;
- ``env`` (literal values; ``$(VAR)`` refers to variables defined before it);
- ``volumeMounts`` of ``hostPath`` volumes as bind mounts of directories under ``host_root`` (the node's
  filesystem), ``emptyDir`` under the pod's directory there, ``readOnly``, ``subPath``, propagation;
- ``securityContext``: privileged, capabilities, user/group, read-only root, no-new-privileges, seccomp
  (Unconfined unless the manifest asks for RuntimeDefault, the kubelet's default);
- namespaces: ``hostNetwork`` joins the node container's network namespace (else the pause container's);
  IPC is the pod's (the pause container's); PID is the container's own unless ``shareProcessNamespace``
  (then the pod's) or ``hostPID``;
- ``terminationGracePeriodSeconds`` as the stop timeout, the pod's ``restartPolicy`` (sidecars: always).

Anything else in a pod or container spec is refused with its field name (:class:`ConfigError`), except
fields that do not change what the process gets here (listed in ``IGNORED_*``), so a manifest can never
silently mean something else in a container than under a kubelet. Pure: no docker needed.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from runbook.errors import ConfigError

Role = Literal["pause", "init", "sidecar", "app"]

POD_FIELDS = {"containers", "initContainers", "volumes", "hostNetwork", "hostPID", "hostIPC",
              "shareProcessNamespace", "terminationGracePeriodSeconds", "restartPolicy", "securityContext"}
# fields that change nothing a process gets on this one-node, no-CNI, no-API "node"
IGNORED_POD_FIELDS = {"dnsPolicy", "nodeSelector", "tolerations", "affinity", "schedulerName", "priorityClassName",
                      "serviceAccountName", "serviceAccount", "automountServiceAccountToken", "enableServiceLinks"}
CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "command", "args", "env", "volumeMounts", "securityContext",
                    "workingDir", "restartPolicy", "startupProbe"}
IGNORED_CONTAINER_FIELDS = {"ports", "resources", "readinessProbe", "livenessProbe", "terminationMessagePath",
                            "terminationMessagePolicy"}
SECURITY_FIELDS = {"privileged", "capabilities", "runAsUser", "runAsGroup", "runAsNonRoot",
                   "readOnlyRootFilesystem", "allowPrivilegeEscalation", "seccompProfile"}
HOST_PATH_TYPES = {"", "Directory", "DirectoryOrCreate", "File"}
PULL = {"Always": "always", "IfNotPresent": "missing", "Never": "never"}
RESTART = {"Always": "always", "OnFailure": "on-failure", "Never": "no"}
PROPAGATION = {"None": "", "HostToContainer": "rslave", "Bidirectional": "rshared"}
# capability numbers (linux/capability.h), to read a bounding set
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
                "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
                "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT",
                "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
                "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND",
                "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")

Manifest = Mapping[str, Any]


@dataclass(frozen=True)
class HostDir:
    """A path on the node a volume needs: ``create`` it (a directory), or it must already exist (``Directory``,
    or a ``File``: an identity keypair)."""

    volume: str
    node_path: str  # as the manifest names it (hostPath) or the kubelet's pod dir (emptyDir)
    path: Path  # where that is on this machine
    create: bool
    file: bool = False


@dataclass(frozen=True)
class ContainerRun:
    container: str  # the manifest's container name ("POD" for the pause container)
    role: Role
    name: str  # the docker container name
    argv: tuple[str, ...]  # arguments of `docker`
    image: str
    startup_probe: tuple[str, ...] | None = None  # an exec startupProbe's command


@dataclass(frozen=True)
class PodPlan:
    deployment: str
    namespace: str
    pod: str
    uid: str
    grace: int
    pause: ContainerRun
    init: tuple[ContainerRun, ...]  # in manifest order: regular init containers and native sidecars
    containers: tuple[ContainerRun, ...]
    host_dirs: tuple[HostDir, ...]
    deviations: tuple[str, ...] = ()  # where a container gets less than under a kubelet, and why

    def container(self, name: str) -> ContainerRun:
        for run in (*self.init, *self.containers):
            if run.container == name:
                return run
        raise ConfigError(f"pod {self.pod} has no container {name!r}", obj=self.pod)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a defined variable is replaced, an undefined one kept, ``$$`` is ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR.sub(sub, text)


def default_pull_policy(image: str) -> str:
    name = image.split("@", 1)[0]
    tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
    return "Always" if tag in ("", "latest") and "@" not in image else "IfNotPresent"


def _refuse_unknown(spec: Mapping[str, Any], allowed: set[str], ignored: set[str], where: str) -> None:
    unknown = sorted(set(spec) - allowed - ignored)
    if unknown:
        raise ConfigError(f"{where}: unsupported field(s) {', '.join(unknown)}: the container runner would not "
                          "give the process what a kubelet gives it")


def missing_capabilities(cap_bnd_hex: str) -> frozenset[str]:
    """The capabilities a bounding set (``CapBnd:`` of /proc/PID/status, hex) lacks."""
    bits = int(cap_bnd_hex, 16)
    return frozenset(name for i, name in enumerate(CAPABILITIES) if not bits >> i & 1)


def template_hash(template: Manifest) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def plan_pod(deployment: Manifest, *, node: str, pause_image: str, host_root: Path, replica: str = "0",
             missing_caps: frozenset[str] = frozenset()) -> PodPlan:
    """The docker runs of the Deployment's pod on ``node`` (a container whose network namespace is the
    node's). ``host_root`` is the node's filesystem on this machine; ``replica`` names the pod.

    ``missing_caps``: capabilities the engine's own bounding set lacks (a sandboxed root). ``docker run
    --privileged`` asks for every capability and fails there; a privileged container then gets all the
    others and everything else ``--privileged`` gives (unconfined seccomp, AppArmor and /proc paths),
    and the plan lists the difference in ``deviations``."""
    meta = deployment.get("metadata") or {}
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace") or "default")
    template = (deployment.get("spec") or {}).get("template") or {}
    spec = template.get("spec") or {}
    where = f"deployment {name}"
    if not name or not spec.get("containers"):
        raise ConfigError(f"{where or 'deployment'}: needs metadata.name and spec.template.spec.containers")
    _refuse_unknown(spec, POD_FIELDS, IGNORED_POD_FIELDS, f"{where}: pod spec")
    pod = f"{name}-{template_hash(template)}-{replica}"
    uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"runbook-pod:{namespace}/{pod}"))
    grace = int(spec.get("terminationGracePeriodSeconds", 30))
    pod_dir = host_root / "var/lib/kubelet/pods" / uid
    volumes, host_dirs = _volumes(spec.get("volumes") or [], host_root, pod_dir, where)
    pause_name = f"k8s_POD_{pod}_{namespace}_{uid}_0"
    labels = {"io.kubernetes.pod.name": pod, "io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.uid": uid,
              "io.kubernetes.deployment": name}
    pause_argv = ["run", "-d", "--name", pause_name, "--init", "--ipc", "shareable",
                  "--network", f"container:{node}" if spec.get("hostNetwork") else "none"]
    if spec.get("hostPID"):
        pause_argv += ["--pid", "host"]
    for k, v in {**labels, "io.kubernetes.container.name": "POD",
                 **{f"pod.label/{a}": str(b) for a, b in (template.get("metadata") or {}).get("labels", {}).items()}
                 }.items():
        pause_argv += ["--label", f"{k}={v}"]
    pause_argv += ["--entrypoint", "sleep", pause_image, "infinity"]
    pause = ContainerRun("POD", "pause", pause_name, tuple(pause_argv), pause_image)
    ctx = _PodContext(spec=spec, node=node, pause=pause_name, pod=pod, namespace=namespace, uid=uid, grace=grace,
                      labels=labels, volumes=volumes, where=where, missing_caps=missing_caps)
    init = tuple(ctx.container(c, init=True) for c in spec.get("initContainers") or [])
    apps = tuple(ctx.container(c, init=False) for c in spec["containers"])
    deviations = tuple(
        f"container {c['name']}: privileged without {', '.join(sorted(missing_caps))} (not in this engine's "
        "bounding set)" for c in [*(spec.get("initContainers") or []), *spec["containers"]]
        if missing_caps and (c.get("securityContext") or {}).get("privileged"))
    return PodPlan(name, namespace, pod, uid, grace, pause, init, apps, tuple(host_dirs), deviations)


def _volumes(specs: list[Manifest], host_root: Path, pod_dir: Path,
             where: str) -> tuple[dict[str, Path], list[HostDir]]:
    out: dict[str, Path] = {}
    dirs: list[HostDir] = []
    for v in specs:
        vname = str(v.get("name", ""))
        if "hostPath" in v:
            hp = v["hostPath"]
            path, kind = str(hp.get("path", "")), str(hp.get("type", ""))
            if not path.startswith("/"):
                raise ConfigError(f"{where}: volume {vname}: hostPath.path must be absolute, got {path!r}")
            if kind not in HOST_PATH_TYPES:
                raise ConfigError(f"{where}: volume {vname}: hostPath type {kind!r} is not supported here "
                                  f"(supported: Directory, DirectoryOrCreate, File, unset)")
            local = host_root / PurePosixPath(path).relative_to("/")
            dirs.append(HostDir(vname, path, local, create=kind not in ("Directory", "File"), file=kind == "File"))
        elif "emptyDir" in v:
            local = pod_dir / "volumes" / "kubernetes.io~empty-dir" / vname
            dirs.append(HostDir(vname, str(local.relative_to(host_root)), local, create=True))
        else:
            kinds = sorted(set(v) - {"name"})
            raise ConfigError(f"{where}: volume {vname}: {', '.join(kinds) or 'no source'} volumes are not "
                              "supported by the container runner (hostPath and emptyDir are)")
        if "," in str(local):
            raise ConfigError(f"{where}: volume {vname}: a path with a comma cannot be bind-mounted: {local}")
        out[vname] = local
    return out, dirs


@dataclass(frozen=True)
class _PodContext:
    spec: Manifest
    node: str
    pause: str
    pod: str
    namespace: str
    uid: str
    grace: int
    labels: Mapping[str, str]
    volumes: Mapping[str, Path]
    where: str
    missing_caps: frozenset[str]

    def container(self, c: Manifest, *, init: bool) -> ContainerRun:
        cname = str(c.get("name", ""))
        where = f"{self.where}: container {cname}"
        _refuse_unknown(c, CONTAINER_FIELDS, IGNORED_CONTAINER_FIELDS, where)
        image = str(c.get("image") or "")
        if not cname or not image:
            raise ConfigError(f"{where}: needs a name and an image")
        sidecar = init and c.get("restartPolicy") == "Always"
        if c.get("restartPolicy") not in (None, "Always") or (c.get("restartPolicy") and not init):
            raise ConfigError(f"{where}: restartPolicy {c.get('restartPolicy')!r} is only valid as Always on an "
                              "init container (a native sidecar)")
        role: Role = "sidecar" if sidecar else "init" if init else "app"
        name = f"k8s_{cname}_{self.pod}_{self.namespace}_{self.uid}_0"
        argv = ["run", "-d", "--name", name]
        for k, v in {**self.labels, "io.kubernetes.container.name": cname}.items():
            argv += ["--label", f"{k}={v}"]
        argv += ["--network", f"container:{self.node if self.spec.get('hostNetwork') else self.pause}"]
        argv += ["--ipc", "host" if self.spec.get("hostIPC") else f"container:{self.pause}"]
        if self.spec.get("hostPID"):
            argv += ["--pid", "host"]
        elif self.spec.get("shareProcessNamespace"):
            argv += ["--pid", f"container:{self.pause}"]
        restart = "Always" if sidecar else "Never" if init else str(self.spec.get("restartPolicy", "Always"))
        if restart not in RESTART:
            raise ConfigError(f"{self.where}: restartPolicy {restart!r} (expected {', '.join(RESTART)})")
        policy = str(c.get("imagePullPolicy") or default_pull_policy(image))
        if policy not in PULL:
            raise ConfigError(f"{where}: imagePullPolicy {policy!r} (expected {', '.join(PULL)})")
        argv += ["--restart", RESTART[restart], "--pull", PULL[policy], "--stop-timeout", str(self.grace)]
        if c.get("workingDir"):
            argv += ["--workdir", str(c["workingDir"])]
        env = self._env(c.get("env") or [], where)
        for k, v in env.items():
            argv += ["--env", f"{k}={v}"]
        argv += self._mounts(c.get("volumeMounts") or [], where)
        argv += self._security(c.get("securityContext") or {}, where)
        command = [expand(str(x), env) for x in c.get("command") or []]
        args = [expand(str(x), env) for x in c.get("args") or []]
        if command:
            argv += ["--entrypoint", command[0]]
        argv += [image, *command[1:], *args]
        return ContainerRun(cname, role, name, tuple(argv), image, self._startup_probe(c.get("startupProbe"), where))

    def _env(self, entries: list[Manifest], where: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for e in entries:
            if "valueFrom" in e or "name" not in e:
                raise ConfigError(f"{where}: env {e.get('name')!r}: only literal values are supported (no valueFrom)")
            env[str(e["name"])] = expand(str(e.get("value", "")), env)
        return env

    def _mounts(self, mounts: list[Manifest], where: str) -> list[str]:
        out: list[str] = []
        for m in mounts:
            vname, target = str(m.get("name", "")), str(m.get("mountPath", ""))
            unknown = sorted(set(m) - {"name", "mountPath", "readOnly", "subPath", "mountPropagation"})
            if unknown:
                raise ConfigError(f"{where}: volumeMount {vname}: unsupported field(s) {', '.join(unknown)}")
            if vname not in self.volumes:
                raise ConfigError(f"{where}: volumeMount {vname!r} names no volume of the pod")
            if not target.startswith("/") or "," in target:
                raise ConfigError(f"{where}: volumeMount {vname}: mountPath must be absolute, without commas")
            source = self.volumes[vname]
            if m.get("subPath"):
                sub = PurePosixPath(str(m["subPath"]))
                if sub.is_absolute() or ".." in sub.parts:
                    raise ConfigError(f"{where}: volumeMount {vname}: subPath must be relative, without '..'")
                source = source / sub
            opts = f"type=bind,source={source},target={target}"
            if m.get("readOnly"):
                opts += ",readonly"
            propagation = str(m.get("mountPropagation") or "None")
            if propagation not in PROPAGATION:
                raise ConfigError(f"{where}: volumeMount {vname}: mountPropagation {propagation!r}")
            if PROPAGATION[propagation]:
                opts += f",bind-propagation={PROPAGATION[propagation]}"
            out += ["--mount", opts]
        return out

    def _security(self, sc: Manifest, where: str) -> list[str]:
        pod_sc = self.spec.get("securityContext") or {}
        unknown = sorted(set(sc) - SECURITY_FIELDS) + sorted(
            set(pod_sc) - {"runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile"})
        if unknown:
            raise ConfigError(f"{where}: securityContext: unsupported field(s) {', '.join(unknown)}")
        merged = {**pod_sc, **sc}
        out: list[str] = []
        caps = sc.get("capabilities") or {}
        if sc.get("privileged") and self.missing_caps:
            out += ["--cap-add", "ALL", *[x for cap in sorted(self.missing_caps) for x in ("--cap-drop", cap)],
                    "--security-opt", "apparmor=unconfined", "--security-opt", "systempaths=unconfined"]
        elif sc.get("privileged"):
            out.append("--privileged")
        if not (sc.get("privileged") and self.missing_caps):
            out += [x for cap in caps.get("add") or [] for x in ("--cap-add", str(cap))]
        out += [x for cap in caps.get("drop") or [] for x in ("--cap-drop", str(cap))]
        user = merged.get("runAsUser")
        if merged.get("runAsNonRoot") and user == 0:
            raise ConfigError(f"{where}: runAsNonRoot with runAsUser 0: the kubelet refuses to start it")
        if user is not None:
            group = merged.get("runAsGroup")
            out += ["--user", f"{int(user)}" + (f":{int(group)}" if group is not None else "")]
        if sc.get("readOnlyRootFilesystem"):
            out.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            out += ["--security-opt", "no-new-privileges"]
        seccomp = str((merged.get("seccompProfile") or {}).get("type", "Unconfined"))
        if seccomp == "Unconfined" and not (sc.get("privileged") and not self.missing_caps):
            out += ["--security-opt", "seccomp=unconfined"]
        elif seccomp not in ("Unconfined", "RuntimeDefault"):
            raise ConfigError(f"{where}: seccompProfile type {seccomp!r} is not supported here")
        return out

    def _startup_probe(self, probe: Manifest | None, where: str) -> tuple[str, ...] | None:
        if not probe:
            return None
        command = (probe.get("exec") or {}).get("command")
        if not command:
            raise ConfigError(f"{where}: startupProbe: only exec probes are supported by the container runner")
        return tuple(str(x) for x in command)


__all__ = ["ContainerRun", "HostDir", "PodPlan", "default_pull_policy", "expand", "missing_capabilities", "plan_pod",
           "template_hash"]

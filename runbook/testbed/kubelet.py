"""The local kubelet-alike: Kubernetes Deployment manifests run as processes under supervisord.

It implements the :class:`~runbook.adapters.base.Workloads` port for the local testbed, keeping the
kubelet semantics the procedures depend on:

- a native sidecar (an initContainer with ``restartPolicy: Always``) is started and running before the
  app containers, and stopped after them;
- patching a running pod's container image restarts only that container (restartCount + 1);
- changing the Deployment template replaces the pod (strategy Recreate: old pod gone, new pod created);
- an image with no stand-in is ``ImagePullBackOff``; a container that keeps exiting is ``CrashLoopBackOff``;
- a DaemonSet (:meth:`LocalWorkloads.apply_daemonset`) is stored and listed as the API server lists it; pods of
  a DaemonSet are not started here.
- Jobs, StatefulSets and PersistentVolumeClaims (the Batch port, :mod:`runbook.testbed.kube_batch`) are run by
  the testbed's controller (:mod:`runbook.testbed.kube_sets`): a Job's pod runs to completion (restartPolicy
  Never/OnFailure: supervisord does not restart it) and is Succeeded or Failed; a claim is mounted as a directory.

A container gets exactly what a kubelet gives it (its manifest's command/args and env, its image's env,
HOME), runs under :mod:`runbook.testbed.shim` in a PID namespace and a private ``/run`` of its own, and a
host-network pod's containers join the node's network namespace. Statuses are read from real state
(supervisord's process table and event stream for restart counts) and named as containerd's CRI names them
(the image's fully qualified first repo tag, a ``sha256:`` imageID), from this kubelet's own record of what
it created each container from, never from the process's environment.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook.adapters.base import CommandResult, ContainerStatus, PodInfo, ProcessInfo
from runbook.env import PROJECT_ROOT, Env
from runbook.errors import AdapterError, TestbedError
from runbook.images import normalise
from runbook.testbed.kube_batch import BatchMixin
from runbook.testbed.kube_dns import pod_resolv_conf
from runbook.testbed.kube_objects import ObjectsMixin
from runbook.testbed.kube_rollout import HASH_LABEL, RolloutsMixin, expand, is_rolling, manifest_env
from runbook.testbed.shim import container_pid
from runbook.testbed.supervisor import Supervisor
from runbook.wait import wait_for

# Stand-in program module -> the CLIs its image ships (what the runbook execs on biscayne).
CLIS_BY_MODULE: dict[str, dict[str, list[str]]] = {
    "runbook.testbed.validator": {
        "solana": ["-m", "runbook.testbed.clis", "solana"],
        "agave-validator": ["-m", "runbook.testbed.clis", "agave-validator"],
    },
    "runbook.testbed.doublezerod": {"doublezero": ["-m", "runbook.testbed.doublezero_cli"]},
    "runbook.testbed.meta_gateway": {"meta-gateway": ["-m", "runbook.testbed.meta_gateway"]},  # seed 003
    "runbook.testbed.seid": {"seid": ["-m", "runbook.testbed.seid"]},  # seeds 001/002: `seid status --node ...`
}


# Stand-in program module -> the name of the image's main binary (a manifest's `command` may name it).
ENTRYPOINT_NAMES = {"runbook.testbed.doublezerod": "doublezerod"}

_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


_RECREATE: dict[str, Any] = {"spec": {"strategy": {"type": "Recreate"}}}


def template_hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _program(pod: str, container: str) -> str:
    return f"{pod}--{container}"


def _controlled(obj: Mapping[str, Any]) -> bool:
    """A pod of the controller's (a ReplicaSet's, a Job's, a StatefulSet's): probed, deleted gracefully."""
    return "replicaset" in obj or "owner" in obj


class ImageNotFound(LookupError):
    pass


class LocalWorkloads(ObjectsMixin, RolloutsMixin, BatchMixin):
    """Deployments and pods of one testbed, persisted under ``<state>/kube``. RollingUpdate Deployments are
    stored only: the testbed's controller (:mod:`runbook.testbed.kube_controller`) rolls them out."""

    def __init__(self, *, env: Env, supervisor: Supervisor, state_dir: Path, netns: str | None) -> None:
        if env.testbed is None:
            raise TestbedError("the local workloads adapter needs an env with a testbed section", env=env.name)
        self.env = env
        self.tb = env.testbed
        self.sup = supervisor
        self.state_dir = state_dir.resolve()
        self.netns = netns
        self.kube = self.state_dir / "kube"
        (self.kube / "deployments").mkdir(parents=True, exist_ok=True)
        (self.kube / "pods").mkdir(parents=True, exist_ok=True)
        (self.kube / "daemonsets").mkdir(parents=True, exist_ok=True)
        (self.kube / "replicasets").mkdir(parents=True, exist_ok=True)
        (self.kube / "deployment-status").mkdir(parents=True, exist_ok=True)

    # -- images ----------------------------------------------------------------------------
    def resolve_image(self, image: str) -> tuple[list[str], str]:
        """image -> (stand-in argv, version). Keys of ``testbed.images`` may contain ``{version}``."""
        for pattern, argv in self.tb.images.items():
            # a release number only: an unknown tag (v2.2.1-missing) is ImagePullBackOff, as on kind
            regex = "^" + re.escape(pattern).replace(re.escape("{version}"), r"(?P<version>\d+\.\d+\.\d+)") + "$"
            m = re.match(regex, image)
            if m:
                version = m.groupdict().get("version") or image.rsplit(":", 1)[-1]
                subst = {"{python}": sys.executable, "{version}": version,
                         "{startup_delay}": repr(self.tb.startup_delay)}
                out = []
                for a in argv:
                    for k, v in subst.items():
                        a = a.replace(k, v)
                    out.append(a)
                return out, version
        raise ImageNotFound(image)

    # -- store -----------------------------------------------------------------------------
    def _read(self, kind: str, name: str) -> dict[str, Any] | None:
        path = self.kube / kind / f"{name}.json"
        try:
            return dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def _write(self, kind: str, name: str, obj: Mapping[str, Any]) -> None:
        path = self.kube / kind / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        tmp.replace(path)

    def _pod_names(self, deployment: str | None = None) -> list[str]:
        """The pods' names (of ``deployment``): a record the controller removes while they are listed is gone."""
        return [rec["name"] for rec in self.pod_records(deployment)]

    # -- Workloads port --------------------------------------------------------------------
    def deployments(self) -> list[str]:
        return sorted(p.stem for p in (self.kube / "deployments").glob("*.json"))

    def deployment(self, name: str) -> dict[str, Any] | None:
        """The Deployment as applied (this kubelet's store is its API server)."""
        return self._read("deployments", name)

    def daemonsets(self) -> list[str]:
        """The DaemonSets applied here (:meth:`apply_daemonset`), listed as the API server lists them: by name,
        whether or not a pod of theirs runs (none does here)."""
        return sorted(p.stem for p in (self.kube / "daemonsets").glob("*.json"))

    def daemonset(self, name: str) -> dict[str, Any] | None:
        """The DaemonSet as applied, or None."""
        return self._read("daemonsets", name)

    def apply_daemonset(self, manifest: dict[str, Any]) -> None:
        """Create or replace a DaemonSet in this kubelet's store (what ``kubectl apply`` of one does to the API
        server): stored and listed as the API server lists it; pods of a DaemonSet are not started here.
        Testbed-only, not a port verb: the runner's Role on a real cluster may only list DaemonSets."""
        if manifest.get("kind") != "DaemonSet":
            raise AdapterError(f"apply_daemonset takes a DaemonSet, got {manifest.get('kind')!r}", env=self.env.name)
        name = (manifest.get("metadata") or {}).get("name")
        spec = manifest.get("spec") or {}
        missing = [f for f, v in (("metadata.name", name), ("spec.selector", spec.get("selector")),
                                  ("spec.template", spec.get("template"))) if not v]
        if missing:  # what the API server requires of a DaemonSet (its validation's Required value)
            raise AdapterError(f"DaemonSet {name or '?'} is invalid: {', '.join(missing)}: Required value",
                               env=self.env.name, obj=name or "")
        self._write("daemonsets", str(name), manifest)

    def delete_daemonset(self, name: str) -> None:
        """Remove a DaemonSet from the store; deleting one that is not there converges."""
        (self.kube / "daemonsets" / f"{name}.json").unlink(missing_ok=True)

    def apply_deployment(self, manifest: dict[str, Any]) -> None:
        if manifest.get("kind") == "DaemonSet":
            raise AdapterError("apply_deployment got a DaemonSet: use apply_daemonset", env=self.env.name)
        if manifest.get("kind") != "Deployment":
            raise AdapterError(f"the local kubelet applies Deployments only, got {manifest.get('kind')!r}")
        if is_rolling(manifest):
            return self._store_rolling(manifest)
        name = manifest["metadata"]["name"]
        template = manifest["spec"]["template"]
        new_hash = template_hash(template)
        old = self._read("deployments", name)
        self._write("deployments", name, manifest)
        pods = self._pod_names(name)
        if old is not None and template_hash(old["spec"]["template"]) == new_hash and pods:
            return  # converged: same template, pod exists
        for pod in pods:  # strategy Recreate: old pods go before the new one starts
            self._delete_pod(pod)
        self._create_pod(name, template, new_hash)

    def delete_deployment(self, name: str, *, wait: bool = True) -> None:
        dep = self.deployment(name)
        if is_rolling(dep or _RECREATE):
            # the Deployment and its ReplicaSets go; their pods are the controller's garbage collector's to delete,
            # gracefully (terminating, preStop, SIGTERM, the grace period), as with foreground cascading on kind;
            # with ``wait``, until they are gone (kubectl delete --wait)
            (self.kube / "deployments" / f"{name}.json").unlink(missing_ok=True)
            self._delete_rolling(name)
            if wait:
                spec = ((dep or {}).get("spec") or {}).get("template", {}).get("spec") or {}
                grace = float(spec.get("terminationGracePeriodSeconds", 30))
                wait_for(lambda: self._pod_names(name), lambda left: not left, timeout=grace + 30, interval=0.2,
                         what=f"the pods of deployment {name} deleted", env=self.env.name, obj=name)
            return
        for pod in self._pod_names(name):
            self._delete_pod(pod)
        (self.kube / "deployments" / f"{name}.json").unlink(missing_ok=True)

    def wait_rollout(self, name: str, *, timeout: float) -> PodInfo:
        if is_rolling(self.deployment(name) or _RECREATE):
            return self._wait_rolled_out(name, timeout=timeout)
        def observe() -> list[PodInfo]:
            return self.pods(name)

        def done(pods: list[PodInfo]) -> bool:
            return len(pods) == 1 and all(c.state == "running" and c.ready for c in pods[0].containers)

        return wait_for(observe, done, timeout=timeout, interval=0.1, what=f"rollout of deployment {name}",
                        env=self.env.name, obj=name)[0]

    def pods(self, deployment: str) -> list[PodInfo]:
        return [self.pod(n) for n in self._pod_names(deployment)]

    def pod(self, name: str) -> PodInfo:
        obj = self._read("pods", name)
        if obj is None:
            raise AdapterError(f"pod {name} not found", env=self.env.name, obj=name)
        spec = obj["spec"]
        deploy = self._read("deployments", obj["deployment"]) or {}
        tmpl = deploy.get("spec", {}).get("template", {}).get("spec", {})
        restarts = self._start_counts(name, since=obj.get("created"))
        statuses = []
        for kind, c in self._containers(spec):
            statuses.append(self._status(name, kind, c, obj.get("waiting", {}).get(c["name"]), restarts,
                                         obj.get("cri", {})))
        phase = self.pod_phase(obj, statuses)  # Succeeded/Failed for a Job's pod (kube_batch)
        return PodInfo(
            name=name,
            deployment=obj["deployment"],
            phase=phase,
            containers=tuple(statuses),
            spec_images={c["name"]: c["image"] for _, c in self._containers(spec)},
            template_images={c["name"]: c["image"] for _, c in self._containers(tmpl)},
            ip=obj.get("ip", ""), labels=dict(obj.get("labels") or {}),
            ready_condition=bool(obj.get("ready")) if _controlled(obj) else None,  # the controller's probes
        )

    def exec(self, pod: str, container: str, argv: Sequence[str], *, timeout: float = 30.0) -> CommandResult:
        obj = self._read("pods", pod)
        if obj is None:
            raise AdapterError(f"pod {pod} not found", env=self.env.name, obj=pod)
        c = next((c for _, c in self._containers(obj["spec"]) if c["name"] == container), None)
        if c is None:
            raise AdapterError(f"pod {pod} has no container {container}", env=self.env.name, obj=pod)
        info = self.sup.info(_program(pod, container))
        target = container_pid(info.pid) if info is not None and info.running else None
        if target is None:
            raise AdapterError(f"container {container} in pod {pod} is not running", env=self.env.name, obj=pod)
        config = self._container_config(pod, container)
        enter = ["nsenter", "--target", str(target), "--mount", "--pid"]
        if os.geteuid() != 0:
            enter += ["--user", "--preserve-credentials"]
        if config.get("netns"):
            enter.append("--net")
        cmd = " ".join(argv)
        start = time.monotonic()
        try:
            proc = subprocess.run([*enter, f"--wd={config.get('cwd') or '/'}", "--", *argv],
                                  env=config.get("env") or self._container_env(pod, c), capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AdapterError(f"exec `{cmd}` in {pod}/{container} timed out after {timeout}s",
                               env=self.env.name, obj=pod) from exc
        if proc.returncode == 127 and "No such file" in proc.stderr:
            return CommandResult(cmd, 127, "", f"exec: {argv[0]}: not found in container {container}",
                                 time.monotonic() - start)
        return CommandResult(cmd, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)

    def patch_pod_container_image(self, pod: str, container: str, image: str) -> None:
        """In-place image change of a running pod: only that container restarts (kubelet >= 1.32)."""
        obj = self._read("pods", pod)
        if obj is None:
            raise AdapterError(f"pod {pod} not found", env=self.env.name, obj=pod)
        for kind, c in self._containers(obj["spec"]):
            if c["name"] == container:
                if c["image"] == image:
                    return
                c["image"] = image
                self._write("pods", pod, obj)
                self.sup.remove(_program(pod, container))
                self._start_container(pod, obj, kind, c)
                return
        raise AdapterError(f"pod {pod} has no container {container}", env=self.env.name, obj=pod)

    def patch_template_container_image(self, deployment: str, container: str, image: str) -> None:
        manifest = self._read("deployments", deployment)
        if manifest is None:
            raise AdapterError(f"deployment {deployment} not found", env=self.env.name, obj=deployment)
        manifest = copy.deepcopy(manifest)
        for _, c in self._containers(manifest["spec"]["template"]["spec"]):
            if c["name"] == container:
                c["image"] = image
        self.apply_deployment(manifest)

    def events(self, pod: str) -> list[str]:
        out = []
        for rec in self._event_records():
            if rec["process"].startswith(pod + "--"):
                when = datetime.fromtimestamp(rec["t"], UTC).isoformat(timespec="milliseconds")
                if "message" in rec:  # the kubelet's own (FailedMount): Warning <reason> <message>
                    out.append(f"{when} Warning {rec['event']} {rec['message']}")
                    continue
                out.append(f"{when} {rec['process'].split('--', 1)[1]} {rec['event']} from {rec['from']}")
        return out

    def owns_process(self, proc: ProcessInfo) -> bool:
        """Is ``proc`` (as the host listed it) a container's process? Every container here runs in a PID
        namespace of its own, so one listed in the node's own PID namespace is not a pod's: a daemon the
        host runs by itself. (Another testbed's pods, on this same machine, are other hosts' pods.)"""
        if not proc.pidns:
            return False
        return proc.pidns != str(os.stat("/proc/self/ns/pid").st_ino)  # the node's: this kubelet runs in it

    def logs(self, pod: str, container: str, lines: int = 40) -> str:
        return self.sup.tail(_program(pod, container), lines)

    # -- internals -------------------------------------------------------------------------
    @staticmethod
    def _containers(spec: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        sidecars = [("sidecar", c) for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        return sidecars + [("app", c) for c in spec.get("containers", [])]

    def _create_pod(self, deployment: str, template: Mapping[str, Any], thash: str,
                    meta: Mapping[str, Any] | None = None) -> str:
        """Create and start a pod; ``meta`` (a ReplicaSet's pod: ip, replicaset, annotations...) joins its record."""
        spec = copy.deepcopy(dict(template["spec"]))
        plain_init = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") != "Always"]
        if plain_init:
            raise AdapterError(f"deployment {deployment}: run-to-completion initContainers are not supported "
                               "by the local testbed", env=self.env.name, obj=deployment)
        pod = f"{deployment}-{thash}-{secrets.token_hex(3)[:5]}"
        obj: dict[str, Any] = {"name": pod, "deployment": deployment, "spec": spec, "created": time.time(),
                               "waiting": {}, **(meta or {}),
                               "labels": {**(template.get("metadata") or {}).get("labels", {}), HASH_LABEL: thash}}
        self._write("pods", pod, obj)
        self._mount_volumes(pod, spec)
        if not self._setup_configmap_volumes(pod, obj):  # MountVolume.SetUp failed: ContainerCreating, retried
            return pod
        self._start_containers(pod, obj)
        return pod

    def _start_containers(self, pod: str, obj: dict[str, Any]) -> None:
        for kind, c in self._containers(obj["spec"]):  # sidecars first, each running before the next starts
            self._start_container(pod, obj, kind, c)
            if kind == "sidecar" and not obj["waiting"].get(c["name"]):
                # the next container starts once the sidecar has started; one that then keeps exiting is
                # CrashLoopBackOff in the pod's status, not an error of the apply (as with a real kubelet)
                with contextlib.suppress(TestbedError):
                    self.sup.wait_running(_program(pod, c["name"]), timeout=self.env.timeouts.rollout)

    def _delete_pod(self, pod: str) -> None:
        obj = self._read("pods", pod)
        if obj is None:
            return
        for _, c in reversed(self._containers(obj["spec"])):  # app first, sidecars last
            self.sup.remove(_program(pod, c["name"]))
        (self.kube / "pods" / f"{pod}.json").unlink(missing_ok=True)

    def _host_path(self, path: str) -> Path:
        """hostPath -> local path: longest ``testbed.host_paths`` prefix, relative to the state dir."""
        best = ""
        for prefix in self.tb.host_paths:
            if (path == prefix or path.startswith(prefix.rstrip("/") + "/")) and len(prefix) > len(best):
                best = prefix
        if not best:
            return Path(path)
        local = Path(self.tb.host_paths[best])
        rest = path[len(best):].lstrip("/")
        base = local if local.is_absolute() else self.state_dir / local
        return base / rest if rest else base

    def _rootfs(self, pod: str, container: str) -> Path:
        return self.state_dir / "containers" / pod / container

    def _mount_volumes(self, pod: str, spec: Mapping[str, Any]) -> None:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for _, c in self._containers(spec):
            root = self._rootfs(pod, c["name"])
            (root / "bin").mkdir(parents=True, exist_ok=True)
            (root / "root").mkdir(parents=True, exist_ok=True)
            for m in c.get("volumeMounts", []):
                vol = volumes.get(m["name"])
                if vol is not None and "persistentVolumeClaim" in vol:  # a claim's volume (kube_batch)
                    self._mount_pvc(pod, vol, root / m["mountPath"].lstrip("/"))
                    continue
                if vol is not None and "configMap" in vol:  # projected by kube_objects, refreshed by the controller
                    self._mount_configmap(pod, vol, root / m["mountPath"].lstrip("/"))
                    continue
                if vol is not None and "emptyDir" in vol:  # the pod's own directory, gone with the pod's dir
                    src = self.state_dir / "kubelet" / "pods" / pod / "volumes" / "kubernetes.io~empty-dir"
                    src = src / vol["name"]
                    src.mkdir(parents=True, exist_ok=True)
                    link = root / m["mountPath"].lstrip("/")
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.unlink(missing_ok=True)
                    link.symlink_to(src)
                    continue
                if vol is None or "hostPath" not in vol:
                    raise AdapterError(f"pod {pod}: volume {m['name']} must be a hostPath on the testbed",
                                       env=self.env.name, obj=pod)
                src = self._host_path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") == "File":  # as a kubelet's hostPath type check: no file, no pod
                    if not src.is_file():
                        raise AdapterError(f"pod {pod}: MountVolume.SetUp failed for volume {m['name']!r}: hostPath "
                                           f"type check failed: {vol['hostPath']['path']} is not a file",
                                           env=self.env.name, obj=pod)
                else:
                    src.mkdir(parents=True, exist_ok=True)
                link = root / m["mountPath"].lstrip("/")
                link.parent.mkdir(parents=True, exist_ok=True)
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(src)

    def _translate(self, pod: str, c: Mapping[str, Any], value: str) -> str:
        """Container paths in args become paths through the container's rootfs (its mounts)."""
        for m in c.get("volumeMounts", []):
            mp = m["mountPath"].rstrip("/")
            if value == mp or value.startswith(mp + "/"):
                return str(self._rootfs(pod, c["name"]) / value.lstrip("/"))
        return value

    def image_env(self, image: str) -> dict[str, str]:
        """What the image itself sets (a Dockerfile's ENV): its PATH, its Python, its version."""
        env = {
            "PATH": f"{Path(sys.executable).parent}:{_SYSTEM_PATH}",
            "PYTHONPATH": str(PROJECT_ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        try:
            _, version = self.resolve_image(image)
            env["RUNBOOK_IMAGE_VERSION"] = version
        except ImageNotFound:
            pass
        return env

    def _container_env(self, pod: str, c: Mapping[str, Any]) -> dict[str, str]:
        """Exactly what a kubelet gives a container: the image's env, HOME, the manifest's env. Nothing else."""
        root = self._rootfs(pod, c["name"])
        env = self.image_env(c["image"])
        env["PATH"] = f"{root / 'bin'}:{env['PATH']}"  # the image's own binaries (its CLIs) come first
        env["HOME"] = str(root / "root")
        for k, v in self._manifest_env(pod, c).items():
            env[k] = self._translate(pod, c, v)
        return env

    def _manifest_env(self, pod: str, c: Mapping[str, Any]) -> dict[str, str]:
        """The manifest's env as a kubelet resolves it (``$(VAR)`` expansion, the downward API's fieldRef)."""
        obj = self._read("pods", pod) or {"name": pod, "spec": {}}
        return manifest_env(obj, c, namespace=self.namespace_of(self._read("deployments", obj.get("deployment", ""))
                                                                or {}))

    def _start_container(self, pod: str, obj: dict[str, Any], kind: str, c: dict[str, Any]) -> None:
        try:
            argv, _ = self.resolve_image(c["image"])
        except ImageNotFound:
            obj["waiting"][c["name"]] = "ImagePullBackOff"
            self._write("pods", pod, obj)
            return
        obj["waiting"].pop(c["name"], None)
        # The kubelet's own record of what it created the container from (CRI status reads this, never the
        # process): the image as containerd names it, and a digest of the image's content (its definition).
        obj.setdefault("cri", {})[c["name"]] = {"image": normalise(c["image"]), "imageID": self.image_id(c["image"])}
        self._write("pods", pod, obj)
        root = self._rootfs(pod, c["name"])
        module = argv[argv.index("-m") + 1] if "-m" in argv else ""
        # the image's files: its CLIs and its main program, on the image's PATH (<rootfs>/bin first)
        binaries = {cli: [sys.executable, *cli_argv] for cli, cli_argv in CLIS_BY_MODULE.get(module, {}).items()}
        if module in ENTRYPOINT_NAMES:
            binaries[ENTRYPOINT_NAMES[module]] = argv
        for name, target in binaries.items():
            wrapper = root / "bin" / name
            wrapper.write_text("#!/bin/sh\nexec " + shlex.join(target) + ' "$@"\n')
            wrapper.chmod(0o755)
        # a manifest's command replaces the image's entrypoint, its args follow (as a kubelet does)
        menv = self._manifest_env(pod, c)  # command and args expand $(VAR) from the manifest's env
        command = [expand(str(a), menv) for a in c.get("command", [])]
        rest = [self._translate(pod, c, a) for a in command[1:] + [expand(str(a), menv) for a in c.get("args", [])]]
        argv = [command[0], *rest] if command else [*argv, *rest]
        config = {"argv": argv, "env": self._container_env(pod, c), "cwd": str(root),
                  "netns": self.netns if self._host_network(obj) else None, "isolate": True,
                  "resolv_conf": self._resolv_conf(pod, obj)}
        cfg = self._config_path(pod, c["name"])
        cfg.write_text(json.dumps(config, indent=1))
        shim = [sys.executable, "-m", "runbook.testbed.shim", "--testbed", str(self.state_dir),
                "--id", f"{pod}/{c['name']}", str(cfg)]
        grace = int(obj["spec"].get("terminationGracePeriodSeconds", 30)) + 5 if _controlled(obj) else 15
        once = kind == "app" and obj["spec"].get("restartPolicy") in ("Never", "OnFailure")  # a Job's: kube_sets
        self.sup.add(_program(pod, c["name"]), shim, env={"PYTHONPATH": str(PROJECT_ROOT)}, directory=root,
                     startsecs=0 if once else 1, startretries=0 if once else 3, autorestart=not once,
                     stopwaitsecs=grace)  # a ReplicaSet's pod: the controller kills

    def image_id(self, image: str) -> str:
        """``sha256:<digest>`` of the image's content: for a stand-in image, its definition (entrypoint, env)."""
        argv, _ = self.resolve_image(image)
        content = json.dumps({"entrypoint": argv, "env": self.image_env(image)}, sort_keys=True)
        return "sha256:" + hashlib.sha256(content.encode()).hexdigest()

    @staticmethod
    def _host_network(obj: Mapping[str, Any]) -> bool:
        return bool(obj["spec"].get("hostNetwork"))

    def _resolv_conf(self, pod: str, obj: Mapping[str, Any]) -> str | None:
        """The pod's resolv.conf (the kubelet's, by dnsPolicy: the testbed's cluster DNS for ClusterFirst) as a
        file for the shim to mount, or None: the node's. A ReplicaSet's pods only; the agave pods keep the node's."""
        if not _controlled(obj):
            return None
        text = pod_resolv_conf(obj["spec"], str(obj.get("namespace") or "default"), self.tb.dns_ip)
        if text is None:
            return None
        path = self.state_dir / "containers" / pod / "resolv.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    def _config_path(self, pod: str, container: str) -> Path:
        return self.state_dir / "containers" / pod / f"{container}.config.json"

    def _container_config(self, pod: str, container: str) -> dict[str, Any]:
        try:
            return dict(json.loads(self._config_path(pod, container).read_text()))
        except (OSError, ValueError):
            return {}

    def _event_records(self) -> list[dict[str, Any]]:
        try:
            text = (self.kube / "events.jsonl").read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _start_counts(self, pod: str, since: float | None = None) -> dict[str, int]:
        """Starts of each container of ``pod`` (created at ``since``: a StatefulSet's pod re-created under the same
        name starts counting again)."""
        counts: dict[str, int] = {}
        for rec in self._event_records():
            if since is not None and rec.get("t", 0) < since:
                continue
            if rec["event"] == "PROCESS_STATE_STARTING" and rec["process"].startswith(pod + "--"):
                name = rec["process"].split("--", 1)[1]
                counts[name] = counts.get(name, 0) + 1
        return counts

    def _status(self, pod: str, kind: str, c: Mapping[str, Any], waiting: str | None,
                starts: Mapping[str, int], cri: Mapping[str, Any]) -> ContainerStatus:
        name = c["name"]
        restarts = max(0, starts.get(name, 0) - 1)
        if waiting:
            return ContainerStatus(name, kind, c["image"], "", "waiting", None, restarts, False, waiting)  # type: ignore[arg-type]
        info = self.sup.info(_program(pod, name))
        if info is None:
            return ContainerStatus(name, kind, c["image"], "", "unknown", None, restarts, False, "NotFound")  # type: ignore[arg-type]
        created = cri.get(name, {})
        if info.running:
            started = datetime.fromtimestamp(info.start, UTC)
            return ContainerStatus(name, kind, created.get("image", ""), created.get("imageID", ""),  # type: ignore[arg-type]
                                   "running", started, restarts, True, "", pid=container_pid(info.pid))
        reason = {"BACKOFF": "CrashLoopBackOff", "FATAL": "CrashLoopBackOff", "STARTING": "ContainerCreating"}
        ran = created.get("image") or c["image"]  # a container that ran: as created; else as the spec says
        if info.state in reason:
            return ContainerStatus(name, kind, ran, "", "waiting", None, restarts, False, reason[info.state])  # type: ignore[arg-type]
        why = "Completed" if info.exitstatus == 0 else "Error"
        return ContainerStatus(name, kind, ran, "", "terminated", None, restarts, False, why)  # type: ignore[arg-type]

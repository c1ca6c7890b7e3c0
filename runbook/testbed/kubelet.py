"""The local kubelet-alike: Kubernetes Deployment manifests run as processes under supervisord.

It implements the :class:`~runbook.adapters.base.Workloads` port for the local testbed, keeping the
kubelet semantics the procedures depend on:

- a native sidecar (an initContainer with ``restartPolicy: Always``) is started and running before the
  app containers, and stopped after them;
- patching a running pod's container image restarts only that container (restartCount + 1);
- changing the Deployment template replaces the pod (strategy Recreate: old pod gone, new pod created);
- an image with no stand-in is ``ImagePullBackOff``; a container that keeps exiting is ``CrashLoopBackOff``.

Every status it reports is read from real state: supervisord's process table, the supervisord event
stream (restart counts), and the running process itself (``/proc/<pid>/environ`` for its image).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook.adapters.base import CommandResult, ContainerStatus, PodInfo
from runbook.env import PROJECT_ROOT, Env
from runbook.errors import AdapterError, TestbedError
from runbook.testbed.chain import ChainParams
from runbook.testbed.supervisor import Supervisor
from runbook.wait import wait_for

# Stand-in program module -> the CLIs its image ships (what the runbook execs on biscayne).
CLIS_BY_MODULE: dict[str, dict[str, list[str]]] = {
    "runbook.testbed.validator": {
        "solana": ["-m", "runbook.testbed.clis", "solana"],
        "agave-validator": ["-m", "runbook.testbed.clis", "agave-validator"],
    },
    "runbook.testbed.doublezerod": {"doublezero": ["-m", "runbook.testbed.doublezero_cli"]},
}


_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def template_hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _program(pod: str, container: str) -> str:
    return f"{pod}--{container}"


class ImageNotFound(LookupError):
    pass


class LocalWorkloads:
    """Deployments and pods of one testbed, persisted under ``<state>/kube``."""

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

    # -- images ----------------------------------------------------------------------------
    def resolve_image(self, image: str) -> tuple[list[str], str]:
        """image -> (stand-in argv, version). Keys of ``testbed.images`` may contain ``{version}``."""
        for pattern, argv in self.tb.images.items():
            regex = "^" + re.escape(pattern).replace(re.escape("{version}"), r"(?P<version>[\w.+-]+)") + "$"
            m = re.match(regex, image)
            if m:
                version = m.groupdict().get("version") or image.rsplit(":", 1)[-1]
                return [a.replace("{python}", sys.executable).replace("{version}", version) for a in argv], version
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
        names = []
        for p in sorted((self.kube / "pods").glob("*.json")):
            obj = json.loads(p.read_text())
            if deployment is None or obj["deployment"] == deployment:
                names.append(obj["name"])
        return names

    # -- Workloads port --------------------------------------------------------------------
    def deployments(self) -> list[str]:
        return sorted(p.stem for p in (self.kube / "deployments").glob("*.json"))

    def daemonsets(self) -> list[str]:
        """The local kubelet runs Deployments only: a DaemonSet can never be running here."""
        return []

    def apply_deployment(self, manifest: dict[str, Any]) -> None:
        if manifest.get("kind") != "Deployment":
            raise AdapterError(f"the local kubelet applies Deployments only, got {manifest.get('kind')!r}")
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
        for pod in self._pod_names(name):
            self._delete_pod(pod)
        (self.kube / "deployments" / f"{name}.json").unlink(missing_ok=True)

    def wait_rollout(self, name: str, *, timeout: float) -> PodInfo:
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
        restarts = self._start_counts(name)
        statuses = []
        for kind, c in self._containers(spec):
            statuses.append(self._status(name, kind, c, obj.get("waiting", {}).get(c["name"]), restarts))
        phase = "Running" if all(s.state == "running" for s in statuses) else "Pending"
        return PodInfo(
            name=name,
            deployment=obj["deployment"],
            phase=phase,
            containers=tuple(statuses),
            spec_images={c["name"]: c["image"] for _, c in self._containers(spec)},
            template_images={c["name"]: c["image"] for _, c in self._containers(tmpl)},
        )

    def exec(self, pod: str, container: str, argv: Sequence[str], *, timeout: float = 30.0) -> CommandResult:
        obj = self._read("pods", pod)
        if obj is None:
            raise AdapterError(f"pod {pod} not found", env=self.env.name, obj=pod)
        c = next((c for _, c in self._containers(obj["spec"]) if c["name"] == container), None)
        if c is None:
            raise AdapterError(f"pod {pod} has no container {container}", env=self.env.name, obj=pod)
        info = self.sup.info(_program(pod, container))
        if info is None or not info.running:
            raise AdapterError(f"container {container} in pod {pod} is not running", env=self.env.name, obj=pod)
        env = self._container_env(pod, c)
        cmd = " ".join(argv)
        start = time.monotonic()
        try:
            proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=timeout,
                                  cwd=self._rootfs(pod, container), check=False)
        except FileNotFoundError:
            return CommandResult(cmd, 127, "", f"exec: {argv[0]}: not found in container {container}",
                                 time.monotonic() - start)
        except subprocess.TimeoutExpired as exc:
            raise AdapterError(f"exec `{cmd}` in {pod}/{container} timed out after {timeout}s",
                               env=self.env.name, obj=pod) from exc
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
                out.append(f"{when} {rec['process'].split('--', 1)[1]} {rec['event']} from {rec['from']}")
        return out

    def owns_process(self, pid: int) -> bool:
        """Is ``pid`` a container of a pod? Ours (under our supervisord), or another testbed's on the same
        machine (each testbed stands for its own host; its pods' processes carry their pod's name)."""
        if self.sup.descendant_of_supervisor(pid):
            return True
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return any(e.startswith(b"RUNBOOK_TESTBED=") for e in environ) and any(
            e.startswith(b"RUNBOOK_POD=") for e in environ)

    def logs(self, pod: str, container: str, lines: int = 40) -> str:
        return self.sup.tail(_program(pod, container), lines)

    # -- internals -------------------------------------------------------------------------
    @staticmethod
    def _containers(spec: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        sidecars = [("sidecar", c) for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        return sidecars + [("app", c) for c in spec.get("containers", [])]

    def _create_pod(self, deployment: str, template: Mapping[str, Any], thash: str) -> str:
        spec = copy.deepcopy(dict(template["spec"]))
        plain_init = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") != "Always"]
        if plain_init:
            raise AdapterError(f"deployment {deployment}: run-to-completion initContainers are not supported "
                               "by the local testbed", env=self.env.name, obj=deployment)
        pod = f"{deployment}-{thash}-{secrets.token_hex(3)[:5]}"
        obj: dict[str, Any] = {"name": pod, "deployment": deployment, "spec": spec, "created": time.time(),
                               "waiting": {}}
        self._write("pods", pod, obj)
        self._mount_volumes(pod, spec)
        for kind, c in self._containers(spec):  # sidecars first, each running before the next starts
            self._start_container(pod, obj, kind, c)
            if kind == "sidecar" and not obj["waiting"].get(c["name"]):
                self.sup.wait_running(_program(pod, c["name"]), timeout=self.env.timeouts.rollout)
        return pod

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
                if vol is None or "hostPath" not in vol:
                    raise AdapterError(f"pod {pod}: volume {m['name']} must be a hostPath on the testbed",
                                       env=self.env.name, obj=pod)
                src = self._host_path(vol["hostPath"]["path"])
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

    def _container_env(self, pod: str, c: Mapping[str, Any]) -> dict[str, str]:
        root = self._rootfs(pod, c["name"])
        env = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TZ", "SYSTEMROOT")}
        env.update({
            "PATH": f"{root / 'bin'}:{Path(sys.executable).parent}:{_SYSTEM_PATH}",
            "HOME": str(root / "root"),
            "PYTHONPATH": str(PROJECT_ROOT),
            "PYTHONUNBUFFERED": "1",
            **ChainParams.from_testbed(self.tb).to_env(),
            "RUNBOOK_STARTUP_DELAY": repr(self.tb.startup_delay),
            "RUNBOOK_POD": pod,
            "RUNBOOK_CONTAINER": c["name"],
            "RUNBOOK_IMAGE": c["image"],
        })
        if self.netns:
            env["RUNBOOK_NETNS"] = self.netns
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = self._translate(pod, c, str(e["value"]))
        try:
            _, version = self.resolve_image(c["image"])
            env["RUNBOOK_IMAGE_VERSION"] = version
        except ImageNotFound:
            pass
        return env

    def _start_container(self, pod: str, obj: dict[str, Any], kind: str, c: dict[str, Any]) -> None:
        try:
            argv, _ = self.resolve_image(c["image"])
        except ImageNotFound:
            obj["waiting"][c["name"]] = "ImagePullBackOff"
            self._write("pods", pod, obj)
            return
        obj["waiting"].pop(c["name"], None)
        self._write("pods", pod, obj)
        argv = argv + [self._translate(pod, c, str(a)) for a in c.get("command", [])[1:] + c.get("args", [])]
        root = self._rootfs(pod, c["name"])
        module = argv[argv.index("-m") + 1] if "-m" in argv else ""
        for cli, cli_argv in CLIS_BY_MODULE.get(module, {}).items():
            wrapper = root / "bin" / cli
            wrapper.write_text("#!/bin/sh\nexec " + " ".join([sys.executable, *cli_argv]) + ' "$@"\n')
            wrapper.chmod(0o755)
        self.sup.add(_program(pod, c["name"]), argv, env=self._container_env(pod, c), directory=root,
                     startsecs=1, startretries=3)

    def _event_records(self) -> list[dict[str, Any]]:
        try:
            text = (self.kube / "events.jsonl").read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _start_counts(self, pod: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rec in self._event_records():
            if rec["event"] == "PROCESS_STATE_STARTING" and rec["process"].startswith(pod + "--"):
                name = rec["process"].split("--", 1)[1]
                counts[name] = counts.get(name, 0) + 1
        return counts

    def _status(self, pod: str, kind: str, c: Mapping[str, Any], waiting: str | None,
                starts: Mapping[str, int]) -> ContainerStatus:
        name = c["name"]
        restarts = max(0, starts.get(name, 0) - 1)
        if waiting:
            return ContainerStatus(name, kind, c["image"], "", "waiting", None, restarts, False, waiting)  # type: ignore[arg-type]
        info = self.sup.info(_program(pod, name))
        if info is None:
            return ContainerStatus(name, kind, c["image"], "", "unknown", None, restarts, False, "NotFound")  # type: ignore[arg-type]
        if info.running:
            image = _process_image(info.pid) or c["image"]
            image_id = "standin://sha256:" + hashlib.sha256(_process_cmdline(info.pid).encode()).hexdigest()
            started = datetime.fromtimestamp(info.start, UTC)
            return ContainerStatus(name, kind, image, image_id, "running", started, restarts, True, "",  # type: ignore[arg-type]
                                   pid=info.pid)
        reason = {"BACKOFF": "CrashLoopBackOff", "FATAL": "CrashLoopBackOff", "STARTING": "ContainerCreating"}
        if info.state in reason:
            return ContainerStatus(name, kind, c["image"], "", "waiting", None, restarts, False, reason[info.state])  # type: ignore[arg-type]
        why = "Completed" if info.exitstatus == 0 else "Error"
        return ContainerStatus(name, kind, c["image"], "", "terminated", None, restarts, False, why)  # type: ignore[arg-type]


def _process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _process_image(pid: int) -> str | None:
    """The image a running container process was started from, read from its own environment."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        if item.startswith(b"RUNBOOK_IMAGE="):
            return item.split(b"=", 1)[1].decode()
    return None

"""Pods of a :class:`~runbook.testbed.pod_argv.PodPlan` run in a private Docker engine, on a "node".

The node is a container (network namespace with loopback only, ``--network none``) whose network
namespace every ``hostNetwork`` pod joins, as every pod on biscayne's single kind node shares the node's.
Its filesystem is a directory of the caller's (``host_root``): hostPath volumes are directories there.

:class:`DockerPods` starts a pod as a kubelet does: its host directories (``Directory`` must exist,
``DirectoryOrCreate`` is made), the pause container, each init container in order (a regular one must
exit 0; a native sidecar must be running, and pass its exec startupProbe, before the next starts), then
the app containers. It stops a pod in the reverse order: app containers, then sidecars (last started,
first stopped), then the pause container, each with the pod's grace period.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runbook.errors import TestbedError
from runbook.testbed.docker_engine import DockerEngine, Result
from runbook.testbed.pod_argv import ContainerRun, PodPlan
from runbook.wait import wait_for


@dataclass(frozen=True)
class ContainerState:
    """What ``docker inspect`` says of one container."""

    name: str
    status: str  # created, running, exited, restarting, ...
    running: bool
    exit_code: int
    restart_count: int
    started_at: str
    pid: int
    image: str  # as the run named it (Config.Image)
    image_id: str  # sha256:... (the image's content-addressed ID)


@dataclass(frozen=True)
class Node:
    name: str
    pid: int  # the node container's init: /proc/<pid>/ns/net is the node's network namespace
    host_root: Path

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"


class DockerPods:
    def __init__(self, engine: DockerEngine, *, timeout: float = 60.0) -> None:
        self.engine = engine
        self.timeout = timeout

    # ---------------------------------------------------------------- the node

    def start_node(self, name: str, image: str, host_root: Path) -> Node:
        host_root.mkdir(parents=True, exist_ok=True)
        self.engine.docker("run", "-d", "--name", name, "--hostname", name, "--init", "--network", "none",
                           "--label", "io.runbook.node=true", "--entrypoint", "sleep", image, "infinity",
                           what=f"starting node {name}")
        state = self.wait_running(name)
        return Node(name, state.pid, host_root)

    def in_node(self, node: Node, argv: Sequence[str], *, timeout: float = 30.0) -> Result:
        """Run ``argv`` (a program of this machine) in the node's network namespace."""
        full = ["nsenter", f"--net={node.netns}", "--", *argv]
        try:
            out = subprocess.run(full, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise TestbedError(f"`{' '.join(argv[:3])} ...` in node {node.name} took over {timeout:g}s") from None
        return Result(tuple(full), out.returncode, out.stdout.decode(errors="replace"),
                      out.stderr.decode(errors="replace"))

    # ---------------------------------------------------------------- pods

    def prepare(self, plan: PodPlan) -> None:
        for d in plan.host_dirs:
            if d.create:
                d.path.mkdir(mode=0o755, parents=True, exist_ok=True)
            elif d.file:
                if not d.path.is_file():
                    raise TestbedError(f"pod {plan.pod}: volume {d.volume}: hostPath type check failed: {d.node_path} "
                                       "is not a file", obj=plan.pod)
            elif not d.path.is_dir():
                raise TestbedError(f"pod {plan.pod}: volume {d.volume}: hostPath type check failed: {d.node_path} "
                                   "is not a directory", obj=plan.pod)

    def start(self, plan: PodPlan) -> None:
        self.prepare(plan)
        self._run(plan.pause)
        self.wait_running(plan.pause.name)
        for run in plan.init:
            self._run(run)
            if run.role == "init":
                self.wait_exited_ok(run.name)
            else:
                self.wait_running(run.name)
                if run.startup_probe:
                    self.wait_probe(run.name, run.startup_probe)
        for run in plan.containers:
            self._run(run)
        for run in plan.containers:
            self.wait_running(run.name)

    def stop(self, plan: PodPlan, *, remove: bool = True) -> None:
        """Stop the pod gracefully, in the kubelet's order; ``remove`` its containers afterwards."""
        grace = str(plan.grace)
        groups = [[r.name for r in plan.containers],
                  *[[r.name] for r in reversed(plan.init) if r.role == "sidecar"],
                  [plan.pause.name]]
        for names in groups:
            present = [n for n in names if self.exists(n)]
            if present:
                self.engine.docker("stop", "-t", grace, *present, timeout=plan.grace + 30.0,
                                   what=f"stopping pod {plan.pod}")
        if remove:
            every = [r.name for r in (*plan.containers, *plan.init, plan.pause) if self.exists(r.name)]
            if every:
                self.engine.docker("rm", "-f", *every, what=f"removing pod {plan.pod}")

    def _run(self, run: ContainerRun) -> None:
        self.engine.docker(*run.argv, timeout=self.timeout, what=f"starting container {run.container}")

    # ---------------------------------------------------------------- state

    def exists(self, name: str) -> bool:
        return self.engine.docker("container", "inspect", name, check=False).ok

    def state(self, name: str) -> ContainerState:
        res = self.engine.docker("container", "inspect", name, what=f"inspecting {name}")
        data = json.loads(res.stdout)[0]
        s = data["State"]
        return ContainerState(name=name, status=s["Status"], running=bool(s["Running"]), exit_code=int(s["ExitCode"]),
                              restart_count=int(data.get("RestartCount", 0)), started_at=s["StartedAt"],
                              pid=int(s["Pid"]), image=data["Config"]["Image"], image_id=data["Image"])

    def logs(self, name: str, *, tail: int = 40) -> str:
        res = self.engine.docker("logs", "--tail", str(tail), name, check=False)
        return (res.stdout + res.stderr).strip()

    def exec(self, name: str, argv: Sequence[str], *, timeout: float = 30.0) -> Result:
        return self.engine.docker("exec", name, *argv, timeout=timeout, check=False)

    def wait_running(self, name: str) -> ContainerState:
        def observe() -> ContainerState:
            st = self.state(name)
            if st.status == "exited" and st.restart_count == 0 and not st.running:
                raise TestbedError(f"container {name} exited {st.exit_code} while starting: {self.logs(name)}",
                                   obj=name)
            return st

        return wait_for(observe, lambda st: st.running, timeout=self.timeout, interval=0.2,
                        what=f"container {name} to run", obj=name)

    def wait_exited_ok(self, name: str) -> ContainerState:
        st = wait_for(lambda: self.state(name), lambda st: st.status == "exited", timeout=self.timeout,
                      interval=0.2, what=f"init container {name} to complete", obj=name)
        if st.exit_code != 0:
            raise TestbedError(f"init container {name} exited {st.exit_code}: {self.logs(name)}", obj=name)
        return st

    def wait_probe(self, name: str, command: Sequence[str]) -> Result:
        return wait_for(lambda: self.exec(name, command, timeout=10.0), lambda r: r.ok, timeout=self.timeout,
                        interval=0.5, what=f"the startupProbe of {name} to pass", obj=name)


__all__ = ["ContainerState", "DockerPods", "Node"]

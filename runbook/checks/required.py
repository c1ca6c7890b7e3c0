"""The required changes to agave-stack (seed document, "Required Changes"), audited read-only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runbook.adapters.base import PodInfo, Workloads
from runbook.env import Env
from runbook.errors import CheckFailed
from runbook.manifests import all_manifests, render_deployment


def check_native_sidecar(pod: PodInfo, sidecar: str) -> None:
    """doublezerod must be a native sidecar: reported in initContainerStatuses, running (trap 6)."""
    c = pod.container(sidecar)
    if c.kind != "sidecar" or c.state != "running":
        raise CheckFailed(f"{sidecar} in pod {pod.name} must be a running native sidecar (an initContainer with "
                          f"restartPolicy: Always); it is {'a regular (app)' if c.kind == 'app' else 'a sidecar'} "
                          f"container, {c.state}", expected={"kind": "sidecar", "state": "running"},
                          observed={"kind": c.kind, "state": c.state}, obj=pod.name)


# Where the two colours may differ: their names, colour labels, RPC port, host paths and images.
_ALLOWED = ("metadata.name", "metadata.labels.runbook/colour", "spec.selector.matchLabels.runbook/colour",
            "spec.template.metadata.labels.runbook/colour", "containers[agave-validator].args",
            ".hostPath.path", ".image")


def _leaves(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list) and obj and all(isinstance(i, dict) and "name" in i for i in obj):
        for item in obj:
            yield from _leaves(item, f"{path}[{item['name']}]")
    else:
        yield path, obj


def colour_differences(green: dict[str, Any], blue: dict[str, Any]) -> list[str]:
    a, b = dict(_leaves(green)), dict(_leaves(blue))
    return sorted(p for p in set(a) | set(b) if a.get(p) != b.get(p))


def check_parameterized(env: Env) -> list[str]:
    """Both colours come from one parameterized spec: they differ only where a colour must."""
    diffs = colour_differences(render_deployment(env, "green"), render_deployment(env, "blue"))
    unexpected = [d for d in diffs if not any(d == a or d.endswith(a) or d.startswith(a) for a in _ALLOWED)]
    if unexpected or not diffs:
        raise CheckFailed("green and blue must come from one spec, differing only in name, colour, port, paths "
                          f"and image; unexpected differences: {unexpected or 'none at all (same port?)'}",
                          expected=list(_ALLOWED), observed=diffs)
    return diffs


def check_no_daemonset(workloads: Workloads) -> list[str]:
    """No doublezero DaemonSet is running, nor shipped in deploy/ (the seed's workaround, to be deleted)."""
    running = [n for n in workloads.daemonsets() if "doublezero" in n]
    shipped = [f"{src}: {d['metadata']['name']}" for src, docs in all_manifests().items() for d in docs
               if d.get("kind") == "DaemonSet"]
    if running or shipped:
        raise CheckFailed(f"a doublezero DaemonSet remains: running {running}, shipped {shipped}",
                          expected=[], observed={"running": running, "shipped": shipped})
    return running


def check_identity_file(workloads: Workloads, pod: str, sidecar: str) -> str:
    """The registered identity is in the sidecar's config volume, private (mode 600). Never read aloud."""
    r = workloads.exec(pod, sidecar, ["sh", "-c", 'f="$HOME/.config/doublezero/id.json"; test -s "$f" && '
                                                  'stat -c %a "$f"'])
    mode = r.stdout.strip()
    if not r.ok or mode not in ("600", "400"):
        raise CheckFailed(f"the DoubleZero identity file must be in {sidecar}'s config volume with mode 600; "
                          f"`test -s && stat` said rc={r.rc} {mode or r.stderr.strip()!r}",
                          expected="present, mode 600", observed={"rc": r.rc, "mode": mode}, obj=pod)
    return mode

"""The required changes to agave-stack (seed document, "Required Changes"), audited read-only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runbook.adapters.base import PodInfo, Workloads
from runbook.checks.core import Verdict, check, verdict
from runbook.env import Env
from runbook.manifests import all_manifests, render_deployment


@check(negative=("tests/integration/test_required_checks.py::test_a_regular_doublezerod_container_fails_the_audit",
                  "tests/procedures/test_dz_upgrade.py::test_native_sidecar_required"))
def native_sidecar(pod: PodInfo, sidecar: str) -> Verdict:
    """doublezerod must be a native sidecar: an initContainer with ``restartPolicy: Always``, reported in
    ``initContainerStatuses``, running (trap 6). A regular container does not start before agave and outlive
    it, so an in-place image patch is not the isolated restart the DZ procedure relies on."""
    kinds = {c.name: c.kind for c in pod.containers}
    expected = {"kind": "sidecar", "state": "running"}
    if sidecar not in kinds:
        return verdict(f"{sidecar} container kind and state", expected=expected, observed={"containers": kinds},
                       problems=[f"pod {pod.name} has no {sidecar} container"], obj=pod.name)
    c = pod.container(sidecar)
    problems = []
    if c.kind != "sidecar":
        problems.append(f"{sidecar} in pod {pod.name} must be a running native sidecar (an initContainer with "
                        f"restartPolicy: Always); it is a regular ({c.kind}) container (status.containerStatuses)")
    if c.state != "running":
        problems.append(f"{sidecar} in pod {pod.name} is not running: {c.state} ({c.reason})")
    return verdict(f"{sidecar} container kind and state", expected=expected,
                   observed={"kind": c.kind, "state": c.state}, problems=problems, obj=pod.name)


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


@check(negative="tests/integration/test_required_checks.py::test_colours_that_differ_beyond_name_port_paths_and_image_fail")
def parameterized(env: Env) -> Verdict:
    """Both colours come from one parameterized spec: they differ only where a colour must (name, colour
    label, ports, host paths, image)."""
    diffs = colour_differences(render_deployment(env, "green"), render_deployment(env, "blue"))
    unexpected = [d for d in diffs if not any(d == a or d.endswith(a) or d.startswith(a) for a in _ALLOWED)]
    problems = [f"unexpected difference: {d}" for d in unexpected]
    if not diffs:
        problems.append("no difference at all between green and blue (same port, same paths?)")
    return verdict("fields where green and blue differ", expected={"only": list(_ALLOWED)},
                   observed={"differences": diffs, "unexpected": unexpected}, problems=problems)


@check(negative=("tests/integration/test_required_checks.py::test_a_doublezero_daemonset_fails_the_audit",
                 "tests/testbed/test_local_daemonsets.py::test_the_required_changes_audit_fails_on_a_doublezero_daemonset"))
def no_daemonset(workloads: Workloads) -> Verdict:
    """No doublezero DaemonSet is running, nor shipped in deploy/ (the seed's workaround, to be deleted)."""
    every = workloads.daemonsets()
    running = [n for n in every if "doublezero" in n]
    shipped = [f"{src}: {d['metadata']['name']}" for src, docs in all_manifests().items() for d in docs
               if d.get("kind") == "DaemonSet"]
    return verdict("doublezero DaemonSets", expected={"running": [], "shipped": []},
                   observed={"daemonsets in the namespace": every, "shipped": shipped},
                   problems=[f"a doublezero DaemonSet remains: {n}" for n in running + shipped])


@check(negative="tests/integration/test_required_checks.py::test_a_missing_identity_file_fails_the_audit")
def identity_file(workloads: Workloads, pod: str, sidecar: str) -> Verdict:
    """The registered identity is in the sidecar's config volume, private (mode 600 or 400). Never read aloud:
    only ``test -s`` and ``stat -c %a`` run on it."""
    r = workloads.exec(pod, sidecar, ["sh", "-c", 'f="$HOME/.config/doublezero/id.json"; test -s "$f" && '
                                                  'stat -c %a "$f"'])
    mode = r.stdout.strip()
    problems = [] if r.ok and mode in ("600", "400") else [
        f"the DoubleZero identity file must be in {sidecar}'s config volume with mode 600; `test -s && stat` said "
        f"rc={r.rc} {mode or r.stderr.strip()!r}"]
    return verdict("id.json present, mode", expected="present, mode 600 (or 400)",
                   observed={"rc": r.rc, "mode": mode}, problems=problems, obj=pod)

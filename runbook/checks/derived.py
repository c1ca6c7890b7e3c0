"""The idle colour's Deployment is the live colour's object except what blue-green changes, and a rollback
re-creates the live colour's object exactly (runbook/procedures/derive.py makes both).

:func:`unexpected_differences` lists every difference between the saved live object and the idle colour's
object that is not one of :data:`runbook.procedures.derive.CHANGED`: a flag dropped or added, an env var, a
volume, a security context. :func:`restore_differences` lists where a re-created object differs from the
saved one. Both are empty when the check passes; the evidence shows the lists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from runbook.adapters.kube import COLOUR_LABEL
from runbook.checks.core import Verdict, check, verdict
from runbook.manifests import APP_CONTAINER
from runbook.procedures.derive import CHANGED, PORT_FLAGS, differences, restorable

__all__ = ["allowed", "derived_from_live", "restore_differences", "restored_exactly", "unexpected_differences"]

_ARG = re.compile(r"^spec\.template\.spec\.containers\[(\d+)\]\.args\[(\d+)\]$")
_IMAGE = re.compile(r"^spec\.template\.spec\.(containers|initContainers)\[(\d+)\]\.image$")
_HOSTPATH = re.compile(r"^spec\.template\.spec\.volumes\[(\d+)\]\.hostPath\.path$")


_LABELS = (f"metadata.labels.{COLOUR_LABEL}", f"spec.selector.matchLabels.{COLOUR_LABEL}",
           f"spec.template.metadata.labels.{COLOUR_LABEL}")


def allowed(path: str, live: Mapping[str, Any], *, sidecar: str) -> bool:
    """Is a difference at ``path`` one blue-green makes (derive.CHANGED)? Args only as the value after a port
    flag, images only of the validator and the named sidecar, hostPaths only as paths (not their type)."""
    if path == "metadata.name" or path in _LABELS or _HOSTPATH.match(path):
        return True
    pod = live["spec"]["template"]["spec"]
    if m := _IMAGE.match(path):
        c = pod.get(m[1], [])[int(m[2])]
        return bool(c.get("name") == (APP_CONTAINER if m[1] == "containers" else sidecar))
    if m := _ARG.match(path):
        c, i = pod["containers"][int(m[1])], int(m[2])
        args = c.get("args") or []
        flag = args[i - 1] if 0 < i <= len(args) else ""
        this = args[i] if i < len(args) else ""
        return c.get("name") == APP_CONTAINER and (flag in PORT_FLAGS.values()
                                                   or any(this.startswith(f + "=") for f in PORT_FLAGS.values()))
    return False


def unexpected_differences(live: Mapping[str, Any], idle: Mapping[str, Any], *, sidecar: str) -> list[str]:
    """Differences between the saved live object and the idle colour's that blue-green does not make."""
    saved = restorable(live)
    return [p for p in differences(saved, restorable(idle)) if not allowed(p, saved, sidecar=sidecar)]


def restore_differences(saved: Mapping[str, Any], now: Mapping[str, Any] | None) -> list[str]:
    """Where the live colour's object now differs from the one saved before the upgrade (``["(missing)"]`` when
    it does not exist)."""
    if now is None:
        return ["(missing)"]
    return differences(restorable(saved), restorable(now))


@check(negative=("tests/procedures/test_derive.py::test_the_derived_check_fails_on_a_template_rendered_blue",))
def derived_from_live(live: Mapping[str, Any], idle: Mapping[str, Any] | None, *, name: str, live_name: str,
                      sidecar: str) -> Verdict:
    """The new colour's Deployment is the old colour's saved live object except what blue-green changes."""
    other = unexpected_differences(live, idle, sidecar=sidecar) if idle is not None else ["(missing)"]
    return verdict(f"{name} against the saved {live_name}",
                   expected={"differences allowed": list(CHANGED), "other differences": []},
                   observed={"other differences": other}, obj=name,
                   problems=[f"{name} differs from the live object it was derived from beyond what blue-green "
                             f"changes: {p}" for p in other])


@check(negative=("tests/procedures/test_derive.py::test_the_restored_check_fails_on_the_template",))
def restored_exactly(saved: Mapping[str, Any], now: Mapping[str, Any] | None, *, name: str) -> Verdict:
    """The old colour's Deployment is the object saved before the upgrade, exactly (the server's fields aside)."""
    diff = restore_differences(saved, now)
    return verdict(f"{name} against the object saved before the upgrade", expected={"differences": []},
                   observed={"differences": diff}, obj=name,
                   problems=[f"{name} is not the object saved before the upgrade: {p}" for p in diff])

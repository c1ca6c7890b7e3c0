"""Validation as the real API server applies it to the objects the adapter writes.

Pods (``ValidatePodUpdate``): once created, only ``spec.containers[*].image``,
``spec.initContainers[*].image``, ``spec.activeDeadlineSeconds`` (set, or lowered),
``spec.tolerations`` (additions only) and ``spec.terminationGracePeriodSeconds`` (to 1, from a negative
value) may change; anything else is a 422 ``Invalid`` whose message starts exactly as the real one. The
diff after that first line is this fake's own (the real server prints a Go ``cmp.Diff`` of the PodSpec).

Deployments: a selector is required, must match the template's labels, and is immutable in apps/v1.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.kube.fake_state import RESOURCES, ApiError, Cause, GoValue, Obj, invalid

UPDATABLE_POD_SPEC_FIELDS = (
    "`spec.containers[*].image`",
    "`spec.initContainers[*].image`",
    "`spec.activeDeadlineSeconds`",
    "`spec.tolerations` (only additions to existing tolerations)",
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
)
FORBIDDEN_POD_UPDATE = "pod updates may not change fields other than " + ",".join(UPDATABLE_POD_SPEC_FIELDS)


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for i, (a, b) in enumerate(zip(old, new, strict=True)) for line in _diff(a, b, f"{path}[{i}]")]
    if old == new:
        return []
    return [f"- \t{path}: {json.dumps(old)}", f"+ \t{path}: {json.dumps(new)}"]


def _image_errors(spec: Obj) -> list[Cause]:
    return [Cause(f"spec.{key}[{i}].image", "FieldValueRequired", "")
            for key in ("initContainers", "containers") for i, c in enumerate(spec.get(key) or [])
            if not c.get("image")]


def validate_pod_update(name: str, old: Obj, new: Obj) -> None:
    """Raise the 422 the real API server gives when ``new`` changes more of ``old`` (both Pods) than allowed."""
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    causes = _image_errors(new_spec)
    munged = copy.deepcopy(new_spec)
    for key in ("containers", "initContainers"):
        olds, news = old_spec.get(key) or [], munged.get(key) or []
        if len(olds) == len(news):
            for o, n in zip(olds, news, strict=True):
                n["image"] = o.get("image")
    ads_old, ads_new = old_spec.get("activeDeadlineSeconds"), new_spec.get("activeDeadlineSeconds")
    if ads_old is not None and ads_new is None:
        causes.append(Cause("spec.activeDeadlineSeconds", "FieldValueInvalid",
                            "must not update from a positive integer to a nil value", ads_new))
    elif ads_old is not None and ads_new is not None and ads_new > ads_old:
        causes.append(Cause("spec.activeDeadlineSeconds", "FieldValueInvalid",
                            "must be less than or equal to previous value", ads_new))
    munged.pop("activeDeadlineSeconds", None)
    if ads_old is not None:
        munged["activeDeadlineSeconds"] = ads_old
    old_tol, new_tol = old_spec.get("tolerations") or [], new_spec.get("tolerations") or []
    if any(t not in new_tol for t in old_tol):
        causes.append(Cause("spec.tolerations", "FieldValueForbidden",
                            "existing toleration can not be modified except its tolerationSeconds"))
    munged.pop("tolerations", None)
    if "tolerations" in old_spec:
        munged["tolerations"] = old_spec["tolerations"]
    tgps_old, tgps_new = old_spec.get("terminationGracePeriodSeconds"), new_spec.get("terminationGracePeriodSeconds")
    if tgps_old is not None and tgps_old < 0 and tgps_new == 1:
        munged["terminationGracePeriodSeconds"] = tgps_old
    if munged != old_spec:
        diff = "\n".join(_diff(old_spec, munged))
        causes.append(Cause("spec", "FieldValueForbidden", f"{FORBIDDEN_POD_UPDATE}\n  core.PodSpec{{\n{diff}\n  }}\n"))
    if causes:
        raise invalid(RESOURCES["pods"], name, causes)


def _labels_match(selector: Obj, labels: Obj) -> bool:
    if selector.get("matchExpressions"):
        return True  # not used here; accepted as the real server would evaluate it
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _go_strings(values: Any) -> str:
    return "[]string(nil)" if values is None else "[]string{" + ", ".join(json.dumps(v) for v in values) + "}"


def go_label_selector(selector: Obj) -> GoValue:
    """A LabelSelector as Go's ``%#v`` prints it in the API server's field errors (1.32): map keys sorted, nil
    maps and slices typed."""
    labels = selector.get("matchLabels")
    shown = "map[string]string(nil)" if labels is None else "map[string]string{" + ", ".join(
        f"{json.dumps(k)}:{json.dumps(labels[k])}" for k in sorted(labels)) + "}"
    exprs = selector.get("matchExpressions")
    requirement = "v1.LabelSelectorRequirement"
    listed = f"[]{requirement}(nil)" if exprs is None else f"[]{requirement}{{" + ", ".join(
        f"{requirement}{{Key:{json.dumps(e.get('key', ''))}, Operator:{json.dumps(e.get('operator', ''))}, "
        f"Values:{_go_strings(e.get('values'))}}}" for e in exprs) + "}"
    return GoValue(f"v1.LabelSelector{{MatchLabels:{shown}, MatchExpressions:{listed}}}")


def validate_deployment(dep: Obj, old: Obj | None) -> None:
    """Create/update validation of a Deployment (the parts the runbook's objects can get wrong)."""
    name = (dep.get("metadata") or {}).get("name", "")
    spec = dep.get("spec") or {}
    template = spec.get("template") or {}
    causes: list[Cause] = []
    selector = spec.get("selector")
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        causes.append(Cause("spec.selector", "FieldValueRequired", ""))
    else:
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not _labels_match(selector, labels):
            causes.append(Cause("spec.template.metadata.labels", "FieldValueInvalid",
                                "`selector` does not match template `labels`", labels))
        if old is not None and (old.get("spec") or {}).get("selector") != selector:
            causes.append(Cause("spec.selector", "FieldValueInvalid", "field is immutable",
                                go_label_selector(selector)))
    pod_spec = template.get("spec") or {}
    if not pod_spec.get("containers"):
        causes.append(Cause("spec.template.spec.containers", "FieldValueRequired", ""))
    causes += [Cause(f"spec.template.{c.field}", c.type, c.detail) for c in _image_errors(pod_spec)]
    if causes:
        raise invalid(RESOURCES["deployments"], name, causes)


def check_name(body: Obj, url_name: str | None) -> str:
    name = (body.get("metadata") or {}).get("name")
    if not name:
        raise ApiError(422, "Invalid", "metadata.name: Required value: name or generateName is required")
    if url_name is not None and name != url_name:
        raise ApiError(400, "BadRequest", f"the name of the object ({name}) does not match the name on the URL "
                       f"({url_name})")
    return str(name)


NODE_PORT_RANGE = (30000, 32767)  # the API server's default --service-node-port-range


def validate_service(svc: Obj, old: Obj | None, node_ports_in_use: set[int]) -> None:
    """Create/update validation of a Service (ports, names, the NodePort range and allocation), with the
    real server's field paths and words."""
    name = (svc.get("metadata") or {}).get("name", "")
    spec = svc.get("spec") or {}
    kind = spec.get("type", "ClusterIP")
    ports = spec.get("ports") or []
    causes: list[Cause] = []
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        causes.append(Cause("spec.type", "FieldValueNotSupported", 'supported values: "ClusterIP", '
                            '"ExternalName", "LoadBalancer", "NodePort"', kind))
    if not ports and kind != "ExternalName":
        causes.append(Cause("spec.ports", "FieldValueRequired", ""))
    for i, p in enumerate(ports):
        if len(ports) > 1 and not p.get("name"):
            causes.append(Cause(f"spec.ports[{i}].name", "FieldValueRequired", ""))
        if not 1 <= int(p.get("port") or 0) <= 65535:
            causes.append(Cause(f"spec.ports[{i}].port", "FieldValueInvalid",
                                "must be between 1 and 65535, inclusive", p.get("port")))
        node_port = p.get("nodePort")
        if node_port is None:
            continue
        if kind not in ("NodePort", "LoadBalancer"):
            causes.append(Cause(f"spec.ports[{i}].nodePort", "FieldValueForbidden",
                                "may not be used when `type` is 'ClusterIP'"))
        elif not NODE_PORT_RANGE[0] <= node_port <= NODE_PORT_RANGE[1]:
            causes.append(Cause(f"spec.ports[{i}].nodePort", "FieldValueInvalid",
                                "provided port is not in the valid range. The range of valid ports is "
                                f"{NODE_PORT_RANGE[0]}-{NODE_PORT_RANGE[1]}", node_port))
        elif node_port in node_ports_in_use:
            causes.append(Cause(f"spec.ports[{i}].nodePort", "FieldValueInvalid",
                                "provided port is already allocated", node_port))
    if old is not None:  # validateUpgradeDowngradeClusterIPs, after the update kept what the body left out
        old_ips = (old.get("spec") or {}).get("clusterIPs") or []
        new_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else old_ips)
        if spec.get("clusterIP") and new_ips[:1] != [spec["clusterIP"]]:
            new_ips = [spec["clusterIP"]]
        shown = GoValue("[]string{" + ", ".join(json.dumps(ip) for ip in new_ips) + "}")
        causes += [Cause(f"spec.clusterIPs[{i}]", "FieldValueInvalid", "may not change once set", shown)
                   for i, ip in enumerate(old_ips) if i < len(new_ips) and new_ips[i] != ip]
    if causes:
        raise invalid(RESOURCES["services"], name, causes)

"""Connecting to a Kubernetes API for an env, and turning every way a call can fail into one KubeError.

The kube context, namespace and kubeconfig come from the env file (``kube:``). Every message names the env,
the namespace, the object and the action, and says what to do; none carries a traceback (``from None``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from runbook.env import Env, KubeConfig
from runbook.errors import KubeError

T = TypeVar("T")

ROLE_FILE = "deploy/k8s/base/rbac.yaml"


@dataclass(frozen=True)
class KubeTarget:
    """Where calls go: for messages."""

    env: str
    context: str
    namespace: str
    server: str
    kubeconfig: str


def kubeconfig_paths(kube: KubeConfig) -> list[Path]:
    """The kubeconfig files to read: the env's ``kube.kubeconfig``, else ``$KUBECONFIG``, else ~/.kube/config."""
    if kube.kubeconfig:
        return [Path(os.path.expandvars(kube.kubeconfig)).expanduser()]
    if os.environ.get("KUBECONFIG"):
        return [Path(p).expanduser() for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    return [Path("~/.kube/config").expanduser()]


def _contexts(paths: list[Path]) -> dict[str, str]:
    """context name -> its cluster name, over every kubeconfig file (first one wins, as kubectl merges)."""
    out: dict[str, str] = {}
    for p in paths:
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise KubeError(f"cannot read kubeconfig {p}: {exc}") from None
        for c in data.get("contexts") or []:
            if isinstance(c, dict) and c.get("name"):
                out.setdefault(str(c["name"]), str((c.get("context") or {}).get("cluster", "")))
    return out


def connect(env: Env) -> tuple[k8s.ApiClient, KubeTarget]:
    """An API client for the env's kube context; a KubeError saying exactly what is missing otherwise."""
    if env.kube is None:
        raise KubeError(f"env {env.name} has no `kube:` section ({env.source or 'env file'}): "
                        "it does not run on Kubernetes", env=env.name)
    kube = env.kube
    paths = kubeconfig_paths(kube)
    existing = [p for p in paths if p.is_file()]
    if not existing:
        where = ", ".join(str(p) for p in paths)
        raise KubeError(f"no kubeconfig for env {env.name}: looked for {where} (set kube.kubeconfig in "
                        f"{env.source or 'the env file'} or KUBECONFIG; for kind: `runbook testbed up "
                        f"--env={env.name}`)", env=env.name)
    config_file = os.pathsep.join(str(p) for p in existing)
    contexts = _contexts(existing)
    if kube.context not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise KubeError(f"kube context {kube.context!r} of env {env.name} is not in {config_file} "
                        f"(contexts there: {known})", env=env.name)
    cfg = k8s.Configuration()
    try:
        k8s_config.load_kube_config(config_file=config_file, context=kube.context, client_configuration=cfg,
                                    persist_config=False)
    except (ConfigException, OSError, ValueError) as exc:
        raise KubeError(f"kube context {kube.context!r} of env {env.name} in {config_file} is unusable: "
                        f"{exc}", env=env.name) from None
    cfg.retries = False  # one attempt per call: the callers' waits poll; a dead server fails fast
    target = KubeTarget(env=env.name, context=kube.context, namespace=kube.namespace, server=str(cfg.host),
                        kubeconfig=config_file)
    return k8s.ApiClient(cfg), target


def _status_message(body: str | None) -> str:
    """The ``message`` of a Kubernetes Status body, else the body itself (shortened)."""
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return body.strip()[:300]


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    return exc


def describe_failure(exc: BaseException, *, action: str, obj: str, target: KubeTarget,
                     timeout: float) -> KubeError:
    """One KubeError for any failure of one API call: HTTP status, timeout or unreachable server."""
    where = f"{action} {obj} in namespace {target.namespace}"
    ctx = f"context {target.context}"
    kw: dict[str, Any] = {"env": target.env, "obj": obj}
    if isinstance(exc, k8s.ApiException):
        status, reason, body = exc.status or 0, exc.reason or "", exc.body
        if status == 0:  # the WebSocket transport (exec) reports its handshake failures this way
            m = re.search(r"Handshake status (\d+)", str(reason))
            if not m:
                return KubeError(f"{where}: cannot reach the API server at {target.server} ({ctx}): {reason}",
                                 **kw)
            status = int(m.group(1))
        detail = _status_message(body)
        detail = f": {detail}" if detail else ""
        kw["status"] = status
        if status == 401:
            return KubeError(f"{where}: the API server at {target.server} rejected the credentials of {ctx} "
                             f"(401 Unauthorized){detail}; refresh the kubeconfig ({target.kubeconfig})", **kw)
        if status == 403:
            return KubeError(f"{where}: forbidden (403){detail}; the runbook needs the Role in {ROLE_FILE} "
                             f"bound to its identity", **kw)
        if status == 404:
            return KubeError(f"{where}: not found (404){detail}", **kw)
        if status == 409:
            return KubeError(f"{where}: conflict (409){detail}; it was changed or created by someone else "
                             "meanwhile: re-read it and retry", **kw)
        if status == 422:
            return KubeError(f"{where}: rejected as invalid (422){detail}", **kw)
        return KubeError(f"{where}: the API server answered {status} {reason}{detail}", **kw)
    if isinstance(exc, pydantic.ValidationError):  # the client checks a body against its model before sending
        problems = "; ".join(".".join(str(p) for p in e["loc"][1:] if p != "body") + f": {e['msg']}"
                             for e in exc.errors())
        return KubeError(f"{where}: the kubernetes client refused the object before sending it: {problems}", **kw)
    cause = _root_cause(exc)
    if isinstance(cause, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
        return KubeError(f"{where}: cannot reach the API server at {target.server} ({ctx}): connection "
                         f"refused or no route (is the cluster up?)", **kw)
    if isinstance(cause, urllib3.exceptions.TimeoutError | TimeoutError):
        return KubeError(f"{where}: the API server at {target.server} ({ctx}) did not answer within "
                         f"{timeout:g}s", **kw)
    if isinstance(cause, urllib3.exceptions.SSLError):
        return KubeError(f"{where}: TLS with the API server at {target.server} ({ctx}) failed: {cause}", **kw)
    return KubeError(f"{where}: talking to the API server at {target.server} ({ctx}) failed: "
                     f"{type(cause).__name__}: {cause}", **kw)


_FAILURES = (k8s.ApiException, urllib3.exceptions.HTTPError, OSError, pydantic.ValidationError)


def call(fn: Callable[..., T], *args: Any, action: str, obj: str, target: KubeTarget, timeout: float,
         missing_ok: bool = False, **kwargs: Any) -> T | None:
    """Run one client call with a deadline; any failure becomes a KubeError (without a traceback chain).
    With ``missing_ok``, a 404 returns None instead."""
    try:
        return fn(*args, _request_timeout=(timeout, timeout), **kwargs)
    except _FAILURES as exc:
        if missing_ok and isinstance(exc, k8s.ApiException) and exc.status == 404:
            return None
        raise describe_failure(exc, action=action, obj=obj, target=target, timeout=timeout) from None


def call_json(fn: Callable[..., Any], *args: Any, action: str, obj: str, target: KubeTarget, timeout: float,
              missing_ok: bool = False, **kwargs: Any) -> dict[str, Any] | None:
    """Like :func:`call`, returning the response body as plain JSON (camelCase, as the API sends it)."""
    resp = call(fn, *args, action=action, obj=obj, target=target, timeout=timeout, missing_ok=missing_ok,
                _preload_content=False, **kwargs)
    if resp is None:
        return None
    try:
        data = json.loads(resp.data or b"{}")
    except ValueError as exc:
        raise KubeError(f"{action} {obj} in namespace {target.namespace}: the API server sent no JSON: {exc}",
                        env=target.env, obj=obj) from None
    return data if isinstance(data, dict) else {}


def check_reachable(env: Env, timeout: float = 5.0) -> KubeTarget:
    """Fail fast, with one clear message, when the env's cluster cannot be used (no kubeconfig or context,
    server unreachable or not answering, credentials refused, namespace forbidden)."""
    api_client, target = connect(env)
    apps = k8s.AppsV1Api(api_client)
    call(apps.list_namespaced_deployment, target.namespace, limit=1, _preload_content=False,
         action="list", obj="deployments", target=target, timeout=timeout)
    return target

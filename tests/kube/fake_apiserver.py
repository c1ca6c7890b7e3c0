"""A Kubernetes API mock server over real HTTP on loopback, stateful, for the kube adapter's contract suite.

It behaves like the real API server where the adapter depends on it: REST for namespaces, nodes, pods,
events, deployments, replicasets, daemonsets, services, configmaps, endpointslices, jobs, statefulsets and
persistentvolumeclaims (get, list with label and field
selectors, create, replace with resourceVersion preconditions, JSON/merge/strategic patches, delete with propagation);
discovery (``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/apps/v1``,
``/apis/discovery.k8s.io/v1``, ``/apis/batch/v1``) so the client's dynamic client
works; error bodies as the real server sends them (a ``Status``: ``NotFound``, ``AlreadyExists``,
``Conflict``, ``Invalid`` with causes, ``Unauthorized``); pod-update, Deployment, Service, ConfigMap, Job,
StatefulSet and claim validation (:mod:`tests.kube.fake_validation`, :mod:`tests.kube.fake_configmaps`,
:mod:`tests.kube.fake_batch`); ``pods/exec`` over the
``v5.channel.k8s.io``/``v4.channel.k8s.io`` WebSocket protocol; and behind it a controller and a kubelet
(:mod:`tests.kube.fake_cluster`, :mod:`tests.kube.fake_kubelet`) that report container status as
containerd's CRI does.

One small threaded ``http.server`` serves REST and the exec upgrade on one port (pytest-httpserver cannot
upgrade a connection). Every request is recorded (``requests``), e.g. to check the RBAC Role.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.kube import fake_batch as batch
from tests.kube.fake_cluster import FakeCluster
from tests.kube.fake_configmaps import validate_configmap, validate_service_meta
from tests.kube.fake_exec import ExecCall, Runner, choose_protocol, local_runner, serve_exec, stall
from tests.kube.fake_services import check_cluster_ip
from tests.kube.fake_state import (
    GROUPS,
    NO_ROUTE,
    RESOURCES,
    UNAUTHORIZED,
    ApiError,
    Obj,
    apply_patch,
    bad_request,
    conflict,
    field_selector_matches,
    label_selector_matches,
)
from tests.kube.fake_validation import check_name, validate_deployment, validate_pod_update, validate_service

TOKEN = "test-token"
VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "gitCommit": "0" * 40,
           "gitTreeState": "clean", "buildDate": "2024-12-11T00:00:00Z", "goVersion": "go1.23.3", "compiler": "gc",
           "platform": "linux/amd64"}
WRITABLE = {"deployments", "pods", "namespaces", "services", "configmaps", *batch.PLURALS}


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Route:
    plural: str
    namespace: str  # "" for cluster-scoped objects and lists across namespaces
    name: str | None
    sub: str | None


def parse_route(path: str) -> Route | None:
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        rest, group = parts[2:], ""
    elif len(parts) >= 3 and parts[0] == "apis" and parts[1] in GROUPS and parts[2] == "v1":
        rest, group = parts[3:], parts[1]
    else:
        return None
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or rest[0] not in RESOURCES or RESOURCES[rest[0]].group != group or len(rest) > 3:
        return None
    res = RESOURCES[rest[0]]
    if res.namespaced != bool(namespace) and len(rest) > 1:
        return None
    return Route(rest[0], namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None)


def _resource_list(group_version: str, group: str) -> Obj:
    singular = {"namespaces": "namespace", "nodes": "node", "pods": "pod", "events": "event",
                "deployments": "deployment", "replicasets": "replicaset", "daemonsets": "daemonset",
                "services": "service", "endpointslices": "endpointslice", "configmaps": "configmap", "jobs": "job",
                "statefulsets": "statefulset", "persistentvolumeclaims": "persistentvolumeclaim"}
    resources: list[Obj] = []
    for r in RESOURCES.values():
        if r.group != group:
            continue
        resources.append({"name": r.plural, "singularName": singular[r.plural], "namespaced": r.namespaced,
                          "kind": r.kind, "verbs": sorted({*r.verbs, "list", "watch"})})
        if r.plural in ("pods", "deployments"):
            resources.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": True, "kind": r.kind,
                              "verbs": ["get", "patch", "update"]})
        if r.plural == "pods":
            resources.append({"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
                              "verbs": ["create", "get"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def discovery(path: str, host: str) -> Obj | None:
    if path == "/version":
        return VERSION
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}
    if path == "/apis":
        groups = []
        for g in GROUPS:
            version = {"groupVersion": f"{g}/v1", "version": "v1"}
            groups.append({"name": g, "versions": [version], "preferredVersion": version})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    if path == "/api/v1":
        return _resource_list("v1", "")
    for g in GROUPS:
        if path == f"/apis/{g}/v1":
            return _resource_list(f"{g}/v1", g)
    return None


class FakeApiServer:
    """``FakeApiServer()`` listens on 127.0.0.1 at once; ``url`` is its address; ``stop()`` ends it."""

    def __init__(self, cluster: FakeCluster | None = None, *, token: str = TOKEN) -> None:
        self.cluster = cluster or FakeCluster()
        self.token = token
        self.requests: list[Recorded] = []
        self.exec_runner: Runner = local_runner
        self.stall_exec = False  # never answer an exec upgrade (a hung API server or kubelet)
        self._stopping = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer._serve(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-apiserver", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- HTTP

    def _reply(self, h: BaseHTTPRequestHandler, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Audit-Id", "fake")
        h.end_headers()
        h.wfile.write(data)

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        query = parse_qs(url.query)
        self.requests.append(Recorded(h.command, url.path, query, {k.lower(): v for k, v in h.headers.items()}, raw))
        try:
            if h.headers.get("Authorization") != f"Bearer {self.token}":
                raise UNAUTHORIZED
            doc = discovery(url.path, h.headers.get("Host", "")) if h.command == "GET" else None
            if doc is not None:
                self._reply(h, 200, doc)
                return
            route = parse_route(url.path)
            if route is None:
                raise NO_ROUTE
            if route.sub == "exec":
                self._exec(h, route, query)
                return
            body = json.loads(raw) if raw else None
            with self.cluster.lock:
                self.cluster.settle()
                code, out = self._rest(h.command, route, query, body, h.headers.get("Content-Type", ""))
                out = copy.deepcopy(out)
            self._reply(h, code, out)
        except ApiError as exc:
            self._reply(h, exc.code, exc.body())
        except ValueError as exc:
            self._reply(h, 400, bad_request(f"the body of the request is not JSON: {exc}").body())

    def _exec(self, h: BaseHTTPRequestHandler, route: Route, query: dict[str, list[str]]) -> None:
        if h.headers.get("Upgrade", "").lower() != "websocket":
            raise bad_request("Upgrade request required")
        protocol = choose_protocol(h.headers.get("Sec-WebSocket-Protocol", ""))
        if protocol is None:
            raise bad_request(f"unable to upgrade: requested protocol(s) are not supported: "
                              f"[{h.headers.get('Sec-WebSocket-Protocol', '')}]; supports [v5.channel.k8s.io "
                              f"v4.channel.k8s.io]")
        container = (query.get("container") or [""])[0]
        with self.cluster.lock:
            self.cluster.settle()
            self._exec_target(route, container)
        h.close_connection = True
        h.wfile.flush()
        if self.stall_exec:
            stall(h.connection, self._stopping.is_set)
            return
        call = ExecCall(route.namespace, route.name or "", container, tuple(query.get("command") or []))
        serve_exec(h.connection, call, h.headers.get("Sec-WebSocket-Key", ""), protocol, self.exec_runner)

    def _exec_target(self, route: Route, container: str) -> None:
        pod = self.cluster.get("pods", route.namespace, route.name or "")
        names = [c["name"] for k in ("initContainers", "containers") for c in pod["spec"].get(k) or []]
        if not container:
            if len(names) != 1:
                raise bad_request(f"a container name must be specified for pod {route.name}, choose one of: "
                                  f"[{' '.join(names)}]")
            container = names[0]
        if container not in names:
            raise bad_request(f"container {container} is not valid for pod {route.name}")
        statuses = (pod["status"].get("initContainerStatuses") or []) + (pod["status"].get("containerStatuses") or [])
        if not any(s["name"] == container and "running" in s["state"] for s in statuses):
            raise bad_request(f'unable to upgrade connection: container not found ("{container}")')

    # -- REST

    def _rest(self, method: str, route: Route, query: dict[str, list[str]], body: Any,
              content_type: str) -> tuple[int, Obj]:
        c = self.cluster
        res = RESOURCES[route.plural]
        ns = route.namespace
        if route.sub is not None:
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                           f"resource ({route.plural}/{route.sub})")
        if method == "GET" and route.name is None:
            return 200, self._list(route, query)
        if method == "GET":
            return 200, c.get(route.plural, ns, route.name or "")
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        if route.plural not in WRITABLE or verb not in res.verbs:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested "
                           f"resource ({route.plural})")
        if method == "POST":
            if not isinstance(body, dict):
                raise bad_request("the body of a create must be an object")
            check_name(body, None)
            body_ns = (body.get("metadata") or {}).get("namespace")
            if res.namespaced and body_ns and body_ns != ns:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                                  "request")
            if route.plural == "deployments":
                validate_deployment(body, None)
            if route.plural == "services":
                validate_service_meta(body)
                validate_service(body, None, c.node_ports_in_use(ns, ""))
                check_cluster_ip(body, c)
            if route.plural == "configmaps":
                validate_configmap(body, None)
            if route.plural in batch.PLURALS:
                body = batch.defaults(route.plural, body)
                batch.validate(route.plural, body, None)
            if route.plural == "pods":
                raise ApiError(405, "MethodNotAllowed", "this fake creates pods through Deployments only")
            return 201, c.create(route.plural, ns, body)
        name = route.name or ""
        if method == "DELETE":
            options = body if isinstance(body, dict) else {}
            propagation = options.get("propagationPolicy") or next(iter(query.get("propagationPolicy") or []), None)
            if propagation is None and route.plural == "jobs":
                propagation = "Orphan"  # batch/v1's default (kubectl sends Background): a Job's pods stay
            grace = options.get("gracePeriodSeconds", next(iter(query.get("gracePeriodSeconds") or []), None))
            obj = c.delete(route.plural, ns, name, propagation=propagation,
                           grace_seconds=None if grace is None else int(grace))
            if obj is not None:
                return 200, obj
            details: Obj = {"name": name, **({"group": res.group} if res.group else {}), "kind": res.plural}
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                         "details": details}
        current = c.get(route.plural, ns, name)
        if method == "PATCH":
            new = apply_patch(copy.deepcopy(current), content_type, body)
        else:
            if not isinstance(body, dict):
                raise bad_request("the body of an update must be an object")
            check_name(body, name)
            new = body
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv is not None and rv != current["metadata"]["resourceVersion"]:
                raise conflict(res, name)
            if not rv and route.plural == "services":  # no unconditional update of a Service (its strategy)
                raise ApiError(422, "Invalid", f'services "{name}" is invalid: metadata.resourceVersion: Invalid '
                               "value: 0x0: must be specified for an update", {"name": name, "kind": "services",
                               "causes": [{"reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
                                           "message": "Invalid value: 0x0: must be specified for an update"}]})
        new.setdefault("metadata", {})["name"] = name
        if route.plural == "pods":
            validate_pod_update(name, current, new)
        elif route.plural == "deployments":
            validate_deployment(new, current)
        elif route.plural == "services":
            validate_service_meta(new)
            validate_service(new, current, c.node_ports_in_use(ns, name))
        elif route.plural == "configmaps":
            validate_configmap(new, current)
        elif route.plural in batch.PLURALS:
            new = batch.defaults(route.plural, new)
            batch.validate(route.plural, new, current)
        return 200, c.replace(route.plural, ns, name, new)

    def _list(self, route: Route, query: dict[str, list[str]]) -> Obj:
        res = RESOURCES[route.plural]
        labels = (query.get("labelSelector") or [""])[0]
        fields = (query.get("fieldSelector") or [""])[0]
        items = [o for o in self.cluster.items(route.plural, route.namespace or None)
                 if label_selector_matches(labels, o["metadata"].get("labels") or {})
                 and field_selector_matches(fields, o)]
        meta: Obj = {"resourceVersion": str(max((int(o["metadata"]["resourceVersion"]) for o in items), default=1))}
        limit = int((query.get("limit") or ["0"])[0])
        if limit and len(items) > limit:
            items, meta["continue"] = items[:limit], "fake-continue"
        out = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta, "items": out}

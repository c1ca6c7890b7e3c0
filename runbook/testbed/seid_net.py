"""The Sei stand-in's network side (:mod:`runbook.testbed.seid` runs the node): its RPC, how a fresh home gets its
state, where a node's upgrade plan comes from, and the snapshots a node uploads.

- RPC (:class:`TendermintApp`): Tendermint's shapes (``GET /status``, ``/health``, ``/abci_info``, JSON-RPC
  ``POST /``) and the upgrade module's REST queries; ``seid status --node URL`` (:func:`status_main`).

- Bootstrap (:func:`bootstrap`): the newest S3 snapshot ``<= --target-height``, else state sync from the first
  peer whose RPC answers, else ``--init-height``.
- The plan (:class:`PlanWatcher`): the upgrade plan is chain state. The network's validator reads it from a
  governance file (``--gov-plan-file``: ``{"name": N, "height": H}``, ``{}`` or no file: none), every node
  serves it at ``GET /cosmos/upgrade/v1beta1/current_plan``, and a node with ``--peers`` polls its first
  answering peer every second and adopts what it sees.
- Snapshots (:class:`SnapshotUploader`): ``--snapshot-upload URL/BUCKET``: the state at every committed multiple of
  ``--snapshot-interval``, uploaded by a background thread (commits never wait on it); the newest
  :data:`KEEP_SNAPSHOTS` are kept.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx

from runbook.errors import AdapterError, ConfigError, RunbookError
from runbook.testbed.cluster import JsonRpcApp, _dumps, _respond
from runbook.testbed.seid_state import NodeState, SeiChain, UpgradePlan, read_state, write_state

if TYPE_CHECKING:
    from runbook.testbed.seid import SeiNode

log = logging.getLogger("seid")
_JSON = b"application/json"

KEEP_SNAPSHOTS = 10
PLAN_PATH = "/cosmos/upgrade/v1beta1/current_plan"


def peer_url(peer: str) -> str:
    """``node-id@host:port``, ``host:port`` or a URL -> ``http://host:port``."""
    peer = peer.strip().split("@")[-1]
    return (peer if "://" in peer else f"http://{peer}").rstrip("/")


def peer_list(spec: str | None) -> list[str]:
    return [p.strip() for p in (spec or "").split(",") if p.strip()]


# --------------------------------------------------------------------------- RPC


class TendermintApp(JsonRpcApp):
    """Tendermint's RPC shapes: URI ``GET /status`` etc. answer ``{"jsonrpc", "id": -1, "result"}``."""

    def __init__(self, node: SeiNode) -> None:
        self.node = node
        routes = {"status": lambda p: node.status(), "health": lambda p: {}, "abci_info": lambda p: node.abci_info()}
        super().__init__(methods=routes, health=lambda: "")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        prefix = "/cosmos/upgrade/v1beta1/applied_plan/"
        if method == "GET" and path == PLAN_PATH:
            await _respond(send, 200, _dumps(self.node.current_plan()), _JSON)
        elif method == "GET" and path.startswith(prefix):
            await _respond(send, 200, _dumps(self.node.applied_plan(path[len(prefix):])), _JSON)
        elif method == "GET" and path.lstrip("/") in self.methods:
            result = self.methods[path.lstrip("/")](None)
            await _respond(send, 200, _dumps({"jsonrpc": "2.0", "id": -1, "result": result}), _JSON)
        elif path == "/health":  # the base class's text /health is not Tendermint's
            await _respond(send, 405, b"method not allowed", b"text/plain")
        else:
            await super().__call__(scope, receive, send)


def status_main(node: str) -> int:
    parts = urlsplit(node if "://" in node else f"tcp://{node}")
    url = f"http://{parts.netloc}/status"
    try:
        r = httpx.get(url, timeout=5.0)
        r.raise_for_status()
        print(json.dumps(r.json()["result"]))
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        print(f"Error: post failed: {url}: {exc}", file=sys.stderr)
        return 1  # cobra's Error: exit status
    return 0


def applied_main(node: str, name: str, output: str) -> int:
    """``seid query upgrade applied NAME``: the height the plan was applied at on that node (``--output json``:
    ``{"height": "H"}``, x/upgrade's AppliedPlan answer; ``"0"``: not applied there)."""
    parts = urlsplit(node if "://" in node else f"tcp://{node}")
    url = f"http://{parts.netloc}/cosmos/upgrade/v1beta1/applied_plan/{name}"
    try:
        r = httpx.get(url, timeout=5.0)
        r.raise_for_status()
        height = str(r.json()["height"])
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        print(f"Error: {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"height": height}) if output == "json" else f"height: {height}")
    return 0


# --------------------------------------------------------------------------- bootstrap


def state_sync(peers: list[str], interval: int, chain_id: str) -> NodeState:
    """The newest snapshot height (a multiple of ``interval``) at or below the first answering peer's height."""
    errors = []
    for peer in peers:
        url = f"{peer_url(peer)}/status"
        try:
            r = httpx.get(url, timeout=2.0)
            r.raise_for_status()
            height = int(r.json()["result"]["sync_info"]["latest_block_height"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            errors.append(f"{url}: {exc}")
            continue
        snap = height - height % interval
        log.info("state sync: peer %s at height %d; restoring the snapshot at height %d", peer, height, snap)
        return NodeState(height=snap, chain_id=chain_id)
    raise ConfigError("failed to start state sync: failed to set up light client state provider: "
                      f"no RPC server of {len(peers)} answered ({'; '.join(errors) or 'no peers configured'})")


def restore_snapshot(home: Path, location: str, target: int) -> NodeState:
    from runbook.testbed.s3store import SnapshotStore, parse_s3_url

    endpoint, bucket = parse_s3_url(location)
    store = SnapshotStore(endpoint)
    height = store.latest_snapshot(bucket, target)
    log.info("restoring snapshot %d (newest <= %d) from %s/%s into %s", height, target, endpoint, bucket, home)
    store.fetch_snapshot(bucket, height, home)
    state = read_state(home)
    if state is None or state.height != height:
        raise AdapterError(f"snapshot {height} from {location} holds no node state at that height", obj=location)
    return state


def init_height(spec: str, chain: SeiChain) -> int:
    if spec == "tip" or spec.startswith("tip-"):
        return max(0, chain.tip() - (int(spec[4:]) if spec != "tip" else 0))
    return int(spec)


def bootstrap(args: argparse.Namespace, chain: SeiChain) -> NodeState:
    home: Path = args.home
    state = read_state(home)
    if state is not None:
        log.info("home %s: state at height %d", home, state.height)
        return state
    if args.snapshot_s3:
        if args.target_height is None:
            raise ConfigError("--snapshot-s3 needs --target-height")
        state = restore_snapshot(home, args.snapshot_s3, args.target_height)
    elif args.peers:
        state = state_sync(peer_list(args.peers), args.snapshot_interval, chain.chain_id)
    elif args.init_height:
        state = NodeState(height=init_height(args.init_height, chain), chain_id=chain.chain_id)
    else:
        raise ConfigError(f"home {home} has no state: give --snapshot-s3, --peers or --init-height")
    write_state(home, state)
    return state


# --------------------------------------------------------------------------- the plan


class Learner(Protocol):
    def learn_plan(self, plan: UpgradePlan | None, source: str, *, source_height: int | None = None) -> None: ...


class PlanWatcher:
    """Feeds ``node.learn_plan`` from the governance file (when given) or else the first answering peer."""

    def __init__(self, node: Learner, *, gov_file: Path | None = None, peers: list[str] | None = None,
                 interval: float = 1.0, timeout: float = 1.0) -> None:
        self.node, self.gov_file, self.peers = node, gov_file, list(peers or [])
        self.interval, self.timeout = interval, timeout
        self._warned: str | None = None

    def read_gov_file(self) -> None:
        assert self.gov_file is not None
        try:
            text = self.gov_file.read_text()
            plan = UpgradePlan.from_dict(json.loads(text) if text.strip() else {})
        except FileNotFoundError:
            plan = None
        except (OSError, ValueError, RunbookError) as exc:  # a half-written file: keep the plan, say so once
            if self._warned != str(exc):
                log.warning("governance file %s unreadable, plan unchanged: %s", self.gov_file, exc)
                self._warned = str(exc)
            return
        self._warned = None
        self.node.learn_plan(plan, f"governance file {self.gov_file}")

    async def poll_peers(self, client: httpx.AsyncClient) -> None:
        """The first peer that answers decides; a peer without a plan reports its height too (a plan it has
        already passed is not a cancellation)."""
        for peer in self.peers:
            base = peer_url(peer)
            try:
                r = await client.get(f"{base}{PLAN_PATH}")
                r.raise_for_status()
                raw = r.json()["plan"]
                if raw:
                    self.node.learn_plan(UpgradePlan.from_dict(raw), peer)
                    return
                s = await client.get(f"{base}/status")
                s.raise_for_status()
                height = int(s.json()["result"]["sync_info"]["latest_block_height"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError, RunbookError):
                continue
            self.node.learn_plan(None, peer, source_height=height)
            return

    async def poll_once(self, client: httpx.AsyncClient) -> None:
        if self.gov_file is not None:
            await asyncio.to_thread(self.read_gov_file)
        elif self.peers:
            await self.poll_peers(client)

    async def run(self, client: httpx.AsyncClient) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.poll_once(client)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.timeout)


# --------------------------------------------------------------------------- snapshots


class SnapshotUploader:
    """Uploads the state at every multiple of ``interval`` to ``http://HOST:PORT/BUCKET`` from a thread of its
    own; a backlog keeps only the newest ``keep`` heights, and the bucket only the newest ``keep`` snapshots."""

    def __init__(self, location: str, interval: int, *, keep: int = KEEP_SNAPSHOTS) -> None:
        from runbook.testbed.s3store import SnapshotStore, parse_s3_url

        if interval <= 0:
            raise ConfigError(f"--snapshot-interval must be > 0, got {interval}")
        self.endpoint, self.bucket = parse_s3_url(location)
        self.store = SnapshotStore(self.endpoint, retries=1)
        self.interval, self.keep = interval, keep
        self._pending: collections.deque[NodeState] = collections.deque(maxlen=keep)
        self._cv = threading.Condition()
        self._stopping = False
        self._bucket_ready = False
        self._thread = threading.Thread(target=self._run, name="snapshot-upload", daemon=True)

    def start(self) -> SnapshotUploader:
        self._thread.start()
        return self

    def offer(self, state: NodeState, first: int, last: int) -> None:
        """Heights ``first..last`` were committed (``state`` is at ``last``): queue the multiples of the interval."""
        m = -(-first // self.interval) * self.interval
        heights = list(range(m, last + 1, self.interval))[-self.keep:]
        if not heights:
            return
        with self._cv:
            self._pending.extend(state.at(h) for h in heights)
            self._cv.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                state = self._pending.popleft()
            try:
                self.upload(state)
            except RunbookError as exc:
                log.warning("snapshot %d not uploaded: %s", state.height, exc)

    def upload(self, state: NodeState) -> None:
        if not self._bucket_ready:
            self.store.ensure_bucket(self.bucket)
            self._bucket_ready = True
        with tempfile.TemporaryDirectory(prefix="seid-snapshot-") as tmp:
            write_state(tmp, state)
            self.store.put_snapshot(self.bucket, state.height, tmp)
        old = self.store.heights(self.bucket)[:-self.keep]
        for h in old:
            self.store.delete_snapshot(self.bucket, h)
        log.info("snapshot %d uploaded to %s/%s%s", state.height, self.endpoint, self.bucket,
                 f" (deleted {', '.join(map(str, old))})" if old else "")

"""The stand-in Sei node: ``python -m runbook.testbed.seid [start] --home DIR --version V --rpc ADDR:PORT
[--halt-height H] [--upgrade-height H --upgrade-name NAME] [--snapshot-s3 URL/BUCKET --target-height N]
[--peers A,B] [--init-height N|tip|tip-K] [--fail MODE]``, and ``... seid status --node URL``.

The chain is :class:`~runbook.testbed.seid_state.SeiChain` (heights from wall-clock time and a shared genesis).
A home without state gets one first: the newest S3 snapshot ``<= --target-height`` (``--snapshot-s3``), else
state sync from the first peer whose RPC answers (``--peers``: lands on the newest multiple of
``--snapshot-interval`` at or below the peer's height), else ``--init-height``; none of them is an error.
With no peer answering it fails at once as CometBFT does (``failed to start state sync: ...``, exit 1).

Then it block-syncs toward the tip at ``sync_speed`` times the tip's rate and follows it; ``catching_up`` is
true while more than :data:`CATCH_UP_DISTANCE` blocks behind. Its RPC (Tendermint's shapes) starts after the
bootstrap: ``GET /status``, ``GET /health`` (``{}``), ``GET /abci_info``, the upgrade module's
``GET /cosmos/upgrade/v1beta1/applied_plan/NAME`` (``{"height": "H"}``, ``"0"`` when not applied), and the
same as JSON-RPC ``POST /``. The state file is written as heights commit and on shutdown (SIGTERM: exit 0).

Stops, earliest first (a halt at the same height wins, as commit comes before the next BeginBlock):
- ``--halt-height H``: enforced at commit: commits H (or, started at or past H, the next block), exits 0
  (``--exit-codes sdk``: 130, as the SDK's start command exits after its halt's SIGINT; SIGTERM then gives 143);
- the upgrade plan, old binary: commits H-1, then panics with ``UPGRADE "NAME" NEEDED at height: H: `` (exit 2);
- the plan, new binary on state below H-1: panics processing the next block, ``BINARY UPDATED BEFORE
  TRIGGER! ...`` (exit 2), nothing committed; on state at H-1 it processes H and writes the handler's mark;
- ``--fail panic-at=P``: commits P-1, then panics (a new binary whose migration panics at H);
  ``--fail crash-on-start``: exits 1 before anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from runbook.errors import AdapterError, ConfigError, RunbookError
from runbook.testbed.chain import parse_version
from runbook.testbed.cluster import JsonRpcApp, RequestExit, _dumps, _respond, run_server
from runbook.testbed.seid_state import NodeState, SeiChain, UpgradePlan, read_state, write_state

log = logging.getLogger("seid")

EXIT_ERROR = 1  # cobra: "Error: ..." and exit 1
EXIT_PANIC = 2  # a Go panic
EXIT_SDK_HALT = 130  # --exit-codes sdk: the SDK's halt() SIGINTs itself, WaitForQuitSignals returns 128+SIGINT
EXIT_SDK_TERM = 143  # --exit-codes sdk: 128+SIGTERM
CATCH_UP_DISTANCE = 2
_JSON = b"application/json"


@dataclass(frozen=True)
class Stop:
    height: int  # the last height committed
    kind: str  # "halt" (exit 0 once committed) or "panic" (once the next block is there)
    message: str


class SeiNode:
    """The node's state after bootstrap. Requests read it; only the background task changes it."""

    def __init__(self, *, home: Path, version: str, chain: SeiChain, state: NodeState, halt_height: int | None,
                 plan: UpgradePlan | None, panic_at: int | None) -> None:
        self.home, self.version, self.chain, self.state, self.plan = home, version, chain, state, plan
        self.halted = False
        self.start, self.t0 = state.height, time.time()
        self.committed = state.height
        stops = []
        if halt_height is not None:
            stops.append(Stop(max(halt_height, self.start + 1), "halt", "halting node per configuration"))
        if plan is not None:
            handler = plan.has_handler(version)
            if handler and self.start + 1 < plan.height:
                stops.append(Stop(self.start, "panic", plan.early_msg()))
            elif not handler and self.start < plan.height:
                stops.append(Stop(plan.height - 1, "panic", plan.needed_msg()))
            elif not handler:
                stops.append(Stop(self.start, "panic", plan.missing_msg()))
        if panic_at is not None and panic_at > self.start:
            stops.append(Stop(panic_at - 1, "panic", f"failure mode panic-at={panic_at}: panicked processing "
                                                     f"block {panic_at}"))
        self.stop = min(stops, key=lambda s: (s.height, s.kind != "halt")) if stops else None

    def height(self, now: float | None = None) -> int:
        t = time.time() if now is None else now
        synced = self.start + math.floor((t - self.t0) * self.chain.sync_rate)
        ceiling = self.chain.tip(t) if self.stop is None else min(self.chain.tip(t), self.stop.height)
        return max(self.start, min(synced, ceiling))

    def commit(self, now: float | None = None) -> int:
        """Record the heights committed since the last call (and the handler's mark), on disk."""
        h = self.height(now)
        if h == self.committed:
            return h
        self.state.record(self.version, self.committed + 1, h)
        plan = self.plan
        if plan and self.committed < plan.height <= h and plan.name not in self.state.upgrades:
            log.info('applying upgrade "%s" at height: %d', plan.name, plan.height)
            self.state.upgrades[plan.name] = {"height": plan.height, "version": self.version,
                                              "applied_at": round(time.time(), 3)}
        self.state.height = self.committed = h
        write_state(self.home, self.state)
        return h

    # ---- RPC
    def status(self) -> dict[str, Any]:
        now = time.time()
        h, tip = self.height(now), self.chain.tip(now)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.chain.block_time_at(h)))
        return {
            "node_info": {"network": self.chain.chain_id, "version": self.version, "moniker": self.home.name},
            "sync_info": {"latest_block_height": str(h), "latest_block_time": when,
                          "earliest_block_height": str(self.start), "catching_up": tip - h > CATCH_UP_DISTANCE},
        }

    def abci_info(self) -> dict[str, Any]:
        return {"response": {"data": "sei", "version": self.version, "last_block_height": str(self.height())}}

    def applied_plan(self, name: str) -> dict[str, str]:
        mark = self.state.upgrades.get(name)
        return {"height": str(mark["height"] if mark else 0)}


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
        if method == "GET" and path.startswith(prefix):
            await _respond(send, 200, _dumps(self.node.applied_plan(path[len(prefix):])), _JSON)
        elif method == "GET" and path.lstrip("/") in self.methods:
            result = self.methods[path.lstrip("/")](None)
            await _respond(send, 200, _dumps({"jsonrpc": "2.0", "id": -1, "result": result}), _JSON)
        elif path == "/health":  # the base class's text /health is not Tendermint's
            await _respond(send, 405, b"method not allowed", b"text/plain")
        else:
            await super().__call__(scope, receive, send)


# --------------------------------------------------------------------------- bootstrap


def _peer_url(peer: str) -> str:
    peer = peer.strip().split("@")[-1]  # node-id@host:port
    return peer if "://" in peer else f"http://{peer}"


def state_sync(peers: list[str], interval: int, chain_id: str) -> NodeState:
    """The newest snapshot height (a multiple of ``interval``) at or below the first answering peer's height."""
    errors = []
    for peer in peers:
        url = f"{_peer_url(peer)}/status"
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
        state = state_sync([p for p in args.peers.split(",") if p.strip()], args.snapshot_interval, chain.chain_id)
    elif args.init_height:
        state = NodeState(height=init_height(args.init_height, chain), chain_id=chain.chain_id)
    else:
        raise ConfigError(f"home {home} has no state: give --snapshot-s3, --peers or --init-height")
    write_state(home, state)
    return state


# --------------------------------------------------------------------------- running


async def _follow(node: SeiNode, request_exit: RequestExit, interval: float, halt_code: int) -> None:
    stop, caught_up = node.stop, False
    while True:
        now = time.time()
        h = await asyncio.to_thread(node.commit, now)
        behind = node.chain.tip(now) - h
        if not caught_up and behind <= CATCH_UP_DISTANCE:
            caught_up = True
            log.info("caught up: height %d, %d behind the tip", h, behind)
        if stop is not None and h >= stop.height:
            if stop.kind == "halt":
                log.info("%s height=%d", stop.message, stop.height)
                node.halted = True
                request_exit(halt_code)
                return
            if node.chain.tip() > stop.height:  # the next block is there: BeginBlock runs and panics
                print(f"panic: {stop.message}\n\ngoroutine 1 [running]:", file=sys.stderr, flush=True)
                request_exit(EXIT_PANIC)
                return
        await asyncio.sleep(interval)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seid")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start")
    s.add_argument("--home", type=Path, required=True)
    s.add_argument("--version", required=True, help="the release this binary is, e.g. v6.3.0")
    s.add_argument("--rpc", "--rpc.laddr", dest="rpc", default="127.0.0.1:26657", help="ADDR:PORT (or tcp://...)")
    s.add_argument("--halt-height", type=int)
    s.add_argument("--upgrade-height", type=int)
    s.add_argument("--upgrade-name")
    s.add_argument("--upgrade-min-version", help="the first release with the handler (default: the name)")
    s.add_argument("--snapshot-s3", help="http://HOST:PORT/BUCKET")
    s.add_argument("--target-height", type=int)
    s.add_argument("--peers", help="peers' RPC addresses for state sync, HOST:PORT[,...]")
    s.add_argument("--snapshot-interval", type=int, default=100)
    s.add_argument("--init-height", help="a fresh home's height without a snapshot or peers: N, tip or tip-K")
    s.add_argument("--fail", help="crash-on-start, panic-at=H (comma-separated)")
    s.add_argument("--genesis-time", type=float)
    s.add_argument("--block-time", type=float)
    s.add_argument("--sync-speed", type=float)
    s.add_argument("--commit-interval", type=float, default=0.05)
    s.add_argument("--exit-codes", choices=("clean", "sdk"), default="clean",
                   help="clean: a halt and SIGTERM exit 0; sdk: 130 and 143, as the Cosmos SDK's start command does")
    st = sub.add_parser("status")
    st.add_argument("--node", default="tcp://127.0.0.1:26657")
    return p


def _fail_modes(spec: str | None) -> tuple[bool, int | None]:
    crash, panic_at = False, None
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        name, _, arg = item.partition("=")
        if name == "crash-on-start" and not arg:
            crash = True
        elif name == "panic-at" and arg.isdigit():
            panic_at = int(arg)
        else:
            raise ConfigError(f"bad failure mode {item!r}: expected crash-on-start or panic-at=HEIGHT")
    return crash, panic_at


def status_main(node: str) -> int:
    parts = urlsplit(node if "://" in node else f"tcp://{node}")
    url = f"http://{parts.netloc}/status"
    try:
        r = httpx.get(url, timeout=5.0)
        r.raise_for_status()
        print(json.dumps(r.json()["result"]))
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        print(f"Error: post failed: {url}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("start", "status", "-h", "--help"):
        argv.insert(0, "start")
    args = _parser().parse_args(argv)
    if args.command == "status":
        return status_main(args.node)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    try:
        crash, panic_at = _fail_modes(args.fail)
        chain = SeiChain.from_env(genesis_time=args.genesis_time, block_time=args.block_time,
                                  sync_speed=args.sync_speed)
        plan = None
        if args.upgrade_height is not None or args.upgrade_name:
            if args.upgrade_height is None or not args.upgrade_name:
                raise ConfigError("--upgrade-height and --upgrade-name go together")
            plan = UpgradePlan(args.upgrade_name, args.upgrade_height, args.upgrade_min_version)
        parse_version(args.version)
        host, _, port = args.rpc.removeprefix("tcp://").rpartition(":")
        if crash:
            print("Error: failure mode crash-on-start", file=sys.stderr)
            return EXIT_ERROR
        state = bootstrap(args, chain)
    except (RunbookError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    node = SeiNode(home=args.home, version=args.version, chain=chain, state=state, halt_height=args.halt_height,
                   plan=plan, panic_at=panic_at)
    tip = chain.tip()
    log.info("seid %s starting: home %s, height %d, tip %d (block time %gs, sync x%g), rpc %s%s%s", args.version,
             args.home, state.height, tip, chain.block_time, chain.sync_speed, args.rpc,
             f", halt-height {args.halt_height}" if args.halt_height is not None else "",
             f", upgrade {plan.name} at {plan.height}" if plan else "")

    async def background(request_exit: RequestExit) -> None:
        await _follow(node, request_exit, args.commit_interval, EXIT_SDK_HALT if sdk_codes else 0)

    async def on_stop() -> None:
        h = await asyncio.to_thread(node.commit)
        log.info("shutdown: state persisted at height %d", h)

    sdk_codes = args.exit_codes == "sdk"
    code = run_server(TendermintApp(node), host=host or "127.0.0.1", port=int(port), name="seid",
                      background=background, on_stop=on_stop)
    if sdk_codes and code == 0 and not node.halted:  # stopped by SIGTERM/SIGINT
        code = EXIT_SDK_TERM
    log.info("exiting with status %d", code)
    return code


def seid_argv(*, home: Path | str, version: str, rpc: str, **flags: Any) -> list[str]:
    """``[python, -m, runbook.testbed.seid, start, ...]``; ``flags`` are the options by their Python names
    (``halt_height=99``, ``peers="a:1,b:2"``); None values are left out."""
    argv = [sys.executable, "-m", "runbook.testbed.seid", "start", "--home", str(home), "--version", version,
            "--rpc", rpc]
    for name, value in flags.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

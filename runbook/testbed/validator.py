"""The stand-in agave validator: ``python -m runbook.testbed.validator --version 2.1.0 --rpc-port 18899
--ledger DIR --accounts DIR [--identity PATH] [--entrypoint HOST:PORT ...] [--gossip-port PORT] [--fail MODE]``
and the rest of agave-validator's flags an RPC node runs with (:mod:`runbook.testbed.validator_args`).

It binds its gossip port (UDP and a TCP listener; a port in use is agave's panic and exit 1), takes its
dynamic ports from ``--dynamic-port-range``, and announces itself in gossip to its entrypoints
(:mod:`runbook.testbed.gossip`): when a newer instance with its identity appears, it exits 1 with agave's
``duplicate running instances of the same validator node`` message, abruptly, as agave does.

It verifies its ledger, reads its starting slot from it and replays toward the cluster tip (see
:mod:`runbook.testbed.chain`) at ``replay_speed`` times the tip rate, then follows the tip. It answers
``GET /health`` (always HTTP 200, body ``ok``/``behind``/``unknown``, as agave does) and JSON-RPC
``getHealth``, ``getSlot``, ``getVersion``, ``getIdentity``, ``getGenesisHash`` (and with ``--full-rpc-api``
``getClusterNodes``, from what the cluster told it in gossip). It persists progress every
``--persist-interval`` seconds and on shutdown; SIGTERM finishes in-flight requests and exits 0.

The node's slot is computed from the clock on each request (no disk I/O per request)::

    slot(t) = clamp(start_slot + floor((t - t0) * replay_rate), start_slot, min(tip(t), cap))

Failure modes (``--fail`` or env ``STANDIN_FAIL``; comma-separated to combine; the flag wins):
``crash-on-start``, ``never-healthy``, ``halt-at=SLOT``, ``upgrade-height=SLOT:MIN_VERSION``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from runbook.errors import ConfigError, RunbookError
from runbook.testbed import chain, gossip
from runbook.testbed.cluster import MAINNET_GENESIS_HASH, JsonRpcApp, RequestExit, RpcFault, run_server
from runbook.testbed.keypair import read_pubkey, write_keypair
from runbook.testbed.validator_args import parse_args
from runbook.testbed.validator_net import (
    EXIT_BIND,
    GossipBindError,
    bind_sockets,
    contact_info,
    fetch_genesis,
    redirect_log,
    run_gossip,
)
from runbook.testbed.validator_net import join_cluster as join_cluster  # re-exported: tests and callers use it

log = logging.getLogger("validator")

EXIT_CRASH = 1  # crash-on-start
EXIT_LEDGER = 3  # the ledger failed verification or cannot be used
EXIT_UPGRADE = 4  # refused to replay past an upgrade height with an old version
EXIT_STARTUP = 1  # agave's exit for a startup error: identity unreadable, genesis hash mismatch, port in use
NODE_UNHEALTHY = -32005

Status = Literal["ok", "behind", "unknown"]


@dataclass(frozen=True)
class FailureModes:
    crash_on_start: bool = False
    never_healthy: bool = False
    halt_at: int | None = None
    upgrade_height: tuple[int, str] | None = None  # (slot, minimum version)

    @classmethod
    def parse(cls, spec: str | None) -> FailureModes:
        """``"crash-on-start"``, ``"never-healthy"``, ``"halt-at=SLOT"``, ``"upgrade-height=SLOT:MIN"``,
        or several of them separated by commas. Empty means none."""
        out: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in (spec or "").split(","))):
            name, _, arg = item.partition("=")
            try:
                if name == "crash-on-start" and not arg:
                    out["crash_on_start"] = True
                elif name == "never-healthy" and not arg:
                    out["never_healthy"] = True
                elif name == "halt-at":
                    out["halt_at"] = int(arg)
                elif name == "upgrade-height":
                    slot, _, minimum = arg.partition(":")
                    chain.parse_version(minimum)
                    out["upgrade_height"] = (int(slot), minimum)
                else:
                    raise ValueError("unknown mode")
            except (ValueError, ConfigError) as exc:
                raise ConfigError(
                    f"bad failure mode {item!r} ({exc}): expected crash-on-start, never-healthy, "
                    "halt-at=SLOT or upgrade-height=SLOT:MIN_VERSION"
                ) from exc
        return cls(**out)


class Node:
    """The validator's state. Requests read it; only the background task changes it."""

    def __init__(self, *, version: str, params: chain.ChainParams, ledger: Path, fail: FailureModes) -> None:
        self.version = version
        self.params = params
        self.ledger = ledger
        self.fail = fail
        self.identity: str | None = None  # answered by getIdentity once the ledger is verified
        self.genesis_hash: str | None = None
        self.gossip: gossip.ValidatorGossip | None = None
        self.started = False  # the ledger is verified and replay has begun
        self.start_slot = 0
        self.t0 = 0.0
        self.cap: int | None = None  # replay stops here (halt-at, or an upgrade height we may not pass)
        self.stall_slot: int | None = None  # never-healthy: the slot replay is stuck at
        self._version_info = {
            "solana-core": ".".join(map(str, chain.parse_version(version))),
            "feature-set": chain.feature_set(version),
        }

    # ---- state, computed from the clock
    def slot(self, now: float | None = None) -> int | None:
        if not self.started:
            return None
        if self.stall_slot is not None:
            return self.stall_slot
        t = time.time() if now is None else now
        replayed = self.start_slot + math.floor((t - self.t0) * self.params.replay_rate)
        ceiling = self.params.tip(t) if self.cap is None else min(self.params.tip(t), self.cap)
        return max(self.start_slot, min(replayed, ceiling))

    def status(self, now: float | None = None) -> tuple[Status, int | None]:
        """(health, slots behind the tip)."""
        t = time.time() if now is None else now
        slot = self.slot(t)
        if slot is None:
            return "unknown", None
        behind = max(0, self.params.tip(t) - slot)
        return ("behind" if behind > self.params.health_distance else "ok"), behind

    # ---- JSON-RPC methods
    def rpc_get_health(self, params: Any) -> str:
        status, behind = self.status()
        if status == "ok":
            return "ok"
        if status == "behind":
            raise RpcFault(NODE_UNHEALTHY, f"Node is behind by {behind} slots", {"numSlotsBehind": behind})
        raise RpcFault(NODE_UNHEALTHY, "Node is unhealthy", {"numSlotsBehind": None})

    def rpc_get_slot(self, params: Any) -> int:
        slot = self.slot()
        if slot is None:
            raise RpcFault(NODE_UNHEALTHY, "Node is unhealthy", {"numSlotsBehind": None})
        return slot

    def rpc_get_version(self, params: Any) -> dict[str, Any]:
        return self._version_info

    def rpc_get_identity(self, params: Any) -> dict[str, str]:
        if self.identity is None:
            raise RpcFault(NODE_UNHEALTHY, "Node is unhealthy", {"numSlotsBehind": None})
        return {"identity": self.identity}

    def rpc_get_genesis_hash(self, params: Any) -> str:
        if self.genesis_hash is None:
            raise RpcFault(NODE_UNHEALTHY, "Node is unhealthy", {"numSlotsBehind": None})
        return self.genesis_hash

    def rpc_get_cluster_nodes(self, params: Any) -> list[dict[str, Any]]:
        return self.gossip.cluster_nodes() if self.gossip is not None else []

    def app(self, *, full_api: bool = False) -> JsonRpcApp:
        methods = {
            "getHealth": self.rpc_get_health,
            "getSlot": self.rpc_get_slot,
            "getVersion": self.rpc_get_version,
            "getIdentity": self.rpc_get_identity,
            "getGenesisHash": self.rpc_get_genesis_hash,
        }
        if full_api:  # agave: getClusterNodes is in the full API only
            methods["getClusterNodes"] = self.rpc_get_cluster_nodes
        return JsonRpcApp(methods=methods, health=lambda: self.status()[0])

    # ---- lifecycle
    def begin(self, ledger_slot: int) -> None:
        """Start replaying from ``ledger_slot`` now."""
        self.start_slot, self.t0 = ledger_slot, time.time()
        halt = self.fail.halt_at
        if self.fail.upgrade_height is not None:
            height, minimum = self.fail.upgrade_height
            if chain.parse_version(self.version) < chain.parse_version(minimum):
                halt = height if halt is None else min(halt, height)
        self.cap = halt
        if self.fail.never_healthy:
            # Stuck far enough back to be `behind` from the first answer, whatever the ledger's slot.
            self.stall_slot = max(0, min(ledger_slot, self.params.tip(self.t0) - self.params.health_distance - 1))
        self.started = True

    def persistable_slot(self) -> int | None:
        """The slot to record in the ledger (a stalled node made no progress past its ledger slot)."""
        slot = self.slot()
        return None if slot is None else max(slot, self.start_slot)


def _prepare_ledger(node: Node, *, identity: str, size_mb: float, lock_file: IO[str]) -> int:
    """Blocking: lock and verify (or initialise) the ledger; then answer getIdentity. Returns the start slot."""
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise chain.LedgerCorrupt(f"ledger {node.ledger} is in use by another validator") from exc
    if not chain.has_ledger(node.ledger):
        tip = node.params.tip()
        log.info(
            "ledger %s has no %s: initialising it at the cluster tip (slot %d, %.0f MiB)",
            node.ledger,
            chain.PROGRESS_FILE,
            tip,
            size_mb,
        )
        chain.init_ledger(node.ledger, slot=tip, size_mb=size_mb)
    started = time.monotonic()
    info = chain.verify_ledger(node.ledger)
    log.info(
        "ledger verified: %s at slot %d, %d data files, %d bytes (%.2fs)",
        info.path,
        info.slot,
        info.files,
        info.size_bytes,
        time.monotonic() - started,
    )
    node.identity = identity
    return info.slot


def load_identity(identity_file: Path | None, ledger: Path) -> str:
    """The identity's public key: from ``--identity`` (refused when unreadable, never made up), else from the
    ledger's keypair (the stand-in's default), made when missing."""
    keyfile = identity_file or ledger / chain.KEYPAIR_FILE
    if identity_file is None and not keyfile.exists():
        write_keypair(keyfile, os.urandom(32))
    pubkey = read_pubkey(keyfile)
    log.info("identity %s (from %s)", pubkey, keyfile)
    return pubkey


async def _run_node(node: Node, args: argparse.Namespace, request_exit: RequestExit) -> None:
    """The background task: start up, then persist progress and watch for the replay cap."""
    ledger = node.ledger
    try:
        ledger.mkdir(parents=True, exist_ok=True)
        Path(args.accounts).mkdir(parents=True, exist_ok=True)
        if args.snapshots is not None:  # agave creates its snapshot archive directories at startup
            Path(args.snapshots).mkdir(parents=True, exist_ok=True)
            if not os.access(args.snapshots, os.W_OK | os.X_OK):
                raise OSError(f"snapshots directory {args.snapshots} is not writable")
        lock_file = open(ledger / ".lock", "w")  # noqa: SIM115 - held for the life of the process
        if args.startup_delay > 0:
            log.info("loading snapshot (startup delay %.1fs)", args.startup_delay)
            await asyncio.sleep(args.startup_delay)
        slot = await asyncio.to_thread(
            _prepare_ledger, node, identity=args.identity, size_mb=args.ledger_size_mb, lock_file=lock_file
        )
    except (RunbookError, OSError) as exc:
        log.error("refusing to start: %s", exc)
        request_exit(EXIT_LEDGER)
        return
    node.begin(slot)
    tip = node.params.tip()
    log.info(
        "replaying from slot %d toward the cluster tip %d (%d behind) at %.0f slots/s; version %s",
        slot,
        tip,
        tip - slot,
        node.params.replay_rate,
        node.version,
    )
    if node.stall_slot is not None:
        log.warning("failure mode never-healthy: replay is stalled at slot %d", node.stall_slot)
    persisted, last_persist, caught_up = slot, time.monotonic(), False
    while True:
        now = time.time()
        current = node.slot(now)
        assert current is not None
        status, behind = node.status(now)
        if status == "ok" and not caught_up:
            caught_up = True
            log.info("caught up: slot %d, %d behind the tip", current, behind)
        elif status == "behind" and caught_up:
            caught_up = False
            log.warning("fell behind: slot %d, %d behind the tip", current, behind)
        if node.cap is not None and current >= node.cap:
            chain.write_slot(ledger, current)
            if node.fail.halt_at is not None and current >= node.fail.halt_at:
                log.info("halted at slot %d (halt-at=%d): exiting cleanly", current, node.fail.halt_at)
                request_exit(0)
            else:
                assert node.fail.upgrade_height is not None
                height, minimum = node.fail.upgrade_height
                log.error(
                    "slot %d is an upgrade height requiring version >= %s; this node runs %s: "
                    "refusing to replay past it",
                    height,
                    minimum,
                    node.version,
                )
                request_exit(EXIT_UPGRADE)
            return
        if time.monotonic() - last_persist >= args.persist_interval:
            to_save = node.persistable_slot()
            if to_save is not None and to_save != persisted:
                await asyncio.to_thread(chain.write_slot, ledger, to_save)
                persisted = to_save
            last_persist = time.monotonic()
        await asyncio.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    redirect_log(args.log)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    )
    outset = time.time_ns() // 1000  # when this instance started: agave's ContactInfo outset
    try:
        chain.parse_version(args.version)
        fail = FailureModes.parse(args.fail if args.fail is not None else os.environ.get("STANDIN_FAIL"))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if fail.crash_on_start:  # before anything is bound or written
        log.error("failure mode crash-on-start: agave-validator %s exiting with status %d", args.version, EXIT_CRASH)
        return EXIT_CRASH
    try:
        args.identity = load_identity(args.identity_file, args.ledger)
        sockets = bind_sockets(args)
    except GossipBindError as exc:
        log.error("panicked: %s", exc)  # agave: a panic, then its panic hook's exit(1)
        return EXIT_BIND
    except (ConfigError, OSError) as exc:
        log.error("refusing to start: %s", exc)
        return EXIT_STARTUP
    try:
        genesis = fetch_genesis(args.entrypoint) if args.entrypoint else None
        params = chain.ChainParams.from_dict(genesis) if genesis else chain.ChainParams.from_env()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    genesis_hash = str(genesis["genesis_hash"]) if genesis and genesis.get("genesis_hash") else None
    if args.expected_genesis_hash and genesis_hash and genesis_hash != args.expected_genesis_hash:
        # agave genesis-utils check_genesis_hash
        log.error("Genesis hash mismatch: expected %s but downloaded genesis hash is %s", args.expected_genesis_hash,
                  genesis_hash)
        return EXIT_STARTUP
    node = Node(version=args.version, params=params, ledger=args.ledger, fail=fail)
    node.genesis_hash = genesis_hash or args.expected_genesis_hash or MAINNET_GENESIS_HASH  # no entrypoint: the default
    me = contact_info(args, sockets, genesis, outset)
    interval = args.gossip_interval or float((genesis or {}).get("gossip_interval") or gossip.DEFAULT_INTERVAL)
    timeout = float((genesis or {}).get("gossip_timeout") or gossip.DEFAULT_TIMEOUT)
    log.info("agave-validator %s starting: identity %s, rpc %s:%d%s, gossip %s, ledger %s, accounts %s, tip %d "
             "(slot time %gs, replay x%g, health distance %d)", args.version, args.identity, args.bind, args.rpc_port,
             " (private)" if args.private_rpc else "",
             f"{args.bind_address}:{sockets.gossip_port}" if sockets.gossip_port else "none", args.ledger,
             args.accounts, params.tip(), params.slot_time, params.replay_speed, params.health_distance)
    if args.dynamic_port_range:
        log.info("dynamic ports: %d UDP sockets in %d-%d", len(sockets.dynamic or []), *args.dynamic_port_range)

    async def background(request_exit: RequestExit) -> None:
        task = asyncio.create_task(run_gossip(node, sockets, me, args.entrypoint, interval, timeout))
        try:
            await _run_node(node, args, request_exit)
            await task  # gossip goes on until the server stops
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def on_stop() -> None:
        slot = node.persistable_slot()
        if slot is not None:
            await asyncio.to_thread(chain.write_slot, node.ledger, slot)
            log.info("shutdown: progress persisted at slot %d", slot)

    code = run_server(
        node.app(full_api=args.full_rpc_api),
        host=args.bind,
        port=args.rpc_port,
        name="validator",
        background=background,
        on_stop=on_stop,
    )
    log.info("exiting with status %d", code)
    return code


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

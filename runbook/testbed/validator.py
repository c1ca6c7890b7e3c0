"""The stand-in agave validator: ``python -m runbook.testbed.validator --version 2.1.0 --rpc-port 18899
--ledger DIR --accounts DIR [--bind 127.0.0.1] [--identity-file PATH] [--fail MODE]``.

It verifies its ledger, reads its starting slot from it and replays toward the cluster tip (see
:mod:`runbook.testbed.chain`) at ``replay_speed`` times the tip rate, then follows the tip. It answers
``GET /health`` (always HTTP 200, body ``ok``/``behind``/``unknown``, as agave does) and JSON-RPC
``getHealth``, ``getSlot``, ``getVersion``, ``getIdentity``. It persists progress every
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

import httpx

from runbook.errors import ConfigError, RunbookError
from runbook.testbed import chain
from runbook.testbed.cluster import JsonRpcApp, RequestExit, RpcFault, run_server
from runbook.testbed.keypair import read_pubkey, write_keypair

log = logging.getLogger("validator")

EXIT_CRASH = 1  # crash-on-start
EXIT_LEDGER = 3  # the ledger failed verification or cannot be used
EXIT_UPGRADE = 4  # refused to replay past an upgrade height with an old version
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
        self.identity: str | None = None
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

    def app(self) -> JsonRpcApp:
        return JsonRpcApp(
            methods={
                "getHealth": self.rpc_get_health,
                "getSlot": self.rpc_get_slot,
                "getVersion": self.rpc_get_version,
                "getIdentity": self.rpc_get_identity,
            },
            health=lambda: self.status()[0],
        )

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


def _prepare_ledger(node: Node, *, identity_file: Path | None, size_mb: float, lock_file: IO[str]) -> int:
    """Blocking: lock, verify (or initialise) the ledger and load the identity. Returns the start slot."""
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
    keyfile = identity_file or node.ledger / chain.KEYPAIR_FILE
    if identity_file is None and not keyfile.exists():
        write_keypair(keyfile, os.urandom(32))
    node.identity = read_pubkey(keyfile)
    log.info("identity %s (from %s)", node.identity, keyfile)
    return info.slot


async def _run_node(node: Node, args: argparse.Namespace, request_exit: RequestExit) -> None:
    """The background task: start up, then persist progress and watch for the replay cap."""
    ledger = node.ledger
    try:
        ledger.mkdir(parents=True, exist_ok=True)
        Path(args.accounts).mkdir(parents=True, exist_ok=True)
        lock_file = open(ledger / ".lock", "w")  # noqa: SIM115 - held for the life of the process
        if args.startup_delay > 0:
            log.info("loading snapshot (startup delay %.1fs)", args.startup_delay)
            await asyncio.sleep(args.startup_delay)
        slot = await asyncio.to_thread(
            _prepare_ledger, node, identity_file=args.identity_file, size_mb=args.ledger_size_mb, lock_file=lock_file
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


def join_cluster(entrypoints: list[str], *, timeout: float = 60.0) -> chain.ChainParams:
    """The chain parameters of the cluster behind ``entrypoints`` (the first that answers), retried until
    ``timeout``: a validator started before its cluster's entrypoint waits for it, as agave does."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "getGenesisParams"}
    last = "no answer"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ep in entrypoints:
            url = ep if "://" in ep else f"http://{ep}"
            try:
                r = httpx.post(url, json=body, timeout=2.0)
                r.raise_for_status()
                return chain.ChainParams.from_dict(r.json()["result"])
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                last = f"{ep}: {exc}"
        log.info("waiting for the cluster entrypoint (%s)", last)
        time.sleep(1.0)
    raise ConfigError(f"no entrypoint answered within {timeout:.0f}s: {last}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="runbook.testbed.validator", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", required=True, help="release this binary stands in for, e.g. 2.1.0")
    p.add_argument("--rpc-port", type=int, required=True)
    p.add_argument("--bind", "--rpc-bind-address", dest="bind", default="127.0.0.1")
    p.add_argument("--ledger", type=Path, required=True)
    p.add_argument("--accounts", type=Path, required=True)
    p.add_argument("--identity-file", "--identity", dest="identity_file", type=Path, default=None)
    p.add_argument("--entrypoint", action="append", default=[], metavar="HOST:PORT",
                   help="the cluster to join; its genesis (the chain parameters) is read from it")
    p.add_argument("--fail", default=None, help="failure mode (default: $STANDIN_FAIL)")
    p.add_argument(
        "--ledger-size-mb",
        type=float,
        default=float(os.environ.get("RUNBOOK_LEDGER_SIZE_MB", "8")),
        help="data size when initialising a missing ledger (default: $RUNBOOK_LEDGER_SIZE_MB or 8)",
    )
    p.add_argument(
        "--startup-delay",
        type=float,
        default=0.0,
        help="seconds to report `unknown` before verifying the ledger, as agave loading a snapshot",
    )
    p.add_argument("--persist-interval", type=float, default=1.0, help="seconds between progress writes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    )
    args = _parse_args(argv)
    try:
        chain.parse_version(args.version)
        fail = FailureModes.parse(args.fail if args.fail is not None else os.environ.get("STANDIN_FAIL"))
        params = join_cluster(args.entrypoint) if args.entrypoint else chain.ChainParams.from_env()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if fail.crash_on_start:
        log.error("failure mode crash-on-start: agave-validator %s exiting with status %d", args.version, EXIT_CRASH)
        return EXIT_CRASH
    node = Node(version=args.version, params=params, ledger=args.ledger, fail=fail)
    log.info(
        "agave-validator %s starting: rpc %s:%d, ledger %s, accounts %s, tip %d (slot time %gs, "
        "replay x%g, health distance %d)",
        args.version,
        args.bind,
        args.rpc_port,
        args.ledger,
        args.accounts,
        params.tip(),
        params.slot_time,
        params.replay_speed,
        params.health_distance,
    )

    async def on_stop() -> None:
        slot = node.persistable_slot()
        if slot is not None:
            await asyncio.to_thread(chain.write_slot, node.ledger, slot)
            log.info("shutdown: progress persisted at slot %d", slot)

    code = run_server(
        node.app(),
        host=args.bind,
        port=args.rpc_port,
        name="validator",
        background=lambda request_exit: _run_node(node, args, request_exit),
        on_stop=on_stop,
    )
    log.info("exiting with status %d", code)
    return code


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

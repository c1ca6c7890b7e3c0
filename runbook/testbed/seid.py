"""The stand-in Sei node: ``python -m runbook.testbed.seid [--binary-version V] [start] --home DIR --rpc ADDR:PORT
[--version V] [--halt-height H] [--upgrade-height H --upgrade-name NAME] [--gov-plan-file PATH] [--validator]
[--snapshot-s3 URL/BUCKET --target-height N] [--peers A,B] [--init-height N|tip|tip-K]
[--snapshot-upload URL/BUCKET --snapshot-interval N] [--fail MODE]``, ``... seid status --node URL`` and
``... seid version``.

The binary knows its release, as an image's does: ``--binary-version`` before the subcommand (a testbed image is
``python -m runbook.testbed.seid --binary-version v6.3.0`` and the manifest's args follow); ``start --version``
says the same (both, differing: an error).

The chain is :class:`~runbook.testbed.seid_state.SeiChain` (heights from wall-clock time and a shared genesis).
A home without state gets one first (:func:`~runbook.testbed.seid_net.bootstrap`): the newest S3 snapshot
``<= --target-height`` (``--snapshot-s3``), else state sync from the first peer whose RPC answers (``--peers``:
the newest multiple of ``--snapshot-interval`` at or below the peer's height), else ``--init-height``; none of
them is an error. With no peer answering it fails at once as CometBFT does (``failed to start state sync``, exit 1).

Then it block-syncs toward the tip at ``sync_speed`` times the tip's rate and follows it; ``catching_up`` is
true while more than :data:`CATCH_UP_DISTANCE` blocks behind. Its RPC (Tendermint's shapes) starts after the
bootstrap: ``GET /status``, ``GET /health`` (``{}``), ``GET /abci_info``, the upgrade module's
``GET /cosmos/upgrade/v1beta1/applied_plan/NAME`` (``{"height": "H"}``, ``"0"`` when not applied) and
``GET /cosmos/upgrade/v1beta1/current_plan`` (``{"plan": null}`` or the plan, ``null`` once this node applied
it), and the same as JSON-RPC ``POST /``. The state file is written as heights commit and on shutdown (SIGTERM:
exit 0).

The upgrade plan is chain state (:mod:`runbook.testbed.seid_net`): ``--upgrade-height/--upgrade-name`` fix it;
else ``--gov-plan-file`` (re-read every second), else the first answering ``--peers`` node's current_plan
(polled every second, once before the first block); a learned plan is kept in the state (snapshots carry it).
Stops are recomputed when it changes; a plan that is due (the node at H-1 or past) no longer changes.
``--validator`` (the network's reference node): follows the tip forever whatever the plan, writes no marks.
``--snapshot-upload``: the state at every committed multiple of ``--snapshot-interval`` goes to S3 from a
background thread; the newest 10 are kept.

Stops, earliest first (a halt at the same height wins, as commit comes before the next BeginBlock):
- ``--halt-height H``: enforced at commit: commits H (or, started at or past H, the next block), exits 0
  (``--exit-codes sdk``: 130, as the SDK's start command exits after its halt's SIGINT; SIGTERM then gives 143);
- the upgrade plan, old binary: commits H-1; when block H arrives
  - while caught up (consensus): Tendermint recovers the panic; the node logs ``ERR CONSENSUS FAILURE!!!
    err="UPGRADE \\"NAME\\" NEEDED at height: H: "``, writes ``data/upgrade-info.json``, keeps its state at H-1
    and keeps answering: /status at H, ``catching_up`` false, never advancing (SIGTERM exits as usual);
  - while block-syncing, or on start with state at H-1 and block H there (the replay): panics with
    ``UPGRADE "NAME" NEEDED at height: H: `` (exit 2), upgrade-info.json written too;
  - on state past H-1 (the replay of a later block): ``upgrade handler is missing ...`` (exit 2);
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbook.errors import ConfigError, RunbookError
from runbook.testbed.chain import parse_version
from runbook.testbed.cluster import RequestExit, run_server
from runbook.testbed.seid_net import (
    PlanWatcher,
    SnapshotUploader,
    TendermintApp,
    applied_main,
    bootstrap,
    peer_list,
    status_main,
)
from runbook.testbed.seid_state import NodeState, SeiChain, UpgradePlan, write_state, write_upgrade_info

log = logging.getLogger("seid")

EXIT_ERROR = 1  # cobra: "Error: ..." and exit 1
EXIT_PANIC = 2  # a Go panic
EXIT_SDK_HALT = 130  # --exit-codes sdk: the SDK's halt() SIGINTs itself, WaitForQuitSignals returns 128+SIGINT
EXIT_SDK_TERM = 143  # --exit-codes sdk: 128+SIGTERM
CATCH_UP_DISTANCE = 2


@dataclass(frozen=True)
class Stop:
    height: int  # the last height committed
    kind: str  # "halt" (exit 0 once committed), "panic" (once the next block is there) or "upgrade" (the old
    # binary at H-1: once block H is there, stuck in consensus or a panic in block sync and replay)
    message: str


class SeiNode:
    """The node's state after bootstrap. Requests read it; the background tasks change it (under a lock)."""

    def __init__(self, *, home: Path, version: str, chain: SeiChain, state: NodeState, halt_height: int | None,
                 plan: UpgradePlan | None, panic_at: int | None, validator: bool = False,
                 panic_at_upgrade: bool = False) -> None:
        self.home, self.version, self.chain, self.state = home, version, chain, state
        self.panic_at_upgrade = panic_at_upgrade  # a build whose upgrade handler panics (at the plan's height)
        self.validator, self.static = validator, plan is not None  # a plan given by flags stays as is
        self.plan = plan if plan is not None else (UpgradePlan.from_dict(state.plan) if state.plan else None)
        self.halted = False
        self.stuck: UpgradePlan | None = None  # the plan an old binary met while caught up: RPC up, no progress
        self.start, self.t0 = state.height, time.time()
        self.committed = state.height
        self.uploader: SnapshotUploader | None = None
        self._lock = threading.Lock()
        self._ignored: set[tuple[UpgradePlan | None, str]] = set()
        self._fixed = []
        if halt_height is not None:
            self._fixed.append(Stop(max(halt_height, self.start + 1), "halt", "halting node per configuration"))
        if panic_at is not None and panic_at > self.start:
            self._fixed.append(Stop(panic_at - 1, "panic", f"failure mode panic-at={panic_at}: panicked processing "
                                                           f"block {panic_at}"))
        self.stop = self._stops(self.start)

    def _stops(self, base: int) -> Stop | None:
        """The earliest stop for a node whose state is at ``base``."""
        stops, plan = list(self._fixed), self.plan
        if plan is not None and not self.validator:
            handler = plan.has_handler(self.version)
            if handler and base + 1 < plan.height:
                stops.append(Stop(base, "panic", plan.early_msg()))
            elif handler and self.panic_at_upgrade and base < plan.height:
                stops.append(Stop(plan.height - 1, "panic", f'failure mode panic-at-upgrade: upgrade "{plan.name}" '
                                                            f"handler panicked processing block {plan.height}"))
            elif not handler and base < plan.height:
                stops.append(Stop(plan.height - 1, "upgrade", plan.needed_msg()))
            elif not handler:
                stops.append(Stop(base, "panic", plan.missing_msg()))
        return min(stops, key=lambda s: (s.height, s.kind != "halt")) if stops else None

    def learn_plan(self, plan: UpgradePlan | None, source: str, *, source_height: int | None = None) -> None:
        """The network's plan as ``source`` (a peer, the governance file) sees it; ``source_height``: the peer's
        height when it has no plan (at or past ours it applied it: no cancellation)."""
        with self._lock:
            current = self.plan
            if self.static or plan == current:
                return
            if current is not None and current.height - 1 <= self.committed < current.height:
                return  # due: the next block executes it (past it, it is done: a new plan may come)
            if plan is None:
                assert current is not None
                if source_height is not None and source_height >= current.height:
                    return
                log.info('upgrade plan "%s" at height %d cancelled: %s has none', current.name, current.height,
                         source)
            elif plan.height <= self.committed:
                if (plan, source) not in self._ignored:
                    self._ignored.add((plan, source))
                    log.warning('upgrade plan "%s" at height %d from %s ignored: this node is at height %d',
                                plan.name, plan.height, source, self.committed)
                return
            else:
                log.info('upgrade plan "%s" at height %d learned from %s', plan.name, plan.height, source)
            self.plan = plan
            self.state.plan = plan.to_dict() if plan else None
            self.stop = self._stops(self.committed)
            write_state(self.home, self.state)

    def height(self, now: float | None = None) -> int:
        t = time.time() if now is None else now
        synced = self.start + math.floor((t - self.t0) * self.chain.sync_rate)
        ceiling = self.chain.tip(t) if self.stop is None else min(self.chain.tip(t), self.stop.height)
        return max(self.start, min(synced, ceiling))

    def commit(self, now: float | None = None) -> int:
        """Record the heights committed since the last call (and the handler's mark), on disk."""
        with self._lock:
            h = self.height(now)
            if h == self.committed:
                return h
            first = self.committed + 1
            self.state.record(self.version, first, h)
            plan = self.plan
            if plan and not self.validator and first <= plan.height <= h and plan.name not in self.state.upgrades:
                log.info('applying upgrade "%s" at height: %d', plan.name, plan.height)
                self.state.upgrades[plan.name] = {"height": plan.height, "version": self.version,
                                                  "applied_at": round(time.time(), 3)}
            self.state.height = self.committed = h
            write_state(self.home, self.state)
            if self.uploader is not None:
                self.uploader.offer(self.state, first, h)
            return h

    def get_stuck(self, plan: UpgradePlan) -> None:
        """Block H arrived in consensus without the handler: x/upgrade panics (upgrade-info.json written);
        Tendermint's consensus routine recovers it and the node stops advancing, its RPC still up."""
        with self._lock:
            self.stuck = plan
        stamp = time.strftime("%I:%M%p")
        print(f"{stamp} ERR {plan.needed_msg()} module=x/upgrade\n"
              f"{stamp} ERR CONSENSUS FAILURE!!! err={json.dumps(plan.needed_msg())} module=consensus",
              file=sys.stderr, flush=True)

    # ---- RPC
    def status(self) -> dict[str, Any]:
        now = time.time()
        tip = self.chain.tip(now)
        h = self.stuck.height if self.stuck else self.height(now)  # block H is stored before it is applied
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.chain.block_time_at(h)))
        return {
            "node_info": {"network": self.chain.chain_id, "version": self.version, "moniker": self.home.name},
            "sync_info": {"latest_block_height": str(h), "latest_block_time": when,
                          "earliest_block_height": str(self.start),
                          "catching_up": not self.stuck and tip - h > CATCH_UP_DISTANCE},
        }

    def abci_info(self) -> dict[str, Any]:
        h = self.committed if self.stuck else self.height()
        return {"response": {"data": "sei", "version": self.version, "last_block_height": str(h)}}

    def applied_plan(self, name: str) -> dict[str, str]:
        mark = self.state.upgrades.get(name)
        return {"height": str(mark["height"] if mark else 0)}

    def current_plan(self) -> dict[str, Any]:
        """x/upgrade's current_plan: none once applied here, and none on the validator (the network) once past its
        height (the network applied it: x/upgrade clears the plan)."""
        plan = self.plan
        if plan is None or (not self.validator and plan.name in self.state.upgrades) or \
                (self.validator and self.committed >= plan.height):
            return {"plan": None}
        return {"plan": plan.rest()}


# --------------------------------------------------------------------------- running


async def _follow(node: SeiNode, request_exit: RequestExit, interval: float, halt_code: int) -> None:
    caught_up, first = False, True
    while True:
        now = time.time()
        h = await asyncio.to_thread(node.commit, now)
        behind = node.chain.tip(now) - h
        if not caught_up and behind <= CATCH_UP_DISTANCE:  # blocksync hands over to consensus, for good
            caught_up = True
            log.info("caught up: height %d, %d behind the tip", h, behind)
        stop = node.stop
        if stop is not None and h >= stop.height:
            if stop.kind == "halt":
                log.info("%s height=%d", stop.message, stop.height)
                node.halted = True
                request_exit(halt_code)
                return
            if node.chain.tip() > stop.height:  # the next block is there: BeginBlock runs and panics
                plan = node.plan
                if stop.kind == "upgrade" and plan is not None:
                    path = write_upgrade_info(node.home, plan)  # x/upgrade, before its panic
                    log.info("wrote %s; state stays at height %d", path, stop.height)
                    replay = first and node.start >= stop.height  # block H was there when it started
                    if caught_up and not replay:
                        node.get_stuck(plan)  # in consensus: recovered, the node stays up at H
                        return
                print(f"panic: {stop.message}\n\ngoroutine 1 [running]:", file=sys.stderr, flush=True)
                request_exit(EXIT_PANIC)
                return
        first = False
        await asyncio.sleep(interval)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seid")
    p.add_argument("--binary-version", help="the release this binary is (an image's), e.g. v6.3.0")
    p.add_argument("--fail", dest="binary_fail", choices=("panic-at-upgrade",),
                   help="a failure built into this binary (an image's): panic-at-upgrade, its upgrade handler panics")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start")
    s.add_argument("--home", type=Path, required=True)
    s.add_argument("--version", help="the release this binary is (as --binary-version; both must agree)")
    s.add_argument("--rpc", "--rpc.laddr", dest="rpc", default="127.0.0.1:26657", help="ADDR:PORT (or tcp://...)")
    s.add_argument("--halt-height", type=int)
    s.add_argument("--upgrade-height", type=int, help="a fixed plan (with --upgrade-name): never learned")
    s.add_argument("--upgrade-name")
    s.add_argument("--upgrade-min-version", help="the first release with the handler (default: the name)")
    s.add_argument("--gov-plan-file", type=Path, help='the plan as JSON {"name", "height"} ({} or absent: none), '
                                                      "re-read every second")
    s.add_argument("--validator", action="store_true",
                   help="the network's reference node: follows the tip whatever the plan, writes no marks")
    s.add_argument("--snapshot-s3", help="http://HOST:PORT/BUCKET")
    s.add_argument("--target-height", type=int)
    s.add_argument("--snapshot-upload", help="http://HOST:PORT/BUCKET: upload a snapshot every --snapshot-interval")
    s.add_argument("--peers", help="peers' RPC addresses (state sync, the plan), [ID@]HOST:PORT[,...]")
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
    sub.add_parser("version")
    q = sub.add_parser("query").add_subparsers(dest="module", required=True).add_parser("upgrade")
    qa = q.add_subparsers(dest="what", required=True).add_parser("applied", help="the height a plan was applied at")
    qa.add_argument("name")
    qa.add_argument("--node", default="tcp://127.0.0.1:26657")
    qa.add_argument("--output", "-o", choices=("json", "text"), default="text")
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


def _split_argv(argv: list[str]) -> list[str]:
    """``start`` is the default subcommand; global options (``--binary-version V``) come before it."""
    i = 0
    while i < len(argv) and argv[i].startswith(("--binary-version", "--fail")):
        i += 1 if "=" in argv[i] else 2
    if i >= len(argv) or argv[i] not in ("start", "status", "version", "query", "-h", "--help"):
        argv.insert(min(i, len(argv)), "start")
    return argv


def binary_version(args: argparse.Namespace) -> str:
    """The release this binary is: ``--binary-version`` (the image's), else ``start --version``."""
    given, flag = args.binary_version, getattr(args, "version", None)
    if given and flag and given != flag:
        raise ConfigError(f"start --version {flag} contradicts this binary's version {given} (--binary-version)")
    version = given or flag
    if not version:
        raise ConfigError("this binary's version is unknown: give --binary-version (before the subcommand) "
                          "or start --version")
    parse_version(version)
    return str(version)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_split_argv(list(sys.argv[1:] if argv is None else argv)))
    if args.command == "status":
        return status_main(args.node)
    if args.command == "query":
        return applied_main(args.node, args.name, args.output)
    try:
        version = binary_version(args)
    except (RunbookError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    if args.command == "version":
        print(version.removeprefix("v"))  # `seid version` prints the bare release
        return 0
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the plan's polls: one request a second
    try:
        crash, panic_at = _fail_modes(args.fail)
        chain = SeiChain.from_env(genesis_time=args.genesis_time, block_time=args.block_time,
                                  sync_speed=args.sync_speed)
        plan = None
        if args.upgrade_height is not None or args.upgrade_name:
            if args.upgrade_height is None or not args.upgrade_name:
                raise ConfigError("--upgrade-height and --upgrade-name go together")
            if args.gov_plan_file:
                raise ConfigError("--gov-plan-file and --upgrade-height/--upgrade-name both give the plan")
            plan = UpgradePlan(args.upgrade_name, args.upgrade_height, args.upgrade_min_version)
        host, _, port = args.rpc.removeprefix("tcp://").rpartition(":")
        uploader = SnapshotUploader(args.snapshot_upload, args.snapshot_interval) if args.snapshot_upload else None
        if crash:
            print("Error: failure mode crash-on-start", file=sys.stderr)
            return EXIT_ERROR
        state = bootstrap(args, chain)
    except (RunbookError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    node = SeiNode(home=args.home, version=version, chain=chain, state=state, halt_height=args.halt_height,
                   plan=plan, panic_at=panic_at, validator=args.validator,
                   panic_at_upgrade=args.binary_fail == "panic-at-upgrade")
    watcher = None if plan else PlanWatcher(node, gov_file=args.gov_plan_file, peers=peer_list(args.peers))
    tip = chain.tip()
    log.info("seid %s starting%s: home %s, height %d, tip %d (block time %gs, sync x%g), rpc %s%s%s", version,
             " as a validator" if args.validator else "", args.home, state.height, tip, chain.block_time,
             chain.sync_speed, args.rpc, f", halt-height {args.halt_height}" if args.halt_height is not None else "",
             f", upgrade {node.plan.name} at {node.plan.height}" if node.plan else "")

    async def background(request_exit: RequestExit) -> None:
        halt_code = EXIT_SDK_HALT if sdk_codes else 0
        if watcher is None:
            await _follow(node, request_exit, args.commit_interval, halt_code)
            return
        async with watcher.client() as client:
            await watcher.poll_once(client)  # the plan before the first block
            polling = asyncio.create_task(watcher.run(client))
            try:
                await _follow(node, request_exit, args.commit_interval, halt_code)
            finally:
                polling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await polling

    async def on_stop() -> None:
        h = await asyncio.to_thread(node.commit)
        log.info("shutdown: state persisted at height %d", h)
        if uploader is not None:
            await asyncio.to_thread(uploader.stop)

    sdk_codes = args.exit_codes == "sdk"
    if uploader is not None:
        node.uploader = uploader.start()
        log.info("uploading a snapshot every %d blocks to %s/%s", uploader.interval, uploader.endpoint,
                 uploader.bucket)
    code = run_server(TendermintApp(node), host=host or "127.0.0.1", port=int(port), name="seid",
                      background=background, on_stop=on_stop)
    if sdk_codes and code == 0 and not node.halted:  # stopped by SIGTERM/SIGINT
        code = EXIT_SDK_TERM
    log.info("exiting with status %d", code)
    return code


def image_argv(version: str) -> list[str]:
    """A testbed image's entrypoint for release ``version``: the manifest's args (``start --home ...``) follow."""
    return [sys.executable, "-m", "runbook.testbed.seid", "--binary-version", version]


def seid_argv(*, home: Path | str, version: str, rpc: str, as_image: bool = False, **flags: Any) -> list[str]:
    """``[python, -m, runbook.testbed.seid, start, --version V, ...]``, or with ``as_image`` the image's form
    ``[..., --binary-version V, start, ...]``; ``flags`` are the options by their Python names (``halt_height=99``,
    ``peers="a:1,b:2"``, ``validator=True``); None and False values are left out."""
    if as_image:
        argv = [*image_argv(version), "start", "--home", str(home), "--rpc", rpc]
    else:
        argv = [sys.executable, "-m", "runbook.testbed.seid", "start", "--home", str(home), "--version", version,
                "--rpc", rpc]
    for name, value in flags.items():
        if value is True:
            argv.append(f"--{name.replace('_', '-')}")
        elif value is not None and value is not False:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

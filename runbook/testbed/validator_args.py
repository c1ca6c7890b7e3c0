"""The stand-in validator's command line: agave-validator's flags as an RPC node on biscayne runs it (same
names, so a production-shaped Deployment's args reach the stand-in unchanged), plus the stand-in's own.

Checked at parse time (exit 2, with agave's wording where agave has one): ``--dynamic-port-range`` (well
formed, at least ``MINIMUM_VALIDATOR_PORT_RANGE_WIDTH`` wide, not containing ``--gossip-port`` or
``--rpc-port``), ``--known-validator`` and ``--expected-genesis-hash`` (base58, 32 bytes), ``--only-known-rpc``
(needs ``--known-validator``), ``--limit-ledger-size`` (at least agave's minimum), ``--wal-recovery-mode``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import base58

from runbook.errors import ConfigError
from runbook.testbed import chain, gossip
from runbook.testbed import validator_net as net

# agave ledger/src/blockstore_cleanup_service.rs
DEFAULT_MAX_LEDGER_SHREDS = 200_000_000  # --limit-ledger-size without a value
DEFAULT_MIN_MAX_LEDGER_SHREDS = 50_000_000  # below this agave-validator refuses to start
WAL_RECOVERY_MODES = ("tolerate_corrupted_tail_records", "absolute_consistency", "point_in_time",
                      "skip_any_corrupted_record")


def _pubkey(text: str) -> str:
    try:
        ok = len(base58.b58decode(text)) == 32
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"Unable to parse as a base58 32-byte public key or hash: {text!r}")
    return text


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}")
    return int(text)


def _port_range(text: str) -> str:
    try:
        net.parse_port_range(text, min_width=0)  # the form here; the width once --version is known
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runbook.testbed.validator",
                                description="The stand-in agave validator (agave-validator's flags, honoured "
                                            "where a stand-in can).")
    # ---- agave-validator's flags
    p.add_argument("--identity", "--identity-file", dest="identity_file", type=Path, default=None, metavar="PATH",
                   help="the validator identity keypair (default, stand-in only: <ledger>/validator-keypair.json, "
                        "made if missing); refused when it cannot be read")
    p.add_argument("--entrypoint", action="append", default=[], metavar="HOST:PORT",
                   help="the cluster to join: its genesis (the chain parameters) is read from its RPC at HOST:PORT "
                        "(TCP) and gossip goes to HOST:PORT (UDP); repeatable")
    p.add_argument("--known-validator", dest="known_validators", action="append", default=[], type=_pubkey,
                   metavar="PUBKEY", help="repeatable; recorded (the stand-in downloads no snapshot)")
    p.add_argument("--only-known-rpc", action="store_true", help="needs --known-validator; recorded")
    p.add_argument("--expected-genesis-hash", type=_pubkey, default=None, metavar="HASH",
                   help="refuse to start when the entrypoint's genesis hash differs")
    p.add_argument("--bind-address", default="0.0.0.0", metavar="ADDR",
                   help="address of the gossip socket and the dynamic ports (agave's default 0.0.0.0)")
    p.add_argument("--gossip-port", type=_port, default=None, metavar="PORT",
                   help="gossip UDP port and TCP listener (default: the first free port of --dynamic-port-range, "
                        "else any free port)")
    p.add_argument("--dynamic-port-range", type=_port_range, default=None, metavar="LO-HI",
                   help="at least agave's minimum width (17 ports in 2.x, 25 from 3.0); the stand-in binds one "
                        "port fewer than that of UDP sockets from it, as agave its TVU/TPU/repair sockets")
    p.add_argument("--rpc-port", type=_port, required=True)
    p.add_argument("--rpc-bind-address", "--bind", dest="bind", default="127.0.0.1", metavar="ADDR")
    p.add_argument("--private-rpc", action="store_true", help="do not publish the RPC port in gossip")
    p.add_argument("--full-rpc-api", action="store_true", help="also answer getClusterNodes (the full API)")
    p.add_argument("--no-voting", action="store_true", help="recorded (the stand-in never votes)")
    p.add_argument("--ledger", type=Path, required=True)
    p.add_argument("--accounts", type=Path, required=True)
    p.add_argument("--snapshots", type=Path, default=None, metavar="DIR",
                   help="snapshot archives directory (default: the ledger); created and checked writable")
    p.add_argument("--limit-ledger-size", type=int, nargs="?", const=DEFAULT_MAX_LEDGER_SHREDS, default=None,
                   metavar="SHREDS")
    p.add_argument("--wal-recovery-mode", choices=WAL_RECOVERY_MODES, default=None)
    p.add_argument("--log", default=None, metavar="PATH|-",
                   help="append the log to PATH (stderr is redirected there, as agave does); - for stderr "
                        "(the stand-in's default)")
    # ---- the stand-in's own
    p.add_argument("--version", required=True, help="release this binary stands in for, e.g. 2.1.0")
    p.add_argument("--fail", default=None, help="failure mode (default: $STANDIN_FAIL)")
    p.add_argument("--ledger-size-mb", type=float, default=float(os.environ.get("RUNBOOK_LEDGER_SIZE_MB", "8")),
                   help="data size when initialising a missing ledger (default: $RUNBOOK_LEDGER_SIZE_MB or 8)")
    p.add_argument("--startup-delay", type=float, default=0.0,
                   help="seconds to report `unknown` before verifying the ledger, as agave loading a snapshot")
    p.add_argument("--persist-interval", type=float, default=1.0, help="seconds between progress writes")
    p.add_argument("--gossip-interval", type=float, default=None, metavar="SECONDS",
                   help="seconds between gossip pushes (default: what the entrypoint's cluster says, else "
                        f"{gossip.DEFAULT_INTERVAL})")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.only_known_rpc and not args.known_validators:
        p.error("--only-known-rpc: the following required arguments were not provided: --known-validator <VALIDATOR>")
    if args.gossip_port is not None and args.gossip_port == args.rpc_port:
        p.error(f"--gossip-port and --rpc-port are both {args.rpc_port}: the gossip TCP listener and the RPC "
                "server cannot share a port")
    if args.dynamic_port_range is not None:
        try:
            version = chain.parse_version(args.version)
        except ConfigError as exc:
            p.error(str(exc))
        try:
            lo, hi = args.dynamic_port_range = net.parse_port_range(
                args.dynamic_port_range, min_width=net.minimum_port_range_width(version))
        except ValueError as exc:
            p.error(f"argument --dynamic-port-range: {exc}")
        for flag, port in (("--gossip-port", args.gossip_port), ("--rpc-port", args.rpc_port)):
            if port is not None and lo <= port < hi:
                p.error(f"--dynamic-port-range {lo}-{hi} contains {flag} {port}: the validator's dynamic sockets "
                        "would take it")
    if args.limit_ledger_size is not None and args.limit_ledger_size < DEFAULT_MIN_MAX_LEDGER_SHREDS:
        p.error("The provided --limit-ledger-size value was too small, the minimum value is "
                f"{DEFAULT_MIN_MAX_LEDGER_SHREDS}")
    if args.gossip_interval is not None and not args.gossip_interval > 0:
        p.error(f"--gossip-interval must be > 0 seconds, got {args.gossip_interval}")
    return args

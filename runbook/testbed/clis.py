"""The small CLIs the validator image ships, mirroring what the runbook execs on biscayne::

    python -m runbook.testbed.clis [--cli-version X] solana [-u URL] slot         # like `solana slot`
    python -m runbook.testbed.clis [--cli-version X] solana --version
    python -m runbook.testbed.clis [--cli-version X] agave-validator --version

The version is that of the image the CLI lives in: ``--cli-version`` (before the program name), else the
environment variable ``RUNBOOK_IMAGE_VERSION``. ``-u`` takes a URL or the monikers ``l``/``localhost``
(``http://127.0.0.1:8899``, the solana CLI's default).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from runbook.adapters.rpc import RpcClient
from runbook.errors import RunbookError
from runbook.testbed import chain

MONIKERS = {
    "l": "http://127.0.0.1:8899",
    "localhost": "http://127.0.0.1:8899",
    "m": "https://api.mainnet-beta.solana.com",
    "mainnet-beta": "https://api.mainnet-beta.solana.com",
}
VERSION_ENV = "RUNBOOK_IMAGE_VERSION"


def _version(cli_version: str | None) -> str:
    version = cli_version or os.environ.get(VERSION_ENV)
    if not version:
        raise RunbookError(f"no version: pass --cli-version X before the program name or set {VERSION_ENV}")
    chain.parse_version(version)
    return version


def solana(argv: Sequence[str], cli_version: str | None) -> int:
    p = argparse.ArgumentParser(prog="solana", description="stand-in solana CLI (slot, --version)")
    p.add_argument("-u", "--url", default="l", help="RPC URL or moniker (default: localhost)")
    p.add_argument("--commitment", default=None)
    p.add_argument("-V", "--version", action="store_true")
    p.add_argument("command", nargs="?", choices=["slot"])
    args = p.parse_args(argv)
    if args.version:
        print(chain.version_line("solana-cli", _version(cli_version)))
        return 0
    if args.command is None:
        p.error("a subcommand is required (slot)")
    url = MONIKERS.get(args.url, args.url)
    with RpcClient(url=url, timeout=10.0) as rpc:
        print(rpc.get_slot(commitment=args.commitment))
    return 0


def agave_validator(argv: Sequence[str], cli_version: str | None) -> int:
    p = argparse.ArgumentParser(prog="agave-validator", description="stand-in agave-validator CLI (--version)")
    p.add_argument("-V", "--version", action="store_true")
    args = p.parse_args(argv)
    if not args.version:
        p.error("the stand-in supports only --version (the validator itself is runbook.testbed.validator)")
    print(chain.version_line("agave-validator", _version(cli_version)))
    return 0


PROGRAMS = {"solana": solana, "agave-validator": agave_validator}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cli_version: str | None = None
    if args[:1] == ["--cli-version"] and len(args) >= 2:
        cli_version, args = args[1], args[2:]
    elif args and args[0].startswith("--cli-version="):
        cli_version, args = args[0].partition("=")[2], args[1:]
    if not args or args[0] not in PROGRAMS:
        names = ", ".join(PROGRAMS)
        print(f"usage: python -m runbook.testbed.clis [--cli-version X] {{{names}}} ARGS...", file=sys.stderr)
        return 2
    try:
        return PROGRAMS[args[0]](args[1:], cli_version)
    except RunbookError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

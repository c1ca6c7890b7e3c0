"""Stand-in ``doublezero`` CLI: the commands the runbook execs in the sidecar on biscayne.

    python -m runbook.testbed.doublezero_cli [--cli-version X] [--config-dir DIR] address|status|--version

- ``address``: the base58 public key of ``DIR/id.json``, computed from the key file (no daemon needed).
- ``status``: asks doublezerod over its unix socket and prints the real CLI's table (tabled's psql style
  without horizontal rules); ``--json`` prints the real ``status --json`` shape. When the daemon is not
  there it fails like the real CLI: a message on stderr and exit status 1.
- ``--version``: ``DoubleZero <version>``, the real CLI's format.

The version comes from ``--cli-version`` or ``$RUNBOOK_IMAGE_VERSION`` (the image the "container" runs);
the config dir from ``--config-dir``, ``$DOUBLEZERO_CONFIG_DIR`` or ``~/.config/doublezero``; the
socket from ``--socket``, else as the daemon chooses it (:func:`~runbook.testbed.doublezerod.default_socket`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from runbook.errors import AdapterError, RunbookError
from runbook.testbed.doublezerod import KEYPAIR_NAME, SESSION_UP, default_config_dir, default_socket
from runbook.testbed.dz_api import socket_address
from runbook.testbed.keypair import read_pubkey

STATUS_COLUMNS = (
    "Tunnel status",
    "Last Session Update",
    "Tunnel Name",
    "Tunnel src",
    "Tunnel dst",
    "Doublezero IP",
    "User Type",
    "Current Device",
    "Lowest Latency Device",
    "Metro",
    "Network",
)


class DaemonUnreachable(AdapterError):
    """doublezerod's socket is absent, refuses connections, or answered something unusable."""

    def __init__(self, message: str, *, socket_missing: bool = False, **ctx: Any) -> None:
        self.socket_missing = socket_missing
        super().__init__(message, **ctx)


# --------------------------------------------------------------------------- the daemon's API


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            with socket_address(self._path) as address:
                sock.connect(address)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def query(socket_path: Path, endpoint: str, *, timeout: float = 5.0) -> Any:
    """``GET endpoint`` on doublezerod's unix socket; the decoded JSON body."""
    if not socket_path.exists():
        raise DaemonUnreachable(f"no doublezerod socket at {socket_path}", socket_missing=True, obj=str(socket_path))
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", endpoint)
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise DaemonUnreachable(f"{type(exc).__name__}: {exc}", obj=str(socket_path)) from exc
    finally:
        conn.close()
    if resp.status != 200:
        raise DaemonUnreachable(f"{resp.status} {resp.reason}", obj=str(socket_path))
    try:
        return json.loads(body)
    except ValueError as exc:
        raise DaemonUnreachable(f"unparseable response: {exc}", obj=str(socket_path)) from exc


# --------------------------------------------------------------------------- rendering


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """tabled's ``Style::psql().remove_horizontals()``: ' a | b ' lines, no rules, cells left-aligned."""
    widths = [max([_width(h), *(_width(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return " " + " | ".join(c + " " * (w - _width(c)) for c, w in zip(cells, widths, strict=True)) + " "

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _session_time(epoch: int | None) -> str:
    if not epoch:
        return "no session data"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_rows(entries: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for e in entries:
        st = e.get("doublezero_status") or {}
        session = str(st.get("session_status", ""))
        current = str(e.get("current_device") or "N/A")
        lowest = str(e.get("lowest_latency_device") or "N/A")
        if session == SESSION_UP and lowest == current and current != "N/A":
            lowest = f"✅ {lowest}"
        rows.append(
            [
                session,
                _session_time(st.get("last_session_update")),
                *(str(e.get(k) or "") for k in ("tunnel_name", "tunnel_src", "tunnel_dst", "doublezero_ip")),
                str(e.get("user_type") or ""),
                current,
                lowest,
                str(e.get("metro") or "N/A"),
                str(e.get("network") or ""),
            ]
        )
    return rows


def status_json(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The real ``doublezero status --json`` shape: the daemon's entry under ``response``, plus lookups."""
    extra = ("current_device", "lowest_latency_device", "metro", "network")
    out = []
    for e in entries:
        response = {k: v for k, v in e.items() if k not in extra}
        out.append({"response": response, **{k: e.get(k) for k in extra}})
    return out


# --------------------------------------------------------------------------- commands


def cmd_address(keypair: Path, out: TextIO) -> int:
    out.write(read_pubkey(keypair) + "\n")
    return 0


def cmd_status(socket_path: Path, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    try:
        entries = query(socket_path, "/status")
    except DaemonUnreachable as exc:
        if exc.socket_missing:
            err.write("doublezero service is not accessible.\nError: Please start the doublezerod service.\n")
        else:
            err.write(f"Error: Unable to connect to doublezero daemon: {exc.message}\n")
        return 1
    if not isinstance(entries, list):
        err.write("Error: Unable to parse response: expected a list of tunnels\n")
        return 1
    if as_json:
        out.write(json.dumps(status_json(entries), indent=2) + "\n")
    elif entries:
        out.write(render_table(STATUS_COLUMNS, status_rows(entries)) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="doublezero", description="DoubleZero client tool (testbed stand-in)")
    p.add_argument("-V", "--version", action="store_true", help="print the version")
    p.add_argument("--cli-version", default=None, help="this 'binary's version (default $RUNBOOK_IMAGE_VERSION)")
    p.add_argument("--config-dir", type=Path, default=None, help="default $DOUBLEZERO_CONFIG_DIR")
    p.add_argument("-k", "--keypair", type=Path, default=None, help="keypair file (default <config dir>/id.json)")
    p.add_argument("--socket", type=Path, default=None, help="doublezerod socket (default <config dir>/...)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("address", help="print this client's public key")
    status = sub.add_parser("status", help="print the tunnel and BGP session status")
    status.add_argument("--json", action="store_true", help="output as JSON")
    return p


def main(argv: list[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        version = args.cli_version or os.environ.get("RUNBOOK_IMAGE_VERSION")
        if not version:
            err.write("Error: stand-in has no version: pass --cli-version or set RUNBOOK_IMAGE_VERSION\n")
            return 2
        out.write(f"DoubleZero {version.removeprefix('v')}\n")
        return 0
    if args.command is None:
        parser.print_usage(err)
        return 2
    config_dir: Path = args.config_dir or default_config_dir()
    try:
        if args.command == "address":
            return cmd_address(args.keypair or config_dir / KEYPAIR_NAME, out)
        return cmd_status(args.socket or default_socket(), as_json=args.json, out=out, err=err)
    except RunbookError as exc:
        err.write(f"Error: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())

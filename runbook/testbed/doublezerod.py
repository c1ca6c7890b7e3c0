"""Stand-in doublezerod: the DoubleZero sidecar daemon of the testbeds (local and kind).

    python -m runbook.testbed.doublezerod --version 0.6.0 --config-dir DIR [--socket PATH] [--device D]

What it does, like the real daemon on biscayne:
- reads its identity from ``DIR/id.json`` and refuses to start when that is missing or malformed;
- holds that identity in the network namespace it runs in (the host's, for a host-network pod): a second
  daemon with the same identity there resets the holder's BGP session and exits (design trap 10: one
  tunnel and one BGP session per identity per host);
- owns the ``doublezero0`` "tunnel" and its BGP-learned routes in the kernel of that namespace (see
  :mod:`runbook.testbed.netns`): created only when missing, never removed on exit, so a restart (an image
  patch) or a handover to another colour's daemon leaves them exactly where they were;
- "establishes the BGP session" a short, configurable delay after start;
- serves its status on its container's private socket ``/var/run/doublezerod/doublezerod.sock``
  (:mod:`runbook.testbed.dz_api`; ``GET /status``, the real daemon's shape, plus ``GET /info`` with the
  stand-in's own facts), which the stand-in ``doublezero`` CLI reads;
- exits 0 promptly on SIGTERM/SIGINT.

Status is read from the kernel on every request: when the daemon manages a tunnel and the link is gone
or down, the session reads ``BGP Session Down``. Without CAP_NET_ADMIN the daemon runs, the tunnel is
reported absent with the reason, and the session still comes up. ``--netns`` is for test harnesses only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError
from runbook.testbed import netns as kernel
from runbook.testbed.dz_api import Server, claim_socket, release_socket
from runbook.testbed.keypair import read_pubkey

log = logging.getLogger("doublezerod")

DEFAULT_DEVICE = "laconic-mia-sw01"
DEFAULT_SESSION_DELAY = 0.5
DEFAULT_SOCKET = "/var/run/doublezerod/doublezerod.sock"
IDENTITY_CLAIM = "doublezerod/identity/"  # abstract unix socket name prefix: per network namespace
KEYPAIR_NAME = "id.json"
# BGP-learned /32s of other DZ users (documentation ranges only; see netns.SAFE_RANGES).
DEFAULT_ROUTES = ("192.0.2.10/32", "192.0.2.11/32", "198.51.100.20/32")
# The public side of the tunnel (documentation ranges): this host, and the DZ switch it is connected to.
TUNNEL_SRC = "198.51.100.10"
TUNNEL_DST = "203.0.113.1"
USER_TYPE = "IBRL"
NETWORK = "mainnet-beta"
METROS = {"mia": "Miami", "nyc": "New York", "ams": "Amsterdam", "fra": "Frankfurt", "lon": "London"}

SESSION_UP = "BGP Session Up"
SESSION_DOWN = "BGP Session Down"


def default_config_dir() -> Path:
    """``--config-dir`` default: ``$DOUBLEZERO_CONFIG_DIR``, else ``~/.config/doublezero`` (the real CLI's)."""
    env = os.environ.get("DOUBLEZERO_CONFIG_DIR")
    return Path(env) if env else Path.home() / ".config" / "doublezero"


def default_socket() -> Path:
    """The real daemon's control socket, private to its container on biscayne (``/var/run`` is the
    container's own): ``/var/run/doublezerod/doublezerod.sock``. Two pods that mount the same config dir
    (one identity) therefore never share a socket."""
    return Path(DEFAULT_SOCKET)


def metro_of(device: str) -> str:
    """``laconic-mia-sw01`` -> ``Miami``: the metro code is the first known three-letter token."""
    for token in device.lower().split("-"):
        if token[:3] in METROS:
            return METROS[token[:3]]
    return "N/A"


@dataclass(frozen=True)
class DaemonConfig:
    version: str
    config_dir: Path
    socket: Path
    device: str = DEFAULT_DEVICE
    netns: str | None = None
    interface: str = kernel.DEFAULT_INTERFACE
    session_delay: float = DEFAULT_SESSION_DELAY  # negative: the session never comes up
    routes: tuple[str, ...] = DEFAULT_ROUTES


@dataclass(frozen=True)
class Tunnel:
    """What the daemon set up at start. ``managed``: it owns a kernel link it must keep watching."""

    managed: bool
    reason: str = ""  # why there is no tunnel, when there is none
    created: bool = False
    routes_added: tuple[str, ...] = field(default_factory=tuple)


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.identity = read_pubkey(config.config_dir / KEYPAIR_NAME)
        self.pid = os.getpid()
        self.started_at = time.time()
        self.tunnel = Tunnel(managed=False, reason="not set up yet")
        self._session_since: float | None = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.conflicts: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- lifecycle

    def setup_tunnel(self) -> Tunnel:
        """Converge ``doublezero0`` and its routes in this daemon's network namespace (or ``--netns``)."""
        cfg = self.config
        where = f"netns {cfg.netns}" if cfg.netns else "this network namespace"
        if not kernel.has_net_admin():
            self.tunnel = Tunnel(managed=False, reason=kernel.net_admin_reason())
        else:
            link = kernel.ensure_interface(cfg.netns, cfg.interface)
            added = kernel.ensure_routes(cfg.netns, cfg.interface, cfg.routes)
            self.tunnel = Tunnel(managed=True, created=link.created, routes_added=tuple(added))
            log.info(
                "tunnel %s in %s: ifindex %d (%s); routes %s",
                cfg.interface,
                where,
                link.ifindex,
                "created" if link.created else "already present, kept",
                f"added {', '.join(added)}" if added else "already present, kept",
            )
        if not self.tunnel.managed:
            log.warning("no tunnel: %s", self.tunnel.reason)
        return self.tunnel

    # ---------------------------------------------------------------- one daemon per identity per host

    def claim_identity(self) -> socket.socket:
        """Hold this identity in this network namespace (an abstract unix socket: the kernel keeps one
        per namespace). A second daemon with the same id.json here is what biscayne's host cannot have:
        one tunnel and one BGP session per identity. The newcomer tells the holder (whose session the
        device then resets: it flaps) and gives up; it never touches the tunnel."""
        name = "\0" + IDENTITY_CLAIM + self.identity
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(name)
        except OSError as exc:
            claim.close()
            holder = "unknown"
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                peer.settimeout(2.0)
                peer.connect(name)
                peer.sendall(f"conflict {self.pid}\n".encode())
                holder = peer.recv(64).decode(errors="replace").strip() or "unknown"
            raise RunbookError(f"identity {self.identity} is already held by another doublezerod in this network "
                               f"namespace ({holder}): one tunnel and one BGP session per identity per host; "
                               "its session was reset by this attempt") from exc
        claim.listen(4)
        threading.Thread(target=self._serve_claim, args=(claim,), daemon=True).start()
        return claim

    def _serve_claim(self, claim: socket.socket) -> None:
        while True:
            try:
                conn, _ = claim.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2.0)
                try:
                    msg = conn.recv(64).decode(errors="replace").strip()
                    conn.sendall(f"pid {self.pid}".encode())
                except OSError:
                    continue
            if msg.startswith("conflict"):
                self.session_reset(f"a second doublezerod ({msg.split()[-1]}) presented the same identity")

    def session_reset(self, why: str) -> None:
        """The device dropped our session (a duplicate identity): down now, up again after the delay."""
        with self._lock:
            self._session_since = None
            self.conflicts.append({"at": time.time(), "why": why})
        log.error("BGP session reset: %s", why)
        self.start_session()

    def start_session(self) -> None:
        if self.config.session_delay < 0:
            log.warning("session delay is negative: the BGP session will never come up")
            return
        self._timer = threading.Timer(self.config.session_delay, self._establish)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _establish(self) -> None:
        with self._lock:
            self._session_since = time.time()
        log.info("BGP session up with %s (%s)", self.config.device, TUNNEL_DST)

    # ---------------------------------------------------------------- state, read from the kernel

    def _link(self) -> kernel.Interface | None:
        if not self.tunnel.managed:
            return None
        try:
            return kernel.interface(self.config.netns, self.config.interface)
        except RunbookError as exc:
            log.warning("cannot read %s: %s", self.config.interface, exc)
            return None

    def _session(self, link: kernel.Interface | None) -> tuple[str, float | None]:
        with self._lock:
            since = self._session_since
        if since is None:
            return SESSION_DOWN, None
        if self.tunnel.managed and (link is None or not link.up):
            return SESSION_DOWN, since
        return SESSION_UP, since

    def status(self) -> list[dict[str, Any]]:
        """``GET /status``: the real daemon's list of tunnels, plus the device/metro/network the real CLI
        would look up on the DZ ledger (there is no ledger here)."""
        link = self._link()
        state, since = self._session(link)
        present = link is not None
        return [
            {
                "doublezero_status": {
                    "session_status": state,
                    "last_session_update": int(since) if since is not None else None,
                },
                "tunnel_name": self.config.interface if present else None,
                "tunnel_src": TUNNEL_SRC if present else None,
                "tunnel_dst": TUNNEL_DST if present else None,
                "doublezero_ip": TUNNEL_SRC if present else None,
                "user_type": USER_TYPE,
                "current_device": self.config.device,
                "lowest_latency_device": self.config.device,
                "metro": metro_of(self.config.device),
                "network": NETWORK,
            }
        ]

    def info(self) -> dict[str, Any]:
        """``GET /info``: the stand-in's own facts (version, pid, start time, identity, tunnel)."""
        link = self._link()
        state, since = self._session(link)
        return {
            "version": self.config.version,
            "pid": self.pid,
            "started_at": self.started_at,
            "started_at_iso": datetime.fromtimestamp(self.started_at, UTC).isoformat(),
            "identity": self.identity,
            "device": self.config.device,
            "session": {"state": state, "since": since},
            "tunnel": {
                "present": link is not None,
                "up": bool(link and link.up),
                "managed": self.tunnel.managed,
                "netns": self.config.netns,
                "interface": self.config.interface,
                "ifindex": link.ifindex if link else None,
                "reason": self.tunnel.reason if not self.tunnel.managed else ("" if link else "link is gone"),
            },
            "socket": str(self.config.socket),
            "session_resets": list(self.conflicts),
        }


# --------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None = None) -> DaemonConfig:
    p = argparse.ArgumentParser(prog="doublezerod", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--version", default=os.environ.get("RUNBOOK_IMAGE_VERSION"), help="the image's version")
    p.add_argument("--config-dir", type=Path, default=None, help="holds id.json (default $DOUBLEZERO_CONFIG_DIR)")
    p.add_argument("--netns", default=None, help="test harness only: a named netns for doublezero0 "
                   "(default: the namespace the daemon runs in, as the real daemon)")
    p.add_argument("--device", default=os.environ.get("RUNBOOK_DZ_DEVICE") or DEFAULT_DEVICE)
    p.add_argument("--socket", type=Path, default=None, help="API socket (default: see default_socket)")
    p.add_argument(
        "--session-delay",
        type=float,
        default=float(os.environ.get("RUNBOOK_DZ_SESSION_DELAY", DEFAULT_SESSION_DELAY)),
        help="seconds until the BGP session is up; negative: never",
    )
    p.add_argument("--route", action="append", dest="routes", help="a BGP-learned prefix (repeatable)")
    ns = p.parse_args(argv)
    if not ns.version:
        p.error("no version: pass --version or set RUNBOOK_IMAGE_VERSION")
    config_dir: Path = ns.config_dir or default_config_dir()
    return DaemonConfig(
        version=str(ns.version).removeprefix("v"),
        config_dir=config_dir,
        socket=ns.socket or default_socket(),
        device=ns.device,
        netns=ns.netns,
        session_delay=ns.session_delay,
        routes=tuple(ns.routes) if ns.routes else DEFAULT_ROUTES,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s doublezerod[%(process)d] %(levelname)s %(message)s"
    )
    config = parse_args(argv)
    stop = threading.Event()  # set by SIGTERM/SIGINT, even one that arrives while starting

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    log.info("doublezerod %s starting (config dir %s, device %s)", config.version, config.config_dir, config.device)
    try:
        daemon = Daemon(config)
        log.info("identity %s", daemon.identity)
        claim = daemon.claim_identity()
        daemon.setup_tunnel()
        claim_socket(config.socket)
        server = Server(config.socket, daemon)
        socket_inode = config.socket.stat().st_ino
    except (RunbookError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1

    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    serving.start()
    daemon.start_session()
    log.info("serving status on %s", config.socket)
    stop.wait()

    daemon.stop()
    server.shutdown()
    server.server_close()
    release_socket(config.socket, socket_inode)
    claim.close()
    if daemon.tunnel.managed:
        log.info("leaving %s and its routes in place (%s)", config.interface, config.netns or "own netns")
    log.info("exited cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())

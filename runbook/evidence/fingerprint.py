"""The environment a run happened in: what a reviewer needs to reproduce or question it.

Gathered from the session alone (nothing needs the testbed up): Python and every installed package's
version, the platform, ``caddy version``, the git commit and whether the tree was dirty, and from the
runbook environment its name, source file, kube context and namespace and the images it names. Each
probe that fails records why instead of failing the run.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from runbook.evidence.redact import redact, redact_obj

TIMEOUT = 10.0


def _run(argv: list[str], cwd: Path | None = None) -> tuple[str | None, str | None]:
    """(stdout, None) or (None, why it failed)."""
    try:
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{argv[0]}: {exc}"
    if out.returncode != 0:
        return None, f"`{' '.join(argv)}` exited {out.returncode}: {out.stderr.strip()[:300]}"
    return out.stdout.strip(), None


def git_info(root: Path) -> dict[str, Any]:
    commit, err = _run(["git", "rev-parse", "HEAD"], root)
    if commit is None:
        return {"commit": None, "dirty": None, "branch": None, "error": err}
    status, err2 = _run(["git", "status", "--porcelain", "--untracked-files=no"], root)
    untracked, _ = _run(["git", "status", "--porcelain", "--untracked-files=normal"], root)
    branch, _ = _run(["git", "rev-parse", "--abbrev-ref", "HEAD"], root)
    return {
        "commit": commit,
        "dirty": bool(status) if status is not None else None,
        "changed_files": len(status.splitlines()) if status else 0,
        "untracked_files": sum(1 for ln in (untracked or "").splitlines() if ln.startswith("??")),
        "branch": branch,
        "error": err2,
    }


def caddy_info() -> dict[str, Any]:
    try:
        from runbook.testbed.caddy import caddy_binary

        binary = caddy_binary()
    except Exception as exc:  # no caddy here is a fact to record, not a reason to fail the run
        return {"version": None, "binary": None, "error": redact(str(exc))}
    version, err = _run([binary, "version"])
    return {"version": version, "binary": binary, "error": err}


def packages() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out[str(name)] = dist.version
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def env_info(env: Any, fallback_name: str | None) -> dict[str, Any]:
    """What the runbook env (a :class:`runbook.env.Env`, when the plugin loaded one) names."""
    if env is None:
        return {"name": fallback_name, "source": None, "production": None, "kube_context": None, "namespace": None,
                "images": []}
    kube = getattr(env, "kube", None)
    images: list[str] = []
    deployments = getattr(env, "deployments", None)
    for colour in ("green", "blue"):
        dep = getattr(deployments, colour, None)
        image = getattr(dep, "image", None)
        if image:
            images.append(f"{colour}: {image}")
    testbed = getattr(env, "testbed", None)
    for image in getattr(testbed, "images", {}) or {}:
        images.append(f"testbed stand-in: {image}")
    return {
        "name": getattr(env, "name", fallback_name),
        "source": getattr(env, "source", None),
        "production": getattr(env, "production", None),
        "kube_context": getattr(kube, "context", None),
        "namespace": getattr(kube, "namespace", None),
        "images": images,
    }


def fingerprint(*, root: Path, env: Any = None, env_name: str | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The environment fingerprint of a run (every value redacted)."""
    doc: dict[str, Any] = {
        "env": env_info(env, env_name),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
                     "hostname": socket.gethostname(), "user": os.environ.get("USER") or os.environ.get("LOGNAME")},
        "caddy": caddy_info(),
        "git": git_info(root),
        "extra": extra or {},
    }
    clean: dict[str, Any] = redact_obj(doc)
    # versions by package name: a name like "tokenizers" is not a secret field
    clean["packages"] = {name: redact(version) for name, version in packages().items()}
    return clean

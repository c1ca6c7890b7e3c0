"""HTTP goes through the adapters: no module under runbook/procedures or runbook/checks imports an HTTP client.

Procedures and checks reach the ingress and the colours through :class:`runbook.adapters.rpc.RpcClient`
(``Adapters.public_rpc()``, ``Adapters.rpc(colour)``) and Caddy's admin API through the ingress adapter, so a
runner off the host (ssh tunnels) and the unit tests' fakes see every call. This scans the modules' imports
with the AST (``import httpx``, ``from httpx import ...``, also inside functions).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("runbook/procedures", "runbook/checks")
HTTP_CLIENTS = ("httpx", "requests", "urllib.request", "http.client", "aiohttp", "urllib3")


def http_imports(source: str, filename: str = "<string>") -> list[str]:
    """Every import of an HTTP client in ``source``: ``file:line: module``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            if any(name == c or name.startswith(c + ".") for c in HTTP_CLIENTS):
                found.append(f"{filename}:{node.lineno}: {name}")
                break
    return found


def test_no_procedure_or_check_imports_an_http_client() -> None:
    files = sorted(f for d in SCANNED for f in (ROOT / d).rglob("*.py"))
    assert len(files) > 10, files  # the scan sees the modules
    problems = [p for f in files for p in http_imports(f.read_text(), str(f.relative_to(ROOT)))]
    assert problems == [], "HTTP outside the adapters (use Adapters.rpc/public_rpc or the ingress adapter):\n" + \
        "\n".join(problems)


@pytest.mark.parametrize("source", [
    "import httpx\n",
    "import httpx as h\n",
    "from httpx import get\n",
    "def f():\n    import requests\n",
    "from urllib.request import urlopen\n",
    "import http.client\n",
    "from urllib import request\n",
])
def test_the_scan_finds_an_http_client(source: str) -> None:
    assert http_imports(source, "m.py"), source


@pytest.mark.parametrize("source", [
    "from urllib.parse import urlsplit\n",
    "from runbook.adapters.rpc import RpcClient\n",
    "from . import httpx_free\n",
])
def test_the_scan_leaves_other_imports_alone(source: str) -> None:
    assert http_imports(source, "m.py") == []

"""The same features and steps serve every env: no step module branches on the env's name.

Differences between local, kind and biscayne live in adapters and env files. This scans the step modules
(and the features' binding modules) with the AST for any test of an env's name: comparisons or membership
tests against ``<something>.name`` of an env, ``getattr(env, "name")``, ``match env.name``, string methods
on it (``env.name.startswith("k")``), or any comparison with a literal env name (``"kind"``, ``"local"``,
``"biscayne"`` or any file under envs/).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from runbook.env import known_envs

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("steps", "features")
ENV_NAMES = {"kind", "local", "biscayne", *known_envs()}


def _is_env(node: ast.AST) -> bool:
    """``env``, ``self.env``, ``adapters.env``, ``ctx.env_config``..., i.e. a name ending in env."""
    if isinstance(node, ast.Name):
        return node.id.lower().endswith("env") or node.id.lower().startswith("env")
    if isinstance(node, ast.Attribute):
        return node.attr.lower().endswith("env") or node.attr.lower().startswith("env")
    if isinstance(node, ast.Call):  # load_env(...).name, get_env().name
        return _is_env(node.func)
    return False


def _is_env_name(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute) and node.attr == "name" and _is_env(node.value):
        return True
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
            and len(node.args) >= 2 and _is_env(node.args[0])
            and isinstance(node.args[1], ast.Constant) and node.args[1].value == "name"):
        return True
    # env.name.startswith("k"), env.name.lower() == ...
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and _is_env_name(node.func.value)


def _literal_env_names(node: ast.AST) -> set[str]:
    found = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value in ENV_NAMES:
            found.add(sub.value)
    return found


def env_branches(source: str, filename: str = "<string>") -> list[str]:
    """Every place the code tests which env it runs on: ``file:line: what``."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_is_env_name(o) for o in operands):
                problems.append(f"{filename}:{node.lineno}: compares the env's name")
            elif names := set().union(*(_literal_env_names(o) for o in operands)):
                problems.append(f"{filename}:{node.lineno}: compares with env name(s) {sorted(names)}")
        elif isinstance(node, ast.Match) and _is_env_name(node.subject):
            problems.append(f"{filename}:{node.lineno}: matches on the env's name")
        elif isinstance(node, ast.If | ast.IfExp | ast.While | ast.Assert) and _is_env_name(node.test):
            problems.append(f"{filename}:{node.lineno}: tests the env's name")
        elif isinstance(node, ast.Call) and _is_env_name(node) and isinstance(node.func, ast.Attribute):
            problems.append(f"{filename}:{node.lineno}: inspects the env's name with .{node.func.attr}()")
    return sorted(set(problems))


def modules() -> list[Path]:
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))


def test_no_step_module_branches_on_the_env_name() -> None:
    problems = [p for path in modules() for p in env_branches(path.read_text(), str(path.relative_to(ROOT)))]
    assert not problems, "branch on capabilities in adapters/env files, not on the env name:\n" + "\n".join(problems)


@pytest.mark.parametrize("code", [
    'if env.name == "kind": pass',
    'x = 1 if adapters.env.name != "local" else 2',
    'if self.env.name in ("kind", "biscayne"): pass',
    'skip = env_name == "biscayne"',
    'if getattr(env, "name") == other: pass',
    'match env.name:\n    case "kind": pass',
    'if env.name.startswith("kind"): pass',
    'ok = load_env(n).name == "local"',
    'if env.name: pass',
])
def test_the_scan_catches_env_branches(code: str) -> None:
    assert env_branches(code)


@pytest.mark.parametrize("code", [
    'if env.kube is None: pass',
    'name = env.deployments.green.name',
    'if pod.name == "agave-green-x": pass',
    'assert result.stdout.strip() == env.doublezero.expected_identity',
    'label = f"env {env.name}"',
])
def test_the_scan_leaves_other_code_alone(code: str) -> None:
    assert env_branches(code) == []

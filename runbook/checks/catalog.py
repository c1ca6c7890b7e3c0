"""Every check, the scenarios that use it, and the negative tests proving it can fail.

``python -m runbook.checks --list`` prints it. Which scenarios use a check is found from the code, not from
a list kept by hand: each feature's steps are matched to their step functions (pytest-bdd's own parsers),
and from each step function the references are followed through the step modules, ``runbook.checks`` and
``runbook.procedures`` (a procedure a step runs by name, through :func:`runbook.procedures.procedure_for`,
or as a module's ``PROCEDURE``, brings in every callable of its steps) to the registered checks.
"""

from __future__ import annotations

import dis
import importlib
import inspect
import pkgutil
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook.checks.core import CHECKS, CheckSpec

ROOT = Path(__file__).resolve().parents[2]
FOLLOW = ("runbook.", "steps.")


@dataclass
class Entry:
    spec: CheckSpec
    scenarios: set[str] = field(default_factory=set)


def load_checks() -> dict[str, CheckSpec]:
    """Import every module of runbook.checks; the registered checks defined there."""
    import runbook.checks as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        if m.name not in ("__main__",):
            importlib.import_module(f"runbook.checks.{m.name}")
    return {n: s for n, s in CHECKS.items() if s.func.__module__.startswith("runbook.checks.")}


def _procedures() -> dict[str, Any]:
    from runbook.procedures import registry

    return registry()


def _callables_of(obj: Any) -> Iterator[Callable[..., Any]]:
    """Functions an object brings in: a procedure's steps' callables, a function, a class's methods."""
    from runbook.procedures.framework import Procedure, Step

    if isinstance(obj, Procedure):
        yield obj.prepare
        yield obj.steady_state
        for step in obj.steps:
            yield from _callables_of(step)
    elif isinstance(obj, Step):
        for name in ("action", "verify", "is_done", "precondition", "rollback"):
            f = getattr(obj, name)
            if f is not None:
                yield f
    elif isinstance(obj, types.FunctionType | types.MethodType):
        yield obj
    elif inspect.isclass(obj) and obj.__module__.startswith(FOLLOW):
        for v in vars(obj).values():
            if isinstance(v, types.FunctionType):
                yield v
            elif isinstance(v, property) and v.fget is not None:
                yield v.fget


def reachable_checks(fn: Callable[..., Any]) -> set[str]:
    """The registered checks reachable from ``fn`` through code in runbook and steps."""
    procedures = _procedures()
    found: set[str] = set()
    seen: set[int] = set()
    todo: list[Any] = [fn]
    while todo:
        f = todo.pop()
        name = getattr(f, "__check__", None)  # a registered check's wrapper (runbook.checks.core.check)
        if name:
            found.add(name)
        f = getattr(f, "__wrapped__", f)
        if id(f) in seen:
            continue
        seen.add(id(f))
        code = getattr(f, "__code__", None)
        if code is None or not getattr(f, "__module__", "").startswith(FOLLOW):
            continue
        glb = getattr(f, "__globals__", {})
        closure = [c.cell_contents for c in (getattr(f, "__closure__", None) or ()) if _has(c)]
        codes = [code]
        while codes:
            c = codes.pop()
            codes += [k for k in c.co_consts if isinstance(k, types.CodeType)]
            for n, attr in _references(c):
                obj = glb.get(n)
                if isinstance(obj, types.ModuleType):
                    if obj.__name__.startswith(FOLLOW) and attr and hasattr(obj, attr):
                        todo += list(_callables_of(getattr(obj, attr)))
                elif obj is not None:
                    todo += list(_callables_of(obj))
            for k in c.co_consts:
                if isinstance(k, str) and k in procedures:
                    todo += list(_callables_of(procedures[k]))
        for obj in closure:
            todo += list(_callables_of(obj))
    return found


def _references(code: types.CodeType) -> Iterator[tuple[str, str]]:
    """(global name, the attribute read on it right after, or "") for every global the code loads."""
    ins = list(dis.get_instructions(code))
    for i, x in enumerate(ins):
        if x.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            nxt = ins[i + 1] if i + 1 < len(ins) else None
            attr = nxt.argval if nxt is not None and nxt.opname in ("LOAD_ATTR", "LOAD_METHOD") else ""
            yield str(x.argval), str(attr)


def _has(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _step_functions() -> list[tuple[Any, Callable[..., Any]]]:
    """(parser, step function) of every step the root conftest loads."""
    from pytest_bdd.steps import StepFunctionContext

    conftest = importlib.import_module("conftest")
    out = []
    for mod_name in getattr(conftest, "pytest_plugins", []):
        if not mod_name.startswith("steps."):
            continue
        mod = importlib.import_module(mod_name)
        for name, value in vars(mod).items():
            if name.startswith("pytestbdd_stepdef_"):
                ctx = value.__wrapped__() if hasattr(value, "__wrapped__") else None
                if isinstance(ctx, StepFunctionContext):
                    out.append((ctx.parser, ctx.step_func))
    return out


def catalog() -> dict[str, Entry]:
    """Every registered check with the scenarios (feature file: scenario name) whose steps reach it."""
    from pytest_bdd.feature import get_features

    entries = {n: Entry(s) for n, s in load_checks().items()}
    steps = _step_functions()
    reach = {id(f): reachable_checks(f) for _, f in steps}
    for feature in get_features([str(ROOT / "features")]):
        for scenario in feature.scenarios.values():
            texts = [s.name for s in scenario.steps]
            if feature.background:
                texts = [s.name for s in feature.background.steps] + texts
            label = f"{Path(feature.filename).name}: {scenario.name}"
            for text in texts:
                for parser, f in steps:
                    if parser.is_matching(text):
                        for name in reach[id(f)]:
                            if name in entries:
                                entries[name].scenarios.add(label)
    return entries


def negative_exists(node: str) -> bool:
    """A negative test id (``path::function`` or ``path``) names a test function that exists."""
    path, _, func = node.partition("::")
    file = ROOT / path
    if not file.is_file():
        return False
    return not func or f"def {func.split('[')[0]}(" in file.read_text()


def render(entries: dict[str, Entry]) -> str:
    lines = []
    for name in sorted(entries):
        e = entries[name]
        lines.append(f"{name}: {e.spec.summary}")
        scen = sorted(e.scenarios)
        lines.append(f"  scenarios ({len(scen)}): " + ("; ".join(scen) if scen else "none (procedures and tests only)"))
        for t in e.spec.negative:
            lines.append(f"  negative: {t}" + ("" if negative_exists(t) else "  (MISSING)"))
    return "\n".join(lines)

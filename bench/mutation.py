"""Mutation test of the suite itself: small breaking changes to the runbook, applied one at a time to a copy of
the repository, each run against the fast tests that claim to catch it. Every mutation must be caught.

    .venv/bin/python -m bench.mutation [--list] [--only NAME ...] [--json FILE] [--timeout S]

- The copy: the repository's tracked files plus untracked-but-not-ignored ones (uncommitted work included), in a
  temporary directory; /work/main (the source tree) is never modified. Its tests run with this checkout's
  interpreter (``.venv/bin/python -m pytest``, cwd and rootdir the copy, the copy first on PYTHONPATH, no
  bytecode written), and the script checks that ``runbook`` is imported from the copy, not from the editable
  install, before anything else.
- A mutation is (name, what it breaks, file, exact old snippet, new snippet, the catching tests as pytest node
  ids). A snippet found other than exactly once is an ERROR of this script (the runbook changed: update the
  mutation), never skipped.
  The mutations are defined in :mod:`bench.mutations`.
- Baseline first: every catcher passes on the unmutated copy (a catcher that fails or is skipped without the
  mutation proves nothing). Then each mutant: its catchers (``-x -q -p no:cacheprovider``, the repository's
  report options left out, a timeout per run); caught = at least one test failed (pytest exit 1). A mutant
  that stops a module importing, or a run that times out, is not a catch.
- Exit status: 0 when the baseline passes and every mutation is caught; 1 otherwise (a survivor, a baseline
  failure, a timeout); 2 on a definition error (or a copy whose modules are not the ones imported).
- A mutation whose catchers need the local testbed (``testbed=True``) runs under ``flock
  /tmp/runbook-testbed.lock`` with the copy's own testbed state dir (envs/local.yaml's state_dir is relative to
  the checkout). Other runs deselect mutating tests, must set up no testbed (checked with ``--setup-plan``), and
  name the source checkout's state dir, so a testbed someone else holds up does not fail their port check. The
  shipped mutations need no testbed: each is caught by unit, golden-plan or fake-adapter tests (the testbed
  lock is contended, and CI has little time).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.mutations import MUTATIONS, Mutation

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
LOCK = Path("/tmp/runbook-testbed.lock")
TIMEOUT = 90.0  # s per pytest run (a mutant that hangs its catchers is not caught: it would stall CI)


class MutationError(Exception):
    """A mutation cannot be applied as defined (its snippet is not in the file exactly once)."""


@dataclass
class Run:
    """One pytest run over node ids in the copy."""

    passed: bool
    failed: list[str]
    seconds: float
    timed_out: bool = False
    output: str = ""
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # setup, collection or usage errors: not a catch
    reasons: list[str] = field(default_factory=list)  # each failure's message, first line


@dataclass
class Outcome:
    name: str
    breaks: str
    caught: bool
    by: list[str]
    seconds: float
    note: str = ""
    catchers: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- the copy
def repo_files(src: Path) -> list[str]:
    """Tracked files and untracked-but-not-ignored ones (uncommitted work), as ``git ls-files`` names them."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=src,
                         check=True, capture_output=True).stdout.decode()
    return sorted({p for p in out.split("\0") if p})


def copy_repo(src: Path, dst: Path) -> int:
    """Copy the repository's files into ``dst`` (a tracked file deleted in the work tree is left out)."""
    n = 0
    for rel in repo_files(src):
        s = src / rel
        if not s.exists() and not s.is_symlink():
            continue
        d = dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_symlink():
            os.symlink(os.readlink(s), d)
        elif s.is_file():
            shutil.copy2(s, d)
        else:
            continue
        n += 1
    return n


STATE_DIR_LINE = "  state_dir: .testbed/local\n"
LOCAL_ENV = "envs/local.yaml"


def use_testbed_state(copy: Path, *, own: bool, src: Path = ROOT) -> None:
    """Which testbed state dir the copy's local env names. ``own`` (a run that needs the testbed, under its
    lock): the copy's own, relative to the copy. Otherwise the source checkout's, absolute: a testbed someone
    brought up from there is then seen as the session's own instead of failing every run's port check, and no
    such run touches it (check_no_testbed_fixture: its catchers take neither the testbed nor a mutating mark)."""
    path = copy / LOCAL_ENV
    text = path.read_text()
    theirs = f"  state_dir: {(src / '.testbed' / 'local').resolve()}\n"
    current = STATE_DIR_LINE if STATE_DIR_LINE in text else theirs
    if current not in text:
        raise MutationError(f"{LOCAL_ENV} names no testbed state_dir as {STATE_DIR_LINE.strip()!r}: update the script")
    path.write_text(text.replace(current, STATE_DIR_LINE if own else theirs, 1))


def check_no_testbed_fixture(copy: Path, nodeids: Sequence[str], python: Path = PYTHON) -> None:
    """The catchers of mutations not marked ``testbed`` set up no testbed (pytest --setup-plan)."""
    if not nodeids:
        return
    r = subprocess.run([str(python), "-m", "pytest", "--setup-plan", "-q", "-p", "no:cacheprovider", "--rootdir",
                        str(copy), "-o", "addopts=--strict-markers", "-m", "not mutating", *nodeids], cwd=copy,
                       env=child_env(copy), capture_output=True, text=True, timeout=120)
    using = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith(("SETUP    S testbed",
                                                                                   "SETUP    S adapters"))]
    if r.returncode != 0 or using:
        raise MutationError("catchers of mutations not marked testbed=True would use the local testbed (mark the "
                            f"mutation testbed=True or pick another catcher): {using or r.stdout[-2000:]}")


def child_env(copy: Path) -> dict[str, str]:
    """The copy's modules first (not the editable install's /work/main), no bytecode (a mutant and its restore
    could share size and mtime second), no foreign envs dir."""
    env = dict(os.environ)
    env.pop("RUNBOOK_ENVS_DIR", None)
    env["PYTHONPATH"] = str(copy) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_from(copy: Path, python: Path = PYTHON) -> str:
    """Where ``runbook`` (and ``steps``, ``tests``) are imported from in the copy; raises unless the copy."""
    code = "import runbook, steps, tests; print(runbook.__file__); print(steps.__file__); print(tests.__file__)"
    r = subprocess.run([str(python), "-c", code], cwd=copy, env=child_env(copy), capture_output=True, text=True,
                       timeout=60)
    files = r.stdout.split()
    if r.returncode != 0 or len(files) != 3 or not all(Path(f).resolve().is_relative_to(copy.resolve())
                                                       for f in files):
        raise MutationError(f"the copy's modules are not the ones imported (cwd {copy}): {r.stdout}{r.stderr}")
    return files[0]


# ------------------------------------------------------------------------------------------- mutations
def mutated(text: str, m: Mutation) -> str:
    """``text`` with the mutation applied; MutationError unless its snippet occurs exactly once."""
    n = text.count(m.old)
    if n != 1:
        raise MutationError(f"mutation {m.name}: its snippet occurs {n} times in {m.file} (expected exactly once): "
                            f"the runbook changed, update the mutation. Snippet: {m.old!r}")
    return text.replace(m.old, m.new, 1)


def check_definitions(root: Path, mutations: Sequence[Mutation]) -> list[str]:
    """Every definition error at once: duplicate names, a missing file, a snippet not found exactly once,
    a mutation that changes nothing, no catcher."""
    errors: list[str] = []
    seen: set[str] = set()
    for m in mutations:
        if m.name in seen:
            errors.append(f"mutation {m.name}: the name is used twice")
        seen.add(m.name)
        if not m.catchers:
            errors.append(f"mutation {m.name}: no catching test named")
        if m.old == m.new:
            errors.append(f"mutation {m.name}: the new snippet is the old one")
        path = root / m.file
        if not path.is_file():
            errors.append(f"mutation {m.name}: {m.file} does not exist")
            continue
        try:
            text = mutated(path.read_text(), m)
            if m.file.endswith(".py"):
                compile(text, m.file, "exec")  # a mutant that does not compile would be "caught" by any import
        except MutationError as exc:
            errors.append(str(exc))
        except SyntaxError as exc:
            errors.append(f"mutation {m.name}: the mutant of {m.file} does not compile ({exc.msg}, line {exc.lineno})")
    return errors


@contextlib.contextmanager
def applied(root: Path, m: Mutation) -> Iterator[None]:
    """The mutant in place for the duration, the original restored after (whatever happens)."""
    path = root / m.file
    original = path.read_text()
    path.write_text(mutated(original, m))
    try:
        yield
    finally:
        path.write_text(original)


@contextlib.contextmanager
def testbed_lock(needed: bool, lock: Path = LOCK) -> Iterator[float]:
    """``flock`` on the shared testbed lock while a run needs the local testbed; yields the seconds waited."""
    if not needed:
        yield 0.0
        return
    start = time.monotonic()
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield time.monotonic() - start
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------- pytest
def junit_ids(junit: Path, *kinds: str) -> list[str]:
    """Node-id-like names (file::test) of the tests with an element of ``kinds`` (failure, error, skipped) in a
    JUnit XML report."""
    try:
        tree = ET.parse(junit)
    except (OSError, ET.ParseError):
        return []  # pytest stopped before writing it (a usage error): the caller says so
    out = []
    for case in tree.iter("testcase"):
        if any(case.find(k) is not None for k in kinds):
            module = (case.get("classname") or "").replace(".", "/")
            out.append(f"{module}.py::{case.get('name')}")
    return out


def failure_messages(junit: Path) -> list[str]:
    """The first line of each failure's message (what the catching test said), for the JSON report."""
    try:
        tree = ET.parse(junit)
    except (OSError, ET.ParseError):
        return []
    return [(f.get("message") or "").splitlines()[0][:300] if f.get("message") else "" for f in tree.iter("failure")]


def stop(proc: subprocess.Popen[str], *, graceful: float) -> str:
    """Stop a pytest run that outlived its timeout: SIGINT first when ``graceful`` (pytest then tears its session
    down, a testbed included), SIGKILL to the run's own process group (start_new_session) after that."""
    if graceful:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            return proc.communicate(timeout=graceful)[0]
        except subprocess.TimeoutExpired:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate()[0]


def run_pytest(copy: Path, nodeids: Sequence[str], *, timeout: float, stop_first: bool = True, testbed: bool = False,
               python: Path = PYTHON) -> Run:
    """The node ids in the copy; without ``testbed``, a mutating test is deselected (pytest then exits 5: an
    error here, not a pass)."""
    use_testbed_state(copy, own=testbed)
    junit = Path(tempfile.mkstemp(prefix="mutation-junit-", suffix=".xml")[1])
    argv = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(copy),
            "-o", "addopts=--strict-markers", f"--junitxml={junit}", "-o", f"timeout={int(timeout)}",
            *(["-x"] if stop_first else []), *([] if testbed else ["-m", "not mutating"]), *nodeids]
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=copy, env=child_env(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        output = stop(proc, graceful=60.0 if testbed else 0.0)
        if testbed:  # the session's teardown may not have run: the copy's testbed goes before the copy does
            subprocess.run([str(python), "-m", "runbook.cli", "testbed", "down", "--env", "local"], cwd=copy,
                           env=child_env(copy), capture_output=True, timeout=300)
    seconds = time.monotonic() - start
    failed = junit_ids(junit, "failure")
    reasons = failure_messages(junit)
    errors = junit_ids(junit, "error")
    skipped = junit_ids(junit, "skipped")
    junit.unlink(missing_ok=True)
    passed = proc.returncode == 0 and not timed_out and not skipped  # a skipped catcher proves nothing
    if proc.returncode != 1:  # 1: tests failed. Anything else (an internal, collection or usage error) is no catch
        errors += failed
        failed = []
    if not passed and not failed and not errors and not timed_out and not skipped:
        errors = [f"(pytest exit {proc.returncode}, no test failed: collection or usage error)"]
    return Run(passed, failed, seconds, timed_out, output, skipped, errors, reasons)


# ------------------------------------------------------------------------------------------- report
def format_table(outcomes: Sequence[Outcome], total: float) -> str:
    rows = [("mutation", "what it breaks", "caught", "by (failed tests)", "s")]
    for o in outcomes:
        caught = "yes" if o.caught else "NO"
        by = ", ".join(o.by) if o.by else (o.note or "-")
        rows.append((o.name, o.breaks, caught, by, f"{o.seconds:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append(" | ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + " | " + r[4].rjust(5))
        if i == 0:
            lines.append("-+-".join("-" * w for w in widths) + "-+-" + "-" * 5)
    n_caught = sum(o.caught for o in outcomes)
    lines.append(f"{n_caught} of {len(outcomes)} mutations caught; total {total:.1f} s")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main
def run_all(mutations: Sequence[Mutation], *, timeout: float,
            progress: Callable[[str], None] = print) -> tuple[bool, list[Outcome], dict[str, Any]]:
    """Copy, check the imports, run the baseline, then every mutant. Returns (ok, outcomes, baseline)."""
    with tempfile.TemporaryDirectory(prefix="runbook-mutation-") as tmp:
        copy = Path(tmp) / "repo"
        n = copy_repo(ROOT, copy)
        progress(f"copied {n} files of {ROOT} to {copy}")
        progress(f"runbook imported from {check_imports_from(copy)}")
        plain = list(dict.fromkeys(c for m in mutations if not m.testbed for c in m.catchers))
        tb = list(dict.fromkeys(c for m in mutations if m.testbed for c in m.catchers))
        use_testbed_state(copy, own=False)
        check_no_testbed_fixture(copy, plain)
        runs = [run_pytest(copy, plain, timeout=max(timeout, 30.0 * len(mutations)), stop_first=False)] if plain else []
        waited = 0.0
        if tb:
            with testbed_lock(True) as waited:
                runs.append(run_pytest(copy, tb, timeout=max(timeout, 60.0 * len(tb)), stop_first=False, testbed=True))
        catchers = plain + tb
        base = Run(all(r.passed for r in runs), [f for r in runs for f in (*r.failed, *r.errors, *(
            f"{s} (skipped)" for s in r.skipped))],
                   sum(r.seconds for r in runs), any(r.timed_out for r in runs), "\n".join(r.output for r in runs))
        baseline = {"passed": base.passed, "failed": base.failed, "seconds": round(base.seconds, 1),
                    "catchers": len(catchers), "lock_waited": round(waited, 1)}
        progress(f"baseline: {len(catchers)} catching tests on the unmutated copy: "
                 f"{'pass' if base.passed else 'FAIL'} ({base.seconds:.1f} s)")
        if not base.passed:
            progress(base.output[-4000:])
            return False, [], baseline
        outcomes = []
        for m in mutations:
            with applied(copy, m), testbed_lock(m.testbed):
                r = run_pytest(copy, m.catchers, timeout=timeout, testbed=m.testbed)
            note = f"timed out after {timeout:.0f} s" if r.timed_out else (
                "ERROR, not a catch: " + ", ".join(r.errors) if r.errors and not r.failed else "")
            o = Outcome(m.name, m.breaks, caught=bool(r.failed) and not r.timed_out, by=r.failed,
                        seconds=r.seconds, note=note, catchers=list(m.catchers), reasons=r.reasons)
            outcomes.append(o)
            progress(f"  {m.name}: {'caught by ' + ', '.join(r.failed) if o.caught else 'SURVIVED ' + note} "
                     f"({r.seconds:.1f} s)")
        return all(o.caught for o in outcomes), outcomes, baseline


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mutation", description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="list the mutations and their catching tests; run nothing")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this mutation (repeatable)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the outcomes as JSON")
    p.add_argument("--timeout", type=float, default=TIMEOUT, help=f"seconds per mutant run (default {TIMEOUT:g})")
    args = p.parse_args(argv)

    chosen = list(MUTATIONS)
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTATIONS})
        if unknown:
            print(f"unknown mutation(s) {unknown}; known: {[m.name for m in MUTATIONS]}", file=sys.stderr)
            return 2
        chosen = [m for m in MUTATIONS if m.name in args.only]
    errors = check_definitions(ROOT, chosen)
    if errors:
        print("mutation definitions are wrong (ERROR, nothing ran):\n  " + "\n  ".join(errors), file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.breaks}\n    {m.file}{' (testbed)' if m.testbed else ''}\n    caught by: "
                  + "\n               ".join(m.catchers))
        return 0

    start = time.monotonic()
    try:
        ok, outcomes, baseline = run_all(chosen, timeout=args.timeout)
    except MutationError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    total = time.monotonic() - start
    print()
    if outcomes:
        print(format_table(outcomes, total))
    if not baseline["passed"]:
        print(f"BASELINE FAILED: catching tests fail without any mutation: {baseline['failed']}")
    survivors = [o.name for o in outcomes if not o.caught]
    if survivors:
        print(f"SURVIVED (no test failed): {survivors}")
    if args.json:
        args.json.write_text(json.dumps({"ok": ok, "total_seconds": round(total, 1), "baseline": baseline,
                                         "mutations": [asdict(o) for o in outcomes]}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

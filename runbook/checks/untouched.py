"""A colour's data was not rewritten: proven by the storage's own facts, not by hashing the data.

:meth:`runbook.adapters.base.Storage.identity` gives facts of two kinds (see each backend's docstring):

- *who the dataset is*: ZFS's ``guid`` and ``createtxg``, a registry ``id``, an ``inode``, a btrfs ``uuid``, a
  volume's ``volsize``. Destroying and re-creating the data, or rolling it back where a rollback puts a fresh
  copy in place, changes them;
- *what was written*: ZFS's ``written@<snap>`` (bytes written since the snapshot), the zvol model's ``written``
  (blocks of the volume no longer shared with its latest snapshot), a tree's ``newest_ctime`` and ``entries``.

A colour that runs writes its own data, so while it runs only the first kind must hold, and what was written
since a given snapshot (``written@<snap>``) and a tree's newest ctime can only grow (a rollback resets the one,
no write moves the other back). A bare ``written`` counts from the dataset's *latest* snapshot, so the
upgrade's own snapshot resets it: while the owner runs it is not compared. Once the procedure stopped the
colour, nothing may write to it: every fact must equal the ones read right after it stopped (after the
snapshot, so ``written`` included).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runbook.checks.core import Verdict, check, verdict

__all__ = ["GROWING", "data_untouched", "problems"]

GROWING = ("written", "newest_ctime")  # prefixes of facts a running owner's writes make grow


def _growing(key: str) -> bool:
    return any(key == g or key.startswith(g + "@") for g in GROWING)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def problems(before: Mapping[str, Any], after: Mapping[str, Any] | None, *, owner_running: bool) -> list[str]:
    """Why ``after`` shows the data rewritten since ``before`` (empty: untouched). ``owner_running``: the colour
    ran in between (its own writes allowed: growing facts may grow); otherwise every fact must be equal."""
    if after is None:
        return ["the dataset is gone"]
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if owner_running and key in ("entries", "written"):
            continue  # the owner creates and deletes files; a snapshot taken since resets `written`
        if owner_running and _growing(key):
            x, y = _number(a), _number(b)
            if x is not None and y is not None and y >= x:
                continue
            out.append(f"{key} went back from {a} to {b} (a rollback, or the data replaced)")
        else:
            out.append(f"{key}: {a} -> {b}")
    return out


@check(negative=("tests/procedures/test_untouched.py::test_the_check_fails_on_a_rollback_or_a_write_after_the_stop",))
def data_untouched(colour: str, dataset: str, before: Mapping[str, Any], now: Mapping[str, Any] | None, *,
                   stopped: Mapping[str, Any] | None = None) -> Verdict:
    """``colour``'s data (``dataset``) was not rewritten: the same dataset, never rolled back, only grown by its
    owner while it ran (``before``: read before the run); and, when the procedure stopped the colour, not one
    write since (``stopped``: the facts read right after it stopped)."""
    found = problems(before, now, owner_running=True)
    if stopped is not None:
        found += [f"since {colour} stopped: {p}" for p in problems(stopped, now, owner_running=False)]
    return verdict(f"{colour}'s data ({dataset}): storage facts",
                   expected={"before": dict(before), **({"when it stopped": dict(stopped)} if stopped else {})},
                   observed={"now": dict(now) if now is not None else None}, obj=dataset,
                   problems=[f"{colour}'s data was rewritten: {p}" for p in found])

"""The agave upgrade's and its rollbacks' step verifications, as checks (each step judges through ctx.judge).

Each takes what the step observed and compares; the step's wait (with its deadline) stays in the procedure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runbook.adapters.caddy_config import same_upstreams
from runbook.checks.core import Verdict, check, skipped, verdict

NEG = "tests/checks/test_upgrade_verify.py::"


@check(negative=NEG + "test_a_straggler_after_the_shift_fails")
def all_served_by(seen: Sequence[str | None], colour: str, *, when: str) -> Verdict:
    """Every request of a burst through the ingress was served by ``colour`` (X-Upstream), and there was one."""
    others = [c for c in seen if c != colour]
    problems = [f"{len(others)} of {len(seen)} requests {when} served by {sorted({str(c) for c in others})}"] if (
        others) else ([] if seen else ["no request was sent"])
    return verdict(f"requests through the ingress {when}", expected={"served by": colour, "requests": len(seen)},
                   observed=list(seen), problems=problems, obj=colour)


@check(negative=NEG + "test_an_upstream_order_not_switched_fails")
def upstream_order(observed: Sequence[str], expected: Sequence[str], *, when: str) -> Verdict:
    """Caddy serves the upstream order the step set (loopback spellings one host)."""
    ok = same_upstreams(list(observed), list(expected))
    return verdict(f"Caddy's upstream order {when}", expected=list(expected), observed=list(observed),
                   problems=[] if ok else [f"the upstream order is {list(observed)}, not {list(expected)}"])


@check(negative=NEG + "test_pods_left_fail")
def no_pods(deployment: str, pods: Sequence[str], *, when: str) -> Verdict:
    """``deployment`` has no pod left."""
    return verdict(f"{deployment} pods {when}", expected=[], observed=list(pods), obj=deployment,
                   problems=[f"{deployment} still has pods {when}: {list(pods)}"] if pods else [])


@check(negative=NEG + "test_a_differing_accounts_copy_fails")
def accounts_copy(differences: Mapping[str, tuple[int, int]] | None, *, src: str, dst: str) -> Verdict:
    """The accounts copy matches its source: data bytes with each inode once, names, inodes, dirs, symlinks
    (figure -> (source, copy); None: there is no copy to compare)."""
    problems = ["no copy"] if differences is None else [
        f"{dst} differs from {src}: {k} {a} in the source, {b} in the copy" for k, (a, b) in differences.items()]
    return verdict(f"the accounts copy {dst} against {src}", expected="no differences",
                   observed={"differences": differences}, problems=problems, obj=dst)


@check(negative=NEG + "test_not_mounted_fails")
def mounted_at(dataset: str, observed: str | None, *, mount: str) -> Verdict:
    """A volume is mounted where its Deployment reads it."""
    return verdict(f"{dataset} mounted", expected=mount, observed=observed, obj=dataset,
                   problems=[] if observed == mount else [f"{dataset} is mounted at {observed}, not {mount}"])


@check(negative=NEG + "test_written_after_the_rollback_fails")
def at_snapshot(dataset: str, snapshot: str, facts: Mapping[str, Any]) -> Verdict:
    """Right after the rollback, before any mount: nothing written since the snapshot (ZFS ``written@<snap>``,
    the volume model's ``written``). A backend without such a fact cannot say: skipped with that reason (the
    old colour catching up from the data then verifies it)."""
    written = {k: v for k, v in facts.items() if k == "written" or k.startswith("written@")}
    title = f"{dataset} at {snapshot} after the rollback"
    if not written:
        return skipped(title, "this storage backend has no written-since-snapshot fact", expected={"written": 0})
    return verdict(title, expected={k: 0 for k in written}, observed=written, obj=dataset,
                   problems=[f"{k} = {v}" for k, v in written.items() if int(v) != 0])


@check(negative=NEG + "test_something_left_fails")
def gone(what: str, present: bool) -> Verdict:
    """``what`` (a clone, a snapshot) no longer exists."""
    return verdict(f"{what} gone", expected="absent", observed="present" if present else "absent",
                   problems=[f"{what} still exists"] if present else [], obj=what)


@check(negative=NEG + "test_the_wrong_build_fails_at_once")
def build_version(colour: str, observed: str | None, *, want: str) -> Verdict:
    """The idle colour answers getVersion with the target release (a wrong build fails at once, not at the
    catch-up deadline). Not answering yet is not a verdict on the version."""
    problems = [f"{colour} answers getVersion solana-core {observed}, not {want}: the wrong build is deployed"] if (
        observed is not None and observed != want) else []
    return verdict(f"{colour}'s build", expected=want, observed=observed, problems=problems, obj=colour)


@check(negative=NEG + "test_old_data_kept_or_destroyed_against_the_operators_choice_fails")
def old_data(dataset: str, *, destroy: bool, present: bool) -> Verdict:
    """At cleanup the old colour's data is destroyed when the operator chose it (--cleanup=destroy, confirmed),
    and kept otherwise: it is the rollback point."""
    want = "destroyed" if destroy else "kept"
    return verdict(f"{dataset} at cleanup", expected=want, observed="present" if present else "gone", obj=dataset,
                   problems=[] if present != destroy else [f"{dataset} should be {want}"])

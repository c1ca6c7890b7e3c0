"""Waiting for a colour to catch up with the cluster: its own RPC polled often, the public reference rarely.

The colour's local RPC (``/health``, ``getVersion``, ``getSlot``) is polled every ``LOCAL_POLL`` seconds;
the cluster tip comes from :class:`~runbook.adapters.reference.ReferenceTip` at the env's
``reference_poll`` (one kept-alive connection per reference, back-off on 429/5xx, fail-over), estimated
between answers. Caught up: health ``ok``, within ``catch_up_distance`` slots of a *trusted* tip (an answer
at most two polls old, slot rate measured), and the expected version.

A colour that answers ``getVersion`` with another release than the one expected is a wrong build: the wait
fails at once (:class:`~runbook.errors.CheckFailed`, expected vs observed), not at the catch-up deadline
(6 hours on production). A build suffix is not a release (``v2.2.1-stuck`` runs 2.2.1): such a build is
waited for like any other.
"""

from __future__ import annotations

import time
from typing import Any

from runbook.checks import upgrade_verify as uv
from runbook.procedures import bluegreen as bg
from runbook.procedures.facts import UpgradeFacts
from runbook.procedures.framework import Context
from runbook.wait import wait_for

LOCAL_POLL = 0.25  # the colour's own RPC, on the host: cheap, polled often


def plan_lines(env: Any, colour: str, want: str) -> list[str]:
    """What :func:`wait_caught_up` calls, for ``plan``."""
    refs = ", ".join(env.cluster_rpc)
    return [f"poll GET {env.rpc_url(colour)}/health, getVersion and getSlot every {LOCAL_POLL:g}s until "
            f"`ok`; getVersion solana-core must be {want} (another release fails at once)",
            f"poll JSON-RPC getSlot on {refs} every {env.reference_poll:g}s at most (one connection each, "
            f"back-off on 429/5xx honouring Retry-After up to 60s, next reference on failure); tip estimated "
            f"between answers, trusted for at most {2 * env.reference_poll:g}s; caught up within "
            f"{env.catch_up_distance} slots"]


def caught_up_now(ctx: Context[UpgradeFacts], colour: str, want: str) -> bool:
    """One observation, for "already done": ``colour`` answers health ``ok`` with release ``want`` (its own
    RPC, through ``ctx.adapters``) and is within ``catch_up_distance`` slots of what one reference answers
    now (an answer, not an estimate). The reference is asked only when the colour's own answers qualify."""
    env = ctx.env
    st = bg.observe_colour(env, colour, adapters=ctx.adapters)
    if st.health != "ok" or st.version != want or st.slot is None:
        ctx.progress(f"{colour}: not caught up (health {st.health}, version {st.version}, want {want})")
        return False
    with ctx.adapters.reference() as reference:
        reading = reference.read()
    if reading is None:
        ctx.progress(f"{colour}: no reference answered ({reference.summary()}): not taken as caught up")
        return False
    behind = max(0, reading.answered - st.slot)
    ok = behind <= env.catch_up_distance
    ctx.progress(f"{colour}: health ok, version {want}, {behind} slots behind {reading.url} "
                 f"({'within' if ok else 'beyond'} {env.catch_up_distance})")
    return ok


def wait_caught_up(ctx: Context[UpgradeFacts], colour: str, want: str, *, step: str,
                   procedure: str) -> tuple[bg.NodeState, dict[str, Any]]:
    """Wait until ``colour`` is healthy, caught up and runs release ``want``; record what it cost the
    reference (calls per minute, 429s) whether it succeeds or not. Returns the last observation and what
    was seen on the way (the health answers, the largest distance)."""
    env = ctx.env
    history: list[tuple[float, int]] = []
    seen: dict[str, Any] = {"healths": [], "max_behind": 0}
    with ctx.adapters.reference() as reference:

        def observe() -> bg.NodeState:
            st = bg.observe_node(env, colour, reference, adapters=ctx.adapters)
            if st.version is not None and st.version != want:  # a wrong build fails now, not at the deadline
                ctx.judge(uv.build_version(colour, st.version, want=want))
            if st.health not in seen["healths"]:
                seen["healths"].append(st.health)
            if st.behind is not None:
                history.append((time.monotonic(), st.behind))
                seen["max_behind"] = max(seen["max_behind"], st.behind)
            return st

        def caught_up(st: bg.NodeState) -> bool:
            return st.health == "ok" and st.behind is not None and st.behind <= env.catch_up_distance \
                and st.tip_trusted and st.version == want

        def report(st: Any, waited: float) -> None:
            if isinstance(st, bg.NodeState) and len(history) >= 2 and st.behind is not None:
                (t0, b0), (t1, b1) = history[max(0, len(history) - 20)], history[-1]
                speed = (b0 - b1) / max(t1 - t0, 1e-6)
                eta = f"ETA {max(0, b1 - env.catch_up_distance) / speed:.0f}s" if speed > 0 else "not closing"
                ctx.progress(f"{colour}: {st.behind} slots behind, closing at {speed:.1f} slots/s, {eta} "
                             f"(health {st.health}, version {st.version}); {reference.summary()}")
            else:
                ctx.progress(f"{colour}: waiting ({st}) after {waited:.0f}s; {reference.summary()}")

        try:
            st = wait_for(observe, caught_up, timeout=env.timeouts.catch_up, interval=LOCAL_POLL,
                          on_progress=report, progress_every=2.0,
                          what=f"{colour} to catch up (health ok, within {env.catch_up_distance} slots, version "
                          f"{want})", env=env.name, procedure=procedure, step=step)
        finally:
            ctx.record(f"reference RPC calls while {colour} caught up", reference.stats())
    return st, seen

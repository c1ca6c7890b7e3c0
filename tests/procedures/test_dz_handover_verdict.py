"""The DoubleZero handover verdict (design trap 10) on recorded samples: a clean handover passes, and each
trap (a second daemon, a flap, two holders, routes gone, the old colour still holding, too few samples)
fails naming what it saw."""

from __future__ import annotations

import pytest

from runbook.adapters.base import ProcessInfo
from runbook.checks.dz_handover import Sample, SidecarView, changes, daemons, sample_from_dict, verdict
from runbook.errors import CheckFailed

ROUTES = ("192.0.2.10 proto static scope link", "192.0.2.11 proto static scope link")
GREEN_D = "101 python3 -m runbook.testbed.doublezerod --config-dir /srv/dz"
BLUE_D = "202 python3 -m runbook.testbed.doublezerod --config-dir /srv/dz"


def up(colour: str, last: str) -> SidecarView:
    return SidecarView(colour, f"agave-{colour}-abc", session="BGP Session Up", last_update=last)


def waiting(colour: str) -> SidecarView:
    return SidecarView(colour, f"agave-{colour}-abc", error="rc 1: cannot reach doublezerod.sock")


def down(colour: str) -> SidecarView:
    return SidecarView(colour, f"agave-{colour}-abc", session="BGP Session Down", last_update="")


def s(at: float, daemons_: tuple[str, ...], *sidecars: SidecarView, routes: tuple[str, ...] | None = ROUTES,
      error: str = "") -> Sample:
    return Sample(at=at, took=0.05, daemons=daemons_, sidecars=sidecars, routes=routes, error=error)


def handover() -> list[Sample]:
    """Green holds; blue's sidecar waits on the lock; green stops; blue takes over with the routes kept."""
    return [
        s(0.0, (GREEN_D,), up("green", "1000")),
        s(0.2, (GREEN_D,), up("green", "1000"), waiting("blue")),
        s(0.4, (GREEN_D,), up("green", "1000"), waiting("blue")),
        s(0.6, (), waiting("blue")),
        s(0.8, (BLUE_D,), down("blue")),
        s(1.0, (BLUE_D,), up("blue", "1001")),
        s(1.2, (BLUE_D,), up("blue", "1001")),
    ]


def test_a_clean_handover_passes_with_its_figures() -> None:
    v = verdict(handover(), new_colour="blue")
    assert v.ok, v.problems
    assert v.observed["max daemons at once"] == 1
    assert v.observed["session holders in order"] == ["agave-green-abc", "agave-blue-abc"]
    assert v.observed["interval s (mean/max)"] == [0.2, 0.2]
    assert v.observed["handover gap s (last sample of one holder to the first of the next)"] == [0.6]
    v.require()


def test_a_second_daemon_and_its_flap_fail_naming_both() -> None:
    samples = [
        s(0.0, (GREEN_D,), up("green", "1000")),
        s(0.2, (GREEN_D, BLUE_D), up("green", "1000"), SidecarView("blue", "agave-blue-abc", error="starting")),
        s(0.4, (GREEN_D,), down("green"), SidecarView("blue", "agave-blue-abc", error="rc 1")),
        s(0.9, (GREEN_D,), up("green", "1003")),
        s(1.2, (BLUE_D,), up("blue", "1004")),
    ]
    v = verdict(samples, new_colour="blue")
    assert not v.ok
    text = "; ".join(v.problems)
    assert "a second doublezerod with the same identity ran in 1 samples" in text
    assert "202 python3 -m runbook.testbed.doublezerod" in text
    assert "reset (a flap) while its holder kept running: agave-green-abc at +0.9s ('1000' -> '1003')" in text
    with pytest.raises(CheckFailed, match="second doublezerod") as exc:
        v.require()
    assert exc.value.observed["max daemons at once"] == 2


def test_a_flap_alone_fails_even_when_the_second_daemon_was_never_sampled() -> None:
    samples = handover()
    samples[2] = s(0.4, (GREEN_D,), up("green", "1002"), waiting("blue"))  # reset between two samples
    v = verdict(samples, new_colour="blue")
    assert [p for p in v.problems if "flap" in p] and not [p for p in v.problems if "second" in p]


def test_two_holders_at_once_fail() -> None:
    samples = handover()
    samples.insert(3, s(0.5, (GREEN_D,), up("green", "1000"), up("blue", "1000")))
    assert any("two sidecars held the BGP session at once" in p for p in verdict(samples, new_colour="blue").problems)


def test_routes_gone_in_one_sample_fail() -> None:
    samples = handover()
    samples[4] = s(0.8, (BLUE_D,), down("blue"), routes=ROUTES[:1])
    v = verdict(samples, new_colour="blue")
    assert any("routes left the kernel" in p and "192.0.2.11" in p for p in v.problems)


def test_no_routes_at_all_proves_nothing() -> None:
    samples = [s(x.at, x.daemons, *x.sidecars, routes=()) for x in handover()]
    assert any("survival proves nothing" in p for p in verdict(samples, new_colour="blue").problems)


def test_routes_skipped_alone_with_the_reason() -> None:
    samples = [s(x.at, x.daemons, *x.sidecars, routes=None) for x in handover()]
    v = verdict(samples, new_colour="blue", skip_routes_reason="no CAP_NET_ADMIN here")
    assert v.ok, v.problems
    assert v.observed["routes"] == "not checked: no CAP_NET_ADMIN here"
    assert v.expected["routes"] == "not checked: no CAP_NET_ADMIN here"
    samples[1] = s(0.2, (GREEN_D, BLUE_D), up("green", "1000"), routes=None)  # the rest is still judged
    assert not verdict(samples, new_colour="blue", skip_routes_reason="no CAP_NET_ADMIN here").ok


def test_the_old_colour_still_holding_at_the_end_fails() -> None:
    v = verdict(handover()[:3], new_colour="blue")
    assert any("held by ['green (agave-green-abc)']" in p and "not by blue's sidecar" in p for p in v.problems)


def test_too_few_or_unreadable_samples_fail() -> None:
    assert any("too little data" in p for p in verdict(handover()[-1:], new_colour="blue").problems)
    assert any("too little data" in p for p in verdict([], new_colour="blue").problems)
    samples = handover()
    samples[1] = s(0.2, (), error="process listing: ps failed")
    assert any("1 samples could not be read" in p for p in verdict(samples, new_colour="blue").problems)


def test_samples_round_trip_through_their_record() -> None:
    samples = handover()
    assert [sample_from_dict(x.as_dict()) for x in samples] == samples


def test_the_lock_wrapper_is_not_a_daemon() -> None:
    procs = [
        ProcessInfo(10, 1, "sh", '/bin/sh -c exec 9>>"$1"; shift ... doublezerod /root/dz/identity.lock'),
        ProcessInfo(11, 10, "sleep", "sleep 1"),
        ProcessInfo(12, 1, "flock", "flock /root/.config/doublezero/identity.lock doublezerod"),
        ProcessInfo(20, 1, "doublezerod", "doublezerod --config-dir /root/.config/doublezero"),
        ProcessInfo(21, 1, "python3", "python3 -m runbook.testbed.doublezerod --config-dir /srv/dz"),
    ]
    assert [p.pid for p in daemons(procs)] == [20, 21]


def test_a_blind_stretch_fails() -> None:
    samples = handover()
    samples[-1] = s(30.0, (BLUE_D,), up("blue", "1001"))  # the sampler stopped at its bound, stop() read the end
    v = verdict(samples, new_colour="blue")
    assert any("no sample for 29.0 s after +1.0s" in p for p in v.problems), v.problems


def test_the_record_keeps_each_change_and_the_ends() -> None:
    kept = changes(handover())
    assert [x.at for x in kept] == [0.0, 0.2, 0.6, 0.8, 1.0, 1.2]
    assert verdict(kept, new_colour="blue").observed["session holders in order"] == ["agave-green-abc",
                                                                                    "agave-blue-abc"]

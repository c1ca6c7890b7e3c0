"""The DoubleZero in-place patch checks fail on their traps (runbook.checks.isolation)."""

from __future__ import annotations

from runbook.checks import isolation as iso
from tests.procedures.test_dz_upgrade import _obs

ROUTE = "192.0.2.10 via 169.254.0.0 proto bgp"


def test_routes_missing_in_one_sample_fail() -> None:
    before = _obs("dz:v0.6.0", 0)
    after = _obs("dz:v0.6.1", 1)
    assert iso.routes_kept(before, [after, after], after, interface="doublezero0").ok
    v = iso.routes_kept(before, [after, _obs("dz:v0.6.1", 1, routes=()), after], after, interface="doublezero0")
    assert any("went missing during the restart (1 of 3 samples)" in p for p in v.problems), v
    s = iso.routes_kept(before, [], after, interface="doublezero0", skip_reason="no CAP_NET_ADMIN")
    assert (s.ok, s.status) == (False, "skipped")


def test_another_pod_or_agave_restarted_fails_in_place() -> None:
    before = _obs("dz:v0.6.0", 0)
    assert iso.upgraded_in_place(before, _obs("dz:v0.6.1", 1), image="dz:v0.6.1", pod="p1", upgraded="p1").ok
    v = iso.upgraded_in_place(before, _obs("dz:v0.6.1", 1), image="dz:v0.6.1", pod="p1", upgraded="p9")
    assert any("another pod" in p for p in v.problems)
    restarted = _obs("dz:v0.6.1", 1, app_started="2026-01-01T00:00:09+00:00")
    assert not iso.upgraded_in_place(before, restarted, image="dz:v0.6.1", pod="p1", upgraded="p1").ok


def test_a_rollback_that_left_the_new_image_fails() -> None:
    before = _obs("dz:v0.6.0", 0)
    back = _obs("dz:v0.6.0", 2)
    assert iso.restored_in_place(before, back, restarts=2).ok
    assert not iso.restored_in_place(before, _obs("dz:v0.6.1", 1), restarts=2).ok
    assert iso.back_on(before, back, image="dz:v0.6.0").ok
    assert not iso.back_on(before, _obs("dz:v0.6.1", 1), image="dz:v0.6.0").ok


def test_a_wrong_version_fails() -> None:
    assert iso.sidecar_version("doublezero 0.6.1", expected="v0.6.1").ok
    assert not iso.sidecar_version("doublezero 0.6.0", expected="v0.6.1").ok
    assert not iso.sidecar_version("exit 1: not found", expected="v0.6.1").ok


def test_drift_checks_fail_on_the_trap() -> None:
    kw = {"pod": "p1", "want_template": "dz:v0.6.0", "want_running": "dz:v0.6.1"}
    assert iso.drift(template="dz:v0.6.0", running="dz:v0.6.1", **kw).ok
    assert not iso.drift(template="dz:v0.6.1", running="dz:v0.6.1", **kw).ok  # the template was patched
    assert iso.no_drift("p1", {}).ok
    assert not iso.no_drift("p1", {"doublezerod": ["dz:v0.6.0", "dz:v0.6.1"]}).ok

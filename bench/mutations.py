"""The mutations :mod:`bench.mutation` applies, one at a time: each a small breaking change to the runbook (one or
two lines, so nearby edits leave it applicable) and the fast tests that must catch it (pytest node ids).

A snippet must occur exactly once in its file; when the runbook changes under it, the script stops with an
error naming the mutation: update the snippet here, never drop the mutation silently.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    name: str
    breaks: str  # what the mutant breaks, for the table
    file: str  # relative to the repository
    old: str  # exact snippet, found exactly once
    new: str
    catchers: tuple[str, ...]  # pytest node ids, relative to the repository
    testbed: bool = False  # a catcher needs the local testbed: run under the testbed lock


UP = "runbook/procedures/agave_upgrade.py"
ACC = "tests/procedures/test_accounts_verify.py"
CATCH = "tests/procedures/test_catch_up_wait.py"

MUTATIONS: tuple[Mutation, ...] = (
    # ---------------------------------------------------------------- skip a verification
    Mutation(
        "accounts-verify-skipped", "the accounts copy's verify returns without comparing the copy to its source",
        "runbook/procedures/accounts.py",
        "    v = c.verify()\n    if not v.ok:\n        ctx.progress(",
        "    return  # MUTANT\n    v = c.verify()\n    if not v.ok:\n        ctx.progress(",
        (f"{ACC}::test_a_copy_that_stays_different_fails_the_verification",)),
    Mutation(
        "catch-up-step-unverified", "the upgrade's catch-up step verifies nothing (no wait for the idle colour)",
        UP,
        "lambda ctx: None, wait_caught_up,",
        "lambda ctx: None, lambda ctx: None,",
        (f"{CATCH}::test_the_upgrades_catch_up_step_waits_for_the_idle_colour",)),
    Mutation(
        "identity-preflight-skipped", "require_own_identity returns early: blue may start under green's key",
        UP,
        "    live, idle = _live(ctx), _idle(ctx)\n",
        "    live, idle = _live(ctx), _idle(ctx)\n    return  # MUTANT\n",
        ("tests/procedures/test_identity_preflight.py::test_blue_under_greens_key_is_refused",)),
    Mutation(
        "ingress-retry-audit-silent", "require_ingress_retries finds the missing retry settings and does not raise",
        UP,
        "    if bad:\n        raise PreconditionFailed(f\"refusing to {doing}",
        "    if False:  # MUTANT\n        raise PreconditionFailed(f\"refusing to {doing}",
        ("tests/procedures/test_ingress_retry_preflight.py::test_an_ingress_without_retries_is_refused",)),
    Mutation(
        "shift-verify-ignores-stragglers", "the shift's verification accepts requests still served by the old colour",
        UP,
        "uv.all_served_by(seen, idle,",
        "uv.all_served_by([idle] * len(seen), idle,  # MUTANT: what was seen is ignored\n                     ",
        ("tests/procedures/test_shift_verify.py::test_a_request_still_reaching_the_old_colour_fails",)),
    Mutation(
        "redeploy-old-unverified", "the rollback shifts back without waiting for the old colour to catch up",
        "runbook/procedures/agave_rollback.py",
        "old_caught_up, is_done=old_deployed",
        "lambda ctx: None, is_done=old_deployed",
        (f"{CATCH}::test_the_rollbacks_redeploy_waits_for_the_old_colour",)),
    Mutation(
        "catch-up-wrong-version-waits", "a wrong release answering getVersion is waited for, not failed at once",
        "runbook/procedures/catch_up.py",
        "if st.version is not None and st.version != want:",
        "if False:  # MUTANT",
        (f"{CATCH}::test_a_wrong_release_fails_at_once",)),
    # ---------------------------------------------------------------- swap two steps
    Mutation(
        "shift-before-catch-up", "agave-upgrade's steps run shift before catch-up (step tuple reordered)",
        UP,
        "    steps=(\n        Step(\"snapshot\",",
        "    steps=(lambda *s: (lambda by: tuple(by.get({\"catch-up\": \"shift\", \"shift\": \"catch-up\"}"
        ".get(x.name, \"\"), x) for x in s))({x.name: x for x in s}))(  # MUTANT\n"
        "        Step(\"snapshot\",",
        ("tests/integration/test_plan_golden.py::test_plan_matches_its_golden_transcript[agave-upgrade]",)),
    # ---------------------------------------------------------------- return early from a wait
    Mutation(
        "wait-for-ignores-predicate", "runbook/wait.py wait_for returns the first observation without the predicate",
        "runbook/wait.py",
        "            if predicate(last):\n                return last",
        "            return last  # MUTANT",
        ("tests/test_wait.py::test_it_returns_the_first_observation_that_satisfies_the_predicate",)),
    Mutation(
        "catch-up-wait-returns-at-once", "the catch-up wait's predicate holds for any state (behind, unhealthy)",
        "runbook/procedures/catch_up.py",
        "            return st.health == \"ok\" and st.behind is not None",
        "            return True or st.health == \"ok\" and st.behind is not None",
        (f"{CATCH}::test_the_wait_returns_only_once_caught_up",)),
    Mutation(
        "rollout-wait-returns-at-once", "the kube adapter's wait_rollout accepts a rollout that is not done",
        "runbook/adapters/kube.py",
        "lambda: self.rollout_state(name), lambda s: s.done,",
        "lambda: self.rollout_state(name), lambda s: True,  # MUTANT\n                        ",
        ("tests/kube/test_fake_apiserver.py::test_during_a_long_grace_period_the_old_pod_is_never_the_running_one",)),
    # ---------------------------------------------------------------- delete a rollback
    Mutation(
        "shift-rollback-deleted", "the shift step has no rollback (restart_live gone): a failure after it leaves "
        "the old colour stopped",
        UP,
        "rollback=restart_live,",
        "rollback=None,  # MUTANT\n            ",
        ("tests/procedures/test_shift_rollback.py::test_a_failure_after_the_shift_restarts_the_old_colour",)),
    Mutation(
        "restore-data-not-rolled-back", "the rollback's restore-data does not roll the old data back to the snapshot",
        "runbook/procedures/agave_rollback.py",
        "    st.rollback(up._snapshot(ctx))\n",
        "    pass  # MUTANT\n",
        ("tests/procedures/test_snapshot_per_run.py::test_a_stale_pre_upgrade_snapshot_is_left_alone_and_not_cloned",)),
    Mutation(
        "clone-rollback-destroys-any", "the clone's rollback destroys the idle colour's dataset even when this run "
        "did not clone it (the kept old data)",
        "runbook/procedures/agave_data.py",
        "    if clone_exists(ctx):\n        unmount_and_destroy(ctx, _idle(ctx).data)",
        "    if True:  # MUTANT\n        unmount_and_destroy(ctx, _idle(ctx).data)",
        ("tests/procedures/test_clone_rollback.py::test_a_dataset_this_run_did_not_clone_is_left_alone",)),
    # ---------------------------------------------------------------- the template instead of the pod
    Mutation(
        "dz-patches-template", "dz-upgrade patches the Deployment template's sidecar image (the pod is replaced, "
        "agave restarts) instead of the running pod's",
        "runbook/procedures/dz_upgrade.py",
        "patch_pod_container_image(f.pod, ctx.env.doublezero.sidecar, f.target_image)",
        "patch_template_container_image(f.deployment, ctx.env.doublezero.sidecar, f.target_image)  # MUTANT",
        ("tests/procedures/test_dz_patch_target.py::test_the_patch_goes_to_the_running_pod_not_the_template",)),
    Mutation(
        "isolation-ignores-replaced-pod", "the isolation check does not notice the pod was replaced (agave restarted)",
        "runbook/checks/isolation.py",
        "    if not after.present:\n        out.append(",
        "    if False:  # MUTANT\n        out.append(",
        ("tests/procedures/test_dz_upgrade.py::test_isolation_names_each_way_agave_was_disturbed",)),
    # ---------------------------------------------------------------- verdicts the suite claims
    Mutation(
        "zero-drop-ignores-slow-answers", "the zero-drop verdict ignores answers later than the client's timeout",
        "runbook/checks/zero_drop.py",
        "    if slowest_ms > client_timeout * 1000:",
        "    if False:  # MUTANT",
        ("tests/probes/test_zero_drop_verdict.py::"
         "test_an_answer_slower_than_the_client_timeout_fails_even_if_the_record_says_ok",)),
    Mutation(
        "zero-drop-ignores-late-verdict", "requests the prober judged late are not counted as lost",
        "runbook/checks/zero_drop.py",
        "    lost = lost_by_cause(verdicts)",
        "    lost = {k: n for k, n in lost_by_cause(verdicts).items() if k != \"late\"}  # MUTANT",
        ("tests/probes/test_zero_drop_verdict.py::test_one_lost_request_fails_its_phase_by_cause[late]",)),
    Mutation(
        "dz-handover-ignores-second-daemon", "the DZ handover verdict ignores a second doublezerod on the same "
        "identity",
        "runbook/checks/dz_handover.py",
        "    crowded = [s for s in samples if len(s.daemons) > 1]",
        "    crowded = [s for s in samples if len(s.daemons) > 99]  # MUTANT",
        ("tests/procedures/test_dz_handover_verdict.py::test_a_second_daemon_and_its_flap_fail_naming_both",)),
    Mutation(
        "untouched-ignores-writes", "'the old colour's data is untouched' accepts a write after the colour stopped",
        "runbook/checks/untouched.py",
        "        if owner_running and key in (\"entries\", \"written\"):",
        "        if key in (\"entries\", \"written\", \"newest_ctime\"):  # MUTANT",
        ("tests/procedures/test_untouched.py::test_a_write_after_the_colour_stopped_fails[copy]",)),
    # ---------------------------------------------------------------- the canary gates (seed 004)
    Mutation(
        "inconclusive-gate-passes", "a gate with too little data to decide is taken for a pass (Flagger #1689)",
        "runbook/checks/canary.py",
        "    elif result.verdict == \"inconclusive\":\n        problems.append(",
        "    elif result.verdict == \"never\":  # MUTANT\n        problems.append(",
        ("tests/checks/test_canary.py::test_an_inconclusive_gate_is_not_a_pass",)),
    Mutation(
        "counts-as-increase", "a counter series first seen after the span's start is counted from its first value, "
        "as PromQL's increase() does: a new pod's and a first 500's counts are dropped",
        "runbook/canary/window.py",
        "                delta = value  # first seen after the start: counted from 0",
        "                delta = 0.0  # MUTANT",
        ("tests/canary/test_evaluate.py::test_new_pods_and_a_late_error_series_are_counted_from_zero",)),
    Mutation(
        "error-floor-ignored", "the error gate passes on fewer requests than min_requests",
        "runbook/canary/gates.py",
        "    elif upper < threshold and requests < min_requests:",
        "    elif False:  # MUTANT",
        ("tests/canary/test_gates.py::test_min_requests_turns_a_thin_pass_into_inconclusive_but_keeps_a_fail",)),
)

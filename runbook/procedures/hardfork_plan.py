"""What ``runbook plan hardfork-upgrade`` shows: every object read and written and every API call, in order, with
what each must show. Nothing is read: the incumbent revision (``--live``, else r1), the upgrade height (H, the
chain's plan at run time) and the replica count (2) are assumed, and the header says so."""

from __future__ import annotations

from typing import Any

from runbook.env import Env
from runbook.env_hardfork import HardforkConfig
from runbook.procedures.facts import HardforkFacts
from runbook.procedures.framework import Context
from runbook.procedures.planning import Planner, PlanRequest, kubectl

Ctx = Context[HardforkFacts]
ASSUMED_REPLICAS = 2


def _cfg(ctx: Context[Any]) -> HardforkConfig:
    c: HardforkConfig = ctx.adapters.hardfork  # an env without the section: a ConfigError naming it
    return c


def assume(ctx: Ctx) -> None:
    from runbook.procedures.hardfork_nodes import revision_for

    c, f = _cfg(ctx), ctx.facts
    version = str(ctx.params.get("target_version") or ctx.params.get("version") or "$VERSION")
    f.incumbent = str(ctx.params.get("live") or "r1")
    f.entrant = revision_for(version) if version != "$VERSION" else "$REVISION"
    f.image = f"{c.image}:{version}"
    f.incumbent_image = f"{c.image}:<the incumbents' tag>"
    f.upgrade = "<the plan's name>"
    f.incumbent_sts = {"spec": {"replicas": ASSUMED_REPLICAS}}


def _ordinals(ctx: Ctx) -> range:
    return range(int(ctx.facts.incumbent_sts.get("spec", {}).get("replicas", ASSUMED_REPLICAS)))


def read(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} get service {c.service} -o json   # spec.selector[{c.revision_label}]: the incumbent revision "
            f"({f.incumbent})",
            f"{k} get statefulset {c.statefulset(f.incumbent)} -o json   # the source of every entrant object; its "
            f"container {c.container}'s image is the bootstrap image",
            f"GET {c.network_rpc}/cosmos/upgrade/v1beta1/current_plan   # the upgrade plan: H (a --halt-height given "
            "must be the plan's)",
            f"GET {c.network_rpc}/status   # the tip must be below H-1 (else too late for a bootstrap to H-1)",
            f"{k} get pods -l app={c.app},{c.revision_label}={f.incumbent} -o json   # the incumbents' start times "
            "and restart counts (must not change until the teardown)"]


def create(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    sts = c.statefulset(f.entrant)
    lines = [f"{k} create pvc data-{sts}-{i}   # from the incumbent's volumeClaimTemplate, labelled "
             f"{c.revision_label}={f.entrant}: the entrant StatefulSet adopts it" for i in _ordinals(ctx)]
    lines += [f"{k} create job {c.bootstrap_job(f.entrant, i)}   # the incumbent's pod template, image "
              f"{f.incumbent_image}, args + --snapshot-s3 {c.snapshot_s3} --target-height H-2 (a snapshot below "
              f"H-1) --halt-height H-1, volume data-{sts}-{i}, restartPolicy Never, backoffLimit 0, no probes, "
              f"app={c.app}-bootstrap"
              for i in _ordinals(ctx)]
    return lines


def create_verify(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} get pvc,job -l {c.revision_label}={f.entrant}   # every claim and bootstrap Job exists"]


def delete(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    sts = c.statefulset(f.entrant)
    jobs = " ".join(c.bootstrap_job(f.entrant, i) for i in _ordinals(ctx))
    claims = " ".join(f"data-{sts}-{i}" for i in _ordinals(ctx))
    return [f"{k} delete statefulset {sts} --wait   # if created",
            f"{k} delete job {jobs} --wait",
            f"{k} delete pvc {claims} --wait",
            f"{k} get pods -l app={c.app},{c.revision_label}={f.incumbent} -o json   # untouched: same pods, start "
            "times, restart counts",
            f"{k} get service {c.service} -o json; {k} get endpointslices -l kubernetes.io/service-name={c.service}"
            f"   # still pins {f.incumbent}, its ready pods behind it"]


def await_running(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    sts = c.statefulset(f.entrant)
    return [f"every {c.poll:g}s: GET {c.network_rpc}/status   # the tip, toward H-1 and H, with an ETA; the first "
            f"time it is >= H starts the deadline ({c.running_timeout:g}s)",
            f"every {c.poll:g}s: {k} get job {c.bootstrap_job(f.entrant, 0)} ... -o json; {k} get pods -l "
            f"job-name=<job> -o json   # a Failed condition, a failed pod, or a container waiting ErrImagePull/"
            f"ImagePullBackOff/...: failed at once; no pod running {c.bootstrap_timeout:g}s after the creation: failed",
            f"every {c.poll:g}s: {k} exec <bootstrap pod> -c {c.container} -- seid status --node tcp://<pod ip>:26657"
            "   # its height toward H-1 (progress)",
            "# every Job Complete (its seid halted at H-1):",
            f"{k} delete job " + " ".join(c.bootstrap_job(f.entrant, i) for i in _ordinals(ctx)) +
            "   # TeardownBootstrap: the claims stay",
            f"{k} create statefulset {sts}   # from statefulset {c.statefulset(f.incumbent)} (live): renamed, "
            f"{c.revision_label}={f.entrant} in its labels, selector and template, image {f.image}, the same "
            "volumeClaimTemplates (it adopts the claims)",
            f"every {c.poll:g}s: {k} get pods -l app={c.app},{c.revision_label}={f.entrant} -o json; {k} exec <pod> "
            f"-c {c.container} -- seid status ...; seid query upgrade applied {f.upgrade} ...   # Ready, "
            f"{f.image.rsplit(':', 1)[-1]}, height >= H, not catching up, the handler's mark at H",
            f"# deadline: {c.running_timeout:g}s after the network reached H (kept in the journal: a resume or a crash "
            "loop never restarts it); a chain below H is a wait, not a failure"]


def await_running_verify(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} get pods -l app={c.app},{c.revision_label}={f.entrant}; {k} exec <pod> -- seid status ...   "
            f"# every entrant Running on the new binary past H, the handler's mark at H"]


def switch(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} get pods -l app={c.app},{c.revision_label}={f.incumbent} -o json   # the incumbents' state at "
            "the switch (untouched so far?)",
            f"{k} replace service {c.service}   # spec.selector {c.revision_label}={f.entrant} (on the "
            "resourceVersion read)"]


def switch_verify(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"every 0.2s: {k} get endpointslices -l kubernetes.io/service-name={c.service}   # exactly the ready "
            f"pods of {c.statefulset(f.entrant)} (deadline 60s)"]


def unswitch(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} replace service {c.service}   # spec.selector {c.revision_label}={f.incumbent}",
            f"every 0.2s: {k} get endpointslices -l kubernetes.io/service-name={c.service}   # the incumbents' pods"]


def teardown(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} delete statefulset {c.statefulset(f.incumbent)} --wait   # its pods go; its claims are kept "
            "(the operator's to delete)"]


def teardown_verify(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} get statefulset,pods -l app={c.app},{c.revision_label}={f.incumbent}   # none",
            f"{k} get endpointslices -l kubernetes.io/service-name={c.service}   # still the entrants' pods"]


def untear(ctx: Ctx) -> list[str]:
    c, f, k = _cfg(ctx), ctx.facts, kubectl(ctx.env)
    return [f"{k} create -f <statefulset {c.statefulset(f.incumbent)} as read>   # on its kept claims; past H its "
            "binary panics at H (UPGRADE NEEDED): the objects come back, the chain does not go back"]


def header(env: Env, req: PlanRequest, ctx: Ctx) -> tuple[list[str], list[str], list[str]]:
    c, f = _cfg(ctx), ctx.facts
    return ([f"  entrant image {f.image} (revision {f.entrant}); bootstrap from {c.snapshot_s3}",
             f"  bootstrap deadline {c.bootstrap_timeout:g}s, running deadline {c.running_timeout:g}s after the "
             f"network reaches H, poll {c.poll:g}s"],
            [f"  incumbent revision {f.incumbent} (--live), {ASSUMED_REPLICAS} replicas; H is the chain's upgrade "
             f"plan at run time (read from {c.network_rpc}), shown as H"],
            ["  before the switch: the entrant's StatefulSet, Jobs and claims deleted, the incumbents checked "
             "untouched and still behind the Service; after it: the selector back first"])


PLANNER = Planner(facts=assume, header=header)

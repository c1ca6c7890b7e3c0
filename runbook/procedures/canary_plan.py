"""What ``runbook plan canary-promote`` shows: every object read, every Prometheus query and every API call, in
order, with what each must show. Nothing is read: the images and the revision are assumed from deploy/k8s/canary
(a run reads them from the live Deployments) and the header says so."""

from __future__ import annotations

import json
from typing import Any

from runbook.adapters.base import PodInfo
from runbook.canary import evaluate as ev
from runbook.canary import promql
from runbook.env import PROJECT_ROOT, Env
from runbook.env_canary import CanaryConfig
from runbook.procedures.facts import CanaryFacts
from runbook.procedures.framework import Context
from runbook.procedures.planning import Planner, PlanRequest, kubectl

MANIFESTS = PROJECT_ROOT / "deploy" / "k8s" / "canary"
NOW = "$NOW"  # the Unix time a run reads when it gets there
START = "$ROLLOUT_START"


def _cfg(ctx: Context[Any]) -> CanaryConfig:
    c = ctx.env.canary
    assert c is not None
    return c


def _manifest_images() -> dict[str, tuple[str, str]]:
    """Deployment name -> (first container's image, template label version), from deploy/k8s/canary."""
    from runbook.kustomize import kustomize

    out: dict[str, tuple[str, str]] = {}
    if not (MANIFESTS / "kustomization.yaml").exists():
        return out
    for obj in kustomize(MANIFESTS):
        if obj.get("kind") == "Deployment":
            tmpl = obj["spec"]["template"]
            out[obj["metadata"]["name"]] = (tmpl["spec"]["containers"][0]["image"],
                                            str((tmpl.get("metadata", {}).get("labels") or {}).get("version", "")))
    return out


def assume(ctx: Context[CanaryFacts]) -> None:
    from runbook.procedures.canary_promote import split_tag

    c, f = _cfg(ctx), ctx.facts
    images = _manifest_images()
    canary = images.get(c.canary, (f"<{c.canary}'s image>:<release>{c.suffix}", ""))[0]
    f.old_image, f.old_version = images.get(c.production, (f"<{c.production}'s image>", "<its version label>"))
    repo, tag = split_tag(canary)
    f.canary_image = canary
    f.target_version = str(ctx.params.get("target_version") or "").lstrip("v") or tag.removesuffix(c.suffix)
    f.target_image = f"{repo}:{f.target_version}"
    f.tag = f"v{f.target_version}"
    f.old_revision = 0


def _repo(ctx: Context[CanaryFacts]) -> str:
    from runbook.procedures.canary_promote import release_repo

    return str(release_repo(ctx.env).path)


def _git(ctx: Context[CanaryFacts]) -> str:
    return f"git -C {_repo(ctx)}"


def _rev(ctx: Context[CanaryFacts]) -> str:
    return str(ctx.facts.old_revision) if ctx.facts.old_revision else "$REVISION"


def header(env: Env, req: PlanRequest, ctx: Context[CanaryFacts]) -> tuple[list[str], list[str], list[str]]:
    c, f = _cfg(ctx), ctx.facts
    params = [f"  target release {f.target_version} (image {f.target_image}, tag {f.tag})",
              f"  gates: 5xx below {c.gates.max_error_rate:.0%} at {c.gates.confidence:.0%} in every "
              f"{c.gates.window:g}s window, p{c.gates.latency_quantile * 100:g} at most {c.gates.latency_ratio:g}x "
              f"the {c.gates.baseline:g}s baseline (or +{c.gates.latency_tolerance * 1000:g} ms), tokens counted; "
              f"at least {c.gates.min_requests} requests to decide; soak {c.gates.soak:g}s; rollout deadline "
              f"{c.rollout:g}s"]
    assumed = [f"  the canary {c.canary} runs {f.canary_image} and production {c.production} runs {f.old_image} "
               f"(version {f.old_version}), as {MANIFESTS.relative_to(PROJECT_ROOT)} names them",
               "  $REVISION: production's revision before the patch (`kubectl rollout history`), the undo's target",
               f"  {NOW}, {START}: the Unix times a run reads (Prometheus range queries span them)"]
    on_failure = ["  a failed checklist item: nothing was changed; the run stops, naming each item that failed",
                  f"  a failed or (at the end) inconclusive gate, or a rollout past {c.rollout:g}s: "
                  f"`kubectl rollout undo deployment/{c.production} --to-revision=$REVISION`, then every pod back on "
                  f"{f.old_image}"]
    return params, assumed, on_failure


def _q(call: promql.ApiCall, c: CanaryConfig) -> str:
    return f"GET {c.prometheus}{call.path}?" + "&".join(f"{k}={v}" for k, v in call.params)


def _range(c: CanaryConfig, query: str, start: str, end: str) -> str:
    return f"GET {c.prometheus}{promql.QUERY_RANGE_PATH}?query={query}&start={start}&end={end}&step={c.gates.step:g}"


def checklist(ctx: Context[CanaryFacts]) -> list[str]:
    c, f = _cfg(ctx), ctx.facts
    k = kubectl(ctx.env)
    before = f"{NOW}-{c.gates.baseline:g}"
    return [
        f"{k} get deployment {c.canary} -o json   # the canary's image: {f.canary_image}",
        f"{k} get deployment {c.production} -o json   # production's image {f.old_image}, label version",
        f"{k} rollout history deployment/{c.production}   # $REVISION: the current one",
        _range(c, promql.requests_counter(c.canary_variant), before, NOW) + "   # workers used the canary",
        f"GET {c.prometheus}/api/v1/alerts   # no alert firing with variant={c.canary_variant}",
        _range(c, promql.tokens_series_selector(c.canary_variant), before, NOW)
        + "   # tokens counted on the canary: rose while it served",
        f"{k} rollout status deployment/{c.canary}; {k} get pods -l app=zai-proxy,variant=test   # every pod Ready",
        f"POST {c.canary_url}/v1/chat/completions   # functional test: 200, a choice, usage.total_tokens > 0",
        f"# the canary's tag is <release>{c.suffix} and its pods run {f.canary_image}",
        f"{_git(ctx)} status --porcelain; {_git(ctx)} rev-parse -q --verify refs/tags/{f.tag}   # clean, no such tag "
        "yet",
    ]


def baseline(ctx: Context[CanaryFacts]) -> list[str]:
    c, f = _cfg(ctx), ctx.facts
    labels = {"app_version": f.old_version} if f.old_version else {}
    before = f"{NOW}-{c.gates.baseline:g}"
    return [_range(c, promql.selector(promql.DURATION + "_bucket", c.variant, labels), before, NOW)
            + "   # production's latency histogram before the rollout",
            _range(c, promql.requests_counter(c.variant, labels), before, NOW) + "   # and its traffic"]


def baseline_verify(ctx: Context[CanaryFacts]) -> list[str]:
    c = _cfg(ctx)
    return [f"# the baseline holds >= {c.gates.min_requests} requests: else inconclusive, the promotion does not start"]


def roll_out(ctx: Context[CanaryFacts]) -> list[str]:
    c, f = _cfg(ctx), ctx.facts
    k = kubectl(ctx.env)
    cause = f"runbook canary-promote $RUN_ID: {f.old_image} -> {f.target_image}"
    patch = json.dumps({"spec": {"template": {
        "metadata": {"labels": {"version": f.target_version}, "annotations": {"kubernetes.io/change-cause": cause}},
        "spec": {"containers": [{"name": c.container, "image": f.target_image}]}}}}, separators=(",", ":"))
    return [f"{k} patch deployment {c.production} --type=strategic -p '{patch}'   # {START}: one new revision "
            f"(`kubectl set image` plus the version label)"]


def watch(ctx: Context[CanaryFacts]) -> list[str]:
    c, f = _cfg(ctx), ctx.facts
    k = kubectl(ctx.env)
    g = c.gates
    labels = {"app_version": f.target_version}
    lines = [f"# every {g.check_every:g}s until the rollout is done and {g.soak:g}s more (deadline {c.rollout:g}s "
             "from the patch):",
             f"{k} rollout status deployment/{c.production}   # updated, ready, available; waiting reasons of new pods"]
    lines += [_range(c, call.params[0][1], START, NOW) for call in
              ev.calls(g, variant=c.variant, labels=labels, start=0.0, end=1.0)]
    lines += [f"# error rate: 5xx of {f.target_version}'s requests below {g.max_error_rate:.0%} at {g.confidence:.0%} "
              f"in every {g.window:g}s window (Wilson bounds; fail as soon as one window is above)",
              f"# latency: p{g.latency_quantile * 100:g} of {f.target_version} at most {g.latency_ratio:g}x baseline",
              f"# tokens: {promql.TOKENS} of {f.target_version} rises while it serves",
              f"# inconclusive (fewer than {g.min_requests} requests) at the end of the soak: the promotion stops"]
    return lines


def undo(ctx: Context[CanaryFacts]) -> list[str]:
    c, f = _cfg(ctx), ctx.facts
    k = kubectl(ctx.env)
    return [f"{k} rollout undo deployment/{c.production} --to-revision={_rev(ctx)}",
            f"{k} rollout status deployment/{c.production}   # deadline {c.rollout:g}s: every pod Ready on "
            f"{f.old_image}, labelled version={f.old_version}"]


def verify(ctx: Context[CanaryFacts]) -> list[str]:
    c, f = _cfg(ctx), ctx.facts
    k = kubectl(ctx.env)
    return [f"{k} rollout status deployment/{c.production}   # done: no pod of another revision",
            f"{k} get pods -l app=zai-proxy,variant=production -o json   # every pod Ready, status image "
            f"{f.target_image}, label version={f.target_version}"]


def finalize(ctx: Context[CanaryFacts]) -> list[str]:
    c, f = _cfg(ctx), ctx.facts
    lines = [f"echo {f.target_version} > {_repo(ctx)}/VERSION; {_git(ctx)} add VERSION",
             f"{_git(ctx)} commit -m 'chore: release zai-proxy v{f.target_version}'",
             f"{_git(ctx)} tag -a {f.tag} -m 'Release zai-proxy v{f.target_version} ...' HEAD"]
    if c.remote:
        lines.append(f"{_git(ctx)} push {c.remote} refs/tags/{f.tag}")
    return lines


def finalize_verify(ctx: Context[CanaryFacts]) -> list[str]:
    f = ctx.facts
    return [f"{_git(ctx)} cat-file -t refs/tags/{f.tag}   # tag (annotated)",
            f"{_git(ctx)} show {f.tag}^{{commit}}:VERSION   # {f.target_version}"]


def unfinalize(ctx: Context[CanaryFacts]) -> list[str]:
    c, f = _cfg(ctx), ctx.facts
    return [f"{_git(ctx)} tag -d {f.tag}   # only when it is on this run's commit",
            f"echo {f.target_version}{c.suffix} > {_repo(ctx)}/VERSION; {_git(ctx)} commit -am 'revert: ...'"]


def stalled(pods: list[PodInfo], c: CanaryConfig) -> str:
    """Why new pods are not Ready: their containers' waiting reasons and restart counts, read directly."""
    out = []
    for p in pods:
        for cs in p.containers:
            if not p.ready:
                out.append(f"{p.name}/{cs.name} {cs.state}{':' + cs.reason if cs.reason else ''} "
                           f"restarts {cs.restart_count}")
    return "pods not Ready: " + ("; ".join(out) if out else "none")


PLANNER = Planner(facts=lambda ctx: None, header=header)


def undo_header(env: Env, req: PlanRequest, ctx: Context[CanaryFacts]) -> tuple[list[str], list[str], list[str]]:
    c, f = _cfg(ctx), ctx.facts
    return ([f"  deployment {c.production}, back to revision {f.to_revision}"],
            ["  $CURRENT: the revision production runs now, read from its rollout history"],
            [f"  a verification past {c.rollout:g}s: `kubectl rollout undo deployment/{c.production} "
             "--to-revision=$CURRENT`, then every pod back on its image"])


UNDO = Planner(facts=lambda ctx: None, header=undo_header)

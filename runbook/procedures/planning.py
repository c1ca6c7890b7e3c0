"""``runbook plan``: a procedure rendered for an env as the commands and API calls it would make, with the
parameters and assumptions it was rendered with. It reads no state and contacts nothing: what a run reads
from real state (the live colour, the running images, the run id) is assumed, and said so.

Per step: ``check`` (preconditions read before acting), ``do`` (the action), ``verify`` (what the
verification reads and must see), ``rollback`` (the commands that undo it, or why there are none).
Host commands are shown behind a prompt naming the host they run on (``biscayne$``), with ``sudo`` when
the env's host URL asks for it; kubectl lines are the Kubernetes API calls the runner makes, spelled as
kubectl; HTTP lines are the runner's own requests.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from runbook.env import Env
from runbook.errors import ConfigError

RUN_ID = "YYYYMMDDTHHMMSSZ-xxxx"  # a run id's shape: what agave_upgrade.snapshot_name gives in plan mode
CLEANUPS = ("keep", "destroy")
AGAVE = ("agave-upgrade", "agave-rollback")  # the procedures behind the ingress, on the host's loopback
NEGATIVE_ONLY = {"seed-upgrade": "the seed document's procedure is for negative tests only (it shows the bugs the "
                                 "suite catches, through pytest --procedure-override agave-upgrade=seed-upgrade on a "
                                 "testbed); it is never run on an env, so it has no plan",
                 **{name: "a release with a known flaw, for negative tests only (pytest --procedure-override "
                          f"release={name} on a testbed); it has no plan"
                    for name in ("release-early-switch", "release-rollback-deletes-active", "release-deadline-resets")},
                 **{name: "a hard fork as an earlier design had it, for negative tests only (pytest "
                          f"--procedure-override hardfork-upgrade={name} on a testbed); it has no plan"
                    for name in ("hardfork-seed-order", "hardfork-halt-signal")}}


@dataclass(frozen=True)
class PlanRequest:
    procedure: str
    target_version: str | None = None
    live: str | None = None  # the colour assumed live; None: the procedure's default assumption
    cleanup: str = "keep"
    to_revision: int | None = None  # canary-undo


# ------------------------------------------------------------------------------------------- lines
def host_label(env: Env) -> str:
    """``ssh://biscayne`` -> ``biscayne``; ``docker://runbook-control-plane`` -> the node; ``local://`` -> ``local``."""
    parts = urlsplit(env.host)
    return parts.hostname or parts.path.strip("/") or "local"


def host_sudo(env: Env) -> bool:
    values = parse_qs(urlsplit(env.host).query).get("sudo", [])
    return any(v.lower() in ("true", "1", "yes") for v in values)


def on_host(env: Env, commands: list[str]) -> list[str]:
    """Host commands behind the host's prompt (comments kept as they are)."""
    sudo = "sudo -n -- sh -c " if host_sudo(env) else ""
    out = []
    for c in commands:
        if c.startswith("#"):
            out.append(c)
        else:
            out.append(f"{host_label(env)}$ {sudo}{shlex.quote(c) if sudo else c}")
    return out


def kubectl(env: Env) -> str:
    kube = env.kube
    return f"kubectl --context {kube.context} -n {kube.namespace}" if kube else "kubectl (the local kubelet)"


# ------------------------------------------------------------------------------------------- header
def _where(env: Env, procedure: str, *, loopback: bool, root_for: str) -> list[str]:
    host = host_label(env)
    rows = []
    if env.host.startswith("ssh://"):
        root_for = ", ".join(x for x in (root_for, f"the journal's {_journal_dir(env)}") if x)
        who = "with sudo (the host URL says ?sudo=true)" if host_sudo(env) else \
            "as its ssh user, without sudo (the host URL has no ?sudo=true)" + \
            (f": that user needs root (or delegated rights) for {root_for}" if root_for else "")
        rows.append((f"{host}$ ...", f"runs on {env.host} as `timeout N sh -c '<command>'` over ssh, {who}"))
    elif env.host.startswith("docker://"):
        rows.append((f"{host}$ ...", f"runs in the node container {host} ({env.host}, docker exec)"))
    else:
        rows.append((f"{host}$ ...", f"runs on this machine ({env.host})"))
    if env.kube is not None:
        rows.append(("kubectl ...", f"the Kubernetes API calls the runner makes (its client, not kubectl) through "
                                    f"kubeconfig context {env.kube.context}, namespace {env.kube.namespace}"))
    else:
        rows.append(("kubectl ...", "the local testbed's kubelet, through its Python API (there is no kubectl)"))
    if loopback:
        ports = [str(env.ingress.admin_port), *(str(env.deployments.colour(c).rpc_port) for c in ("green", "blue"))]
        what = f"the Caddy admin API {env.ingress.admin} and the colours' RPC ports {ports[1]} and {ports[2]}"
        if env.host_target.remote:
            rows.append(("loopback", f"{what} are on {host}'s loopback: the runner reaches them through ssh tunnels "
                                     f"it opens to {host} (one per port, on free local ports, closed at exit)"))
        else:
            rows.append(("loopback", f"{what}, on this machine's loopback"))
    rows.append(("journal", _journal(env, procedure)))
    width = max(len(label) for label, _ in rows)
    return [f"  {label:<{width}}  {text}" for label, text in rows]


def _agave_root(env: Env) -> str:
    from runbook.testbed.caddy import order_path

    return f"zfs, /srv, {order_path(env).rsplit('/', 1)[0]} (the upstream order file)"


def _journal_dir(env: Env) -> str:
    from runbook.procedures import journal_store

    return str(journal_store(env).directory)


def _journal(env: Env, procedure: str) -> str:
    from runbook.procedures import journal_store
    from runbook.procedures.journal import HostStore

    store = journal_store(env)
    where = f"on {env.host.split('?', 1)[0]}" if isinstance(store, HostStore) else "on this machine"
    return (f"{store.directory}/{procedure}.json {where}, written after every step, with the env's lock held for "
            "the whole run (a second run is refused, naming the holder)")


def header(env: Env, req: PlanRequest, proc: Any, params: list[str], assumed: list[str],
           on_failure: list[str]) -> list[str]:
    argv = [f"runbook plan {req.procedure}", f"--env={env.name}"]
    if req.target_version:
        argv.append(f"--target-version={req.target_version}")
    if req.live:
        argv.append(f"--live={req.live}")
    if req.procedure == "agave-upgrade":
        argv.append(f"--cleanup={req.cleanup}")
    if req.to_revision is not None:
        argv.append(f"--to-revision={req.to_revision}")
    kind = "PRODUCTION" if env.production else ("disposable testbed" if env.disposable else "not disposable")
    return [
        "# " + " ".join(argv),
        f"# {proc.name}: {proc.summary}",
        f"# env {env.name} ({kind}). Nothing was run: this plan read no state and contacted nothing.",
        "",
        "parameters:", *params,
        "assumed (a run reads these from real state instead):", *assumed,
        "where the lines run:", *_where(env, req.procedure, loopback=req.procedure in AGAVE,
                                        root_for=_agave_root(env) if req.procedure in AGAVE else ""),
        "on failure:", *on_failure,
    ]


# ------------------------------------------------------------------------------------------- rendering
def _section(title: str, lines: list[str]) -> list[str]:
    return [f"  {title}:", *(f"    {ln}" for ln in lines)] if lines else []


def render(env: Env, req: PlanRequest, adapters: Any) -> str:
    """The whole plan as text (what ``runbook plan`` prints, and the golden transcripts hold)."""
    from runbook.procedures import agave_plan, canary_plan, dz_plan, get, hardfork_plan, release_plan

    if req.procedure in NEGATIVE_ONLY:
        raise ConfigError(f"{req.procedure} is not planned: {NEGATIVE_ONLY[req.procedure]}")
    proc = get(req.procedure)
    planners: dict[str, Any] = {"agave-upgrade": agave_plan.UPGRADE, "agave-rollback": agave_plan.ROLLBACK,
                                "dz-upgrade": dz_plan.PLANNER, "canary-promote": canary_plan.PLANNER,
                                "canary-undo": canary_plan.UNDO, "release": release_plan.PLANNER,
                                "hardfork-upgrade": hardfork_plan.PLANNER}
    if req.procedure not in planners:
        raise ConfigError(f"{req.procedure} has no plan")
    if req.cleanup not in CLEANUPS:
        raise ConfigError(f"--cleanup={req.cleanup}: expected one of {', '.join(CLEANUPS)}")
    if req.cleanup != "keep" and req.procedure != "agave-upgrade":
        raise ConfigError(f"--cleanup is an option of agave-upgrade, not of {req.procedure}")
    if req.procedure == "canary-undo" and req.to_revision is None:
        raise ConfigError("canary-undo needs --to-revision to plan (a revision of `kubectl rollout history`)")
    if not req.target_version and not req.procedure.startswith("canary-"):  # canary-promote: the canary's tag says
        raise ConfigError(f"{req.procedure} needs --target-version to plan"
                          + (" (the version the upgrade installed)" if req.procedure == "agave-rollback" else ""))
    planner = planners[req.procedure]
    ctx = proc.context(adapters, _params(req), progress=lambda msg: None)
    planner.facts(ctx)
    steps = proc.plan(ctx)
    params, assumed, on_failure = planner.header(env, req, ctx)
    lines = header(env, req, proc, params, assumed, on_failure)
    for i, sp in enumerate(steps, 1):
        lines += ["", f"# {i}. {sp.step.name}: {sp.step.summary}"]
        lines += _section("check", sp.check) + _section("do", sp.action) + _section("verify", sp.verify)
        lines += _section("rollback", sp.rollback) if sp.rollback else ["  rollback: none"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Planner:
    """What a procedure adds to its plan: facts derived before its steps are rendered (a procedure whose
    facts come from a journal has no prepare), and its header's parameters, assumptions and failure policy."""

    facts: Callable[[Any], None]
    header: Callable[[Env, PlanRequest, Any], tuple[list[str], list[str], list[str]]]


def _params(req: PlanRequest) -> dict[str, Any]:
    params: dict[str, Any] = {"plan": True, "target_version": req.target_version}
    if req.live:
        params["live"] = req.live
    if req.procedure == "agave-upgrade":
        params["cleanup"] = req.cleanup
    if req.to_revision is not None:
        params["to_revision"] = req.to_revision
    return params


def selector(env: Env, colour: str) -> str:
    """The colour's pod selector as deploy/k8s gives it (``-l`` syntax)."""
    from runbook.manifests import render_deployment

    labels = render_deployment(env, colour)["spec"]["selector"]["matchLabels"]
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

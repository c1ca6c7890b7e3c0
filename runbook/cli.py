"""The ``runbook`` command line. Errors print one clear line and exit non-zero; no tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from runbook.env import Env, load_env
from runbook.errors import RunbookError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Verified runbooks for zero-downtime upgrades.")
testbed_app = typer.Typer(no_args_is_help=True, help="The local testbed (or the kind cluster with --env=kind).")
app.add_typer(testbed_app, name="testbed")

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

EnvOption = typer.Option("local", "--env", help="environment name under envs/ or a path to a YAML file")


def _env(name: str) -> Env:
    return load_env(name)


def _say(msg: str) -> None:
    console.print(f"[dim]•[/dim] {msg}")


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except RunbookError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None


@testbed_app.command("up")
def testbed_up(env: str = EnvOption) -> None:
    """Bring the testbed up: storage, namespace, supervisord, Caddy, green (sidecar + validator)."""

    def run() -> None:
        e = _env(env)
        if e.testbed is None and e.kube is not None:
            from runbook.testbed import kind

            kind.up(e, progress=_say)
            return
        from runbook.testbed.stack import Testbed

        tb = Testbed(e)
        try:
            tb.up(progress=_say)
        except BaseException:
            _say("bring-up failed: removing what was started")
            tb.down(progress=_say)
            raise
        backend, reason = tb.storage_backend
        out.print(f"testbed up: {e.ingress.url} (storage {backend}: {reason}; netns {tb.netns or 'none'})")

    _guard(run)


@testbed_app.command("down")
def testbed_down(env: str = EnvOption) -> None:
    """Stop and remove everything the testbed made (processes, mounts, loop devices, namespaces)."""

    def run() -> None:
        e = _env(env)
        if e.testbed is None and e.kube is not None:
            from runbook.testbed import kind

            kind.down(e, progress=_say)
            return
        from runbook.testbed.stack import Testbed

        Testbed(e).down(progress=_say)
        out.print("testbed down: nothing left behind")

    _guard(run)


@testbed_app.command("status")
def testbed_status(env: str = EnvOption) -> None:
    """What the testbed is running, as supervisord sees it."""

    def run() -> None:
        from runbook.testbed.stack import Testbed

        tb = Testbed(_env(env))
        if not tb.running():
            out.print("testbed is down")
            left = tb.leftovers()
            if left:
                out.print("leftovers: " + "; ".join(left))
            raise typer.Exit(1)
        for p in tb.supervisor.all():
            out.print(f"{p.name:60} {p.state:9} pid {p.pid}")

    _guard(run)


# ------------------------------------------------------------------------------------------- procedures
TargetOption = typer.Option(None, "--target-version", help="version to install, e.g. v2.2.1")


def _adapters(e: Env) -> Any:
    from runbook.adapters.factory import connect

    if e.testbed is not None:
        from runbook.testbed.stack import Testbed

        tb = Testbed(e)
        if not tb.running():
            raise RunbookError(f"the testbed of env {e.name} is down: `runbook testbed up --env {e.name}`")
        return connect(e, tb)
    return connect(e)


def _confirm(e: Env, what: str, target: str | None, yes: bool, *, need_target: bool = True) -> None:
    if not e.production:
        return
    if need_target and not target:
        raise RunbookError(f"env {e.name} is production: {what} needs an explicit --target-version")
    if yes:
        return
    if not sys.stdin.isatty():
        raise RunbookError(f"env {e.name} is production: confirm {what} with --yes (no terminal to ask on)")
    if not typer.confirm(f"{what} on PRODUCTION env {e.name}?", default=False):
        raise RunbookError("not confirmed: nothing was changed")


CleanupOption = typer.Option("keep", "--cleanup", help="agave-upgrade: keep (default) the old colour's data and "
                             "the pre-upgrade snapshot, the rollback point, or destroy them at the end")


@app.command("plan")
def plan(procedure: str, env: str = EnvOption, target_version: str = TargetOption,
         live: str = typer.Option(None, "--live", help="the colour assumed serving (plan reads no state): green for "
                                  "agave-upgrade and dz-upgrade, blue (the upgrade's new colour) for agave-rollback; "
                                  "hardfork-upgrade: the revision the Service pins (default r1)"),
         cleanup: str = CleanupOption,
         to_revision: int = typer.Option(None, "--to-revision", help="canary-undo: the revision of production's "
                                         "rollout history to go back to")) -> None:
    """Print every command and API call a procedure would make on an env: per step its checks, action,
    verification and rollback. Reads no state, contacts nothing, runs nothing."""

    def run() -> None:
        from runbook.adapters.factory import plan_adapters
        from runbook.procedures.planning import PlanRequest, render

        e = _env(env)
        if live is not None and procedure != "hardfork-upgrade" and live not in ("green", "blue"):
            raise RunbookError(f"--live={live}: expected green or blue")
        req = PlanRequest(procedure, target_version=target_version, live=live, cleanup=cleanup, to_revision=to_revision)
        sys.stdout.write(render(e, req, plan_adapters(e)))

    _guard(run)


@app.command("run")
def run_procedure(procedure: str, env: str = EnvOption, target_version: str = TargetOption,
                  cleanup: str = CleanupOption,
                  confirm_destroy: str = typer.Option(None, "--confirm-destroy", metavar="DATASET",
                                                      help="production: confirm --cleanup=destroy by naming the "
                                                           "old colour's dataset it destroys"),
                  yes: bool = typer.Option(False, "--yes", help="confirm the run on a production env")) -> None:
    """Run exactly the procedure's operator scenario (its feature's @operator scenario, never its proofs),
    with the operator's parameters: the same steps, checks and evidence as the suite."""

    def run() -> None:
        import shlex
        import subprocess

        from runbook import operator_run as op
        from runbook.env import PROJECT_ROOT

        e = _env(env)
        req = op.RunRequest(procedure, target_version, cleanup, confirm_destroy, yes)
        op.check(e, req)
        title = op.operator_scenario(procedure)
        out.print(f"runbook run {procedure} on env {e.name}{' (PRODUCTION)' if e.production else ''} runs the "
                  f"scenario \"{title}\" ({op.OPERATORS[procedure].feature}, @operator) and nothing else",
                  markup=False, highlight=False)
        for k, v in op.params(e, req).items():
            out.print(f"  {k}: {v}", markup=False, highlight=False)
        _confirm(e, f"running {procedure}", target_version, yes)
        if e.production and cleanup == "destroy":
            req = op.RunRequest(procedure, target_version, cleanup, _confirm_destroy(e, req), yes)
        from runbook.procedures import before_run

        _say(before_run(e, procedure, target_version))  # the lock and the journal, checked before anything runs
        argv = op.pytest_argv(env, req)
        _say(shlex.join(["pytest", *argv[3:]]))
        rc = subprocess.run(argv, cwd=PROJECT_ROOT, check=False).returncode
        raise typer.Exit(rc)

    _guard(run)


def _confirm_destroy(e: Env, req: Any) -> str:
    """--cleanup=destroy on production: confirmed apart from --yes, by the dataset's name, given or typed."""
    from runbook import operator_run as op
    from runbook.plugin import destroy_confirmation_problem
    from runbook.procedures import bluegreen as bg

    if req.confirm_destroy:
        problem = destroy_confirmation_problem(e, req.confirm_destroy)
        if problem:
            raise RunbookError(problem)
        return str(req.confirm_destroy)
    if not sys.stdin.isatty():
        raise RunbookError(destroy_confirmation_problem(e, None) or "--confirm-destroy is needed")
    live = bg.served_by(e)
    if live is None:
        raise RunbookError(f"cannot tell which colour is live from {e.ingress.url}: refusing to ask about destroying")
    text, dataset = op.destroy_prompt(e, live, str(req.target_version))
    console.print(text, markup=False, highlight=False)
    if typer.prompt(f"Type {dataset} to destroy it at the end (anything else: stop)", default="") != dataset:
        raise RunbookError("--cleanup=destroy not confirmed: nothing was changed")
    return dataset


@app.command("rollback")
def rollback_cmd(procedure: str = typer.Argument("agave-upgrade"), env: str = EnvOption,
                 yes: bool = typer.Option(False, "--yes", help="confirm on a production env")) -> None:
    """Roll a procedure back from wherever its journal says it stopped."""

    def run() -> None:
        from runbook.procedures import agave_rollback, agave_upgrade, get, journal_for

        e = _env(env)
        proc = get(procedure)
        journal = journal_for(e, procedure)
        state = journal.load()  # a corrupt journal stops here, before anything connects or changes
        if not state:
            raise RunbookError(f"no {procedure} run in the journal {journal.where}: nothing to roll back")
        _say(f"{procedure} run {state.get('facts', {}).get('run_id', '?')}: {state.get('status')} "
             f"(journal {journal.where})")
        _confirm(e, f"rolling back {procedure}", None, yes, need_target=False)
        ctx = agave_upgrade.PROCEDURE.context(_adapters(e), {}, progress=_say)
        if procedure == "agave-upgrade":
            steps = agave_rollback.rollback(ctx, journal_for(e, procedure), journal_for(e, "agave-rollback"))
            for s in steps:
                out.print(f"{s.name:20} {s.status}")
            return
        proc.roll_back(ctx, journal_for(e, procedure))  # every step the journal says acted, in reverse
        out.print(f"{procedure}: rolled back")

    _guard(run)


@app.command("status")
def status(env: str = EnvOption) -> None:
    """Which colour serves, both colours' slots and versions, upstream stats, DZ status."""

    def run() -> None:
        from runbook.checks import doublezero as dz
        from runbook.procedures import bluegreen as bg

        e = _env(env)
        a = _adapters(e)
        out.print(f"env {e.name}: ingress {e.ingress.url} served by {bg.served_by(e, adapters=a) or 'nobody'}")
        for colour in bg.COLOURS:
            st = bg.observe_node(e, colour, adapters=a)
            dep = e.deployments.colour(colour)
            pods = a.workloads.pods(dep.name)
            out.print(f"  {colour:5} {dep.name} :{dep.rpc_port}  pods {len(pods)}  health {st.health}  "
                      f"slot {st.slot}  behind {st.behind}  version {st.version}")
            for p in pods:
                try:
                    s = dz.sidecar_status(a.workloads, p.name, e.doublezero.sidecar)
                    out.print(f"        doublezero: {s.session or '?'} on {s.device or '?'}")
                except RunbookError as exc:
                    out.print(f"        doublezero: {exc}")
        out.print(f"  upstream order {a.ingress.upstream_order()}")
        for u in a.ingress.upstreams():
            out.print(f"  upstream {u.address}: {u.num_requests} in flight, {u.fails} recent fails")

    _guard(run)


def main() -> None:
    try:
        app()
    except RunbookError as exc:  # pragma: no cover - _guard catches these first
        console.print(f"[bold red]error:[/bold red] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()

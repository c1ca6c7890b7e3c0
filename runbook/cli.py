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

console = Console(stderr=True)
out = Console()

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


def main() -> None:
    try:
        app()
    except RunbookError as exc:  # pragma: no cover - _guard catches these first
        console.print(f"[bold red]error:[/bold red] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()

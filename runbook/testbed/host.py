"""The testbed's host: the host port (:class:`~runbook.adapters.host.TestinfraHost`) with the testbed's own host
programs first on its commands' PATH.

This machine has no systemd; the testbed host's service manager is :mod:`runbook.testbed.systemd`, whose
``systemctl`` the host port's commands (``systemctl is-active X``, ``systemctl enable X``) then find first, so
they read and change the testbed's units through the same code path as on biscayne. Built only by
:func:`runbook.adapters.factory.connect` for a testbed: a real host (biscayne over ssh, a kind node) gets the
plain :class:`TestinfraHost` and its own systemctl, with no PATH change.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from pathlib import Path

from runbook.adapters.base import CommandResult
from runbook.adapters.host import TestinfraHost


class TestbedHost(TestinfraHost):
    __test__ = False

    def __init__(self, url: str, *, bin_dir: Path, netns: str | None = None, env_name: str = "") -> None:
        super().__init__(url, netns=netns, env_name=env_name)
        self.bin_dir = bin_dir

    def _on_path(self, command: str) -> str:
        # inside the command itself, so a command run as root through `sudo -n` (secure_path) keeps it too
        return f'PATH={shlex.quote(str(self.bin_dir))}:"$PATH"; export PATH; {command}'

    def run(self, command: str, *, check: bool = True, timeout: float = 60.0, root: bool = False) -> CommandResult:
        result = super().run(self._on_path(command), check=check, timeout=timeout, root=root)
        return dataclasses.replace(result, command=command)

    def spawn(self, command: str, *, root: bool = False) -> subprocess.Popen[str]:
        return super().spawn(self._on_path(command), root=root)

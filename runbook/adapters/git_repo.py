"""The release repository the canary promotion finalizes (seed 004, steps 5 and 6): ``VERSION`` committed
without the ``-canary`` suffix and an annotated tag ``v<version>`` on that commit, pushed when the env names a
remote. Real ``git`` on the runner's machine (the operator's checkout; a repository under the testbed's state
dir on the testbed); each call is one git command, and its error names the repository and git's own words.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runbook.errors import AdapterError

__all__ = ["GitRepo", "TagInfo"]


@dataclass(frozen=True)
class TagInfo:
    name: str
    commit: str  # the commit the tag points at
    annotated: bool  # an annotated tag (a tag object), not a lightweight one
    message: str
    version_file: str  # VERSION at that commit, stripped ("" when absent)


class GitRepo:
    def __init__(self, path: str | Path, *, remote: str | None = None, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.remote = remote
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"GitRepo({str(self.path)!r})"

    def command(self, *args: str) -> str:
        """The command line as a plan prints it."""
        return shlex.join(["git", "-C", str(self.path), *args])

    def _git(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            r = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, text=True, input=stdin,
                               timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AdapterError(f"{self.command(*args)}: {exc}", obj=str(self.path)) from exc
        if check and r.returncode != 0:
            raise AdapterError(f"{self.command(*args)} exited {r.returncode}: {(r.stderr or r.stdout).strip()}",
                               obj=str(self.path))
        return r

    def create(self, version: str, *, message: str = "chore: zai-proxy canary") -> None:
        """A new repository here with VERSION committed (a disposable env's release repository; refused where
        one exists)."""
        if self.is_repo():
            raise AdapterError(f"{self.path} is already a git repository", obj=str(self.path))
        self.path.mkdir(parents=True, exist_ok=True)
        self._git("init", "-q", "-b", "main")
        self._git("config", "user.name", "runbook")
        self._git("config", "user.email", "runbook@localhost.invalid")
        self.commit_version(version, message)

    def is_repo(self) -> bool:
        return self.path.is_dir() and self._git("rev-parse", "--git-dir", check=False).returncode == 0

    def require(self) -> None:
        if not self.is_repo():
            raise AdapterError(f"{self.path} is not a git repository (canary.repo): finalization writes VERSION and "
                               "a tag there", obj=str(self.path))

    def head(self) -> str:
        return self._git("rev-parse", "HEAD").stdout.strip()

    def version(self, rev: str = "HEAD") -> str:
        """VERSION at ``rev``, stripped; "" when the file is not there."""
        r = self._git("show", f"{rev}:VERSION", check=False)
        return r.stdout.strip() if r.returncode == 0 else ""

    def dirty(self) -> list[str]:
        """Uncommitted changes (``git status --porcelain``): finalization refuses to commit over them."""
        return [line for line in self._git("status", "--porcelain").stdout.splitlines() if line.strip()]

    def tag(self, name: str) -> TagInfo | None:
        """The tag ``name`` as git holds it, or None."""
        if self._git("rev-parse", "-q", "--verify", f"refs/tags/{name}", check=False).returncode != 0:
            return None
        kind = self._git("cat-file", "-t", f"refs/tags/{name}").stdout.strip()
        commit = self._git("rev-parse", f"refs/tags/{name}^{{commit}}").stdout.strip()
        message = (self._git("tag", "-l", "--format=%(contents)", name).stdout.strip() if kind == "tag" else "")
        return TagInfo(name, commit, kind == "tag", message, self.version(commit))

    def commit_version(self, version: str, message: str) -> str:
        """Write VERSION, commit it (nothing when it already says so); returns HEAD."""
        (self.path / "VERSION").write_text(version + "\n")
        self._git("add", "VERSION")
        if self._git("diff", "--cached", "--quiet", check=False).returncode != 0:
            self._git("commit", "-q", "-m", message)
        return self.head()

    def create_tag(self, name: str, message: str, commit: str) -> TagInfo:
        self._git("tag", "-a", name, "-m", message, commit)
        info = self.tag(name)
        assert info is not None
        return info

    def delete_tag(self, name: str) -> None:
        self._git("tag", "-d", name)

    def push_tag(self, name: str) -> None:
        if self.remote:
            self._git("push", self.remote, f"refs/tags/{name}")

    def remote_has_tag(self, name: str) -> bool | None:
        """Whether the remote holds the tag (None without a remote)."""
        if not self.remote:
            return None
        r = self._git("ls-remote", "--tags", self.remote, f"refs/tags/{name}")
        return bool(r.stdout.strip())

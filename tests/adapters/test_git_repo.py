"""The release repository adapter (runbook/adapters/git_repo.py) on real git in tmp_path: VERSION committed
once, annotated and lightweight tags as git holds them, uncommitted changes, a tag pushed to a bare remote, and
errors that name the repository and carry git's own words."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runbook.adapters.git_repo import GitRepo
from runbook.errors import AdapterError


def _git(path: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    path = tmp_path / "canary-release"
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    for key, value in (("user.name", "Runbook Test"), ("user.email", "runbook@example.invalid"),
                       ("commit.gpgsign", "false"), ("tag.gpgsign", "false")):
        _git(path, "config", key, value)
    return GitRepo(path)


def _commits(repo: GitRepo) -> int:
    return int(_git(repo.path, "rev-list", "--count", "HEAD"))


def test_commit_version_commits_once(repo: GitRepo) -> None:
    assert repo.is_repo() and repo.version() == ""
    first = repo.commit_version("1.2.0", "release 1.2.0")
    assert repo.version() == "1.2.0" and (repo.path / "VERSION").read_text() == "1.2.0\n"
    assert repo.commit_version("1.2.0", "release 1.2.0 again") == first and _commits(repo) == 1  # nothing to commit
    second = repo.commit_version("1.3.0", "release 1.3.0")
    assert second != first and _commits(repo) == 2 and repo.head() == second
    assert repo.version(first) == "1.2.0" and repo.version(second) == "1.3.0"
    assert _git(repo.path, "log", "-1", "--format=%s") == "release 1.3.0"
    assert repo.dirty() == []


def test_tag_info_tells_annotated_from_lightweight(repo: GitRepo) -> None:
    old = repo.commit_version("1.2.0", "release 1.2.0")
    new = repo.commit_version("1.3.0", "release 1.3.0")
    info = repo.create_tag("v1.2.0", "release 1.2.0\n\npromoted from 1.2.0-canary", old)  # a tag on an older commit
    assert (info.name, info.commit, info.annotated, info.version_file) == ("v1.2.0", old, True, "1.2.0")
    assert info.message == "release 1.2.0\n\npromoted from 1.2.0-canary"
    assert _git(repo.path, "cat-file", "-t", "v1.2.0") == "tag"
    _git(repo.path, "tag", "v1.3.0")  # lightweight, on HEAD
    light = repo.tag("v1.3.0")
    assert light is not None and (light.commit, light.annotated, light.message, light.version_file) == (
        new, False, "", "1.3.0")
    assert repo.tag("v9.9.9") is None


def test_dirty_lists_what_is_not_committed(repo: GitRepo) -> None:
    repo.commit_version("1.2.0", "release 1.2.0")
    assert repo.dirty() == []
    (repo.path / "notes.txt").write_text("draft\n")
    assert repo.dirty() == ["?? notes.txt"]
    (repo.path / "VERSION").write_text("1.3.0\n")
    assert repo.dirty() == [" M VERSION", "?? notes.txt"]


def test_delete_tag(repo: GitRepo) -> None:
    head = repo.commit_version("1.3.0", "release 1.3.0")
    repo.create_tag("v1.3.0", "release 1.3.0", head)
    repo.delete_tag("v1.3.0")
    assert repo.tag("v1.3.0") is None and _git(repo.path, "tag", "-l") == ""
    assert repo.head() == head  # the commit stays


def test_push_tag_to_a_bare_remote(repo: GitRepo, tmp_path: Path) -> None:
    remote = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    pushing = GitRepo(repo.path, remote=str(remote))
    head = pushing.commit_version("1.3.0", "release 1.3.0")
    pushing.create_tag("v1.3.0", "release 1.3.0", head)
    assert pushing.remote_has_tag("v1.3.0") is False
    pushing.push_tag("v1.3.0")
    assert pushing.remote_has_tag("v1.3.0") is True
    assert pushing.remote_has_tag("v1.3") is False  # an exact name, not a prefix
    assert _git(remote, "cat-file", "-t", "v1.3.0") == "tag" and _git(remote, "rev-parse", "v1.3.0^{commit}") == head
    assert repo.remote_has_tag("v1.3.0") is None  # no remote named: not asked
    repo.push_tag("v1.3.0")  # without a remote nothing is pushed (and nothing fails)


def test_errors_name_the_repository_and_gits_words(repo: GitRepo, tmp_path: Path) -> None:
    head = repo.commit_version("1.3.0", "release 1.3.0")
    repo.create_tag("v1.3.0", "release 1.3.0", head)
    with pytest.raises(AdapterError, match="already exists") as exc:
        repo.create_tag("v1.3.0", "again", head)
    assert f"git -C {repo.path} tag -a v1.3.0" in str(exc.value) and exc.value.obj == str(repo.path)
    with pytest.raises(AdapterError, match=r"tag -d v9\.9\.9 exited 1: error: tag 'v9\.9\.9' not found"):
        repo.delete_tag("v9.9.9")
    gone = GitRepo(repo.path, remote=str(tmp_path / "no-such-remote.git"))
    with pytest.raises(AdapterError, match="does not appear to be a git repository") as pushed:
        gone.push_tag("v1.3.0")
    assert f"git -C {repo.path} push {tmp_path / 'no-such-remote.git'} refs/tags/v1.3.0 exited 128" in str(pushed.value)
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    assert not GitRepo(plain).is_repo() and not GitRepo(tmp_path / "missing").is_repo()
    with pytest.raises(AdapterError, match=f"{plain} is not a git repository"):
        GitRepo(plain).require()
    with pytest.raises(AdapterError, match="not a git repository") as head_exc:
        GitRepo(plain).head()
    assert f"git -C {plain} rev-parse HEAD exited 128" in str(head_exc.value)

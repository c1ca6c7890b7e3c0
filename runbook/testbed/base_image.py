"""The base image of the stand-in images, built locally where no registry can be pulled from.

``deploy/kind/Dockerfile.standin`` starts ``FROM ${BASE_IMAGE}`` (``python:3.11-slim`` by default, which a
user's machine pulls). Here no image can be pulled, so :func:`ensure_base_image` builds an equivalent:
Debian bookworm (Python 3.11) by ``debootstrap --variant=minbase`` from the mirror this machine's apt
uses, with pip/venv, iproute2, util-linux, procps and this machine's CA bundle (PyPI is reached through
it), then ``docker import``. The root filesystem tarball is cached under ``/var/cache/runbook/base``
(``$RUNBOOK_CACHE_DIR``), keyed by a hash of the recipe and the CA bundle: a machine builds it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runbook.env import PROJECT_ROOT
from runbook.errors import TestbedError
from runbook.testbed.docker_engine import DockerEngine, mounts_under

DEFAULT_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
DOCKERFILE = PROJECT_ROOT / "deploy" / "kind" / "Dockerfile.standin"


def cache_dir() -> Path:
    return Path(os.environ.get("RUNBOOK_CACHE_DIR", "/var/cache/runbook")) / "base"


@dataclass(frozen=True)
class BaseRecipe:
    """What goes into the base image. Any change here changes the cache key."""

    mirror: str = DEFAULT_MIRROR
    suite: str = "bookworm"  # Python 3.11, as python:3.11-slim
    variant: str = "minbase"
    packages: tuple[str, ...] = ("python3", "python3-pip", "python3-venv", "python-is-python3", "iproute2",
                                 "util-linux", "procps", "ca-certificates")
    # python:3.11-slim lets pip install as root; bookworm's python3 refuses (PEP 668) unless this goes
    remove: tuple[str, ...] = ("usr/lib/python3.11/EXTERNALLY-MANAGED", "var/cache/apt/archives",
                               "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale")
    changes: tuple[str, ...] = field(default=(
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        'CMD ["bash"]',
    ))

    def key(self, ca_bundle: bytes = b"") -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode() + hashlib.sha256(ca_bundle).digest()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class BaseImage:
    tag: str
    image_id: str
    tarball: Path
    cached: bool  # the tarball was already there
    build_seconds: float  # debootstrap and packing (0 when cached)
    import_seconds: float


# --------------------------------------------------------------------------- the mirror apt uses


def apt_mirror(suite: str = "bookworm", sources: tuple[Path, ...] = APT_SOURCES) -> str:
    """The first Debian archive URI this machine's apt lists for ``suite`` (deb822 or one-line format)."""
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += sorted(p for p in src.iterdir() if p.suffix in (".list", ".sources"))
        elif src.is_file():
            files.append(src)
    for f in files:
        with contextlib.suppress(OSError):
            uri = mirror_in(f.read_text(), suite, deb822=f.suffix == ".sources")
            if uri:
                return uri
    return DEFAULT_MIRROR


def mirror_in(text: str, suite: str, *, deb822: bool) -> str | None:
    """The URI serving ``suite`` itself (not -updates or -security) in one sources file, if any."""
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                continue
            if suite in fields.get("suites", "").split() and fields.get("uris"):
                return fields["uris"].split()[0].rstrip("/")
        return None
    for line in text.splitlines():
        words = [w for w in re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()]
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            return words[1].rstrip("/")
    return None


# --------------------------------------------------------------------------- the root filesystem tarball


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # another session building the same tarball: wait for it
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_tree(path: Path) -> None:
    """Remove a debootstrap target, unmounting what debootstrap left mounted in it first (never rm -rf
    through a mounted /proc or /dev)."""
    for point in mounts_under(path):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    left = mounts_under(path)
    if left:
        raise TestbedError(f"cannot remove {path}: still mounted: {', '.join(left)}")
    shutil.rmtree(path, ignore_errors=True)


def _run(argv: list[str], *, what: str, timeout: float, log: Path | None = None) -> None:
    try:
        out = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"{what}: `{' '.join(argv[:3])} ...` took over {timeout:g}s") from None
    if log is not None:
        log.write_bytes(out.stdout + out.stderr)
    if out.returncode != 0:
        tail = (out.stdout + out.stderr).decode(errors="replace").strip()[-1200:]
        raise TestbedError(f"{what}: `{' '.join(argv)}` exited {out.returncode}: {tail}")


def rootfs_tarball(recipe: BaseRecipe, *, timeout: float = 900.0) -> tuple[Path, float | None]:
    """The cached tarball of the recipe's root filesystem, built when missing: (path, seconds spent
    building it, None when it was cached)."""
    if shutil.which("debootstrap") is None:
        raise TestbedError("no debootstrap on PATH: cannot build the base image (`bash .ci/setup` installs it)")
    ca = CA_BUNDLE.read_bytes() if CA_BUNDLE.is_file() else b""
    key = recipe.key(ca)
    cache = cache_dir()
    tarball = cache / f"{recipe.suite}-{key}.tar"
    with _locked(cache / ".lock"):
        if tarball.is_file():
            return tarball, None
        start = time.monotonic()
        work = cache / f"build-{key}-{os.getpid()}"
        _remove_tree(work)
        rootfs = work / "rootfs"
        try:
            rootfs.mkdir(parents=True)
            _run(["debootstrap", f"--variant={recipe.variant}", f"--include={','.join(recipe.packages)}",
                  recipe.suite, str(rootfs), recipe.mirror], what="debootstrap of the base image",
                 timeout=timeout, log=work / "debootstrap.log")
            for rel in recipe.remove:
                target = rootfs / rel
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
            (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
            (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
            if ca:  # this machine's trust store: PyPI is reached through it
                (rootfs / CA_BUNDLE.relative_to("/")).write_bytes(ca)
            partial = work / "rootfs.tar"
            _run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), "."],
                 what="packing the base root filesystem", timeout=timeout)
            partial.rename(tarball)
        finally:
            _remove_tree(work)
        for old in cache.glob(f"{recipe.suite}-*.tar"):  # one tarball per suite: the current recipe's
            if old != tarball:
                old.unlink(missing_ok=True)
        return tarball, time.monotonic() - start


def ensure_base_image(engine: DockerEngine, recipe: BaseRecipe | None = None, *,
                      timeout: float = 900.0) -> BaseImage:
    """The base image in ``engine``, imported from the cached tarball (built first when missing)."""
    recipe = recipe or BaseRecipe(mirror=apt_mirror())
    tarball, build_seconds = rootfs_tarball(recipe, timeout=timeout)
    tag = f"runbook/base:{tarball.stem}"
    start = time.monotonic()
    args = ["import"]
    for change in recipe.changes:
        args += ["--change", change]
    engine.docker(*args, str(tarball), tag, timeout=timeout, what="importing the base image")
    image_id = engine.docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    return BaseImage(tag=tag, image_id=image_id, tarball=tarball, cached=build_seconds is None,
                     build_seconds=build_seconds or 0.0, import_seconds=time.monotonic() - start)


# --------------------------------------------------------------------------- the stand-in images


@dataclass(frozen=True)
class BuiltImage:
    target: str
    version: str
    tags: tuple[str, ...]
    image_id: str
    seconds: float


def build_context(dest: Path, root: Path = PROJECT_ROOT) -> Path:
    """The files ``Dockerfile.standin`` copies, and nothing else (the legacy builder sends the whole
    context: never the virtualenv, the testbed's state or reports)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)
    shutil.copytree(root / "runbook", dest / "runbook", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    dirs_exist_ok=True)
    return dest


def build_standin_images(engine: DockerEngine, base_tag: str, builds: Sequence[tuple[str, str, Sequence[str]]],
                         context: Path, *, dockerfile: Path = DOCKERFILE, timeout: float = 900.0) -> list[BuiltImage]:
    """``docker build`` every (target, version, tags) of :func:`runbook.testbed.kind.image_builds` on
    ``base_tag``, with the legacy builder and the host's network (the engine has no bridge)."""
    out = []
    for target, version, tags in builds:
        args = ["build", "--network", "host", "-q", "-f", str(dockerfile), "--target", target,
                "--build-arg", f"BASE_IMAGE={base_tag}"]
        if version:
            args += ["--build-arg", f"RUNBOOK_IMAGE_VERSION={version}"]
        for t in tags:
            args += ["-t", t]
        start = time.monotonic()
        engine.docker(*args, str(context), timeout=timeout, what=f"building the {target} {version} stand-in image")
        image_id = engine.docker("image", "inspect", "--format", "{{.Id}}", tags[0]).stdout.strip()
        out.append(BuiltImage(target, version, tuple(tags), image_id, time.monotonic() - start))
    return out


__all__ = ["BaseImage", "BaseRecipe", "BuiltImage", "apt_mirror", "build_context", "build_standin_images",
           "ensure_base_image", "mirror_in", "rootfs_tarball"]

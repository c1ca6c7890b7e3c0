"""A testbed env whose validators would join a cluster that is not there is refused on load, by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runbook.env import PROJECT_ROOT, load_env
from runbook.errors import ConfigError


def _write(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "local.yaml").read_text())
    data["testbed"].update(changes)
    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_ports_moved_but_not_the_entrypoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"entrypoints: 127.0.0.1:18900 is not this testbed's cluster stand-in"):
        load_env(str(_write(tmp_path, cluster_port=19999)))


def test_the_shipped_envs_load() -> None:
    for name in ("local", "kind", "biscayne"):
        load_env(name)

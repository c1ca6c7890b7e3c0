"""Throwaway env files for tests that run the suite in a subprocess beside the session's own testbed."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml

from runbook.env import PROJECT_ROOT, shift_ports

_offsets = itertools.count(1)


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for key in path:
        d = d.setdefault(key, {})
    d[last] = value


def make_env(tmp_path: Path, **changes: Any) -> Path:
    """local.yaml with every port moved (no clash with the session testbed), state under tmp_path.

    ``changes`` use ``__`` for dots: ``doublezero__expected_identity="..."``.
    """
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "local.yaml").read_text())
    shift = 100 * next(_offsets) + 1000
    data["name"] = "t" + str(shift)
    shift_ports(data, shift)
    data["testbed"]["state_dir"] = str(tmp_path / "state")
    data["testbed"]["storage_size"] = "256M"
    for key, value in changes.items():
        _set(data, key.replace("__", "."), value)
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path

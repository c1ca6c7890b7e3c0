"""The release's apply of a new colour's Deployment whose immutable selector differs from the one left in the
cluster (a colour a failed or interrupted release left with an older template): the API server refuses the
replace with its 422 "field is immutable", and the release deletes that Deployment and creates it again. Any
other refusal stands. Against the mock API server, which refuses as 1.32 does."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest

from runbook.adapters.kube import KubeWorkloads
from runbook.errors import KubeError
from runbook.procedures import release_colours as rcol
from tests.kube.contract import Images, deployment_manifest

IMAGES = Images.of_kind_testbed()


def _ctx(kube: KubeWorkloads) -> tuple[Any, list[str]]:
    said: list[str] = []
    return SimpleNamespace(adapters=SimpleNamespace(workloads=kube, objects=kube), progress=said.append,
                           record=lambda title, data: said.append(title)), said


def test_a_changed_selector_is_deleted_and_created_again(fake_kube: KubeWorkloads) -> None:
    old = deployment_manifest("meta-storage-green", fake_kube.namespace, IMAGES)
    fake_kube.apply_deployment(old)
    uid = (fake_kube.deployment("meta-storage-green") or {})["metadata"]["uid"]
    new = copy.deepcopy(old)
    for labels in (new["spec"]["selector"]["matchLabels"], new["spec"]["template"]["metadata"]["labels"]):
        labels["colour"] = "green"
    ctx, said = _ctx(fake_kube)
    rcol.apply(ctx, new)
    live = fake_kube.deployment("meta-storage-green") or {}
    assert live["spec"]["selector"]["matchLabels"]["colour"] == "green"
    assert live["metadata"]["uid"] != uid, "deleted and created again, not replaced"
    assert "deployment meta-storage-green re-created" in said


def test_any_other_refusal_stands(fake_kube: KubeWorkloads) -> None:
    bad = deployment_manifest("meta-schema-green", fake_kube.namespace, IMAGES)
    bad["spec"]["template"]["metadata"]["labels"] = {"other": "labels"}  # the selector does not match them
    ctx, _ = _ctx(fake_kube)
    with pytest.raises(KubeError) as err:
        rcol.apply(ctx, bad)
    assert err.value.status == 422 and "field is immutable" not in err.value.message
    assert fake_kube.deployment("meta-schema-green") is None

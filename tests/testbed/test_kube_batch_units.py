"""The Batch port's API-server side on the local kubelet (kube_batch.py): validation, the store, claims and their
volumes, pod phases. No processes: the store and its directories only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runbook.adapters.base import ContainerStatus
from runbook.env import load_env
from runbook.errors import KubeError
from runbook.testbed.kube_batch import selects
from runbook.testbed.kubelet import LocalWorkloads
from runbook.testbed.supervisor import Supervisor
from tests.testbed.test_kube_sets import ENV_FILE, file_server, job


@pytest.fixture
def wl(tmp_path: Path) -> LocalWorkloads:
    (tmp_path / "batch.yaml").write_text(ENV_FILE.read_text())
    env = load_env(str(tmp_path / "batch.yaml"))
    state = tmp_path / "state"
    state.mkdir()
    # a supervisord that is never started: nothing here runs a process
    return LocalWorkloads(env=env, supervisor=Supervisor(state_dir=state, port=1), state_dir=state, netns=None)


def claim(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}


def test_a_job_must_run_to_completion_and_keeps_its_template(wl: LocalWorkloads) -> None:
    m = job("j", "example/exit:1.0.0", ["0", "0"])
    m["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    with pytest.raises(KubeError, match='restartPolicy: Unsupported value: "Always"') as exc:
        wl.apply_job(m)
    assert exc.value.status == 422 and wl.jobs() == []
    wl.apply_job(job("j", "example/exit:1.0.0", ["0", "0"]))
    wl.apply_job(job("j", "example/exit:1.0.0", ["0", "0"]))  # the same: converged
    with pytest.raises(KubeError, match="field is immutable"):
        wl.apply_job(job("j", "example/exit:2.0.0", ["0", "0"]))
    status = wl.job_status("j")
    assert status is not None and (status.active, status.finished, status.pods) == (0, None, ())
    assert wl.job_status("nope") is None


def test_a_statefulset_selector_must_match_and_only_some_fields_change(wl: LocalWorkloads) -> None:
    bad = file_server("s", 8000, replicas=1)
    bad["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    with pytest.raises(KubeError, match="`selector` does not match template `labels`"):
        wl.apply_statefulset(bad)
    wl.apply_statefulset(file_server("s", 8000, replicas=1))
    wl.apply_statefulset(file_server("s", 8000, replicas=3))  # replicas may change
    assert (wl.statefulset("s") or {})["metadata"]["generation"] == 2
    changed = file_server("s", 8000, replicas=3)
    changed["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] = "state"
    with pytest.raises(KubeError, match="spec: Forbidden: updates to statefulset spec for fields other than"):
        wl.apply_statefulset(changed)


def test_a_claim_is_bound_by_its_first_consumer_and_deleted_with_its_data(wl: LocalWorkloads,
                                                                           tmp_path: Path) -> None:
    wl.apply_pvc(claim("data-a-0", {"app": "a"}))
    wl.apply_pvc(claim("data-b-0", {"app": "b"}))
    assert wl.pvcs() == ["data-a-0", "data-b-0"] and wl.pvcs("app=b") == ["data-b-0"]
    assert wl.pvc_dir("data-a-0") is None and (wl.pvc("data-a-0") or {})["status"]["phase"] == "Pending"
    link = tmp_path / "rootfs" / "data"
    wl._mount_pvc("p", {"name": "data", "persistentVolumeClaim": {"claimName": "data-a-0"}}, link)
    volume = wl.pvc_dir("data-a-0")
    assert volume is not None and link.resolve() == volume and volume.name.endswith("_default_data-a-0")
    (link / "f").write_text("x")
    wl.delete_pvc("data-a-0")  # no pod record uses it: gone at once, with its data
    assert wl.pvcs() == ["data-b-0"] and not volume.exists()
    with pytest.raises(Exception, match='persistentvolumeclaim "data-a-0" not found'):
        wl._mount_pvc("p", {"name": "data", "persistentVolumeClaim": {"claimName": "data-a-0"}}, link)


def _status(state: str, reason: str = "", kind: str = "app") -> ContainerStatus:
    return ContainerStatus("c", kind, "i", "", state, None, 0, False, reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(("policy", "statuses", "phase"), [
    ("Never", [_status("terminated", "Completed")], "Succeeded"),
    ("Never", [_status("terminated", "Error")], "Failed"),
    ("OnFailure", [_status("terminated", "Error")], "Running"),  # the kubelet restarts it
    ("OnFailure", [_status("terminated", "Completed")], "Succeeded"),
    ("Never", [_status("running")], "Running"),
    ("Never", [_status("waiting", "ImagePullBackOff")], "Pending"),
    (None, [_status("terminated", "Completed")], "Pending"),  # a Deployment's pod is never Succeeded
])
def test_pod_phases(wl: LocalWorkloads, policy: str | None, statuses: list[ContainerStatus], phase: str) -> None:
    spec = {"restartPolicy": policy} if policy else {}
    assert wl.pod_phase({"spec": spec}, statuses) == phase


def test_label_selectors() -> None:
    sel = {"matchLabels": {"app": "x"}, "matchExpressions": [{"key": "rev", "operator": "In", "values": ["1", "2"]},
                                                             {"key": "old", "operator": "DoesNotExist"}]}
    assert selects(sel, {"app": "x", "rev": "2"})
    assert not selects(sel, {"app": "x", "rev": "3"}) and not selects(sel, {"app": "x", "rev": "1", "old": ""})
    assert not selects(sel, {"app": "y", "rev": "1"})

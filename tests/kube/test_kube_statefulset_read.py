"""Batch.statefulset on the kind adapter against the Kubernetes API mock (tests/kube/fake_batch.py): the live object as
``kubectl get -o json`` gives it (server fields and status), None for one that does not exist; and a StatefulSet's
pods read with Workloads.pod as a Deployment's are (phase, readiness, restarts, image and imageID)."""

from __future__ import annotations

from runbook.adapters.kube import KubeWorkloads
from runbook.wait import wait_for
from tests.kube.test_kube_batch import IMAGE, TIMEOUT, statefulset


def test_statefulset_is_the_live_object_with_its_server_fields_and_status(fake_kube: KubeWorkloads) -> None:
    assert fake_kube.statefulset("web") is None
    fake_kube.apply_statefulset(statefulset("web", replicas=1))
    wait_for(lambda: fake_kube.statefulset_status("web"), lambda s: s is not None and s.ready_replicas == 1,
             timeout=TIMEOUT, interval=0.02, what="web ready")
    live = fake_kube.statefulset("web")
    assert live is not None
    meta = live["metadata"]
    assert meta["name"] == "web" and meta["namespace"] == fake_kube.namespace
    assert meta["uid"] and meta["resourceVersion"] and meta["generation"] == 1 and meta["creationTimestamp"]
    assert live["spec"]["replicas"] == 1 and live["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    assert live["status"]["readyReplicas"] == 1 and live["status"]["updateRevision"].startswith("web-")

    pod = fake_kube.pod("web-0")  # a StatefulSet's pod, read as a Deployment's
    (c,) = pod.containers
    assert (pod.phase, pod.ready, c.state, c.ready, c.restart_count) == ("Running", True, "running", True, 0)
    assert c.image.endswith(IMAGE.rsplit("/", 1)[-1]) and c.image_id.startswith(("sha256:", "docker.io/"))
    assert pod.labels["statefulset.kubernetes.io/pod-name"] == "web-0" and pod.ip
    fake_kube.delete_statefulset("web")
    assert fake_kube.statefulset("web") is None

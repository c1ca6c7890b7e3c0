"""`runbook plan` prints the operations in order and touches nothing; mutating commands refuse on
production without a target version and confirmation (must-show 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runbook.env import PROJECT_ROOT
from tests.integration.run import cli
from tests.integration.run import pytest as run_pytest

pytestmark = pytest.mark.integration


def test_plan_on_biscayne_prints_zfs_kube_and_caddy_calls_in_order() -> None:
    ran = cli("plan", "agave-upgrade", "--env=biscayne", "--target-version=v2.2.1")
    assert ran.rc == 0, ran.out
    sudo = "biscayne$ sudo -n -- sh -c '"  # the host URL says ?sudo=true: root commands with sudo
    expected = [
        "GET http://127.0.0.1:2019/config/",
        f"{sudo}zfs get -Hp -o property,value available,used",  # free space before the snapshot
        f"{sudo}zfs snapshot -r biscayne/DATA@pre-upgrade-v2.2.1-",  # recursive, as the seed's
        f"{sudo}zfs get -Hp -o property,value available,used",  # and before the clone
        f"{sudo}zfs clone biscayne/DATA/volumes/solana@pre-upgrade-v2.2.1-",
        f"{sudo}mount -t xfs -o noatime,nouuid /dev/zvol/biscayne/DATA/volumes/solana-blue /srv/solana-blue",
        f"{sudo}umount /dev/zvol/biscayne/DATA/volumes/solana-blue",  # the clone's rollback: unmounted first
        f"{sudo}zfs destroy -r biscayne/DATA/volumes/solana-blue",
        "df -B1 --output=avail,fstype,source",  # space and RAM before the accounts copy
        "MemAvailable /proc/meminfo",
        "rsync -aH --delete",
        "kubectl --context kind-biscayne -n agave create -f -",
        "image laconicnetwork/agave:v2.2.1",
        "kubectl --context kind-biscayne -n agave rollout status deployment/agave-blue",
        "kubectl --context kind-biscayne -n agave delete deployment agave-green --cascade=foreground",
        f"{sudo}mkdir -p /var/lib/caddy-runbook && touch /var/lib/caddy-runbook/blue-first",  # no reload
    ]
    text = ran.out[ran.out.index("# 1. snapshot"):].replace("\n", " ")
    at, positions = 0, []
    for e in expected:  # each after the one before
        at = text.find(e, at)
        positions.append(at)
        if at < 0:
            break
        at += len(e)
    assert all(p >= 0 for p in positions), dict(zip(expected, positions, strict=False))


def test_plan_touches_nothing_even_when_the_host_is_unreachable(tmp_path: Path) -> None:
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "biscayne.yaml").read_text())
    data["host"] = "ssh://no-such-host.invalid"
    data["kube"]["kubeconfig"] = str(tmp_path / "missing-kubeconfig")
    data["ingress"]["admin"] = "http://127.0.0.1:9"  # discard port: nothing listens
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump(data))
    ran = cli("plan", "agave-upgrade", f"--env={path}", "--target-version=v2.2.1")
    assert ran.rc == 0, ran.out
    assert "zfs snapshot" in ran.out


def test_mutating_commands_refuse_on_production_without_target_and_confirmation(tmp_path: Path) -> None:
    no_target = cli("run", "agave-upgrade", "--env=biscayne")
    assert no_target.rc == 2 and "needs an explicit --target-version" in no_target.out
    no_yes = cli("run", "agave-upgrade", "--env=biscayne", "--target-version=v2.2.1")
    assert no_yes.rc == 2 and "confirm" in no_yes.out and "--yes" in no_yes.out
    suite = run_pytest("features/", "--env=biscayne", "--allow-mutations", reports=tmp_path)
    assert suite.rc == 4 and "--allow-mutations needs --target-version" in suite.out
    for ran in (no_target, no_yes, suite):
        assert not ran.traceback, ran.out


def test_plan_needs_a_target_version() -> None:
    for proc in ("agave-upgrade", "agave-rollback", "dz-upgrade"):
        ran = cli("plan", proc, "--env=biscayne")
        assert ran.rc == 2 and "needs --target-version" in ran.out and not ran.traceback, ran.out


def test_plan_on_kind_prints_the_operations_without_a_cluster() -> None:
    ran = cli("plan", "agave-upgrade", "--env=kind", "--target-version=v2")
    assert ran.rc == 0, ran.out
    for expected in ("cp -a -T -- /srv/solana", "kubectl --context kind-runbook -n agave create -f -",
                     "delete deployment agave-green",
                     "runbook-control-plane$ mkdir -p /var/lib/caddy-runbook && touch "
                     "/var/lib/caddy-runbook/blue-first"):
        assert expected in ran.out
    assert "PATCH" not in ran.out  # the upstream order changes with no config reload


def test_the_suite_on_kind_without_a_cluster_fails_fast_with_one_message(tmp_path: Path) -> None:
    data = yaml.safe_load((PROJECT_ROOT / "envs" / "kind.yaml").read_text())
    data["kube"]["kubeconfig"] = str(tmp_path / "no-kubeconfig")  # whatever ~/.kube holds on this machine
    path = tmp_path / "kind.yaml"
    path.write_text(yaml.safe_dump(data))
    ran = run_pytest("features/", f"--env={path}", reports=tmp_path)
    assert ran.rc == 4, ran.out
    assert "no kubeconfig for env kind" in ran.out and not ran.traceback, ran.out
    assert [line for line in ran.out.splitlines() if line.startswith("ERROR")] == [ran.out.splitlines()[0]]

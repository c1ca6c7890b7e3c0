"""The testbed's network namespace: create/delete, the doublezero0 veth, and its routes (real kernel state)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from runbook.errors import ConfigError
from runbook.testbed import netns

ROUTES = ["192.0.2.10/32", "198.51.100.64/27"]

needs_net_admin = pytest.mark.skipif(
    not netns.has_net_admin(), reason=f"needs CAP_NET_ADMIN for network namespaces: {netns.net_admin_reason()}"
)


def _kernel_namespaces() -> list[str]:
    """`ip netns list`, read independently of the module under test."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.fixture
def ns_name() -> Iterator[str]:
    name = f"rbtest-{uuid.uuid4().hex[:10]}"
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    assert name not in _kernel_namespaces(), f"netns {name} left behind"


def test_net_admin_check_is_cached_and_explains_itself() -> None:
    first = netns.net_admin()
    assert netns.net_admin() is first
    ok, reason = netns.has_net_admin()
    assert bool(first) is ok and reason == first.reason
    assert first.ok or first.reason, "a negative answer must say why"
    assert not any(n.startswith("rbprobe-") for n in _kernel_namespaces()), "the probe namespace leaked"


@pytest.mark.netadmin
@needs_net_admin
def test_create_and_delete_leave_nothing_behind(ns_name: str) -> None:
    assert not netns.exists(ns_name)
    assert netns.create(ns_name) is True
    assert netns.create(ns_name) is False  # idempotent
    assert ns_name in _kernel_namespaces()
    assert ns_name in netns.list_names()
    netns.ensure_interface(ns_name)
    netns.ensure_routes(ns_name, netns.DEFAULT_INTERFACE, ROUTES)

    assert netns.delete(ns_name) is True
    assert netns.delete(ns_name) is False
    assert ns_name not in _kernel_namespaces()
    assert not netns.exists(ns_name)


@pytest.mark.netadmin
@needs_net_admin
def test_ensure_interface_converges_without_recreating(ns_name: str) -> None:
    first = netns.ensure_interface(ns_name, "doublezero0")
    assert first.created
    assert first.up
    assert netns.DEFAULT_ADDRESS in first.addresses

    again = netns.ensure_interface(ns_name, "doublezero0")
    assert not again.created
    assert again.ifindex == first.ifindex

    # Knocked down and stripped of its address: converged back, still the same link.
    subprocess.run(["ip", "-n", ns_name, "addr", "flush", "dev", "doublezero0"], check=True)
    subprocess.run(["ip", "-n", ns_name, "link", "set", "dev", "doublezero0", "down"], check=True)
    down = netns.interface(ns_name, "doublezero0")
    assert down is not None and not down.up and not down.addresses
    healed = netns.ensure_interface(ns_name, "doublezero0")
    assert (healed.ifindex, healed.up, healed.created) == (first.ifindex, True, False)
    assert netns.DEFAULT_ADDRESS in healed.addresses


@pytest.mark.netadmin
@needs_net_admin
def test_ensure_routes_is_idempotent_and_reads_the_kernel(ns_name: str) -> None:
    netns.ensure_interface(ns_name)
    assert netns.ensure_routes(ns_name, "doublezero0", ROUTES) == ROUTES
    assert netns.ensure_routes(ns_name, "doublezero0", ROUTES) == []

    got = netns.routes(ns_name, "doublezero0")
    assert set(ROUTES) <= set(got)
    assert "169.254.0.0/31" in got  # the connected prefix of the /31

    text = subprocess.run(
        ["ip", "-n", ns_name, "route", "show", "dev", "doublezero0"], capture_output=True, text=True, check=True
    ).stdout
    assert "192.0.2.10 via 169.254.0.0 proto bgp" in text
    assert netns.interface(ns_name, "nosuchlink") is None


def test_unsafe_addresses_and_names_are_refused_before_touching_the_kernel() -> None:
    with pytest.raises(ConfigError, match="safe ranges"):
        netns.ensure_routes("rbtest-never-created", "doublezero0", ["8.8.8.0/24"])
    with pytest.raises(ConfigError, match="safe ranges"):
        netns.ensure_interface("rbtest-never-created", address="10.0.0.1/31")
    with pytest.raises(ConfigError, match="interface name"):
        netns.ensure_interface("rbtest-never-created", "a-name-longer-than-15")
    with pytest.raises(ConfigError, match="namespace name"):
        netns.create("../etc")
    assert "rbtest-never-created" not in _kernel_namespaces()

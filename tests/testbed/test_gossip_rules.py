"""agave's gossip rules as the stand-ins apply them (pure): check_duplicate and overrides (gossip/src/
contact_info.rs), the cluster's table (one newest instance per identity, dropped after the timeout), the
validator's reaction to what it hears, and the wire format's refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest

from runbook.testbed import gossip
from runbook.testbed.gossip import ContactInfo, GossipTable, ValidatorGossip
from runbook.testbed.keypair import pubkey_from_seed

GREEN, BLUE = pubkey_from_seed(bytes([1]) * 32), pubkey_from_seed(bytes([2]) * 32)


def ci(pubkey: str = GREEN, *, outset: int = 1_000, wallclock: int = 1, port: int = 8001) -> ContactInfo:
    return ContactInfo(pubkey=pubkey, outset=outset, token=f"t{outset}-{port}", wallclock=wallclock,
                       gossip=f"127.0.0.1:{port}", rpc="127.0.0.1:8899", version="2.1.0", feature_set=7)


def test_only_a_newer_instance_of_the_same_identity_is_a_duplicate() -> None:
    old, new = ci(outset=1_000), ci(outset=2_000, port=8002)
    assert old.check_duplicate(new)  # the older one must exit
    assert not new.check_duplicate(old)  # the newer one keeps running
    assert not old.check_duplicate(replace(old, wallclock=99))  # its own later push is no duplicate
    assert not old.check_duplicate(ci(BLUE, outset=5_000))  # another identity never is
    assert new.overrides(old) is True and old.overrides(new) is False
    assert old.overrides(replace(old)) is None and old.overrides(ci(BLUE)) is None
    assert replace(old, wallclock=5).overrides(old) is True  # same instance, later value


def test_the_table_keeps_the_newest_instance_and_forgets_the_silent() -> None:
    now = [0.0]
    table = GossipTable(timeout=2.0, clock=lambda: now[0])
    old, new = ci(outset=1_000), ci(outset=2_000, port=8002)
    assert table.insert(old) == (True, None)
    assert table.insert(ci(BLUE)) == (True, None)
    assert table.insert(replace(old, wallclock=2)) == (False, None)  # a refresh: not a new instance
    stored, replaced = table.insert(new)  # replaces the older instance (whom the cluster then tells)
    assert stored and replaced is not None and replaced.same_instance(old)
    assert table.insert(replace(old, wallclock=3)) == (False, None)  # the older one's pushes are dropped
    assert {(n["pubkey"], n["gossip"]) for n in table.cluster_nodes()} == {(GREEN, "127.0.0.1:8002"),
                                                                           (BLUE, "127.0.0.1:8001")}
    now[0] = 1.5
    table.insert(replace(new, wallclock=9))  # green keeps announcing, blue went silent at 0.0
    now[0] = 2.5
    assert [n["pubkey"] for n in table.cluster_nodes()] == [GREEN]


def test_the_validator_exits_on_a_newer_instance_only() -> None:
    me = ci(outset=2_000)
    seen: list[ContactInfo] = []
    v = ValidatorGossip(me, ["127.0.0.1:18900"], interval=0.1, on_duplicate=seen.append)
    older, other = ci(outset=1_000, port=8009), ci(BLUE, outset=9_000, port=8003)
    for datagram in gossip.pull_responses([older, other, replace(me, wallclock=50)]):
        v.datagram_received(datagram, ("127.0.0.1", 18900))
    assert seen == []  # an older instance of me, another identity, my own refreshed value
    assert {n["gossip"] for n in v.cluster_nodes()} == {"127.0.0.1:8001", "127.0.0.1:8003"}
    newer = ci(outset=3_000, port=8004)
    v.datagram_received(gossip.encode({"type": "push", "from": newer.to_dict()}), ("127.0.0.1", 18900))
    assert seen == [newer]


def test_an_unspecified_address_becomes_the_source_and_rpc_follows() -> None:
    sent = replace(ci(), gossip="0.0.0.0:8001", rpc="0.0.0.0:8899")
    seen = sent.with_source("10.1.2.3")
    assert (seen.gossip, seen.rpc) == ("10.1.2.3:8001", "10.1.2.3:8899")
    assert replace(sent, rpc=None).with_source("10.1.2.3").rpc is None
    info = seen.rpc_contact_info()
    assert info["pubsub"] == "10.1.2.3:8900" and info["featureSet"] == 7 and info["tvu"] is None


@pytest.mark.parametrize("datagram", [
    b"not json", b"[]", b'{"type": "ping"}', b'{"type": "push", "from": {}}',
    b'{"type": "push", "from": {"pubkey": "abc", "outset": 1, "token": "t", "wallclock": 1, '
    b'"gossip": "1.2.3.4:1", "rpc": null, "version": "2.1.0", "feature_set": 1}}',
])
def test_malformed_datagrams_are_dropped(datagram: bytes) -> None:
    with pytest.raises(ValueError):
        gossip.decode(datagram)
    table = GossipTable()
    cluster = gossip.ClusterGossip(table)
    cluster.datagram_received(datagram, ("127.0.0.1", 1))
    assert cluster.rejected == 1 and table.live() == []


def test_large_tables_are_split_across_datagrams() -> None:
    nodes = [ci(pubkey_from_seed(bytes([i]) * 32), port=9000 + i) for i in range(1, 120)]
    datagrams = list(gossip.pull_responses(nodes))
    assert len(datagrams) == 3 and all(len(d) < gossip.MAX_DATAGRAM for d in datagrams)
    assert sum(len(gossip.decode(d)[1]) for d in datagrams) == len(nodes)
    assert [len(gossip.decode(d)[1]) for d in gossip.pull_responses([])] == [0]

"""The config node's choice of the snode that exports a replicated volume (issue 12): who is
promoted when the primary is lost, and what is never decided without a person."""

from __future__ import annotations

import pytest

from homecloud.agents.drbd import DrbdStatus
from homecloud.control.promotion import Side, decide


def st(cs: str, ro: str, ds: str) -> DrbdStatus:
    role, peer_role = ro.split("/")
    disk, peer_disk = ds.split("/")
    return DrbdStatus(10, cs, role, peer_role, disk, peer_disk, "C")


PRIMARY = st("Connected", "Primary/Secondary", "UpToDate/UpToDate")
SECONDARY = st("Connected", "Secondary/Primary", "UpToDate/UpToDate")
ALONE = st("WFConnection", "Secondary/Unknown", "UpToDate/DUnknown")


def test_a_reachable_primary_stays() -> None:
    d = decide("v1", [Side("snode1", True, PRIMARY), Side("snode2", True, SECONDARY)],
               current="snode1")
    assert (d.action, d.primary) == ("keep", "snode1")


def test_the_peer_of_a_lost_primary_is_promoted() -> None:
    d = decide("v1", [Side("snode1", False, None), Side("snode2", True, ALONE)],
               current="snode1")
    assert (d.action, d.primary) == ("promote", "snode2")
    assert "snode1 unreachable" in d.why


def test_after_a_restart_the_former_primary_is_preferred() -> None:
    both = [Side("snode2", True, SECONDARY), Side("snode1", True, SECONDARY)]
    assert decide("v1", both, current="snode1").primary == "snode1"
    assert decide("v1", both, current="snode2").primary == "snode2"
    assert decide("v1", both).primary == "snode1"  # no record: by name


@pytest.mark.parametrize(("peer", "stale", "said"), [
    (st("WFConnection", "Secondary/Unknown", "Outdated/DUnknown"), False,
     "snode2's disk is Outdated"),
    (st("WFConnection", "Secondary/Unknown", "Inconsistent/DUnknown"), False,
     "snode2's disk is Inconsistent"),
    (ALONE, True, "snode2 missed writes while cut off from the primary"),
])
def test_older_data_is_never_promoted(peer: DrbdStatus, stale: bool, said: str) -> None:
    d = decide("v1", [Side("snode1", False, None), Side("snode2", True, peer, stale=stale)],
               current="snode1")
    assert (d.action, d.primary) == ("refuse", None)
    assert said in d.why and "snode1 unreachable" in d.why
    assert "loses acknowledged writes" in d.why


def test_nothing_reachable_waits() -> None:
    d = decide("v1", [Side("snode1", False, None), Side("snode2", False, None)])
    assert (d.action, d.primary) == ("wait", None)


def test_two_primaries_and_split_brain_are_for_a_person() -> None:
    two = decide("v1", [Side("snode1", True, PRIMARY), Side("snode2", True, PRIMARY)])
    assert two.action == "refuse" and "two writers" in two.why
    sb = st("StandAlone", "Secondary/Unknown", "UpToDate/DUnknown")
    d = decide("v1", [Side("snode1", True, sb), Side("snode2", True, sb)])
    assert d.action == "refuse" and "split brain" in d.why
    one = decide("v1", [Side("snode1", False, None), Side("snode2", True, sb)])
    assert one.action == "refuse" and "StandAlone" in one.why


def test_a_volume_needs_two_snodes() -> None:
    assert decide("v1", [Side("snode1", True, PRIMARY)]).action == "refuse"
    d = decide("v1", [Side("snode1", True, PRIMARY), Side("snode1", True, PRIMARY)])
    assert d.action == "refuse" and "two replicas on two snodes" in d.why

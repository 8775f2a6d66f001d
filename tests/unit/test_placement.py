"""Placement (homecloud/control/placement.py): a table of hosts and needs -> the host chosen or
the refusal naming what is short per host; and the state machine's data
(homecloud/control/lifecycle.py)."""

from __future__ import annotations

import pytest

from homecloud.control.contracts import HostFacts
from homecloud.control.lifecycle import ACTIONS, TRANSITIONS, StateError, check
from homecloud.control.placement import Candidate, Need, PlacementError, place
from homecloud.core.model import INSTANCE_STATES, Nic, Node


def host(name: str, free: int, *, up: bool = True, drained: bool = False,
         bridges: tuple[str, ...] = ("xenbr1",), sees: tuple[str, ...] = ("e1.1",),
         xen: str = "4.17.3") -> Candidate:
    node = Node(name, "hnode", (Nic(f"52:54:00:00:10:{len(name) + free % 200:02x}"),))
    facts = HostFacts(name, xen, 4096, free, (), bridges, sees) if up else None
    return Candidate(node, facts, drained, "" if up else "ssh: connection refused")


NEED = Need(512, "xenbr1", "e1.1")

TABLE = [
    # hosts, on, chosen or the refusal's text
    ([host("h1", 1000), host("h2", 3000), host("h3", 2000)], None, "h2"),
    ([host("h1", 2000), host("h2", 2000)], None, "h1"),  # a tie: by name
    ([host("h1", 1000), host("h2", 3000, drained=True)], None, "h1"),
    ([host("h1", 1000), host("h2", 3000, up=False)], None, "h1"),
    ([host("h1", 1000), host("h2", 3000, bridges=("xenbr0",))], None, "h1"),
    ([host("h1", 1000), host("h2", 3000, sees=())], None, "h1"),
    ([host("h1", 512), host("h2", 511)], None, "h1"),  # exactly enough fits
    ([host("h1", 1000), host("h2", 3000)], "h1", "h1"),
    ([host("h1", 100), host("h2", 200, drained=True), host("h3", 9000, up=False)], None,
     "no hnode fits: h1: free memory 100 MiB < 512 MiB needed; h2: drained, free memory 200 "
     "MiB < 512 MiB needed; h3: down (ssh: connection refused)"),
    ([host("h1", 1000, bridges=(), sees=())], None,
     "h1: no bridge xenbr1 (has: none), does not see volume e1.1"),
    ([host("h1", 1000), host("h2", 3000)], "h3", "cannot place the instance on h3: not an "
     "hnode (hnodes: h1, h2)"),
    ([host("h1", 1000, drained=True)], "h1", "on h1: drained"),
    ([host("h1", 100)], "h1", "on h1: free memory 100 MiB < 512 MiB needed"),
    ([], None, "no hnode in the inventory"),
]


@pytest.mark.parametrize("hosts,on,expect", TABLE)
def test_placement_table(hosts: list[Candidate], on: str | None, expect: str) -> None:
    if expect.startswith("h") and " " not in expect:
        assert place(hosts, NEED, on).node.name == expect
    else:
        with pytest.raises(PlacementError) as e:
            place(hosts, NEED, on)
        assert expect in str(e.value)


def test_overhead_and_xen_version() -> None:
    hosts = [host("h1", 600), host("h2", 560, xen="4.18.0")]
    assert place(hosts, Need(512, "xenbr1", overhead_mb=64)).node.name == "h1"
    with pytest.raises(PlacementError, match=r"h1: free memory 600 MiB < 640 MiB needed"):
        place(hosts, Need(512, "xenbr1", overhead_mb=128))
    with pytest.raises(PlacementError, match=r"h2: Xen 4.18.0, not the source's 4.17.3"):
        place(hosts, Need(512, "xenbr1", xen_version="4.17.3"), on="h2")


def test_actions_only_use_known_states_and_transitions_are_derived() -> None:
    for a in ACTIONS.values():
        assert set(a.from_states) <= set(INSTANCE_STATES)
    assert ("stopped", "starting") in TRANSITIONS and ("starting", "running") in TRANSITIONS
    assert ("running", "migrating") in TRANSITIONS and ("migrating", "error") in TRANSITIONS
    assert ("stopped", "migrating") not in TRANSITIONS
    assert ("stopped", "rebooting") not in TRANSITIONS
    # from every state something gets out (destroy at least): no dead end
    for s in INSTANCE_STATES:
        assert any(s in a.from_states for a in ACTIONS.values())


@pytest.mark.parametrize("action,state,ok", [
    ("start", "stopped", True), ("start", "error", True), ("start", "running", False),
    ("stop", "running", True), ("stop", "error", False), ("stop-force", "error", True),
    ("stop-force", "starting", True), ("reboot", "running", True), ("reboot", "stopped", False),
    ("migrate", "running", True), ("migrate", "error", False), ("copy", "stopped", True),
    ("copy", "running", False), ("destroy", "migrating", True), ("destroy", "error", True),
])
def test_check(action: str, state: str, ok: bool) -> None:
    if ok:
        assert check(action, "web1", state).name == action
    else:
        with pytest.raises(StateError, match=f"instance web1: cannot .* while {state} "
                           r"\(allowed from: "):
            check(action, "web1", state)

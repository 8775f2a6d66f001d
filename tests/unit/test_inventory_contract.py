"""The inventory-store contract (homecloud.inventory.protocol): every backend passes it.

Backends: the YAML file (``YamlFileStore``), and an in-memory store (tests/support/memstore.py)
that keeps the suite honest about testing the protocol rather than one file format.  A later
etcd backend adds one factory below."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from homecloud.core.errors import InventoryError, RevisionConflict
from homecloud.core.model import Inventory, Nic, Node
from homecloud.inventory.protocol import InventoryStore, Snapshot, update
from homecloud.inventory.yamlfile import YamlFileStore
from tests.support.memstore import MemoryBacking, MemoryStore

ROLES = ("hnode", "snode", "domu")
Factory = Callable[[], InventoryStore]


@pytest.fixture(params=["yaml", "memory"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """A factory of handles on ONE backing store (as two processes see one inventory)."""
    opened: list[InventoryStore] = []
    backing = MemoryBacking()

    def factory() -> InventoryStore:
        s: InventoryStore
        if request.param == "yaml":
            s = YamlFileStore(tmp_path, ROLES, poll_interval=0.05)
        else:
            s = MemoryStore(backing, ROLES)
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()


def node(i: int, role: str = "hnode") -> Node:
    return Node(f"n{i}", role, (Nic(f"52:54:00:00:20:{i:02x}"),))


def wait_for(pred: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_a_new_store_is_empty_with_the_empty_revision(open_store: Factory) -> None:
    s = open_store()
    snap = s.snapshot()
    assert snap == Snapshot(Inventory(), "")
    assert s.last_error is None


def test_compare_and_set_stores_and_moves_the_revision(open_store: Factory) -> None:
    s = open_store()
    r0 = s.snapshot().revision
    snap = s.compare_and_set(r0, Inventory().with_node(node(1)))
    assert snap.revision != r0
    assert s.snapshot().revision == snap.revision
    assert s.snapshot().inventory.named("n1") == node(1)
    snap2 = s.compare_and_set(snap.revision, snap.inventory.with_node(node(2)))
    assert snap2.revision not in (r0, snap.revision)
    assert [n.name for n in s.snapshot().inventory.nodes] == ["n1", "n2"]


def test_a_stale_revision_is_a_conflict_and_stores_nothing(open_store: Factory) -> None:
    a, b = open_store(), open_store()
    r0 = a.snapshot().revision
    won = b.compare_and_set(r0, Inventory().with_node(node(1)))
    with pytest.raises(RevisionConflict):
        a.compare_and_set(r0, Inventory().with_node(node(2)))
    assert wait_for(lambda: a.snapshot().revision == won.revision)
    assert [n.name for n in a.snapshot().inventory.nodes] == ["n1"]


def test_an_invalid_inventory_is_refused_and_stores_nothing(open_store: Factory) -> None:
    s = open_store()
    r0 = s.snapshot().revision
    clash = Node("n9", "hnode", (Nic("52:54:00:00:20:01"),))  # n1's MAC again
    with pytest.raises(InventoryError, match="duplicate MAC"):
        s.compare_and_set(r0, Inventory().with_node(node(1)).with_node(clash))
    with pytest.raises(InventoryError, match="unknown role"):
        s.compare_and_set(r0, Inventory().with_node(node(1, role="router")))
    assert s.snapshot().revision == r0


def test_another_handle_sees_changes(open_store: Factory) -> None:
    a, b = open_store(), open_store()
    a.compare_and_set(a.snapshot().revision, Inventory().with_node(node(3)))
    assert wait_for(lambda: b.snapshot().inventory.named("n3") is not None)


def test_watch_reports_changes_made_elsewhere_until_unwatched(open_store: Factory) -> None:
    a, b = open_store(), open_store()
    got: list[Snapshot] = []
    unwatch = b.watch(got.append)
    first = a.compare_and_set(a.snapshot().revision, Inventory().with_node(node(1)))
    assert wait_for(lambda: any(s.revision == first.revision for s in got))
    assert got[-1].inventory.named("n1") is not None
    unwatch()
    n = len(got)
    a.compare_and_set(first.revision, first.inventory.with_node(node(2)))
    assert wait_for(lambda: b.snapshot().inventory.named("n2") is not None)
    time.sleep(0.3)
    assert len(got) == n


def test_update_retries_lost_races_and_loses_no_edit(open_store: Factory) -> None:
    handles = [open_store() for _ in range(4)]
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            update(handles[i % 4], lambda inv: inv.with_node(node(i)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert wait_for(lambda: len(handles[0].snapshot().inventory.nodes) == 24)


def test_update_lets_the_change_refuse(open_store: Factory) -> None:
    s = open_store()

    def refuse(inv: Inventory) -> Inventory:
        raise InventoryError(s.where, "n1", "no")

    with pytest.raises(InventoryError, match="no"):
        update(s, refuse)
    assert s.snapshot().revision == ""

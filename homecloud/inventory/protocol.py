"""The inventory-store protocol: snapshot with a revision, watch, compare-and-set update.

Every reader and writer of the inventory (the boot policy, the control service, the lab) takes an
:class:`InventoryStore`, never a file.  Semantics every backend keeps (the contract tests in
tests/unit/test_inventory_contract.py check them):

- ``snapshot()`` returns the last *good* inventory and its revision.  A backend whose stored
  document became unreadable, malformed or vanished keeps serving the previous good one and says
  why in ``last_error`` (naming the file or key).
- ``compare_and_set(expected, new)`` stores ``new`` only if the stored revision is still
  ``expected``; otherwise it raises :class:`RevisionConflict` and stores nothing.  An inventory
  that would not read back (duplicate MACs, unknown roles) raises ``InventoryError`` and stores
  nothing.
- ``watch(callback)`` calls ``callback(snapshot)`` after every change, whoever made it (this
  process or another), from the store's own thread; it returns a function that stops the watch.
- revisions are opaque strings: equal revisions mean equal stored documents; ``""`` is the
  revision of a store that holds nothing yet.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from homecloud.core.errors import InventoryError, RevisionConflict
from homecloud.core.model import Inventory

Unwatch = Callable[[], None]


@dataclass(frozen=True)
class Snapshot:
    inventory: Inventory
    revision: str


class InventoryStore(Protocol):
    @property
    def where(self) -> str:
        """Where the inventory lives, for messages (a file path, an etcd key)."""
        ...

    @property
    def last_error(self) -> str | None:
        """Why the stored document is not in force (None when it is)."""
        ...

    def snapshot(self) -> Snapshot: ...

    def compare_and_set(self, expected: str, new: Inventory) -> Snapshot: ...

    def watch(self, callback: Callable[[Snapshot], None]) -> Unwatch: ...

    def close(self) -> None: ...


def update(store: InventoryStore, change: Callable[[Inventory], Inventory],
           attempts: int = 64) -> Snapshot:
    """Read, ``change``, compare-and-set; on a lost race wait a random moment, read again and
    re-apply ``change``.

    ``change`` must be a pure function of the inventory it gets (it may run more than once) and
    may raise to refuse the edit.  A backend with a ``write_lock()`` (the YAML file) is held
    across the whole read-change-write, so concurrent writers queue instead of retrying."""
    hold = getattr(store, "write_lock", None)
    with hold() if hold is not None else contextlib.nullcontext():
        return _update(store, change, attempts)


def _update(store: InventoryStore, change: Callable[[Inventory], Inventory],
            attempts: int) -> Snapshot:
    for i in range(attempts):
        if i:
            time.sleep(random.uniform(0, min(0.2, 0.005 * 2 ** min(i, 6))))
        snap = store.snapshot()
        if store.last_error:
            raise InventoryError(store.where, "", f"not edited: {store.last_error}")
        try:
            return store.compare_and_set(snap.revision, change(snap.inventory))
        except RevisionConflict:
            if i == attempts - 1:
                raise
    raise AssertionError("unreachable")

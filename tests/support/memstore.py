"""An in-memory inventory store: the second backend the contract suite runs against (so the
suite tests the protocol, not the YAML file), and a fast store for unit tests of the callers.

Handles made from one :class:`MemoryBacking` share it like processes share one file or etcd."""

from __future__ import annotations

import threading
from collections.abc import Callable

from homecloud.core.errors import RevisionConflict
from homecloud.core.model import Inventory
from homecloud.inventory.protocol import Snapshot, Unwatch
from homecloud.inventory.schema import parse_inventory, to_yaml


class MemoryBacking:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.snap = Snapshot(Inventory(), "")
        self.counter = 0


class MemoryStore:
    def __init__(self, backing: MemoryBacking | None = None,
                 roles: tuple[str, ...] | None = None) -> None:
        self.backing = backing or MemoryBacking()
        self.roles = roles
        self._watchers: list[Callable[[Snapshot], None]] = []
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def where(self) -> str:
        return f"memory:{id(self.backing):x}"

    @property
    def last_error(self) -> str | None:
        return None

    def snapshot(self) -> Snapshot:
        with self.backing.cond:
            return self.backing.snap

    def compare_and_set(self, expected: str, new: Inventory) -> Snapshot:
        parsed = parse_inventory(to_yaml(new), self.where, self.roles)  # same checks as a reader
        b = self.backing
        with b.cond:
            if b.snap.revision != expected:
                raise RevisionConflict(self.where, expected or "(none)", b.snap.revision)
            b.counter += 1
            b.snap = Snapshot(parsed, f"{b.counter:016d}")
            b.cond.notify_all()
            return b.snap

    def watch(self, callback: Callable[[Snapshot], None]) -> Unwatch:
        self._watchers.append(callback)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()

        def unwatch() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)
        return unwatch

    def _loop(self) -> None:
        b = self.backing
        last = [self.snapshot().revision]
        while not self._closed:
            with b.cond:
                b.cond.wait_for(lambda: b.snap.revision != last[0] or self._closed, timeout=0.5)
                snap = b.snap
            if snap.revision != last[0]:
                last[0] = snap.revision
                for cb in list(self._watchers):
                    cb(snap)

    def close(self) -> None:
        self._closed = True
        with self.backing.cond:
            self.backing.cond.notify_all()
        if self._thread is not None:
            self._thread.join(2)

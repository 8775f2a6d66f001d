"""The inventory store's first backend: ``<state-dir>/inventory.yaml``.

Writes are atomic (temp file, fsync, rename, fsync of the directory) and serialised with an
flock on ``.inventory.lock``; the revision is the sha256 of the file's bytes, so a hand edit is a
new revision like any other.  Readers reload on change (a stat per ``snapshot()``, or a poller
thread once something watches); a file that turns malformed, unreadable or is deleted while it
was in force leaves the previous good inventory in force, with ``last_error`` naming the file
(logged once per distinct error).  A file that was never there is an empty inventory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from homecloud.core.errors import InventoryError, RevisionConflict
from homecloud.core.files import atomic_write, locked
from homecloud.core.model import Inventory
from homecloud.inventory.protocol import Snapshot, Unwatch
from homecloud.inventory.schema import INVENTORY_NAME, parse_inventory, to_yaml

log = logging.getLogger("homecloud.inventory")


def _revision(raw: bytes | None) -> str:
    return "" if raw is None else hashlib.sha256(raw).hexdigest()


class YamlFileStore:
    """An :class:`~homecloud.inventory.protocol.InventoryStore` on one YAML file."""

    def __init__(self, state_dir: Path, roles: Iterable[str] | None = None,
                 poll_interval: float = 0.5) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / INVENTORY_NAME
        self.lock_path = self.state_dir / ".inventory.lock"
        self.roles = tuple(roles) if roles is not None else None
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._held = threading.local()
        self._sig: tuple[int, int, int, int] | None = None
        self._snap = Snapshot(Inventory(), "")
        self._loaded_once = False
        self._error: str | None = None
        self._watchers: list[Callable[[Snapshot], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    # ------------------------------------------------------------------ protocol
    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def last_error(self) -> str | None:
        return self._error

    def snapshot(self) -> Snapshot:
        if self._thread is None or getattr(self._held, "on", False):
            self.refresh()
        return self._snap

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold the file's write lock across a read-change-write (``protocol.update`` uses it
        when a backend has it): writers in other processes wait instead of losing races."""
        if getattr(self._held, "on", False):
            yield
            return
        with locked(self.lock_path):
            self._held.on = True
            try:
                yield
            finally:
                self._held.on = False

    def compare_and_set(self, expected: str, new: Inventory) -> Snapshot:
        text = to_yaml(new)
        # validate exactly as a reader would (duplicate MACs and IPs, unknown roles)
        parsed = parse_inventory(text, self.path, self.roles)
        with self.write_lock():
            found = _revision(self._read_bytes())
            if found != expected:
                raise RevisionConflict(str(self.path), expected or "(none)", found or "(none)")
            atomic_write(self.path, text)
        snap = Snapshot(parsed, _revision(text.encode()))
        self.refresh()
        return snap

    def watch(self, callback: Callable[[Snapshot], None]) -> Unwatch:
        with self._lock:
            self._watchers.append(callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._poll_loop, name="inventory-watch",
                                                daemon=True)
                self._thread.start()

        def unwatch() -> None:
            with self._lock:
                if callback in self._watchers:
                    self._watchers.remove(callback)
        return unwatch

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    # ------------------------------------------------------------------ file
    def _read_bytes(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def refresh(self) -> bool:
        """Reload if the file changed; True if the inventory in force changed."""
        try:
            st = os.stat(self.path)
            sig = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)
        except FileNotFoundError:
            sig = (0, 0, 0, 0)
        except OSError as exc:
            sig = (-1, 0, 0, 0)
            return self._fail(f"{self.path}: unreadable: {exc.strerror or exc}")
        with self._lock:
            if sig == self._sig:
                return False
            self._sig = sig
        try:
            raw = self._read_bytes()
        except OSError as exc:
            return self._fail(f"{self.path}: unreadable: {exc.strerror or exc}")
        if raw is None:
            if self._loaded_once and self._snap.revision:
                return self._fail(f"{self.path}: deleted; the previous inventory stays in force "
                                  "(write a new one, e.g. with hcboot assign)")
            return self._set(Snapshot(Inventory(), ""))
        try:
            inv = parse_inventory(raw.decode("utf-8", "replace"), self.path, self.roles)
        except InventoryError as exc:
            return self._fail(str(exc))
        return self._set(Snapshot(inv, _revision(raw)))

    def _fail(self, message: str) -> bool:
        with self._lock:
            if message != self._error:
                log.error("inventory not reloaded, previous one stays in force: %s", message)
            self._error = message
        return False

    def _set(self, snap: Snapshot) -> bool:
        with self._lock:
            self._error = None
            self._loaded_once = True
            changed = snap.revision != self._snap.revision
            self._snap = snap
            watchers = list(self._watchers) if changed else []
        if changed:
            log.info("inventory loaded: %d nodes, %d exports", len(snap.inventory.nodes),
                     len(snap.inventory.exports))
        for cb in watchers:
            try:
                cb(snap)
            except Exception:  # a watcher's bug must not stop the others or the poller
                log.exception("inventory watcher failed")
        return changed

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except Exception:  # never let the watcher die
                log.exception("inventory poll failed")

"""Machines that asked to boot: first/last seen, client arch, vendor class.

Kept in ``<state-dir>/seen.json`` (atomic writes, throttled: a machine retrying every second does
not rewrite the file every second).  ``hcboot nodes --unassigned`` lists the seen MACs that the
inventory does not assign.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bootserver.fsutil import atomic_write, locked
from bootserver.machine import Machine

log = logging.getLogger("hcboot.seen")
SEEN_NAME = "seen.json"


@dataclass
class Seen:
    mac: str
    first_seen: float
    last_seen: float
    arch: int | None = None
    vendor_class: str | None = None
    user_class: str | None = None
    count: int = 1


def _load(path: Path) -> dict[str, Seen]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.error("%s: unreadable, starting a new record of seen machines: %s", path, exc)
        return {}
    out: dict[str, Seen] = {}
    for mac, rec in (doc.get("machines") or {}).items():
        try:
            out[mac] = Seen(**{**rec, "mac": mac})
        except TypeError:
            log.warning("%s: skipping malformed record for %s", path, mac)
    return out


class SeenStore:
    def __init__(self, state_dir: Path, flush_interval: float = 1.0) -> None:
        self.path = Path(state_dir) / SEEN_NAME
        self.lock_path = Path(state_dir) / ".seen.lock"
        self.flush_interval = flush_interval
        self._mem = _load(self.path)
        self._dirty = False
        self._last_flush = 0.0
        self._lock = threading.Lock()

    def record(self, m: Machine, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            rec = self._mem.get(m.mac)
            if rec is None:
                self._mem[m.mac] = Seen(m.mac, now, now, m.arch, m.vendor_class, m.user_class)
                log.info("%s: new machine seen (arch %s, vendor class %r)", m.mac, m.arch,
                         m.vendor_class)
                new = True
            else:
                rec.last_seen = now
                rec.count += 1
                rec.arch = m.arch if m.arch is not None else rec.arch
                rec.vendor_class = m.vendor_class or rec.vendor_class
                rec.user_class = m.user_class or rec.user_class
                new = False
            self._dirty = True
            due = new or now - self._last_flush >= self.flush_interval
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            snapshot = {mac: asdict(s) for mac, s in sorted(self._mem.items())}
            self._dirty = False
            self._last_flush = time.time()
        with locked(self.lock_path):
            on_disk = _load(self.path)  # merge records other processes wrote (forget/--clear)
            for mac, rec in snapshot.items():
                rec.pop("mac", None)
                old = on_disk.get(mac)
                if old and old.first_seen < rec["first_seen"]:
                    rec["first_seen"] = old.first_seen
            doc = {"machines": snapshot}
            atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True) + "\n")

    def all(self) -> list[Seen]:
        with self._lock:
            return sorted(self._mem.values(), key=lambda s: s.first_seen)


def read_seen(state_dir: Path) -> list[Seen]:
    return sorted(_load(Path(state_dir) / SEEN_NAME).values(), key=lambda s: s.first_seen)

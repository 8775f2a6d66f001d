"""Machines that asked to boot without a role: first/last seen, client arch, vendor class.

Kept in ``<state-dir>/seen.json``.  Recording is memory only (the DHCP and HTTP threads never
write files): a writer thread flushes changes at most once per ``flush_interval`` with one atomic
write.  The record is bounded (``max_machines``, default 1024): when full, the machine seen
longest ago is forgotten first, so a flood of forged MACs cannot grow the file without bound or
push out a machine that keeps asking.  ``hcboot nodes --unassigned`` lists the seen MACs that the
inventory does not assign.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from homecloud.core.files import atomic_write, locked

log = logging.getLogger("homecloud.control")
SEEN_NAME = "seen.json"
DEFAULT_MAX_MACHINES = 1024


@dataclass
class Seen:
    mac: str
    first_seen: float
    last_seen: float
    arch: int | None = None
    vendor_class: str | None = None
    user_class: str | None = None
    count: int = 1


def _clip(value: str | None) -> str | None:
    return value[:128] if value else value


def _load(path: Path) -> dict[str, Seen]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.error("%s: unreadable, starting a new record of seen machines: %s", path, exc)
        return {}
    out: dict[str, Seen] = {}
    machines = doc.get("machines") if isinstance(doc, dict) else None
    for mac, rec in (machines or {}).items():
        try:
            out[mac] = Seen(**{**rec, "mac": mac})
        except TypeError:
            log.warning("%s: skipping malformed record for %s", path, mac)
    return out


class SeenStore:
    def __init__(self, state_dir: Path, flush_interval: float = 1.0,
                 max_machines: int = DEFAULT_MAX_MACHINES) -> None:
        self.path = Path(state_dir) / SEEN_NAME
        self.lock_path = Path(state_dir) / ".seen.lock"
        self.flush_interval = flush_interval
        self.max_machines = max_machines
        self._mem = _load(self.path)
        self._trim()
        self._dirty = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the writer thread (without it, :meth:`flush` must be called)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="seen-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()

    def record(self, mac: str, arch: int | None = None, vendor_class: str | None = None,
               user_class: str | None = None, now: float | None = None) -> None:
        """Note that ``mac`` asked to boot (memory only; cheap enough for a protocol thread)."""
        now = time.time() if now is None else now
        with self._lock:
            rec = self._mem.get(mac)
            if rec is None:
                self._mem[mac] = Seen(mac, now, now, arch, _clip(vendor_class), _clip(user_class))
                log.info("%s: new machine seen (arch %s, vendor class %r)", mac, arch,
                         vendor_class)
                self._trim()
            else:
                rec.last_seen = now
                rec.count += 1
                rec.arch = arch if arch is not None else rec.arch
                rec.vendor_class = _clip(vendor_class) or rec.vendor_class
                rec.user_class = _clip(user_class) or rec.user_class
            self._dirty = True
        self._wake.set()

    def _trim(self) -> None:
        over = len(self._mem) - self.max_machines
        if over > 0:
            for s in sorted(self._mem.values(), key=lambda s: s.last_seen)[:over]:
                del self._mem[s.mac]
            log.warning("seen machines: over %d recorded, forgot the %d seen longest ago",
                        self.max_machines, over)

    def _writer(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
            except Exception:  # a full disk must not stop later flushes
                log.exception("%s: could not write", self.path)
            self._stop.wait(self.flush_interval)

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            snapshot = {mac: asdict(s) for mac, s in sorted(self._mem.items())}
            self._dirty = False
        try:
            with locked(self.lock_path):
                on_disk = _load(self.path)  # keep first-seen times other processes wrote
                for mac, rec in snapshot.items():
                    rec.pop("mac", None)
                    old = on_disk.get(mac)
                    if old and old.first_seen < rec["first_seen"]:
                        rec["first_seen"] = old.first_seen
                atomic_write(self.path, json.dumps({"machines": snapshot}, indent=1,
                                                   sort_keys=True) + "\n")
        except OSError:
            with self._lock:
                self._dirty = True
            raise

    def all(self) -> list[Seen]:
        with self._lock:
            return sorted(self._mem.values(), key=lambda s: s.first_seen)


def read_seen(state_dir: Path) -> list[Seen]:
    return sorted(_load(Path(state_dir) / SEEN_NAME).values(), key=lambda s: s.first_seen)

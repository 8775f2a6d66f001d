"""DHCP lease state: bound leases, tentative offers, declined addresses, and the lease journal.

The journal is an append-only JSON-lines file.  Every change that a client may rely on (a lease
bound by an ACK, a RELEASE, a DECLINE) is appended and fsync'ed *before* the reply leaves, so a
crash never forgets an address the client was told it owns.  With ``deferred_sync`` the server
groups the fsync of a batch of requests (one fsync, then the batch's ACKs).  At start the journal
is replayed (a torn last line from a crash mid-write is skipped and logged) and rewritten
compacted (temporary file + fsync + rename + fsync of the directory).

Failures (disk full, EIO) are never silent: a failed or short append raises
:class:`LeaseFileError` (naming the file and the errno) and the file is cut back to its last
complete record, so the torn bytes cannot cost the next record; a failed fsync or a cut-back that
fails marks the journal *broken*, and then the next append or :meth:`LeaseTable.sync` first
rewrites the whole journal from the in-memory state (which holds every acknowledged lease) and
raises while it cannot.  The server sends an ACK only after ``sync`` returned, so no ACK leaves
for a lease that is not on disk, and the journal heals by itself once the disk has room again.

Offers are kept in memory only: they are tentative (RFC 2131 §4.3.1) and expire after
``offer_time`` seconds, or earlier when the pool runs dry (the oldest offer is reclaimed).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from homecloud.core.errors import HomecloudError
from homecloud.core.files import atomic_write, write_all

log = logging.getLogger("homecloud.dhcp")

EVENT_BOUND = "bound"
EVENT_RELEASED = "released"
EVENT_DECLINED = "declined"
COMPACT_MIN = 10_000  # journal records appended before a rewrite is considered


# Every record is a sort_keys JSON object, so it starts with this.
_RECORD_START = b'{"'


class LeaseFileError(HomecloudError, OSError):
    """The lease journal cannot be read or written (names the file and the errno)."""


def _error(path: Path, what: str, e: OSError) -> LeaseFileError:
    name = errno.errorcode.get(e.errno or 0, "?")
    err = LeaseFileError(f"lease file {path}: {what}: [Errno {e.errno}] {name}:"
                         f" {e.strerror or e}")
    err.errno = e.errno
    return err


@dataclass(slots=True)
class Lease:
    mac: str
    ip: str
    expires: float  # seconds since the epoch
    hostname: str | None = None


@dataclass(slots=True)
class Offer:
    mac: str
    ip: str
    until: float


class LeaseTable:
    """In-memory lease state plus the optional journal at ``path`` (None = memory only)."""

    def __init__(self, path: Path | None = None, *, clock: Callable[[], float] = time.time,
                 offer_time: float = 60.0,
                 write: Callable[[int, memoryview], int] = os.write,
                 fsync: Callable[[int], None] = os.fsync) -> None:
        self.path = path
        self.clock = clock
        self.offer_time = offer_time
        self.by_mac: dict[str, Lease] = {}
        self.by_ip: dict[str, Lease] = {}
        self.declined: dict[str, float] = {}  # ip -> until
        self.offers: OrderedDict[str, Offer] = OrderedDict()  # by ip, oldest first
        self.offer_by_mac: dict[str, str] = {}
        self.skipped_lines: list[int] = []
        self._fh: int | None = None
        self._appended = 0
        self._good = 0  # journal size up to the end of the last complete record
        self._broken = False
        # os.write / os.fsync; tests inject failing ones (a full disk is also tested for real)
        self._write = write
        self._fsync = fsync
        # deferred_sync: appends are not fsync'ed one by one; the owner calls sync() before it
        # sends any reply that depends on them.
        self.deferred_sync = False
        self.dirty = False

    # --- journal ---
    def open(self) -> None:
        """Replay and compact the journal, then open it for appending.

        A compaction that fails (disk full) is not fatal: the journal is then kept as it is, cut
        back to its last complete line, and appended to; the next failure-free rewrite happens
        when the journal has grown (or after an append fails)."""
        if self.path is None:
            return
        try:
            raw = self.path.read_bytes() if self.path.exists() else b""
        except OSError as e:
            raise _error(self.path, "cannot read", e) from e
        self._replay(raw)
        try:
            self._compact()
        except LeaseFileError as e:
            log.error("%s; appending to the journal as it is (cut back to its last complete"
                      " line) and rewriting it later", e)
            self._open_append()
            complete = raw.rfind(b"\n") + 1
            if complete != len(raw):
                try:
                    os.ftruncate(self._require_fh(), complete)
                except OSError as e2:
                    raise _error(self.path, "cannot cut off its torn last line", e2) from e2
            self._good = complete
            return
        self._open_append()

    def _replay(self, raw: bytes) -> None:
        assert self.path is not None
        lines = raw.split(b"\n")
        torn_tail = bool(lines and lines[-1])  # no newline after the last record
        for no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            last = no == len(lines)
            try:
                rec = json.loads(line)
                self._apply(rec)
            except (ValueError, KeyError, TypeError) as e:
                self.skipped_lines.append(no)
                if last and torn_tail:
                    log.warning("lease file %s: torn last line %d skipped (%s): %r",
                                self.path, no, e, line[:80])
                    continue
                log.warning("lease file %s: bad line %d skipped (%s): %r",
                            self.path, no, e, line[:80])
                # A torn write followed by a good record on the same line (an append after a
                # failed one, from a version that did not cut the file back): keep the record.
                self._salvage(line, no)

    def _salvage(self, line: bytes, no: int) -> None:
        at = line.rfind(_RECORD_START)
        if at <= 0:
            return
        try:
            self._apply(json.loads(line[at:]))
        except (ValueError, KeyError, TypeError):
            return
        log.warning("lease file %s: line %d: record after the torn bytes kept: %r",
                    self.path, no, line[at:at + 80])

    def _open_append(self) -> None:
        assert self.path is not None
        try:
            created = not self.path.exists()
            self._fh = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._good = os.fstat(self._fh).st_size
            if created:  # the new name must survive a crash too
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    self._fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as e:
            raise _error(self.path, "cannot open for append", e) from e

    def _require_fh(self) -> int:
        assert self._fh is not None
        return self._fh

    def close(self) -> None:
        if self._fh is not None:
            try:
                self.sync()
            except LeaseFileError as e:
                log.error("%s (at close)", e)
            os.close(self._fh)
            self._fh = None

    @property
    def broken(self) -> bool:
        """Whether the journal must be rewritten before anything else can be made durable (an
        append or fsync failed and the file could not be cut back to its last good record)."""
        return self._broken

    def _apply(self, rec: dict[str, object]) -> None:
        event = rec["event"]
        mac, ip = str(rec["mac"]), str(rec["ip"])
        if event == EVENT_BOUND:
            exp = rec["expires"]
            if not isinstance(exp, (int, float)):
                raise TypeError(f"expires is {exp!r}")
            host = rec.get("hostname")
            self._bind(Lease(mac, ip, float(exp), host if isinstance(host, str) else None))
        elif event == EVENT_RELEASED:
            self._unbind(mac, ip)
        elif event == EVENT_DECLINED:
            until = rec["expires"]
            if not isinstance(until, (int, float)):
                raise TypeError(f"expires is {until!r}")
            self._unbind(mac, ip)
            self.declined[ip] = float(until)
        else:
            raise ValueError(f"unknown event {event!r}")

    def _compact(self) -> None:
        """Rewrite the journal from the in-memory state: temporary file, fsync, rename, fsync
        of the directory.  On failure the temporary file is removed (it may be what fills the
        disk) and the old journal stays in place."""
        assert self.path is not None
        now = self.clock()
        recs = [{"event": EVENT_BOUND, "mac": ls.mac, "ip": ls.ip, "expires": ls.expires,
                 "hostname": ls.hostname} for ls in self.by_mac.values() if ls.expires > now]
        recs += [{"event": EVENT_DECLINED, "mac": "", "ip": ip, "expires": until}
                 for ip, until in self.declined.items() if until > now]
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs).encode()
        try:
            atomic_write(self.path, data, write=self._write, fsync=self._fsync)
        except OSError as e:
            raise _error(self.path, f"cannot rewrite ({len(recs)} records)", e) from e

    def _rewrite(self) -> None:
        """Compact the journal and reopen it (the old descriptor points at the replaced file).
        Raises :class:`LeaseFileError` and leaves the old descriptor in place on failure."""
        self._compact()
        if self._fh is not None:
            os.close(self._fh)
            self._fh = None
        self._broken = True  # until the new file is open
        self._open_append()
        self._appended = 0
        self._broken = False
        self.dirty = False

    def _recover(self) -> None:
        """Make the journal whole again after a failed append or fsync: rewrite it from the
        in-memory state (which holds every acknowledged lease)."""
        assert self.path is not None
        self._rewrite()
        log.warning("lease file %s: journal rewritten after the earlier write failure;"
                    " leases are durable again", self.path)

    def _journal(self, rec: dict[str, object]) -> None:
        if self.path is None:
            return
        if self._broken or self._fh is None:
            self._recover()
        fd = self._require_fh()
        line = (json.dumps(rec, sort_keys=True) + "\n").encode()
        try:
            write_all(fd, line, self._write)
        except OSError as e:
            self._cut_back(fd)
            raise _error(self.path, f"cannot append a {len(line)}-byte record", e) from e
        self._good += len(line)
        self._appended += 1
        if self.deferred_sync:
            self.dirty = True
            return
        try:
            self._fsync(fd)
        except OSError as e:
            self._broken = True  # after a failed fsync the page cache state is unknown
            raise _error(self.path, "cannot fsync", e) from e

    def _cut_back(self, fd: int) -> None:
        """After a failed or short append: cut the file back to its last complete record, so
        the torn bytes cannot glue themselves to the next record."""
        try:
            os.ftruncate(fd, self._good)
        except OSError as e:
            self._broken = True
            log.error("lease file %s: cannot cut back to %d bytes after a failed append: %s;"
                      " the journal will be rewritten before the next record", self.path,
                      self._good, e)

    def sync(self) -> None:
        """Make every record appended so far durable, or raise :class:`LeaseFileError` (group
        commit: the server handles a batch of packets, syncs once, then sends the batch's ACKs).
        A journal broken by an earlier failure is rewritten whole first."""
        if self.path is None:
            return
        if self._broken:
            self._recover()
            return
        if not self.dirty or self._fh is None:
            self.dirty = False
            return
        try:
            self._fsync(self._fh)
        except OSError as e:
            self._broken = True  # a later fsync may report success for lost pages
            raise _error(self.path, "cannot fsync", e) from e
        self.dirty = False

    def _maybe_compact(self) -> None:
        """Rewrite the journal when it has grown to several times the live state (called after
        the state change that was journaled, so the rewrite includes it).  A failed rewrite is
        logged and retried after another COMPACT_MIN records; appends go on meanwhile."""
        if self._fh is None or self._appended <= max(COMPACT_MIN, 4 * len(self.by_mac)):
            return
        try:
            self.sync()
            self._rewrite()
        except LeaseFileError as e:
            log.error("%s; compaction postponed", e)
            self._appended = 0

    # --- state ---
    def _bind(self, lease: Lease) -> None:
        old = self.by_mac.get(lease.mac)
        if old is not None and self.by_ip.get(old.ip) is old:
            del self.by_ip[old.ip]
        other = self.by_ip.get(lease.ip)
        if other is not None and other.mac != lease.mac:
            self.by_mac.pop(other.mac, None)
        self.by_mac[lease.mac] = lease
        self.by_ip[lease.ip] = lease

    def _unbind(self, mac: str, ip: str) -> None:
        ls = self.by_mac.get(mac)
        if ls is not None and ls.ip == ip:
            del self.by_mac[mac]
            if self.by_ip.get(ip) is ls:
                del self.by_ip[ip]

    def bind(self, mac: str, ip: str, lease_time: int, hostname: str | None = None) -> Lease:
        """Record a lease (journal first, fsync'ed) and drop any offer it settles."""
        lease = Lease(mac, ip, self.clock() + lease_time, hostname)
        self._journal({"event": EVENT_BOUND, "mac": mac, "ip": ip, "expires": lease.expires,
                       "hostname": hostname})
        self._bind(lease)
        self.drop_offer(mac)
        self._maybe_compact()
        return lease

    def release(self, mac: str, ip: str) -> bool:
        ls = self.by_mac.get(mac)
        if ls is None or ls.ip != ip:
            return False
        self._journal({"event": EVENT_RELEASED, "mac": mac, "ip": ip})
        self._unbind(mac, ip)
        self._maybe_compact()
        return True

    def decline(self, mac: str, ip: str, hold: float) -> None:
        until = self.clock() + hold
        self._journal({"event": EVENT_DECLINED, "mac": mac, "ip": ip, "expires": until})
        self._unbind(mac, ip)
        self.drop_offer(mac)
        self.declined[ip] = until
        self._maybe_compact()

    def offer(self, mac: str, ip: str) -> None:
        self.drop_offer(mac)
        stale = self.offers.pop(ip, None)
        if stale is not None:
            self.offer_by_mac.pop(stale.mac, None)
        self.offers[ip] = Offer(mac, ip, self.clock() + self.offer_time)
        self.offer_by_mac[mac] = ip

    def drop_offer(self, mac: str) -> None:
        ip = self.offer_by_mac.pop(mac, None)
        if ip is not None:
            self.offers.pop(ip, None)

    def offered_ip(self, mac: str) -> str | None:
        ip = self.offer_by_mac.get(mac)
        if ip is None:
            return None
        off = self.offers[ip]
        if off.until <= self.clock():
            self.drop_offer(mac)
            return None
        return ip

    def lease_of(self, mac: str) -> Lease | None:
        """The client's lease, expired or not (an expired one is still a good address hint)."""
        return self.by_mac.get(mac)

    def is_free_for(self, ip: str, mac: str) -> bool:
        """Whether ``ip`` can go to ``mac``: not declined, not leased or offered to another MAC."""
        now = self.clock()
        until = self.declined.get(ip)
        if until is not None:
            if until > now:
                return False
            del self.declined[ip]
        ls = self.by_ip.get(ip)
        if ls is not None and ls.mac != mac and ls.expires > now:
            return False
        off = self.offers.get(ip)
        return off is None or off.mac == mac or off.until <= now

    def oldest_offer_in(self, contains: Callable[[str], bool]) -> str | None:
        """The IP of the oldest outstanding offer that ``contains`` accepts (to reclaim it)."""
        for ip in self.offers:
            if contains(ip):
                return ip
        return None

    def take_over(self, ip: str, mac: str) -> None:
        """Forget another MAC's claim on ``ip`` (a static address wins over a dynamic lease)."""
        ls = self.by_ip.get(ip)
        if ls is not None and ls.mac != mac:
            del self.by_ip[ip]
            self.by_mac.pop(ls.mac, None)
        off = self.offers.get(ip)
        if off is not None and off.mac != mac:
            self.drop_offer(off.mac)

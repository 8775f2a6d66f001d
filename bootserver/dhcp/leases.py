"""DHCP lease state: bound leases, tentative offers, declined addresses, and the lease journal.

The journal is an append-only JSON-lines file.  Every change that a client may rely on (a lease
bound by an ACK, a RELEASE, a DECLINE) is appended and fsync'ed *before* the reply leaves, so a
crash never forgets an address the client was told it owns.  With ``deferred_sync`` the server
groups the fsync of a batch of requests (one fsync, then the batch's ACKs).  At start the journal
is replayed (a torn last line from a crash mid-write is skipped and logged) and rewritten
compacted (temporary file + fsync + rename + fsync of the directory).

Offers are kept in memory only: they are tentative (RFC 2131 §4.3.1) and expire after
``offer_time`` seconds, or earlier when the pool runs dry (the oldest offer is reclaimed).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bootserver.dhcp")

EVENT_BOUND = "bound"
EVENT_RELEASED = "released"
EVENT_DECLINED = "declined"
COMPACT_MIN = 10_000  # journal records appended before a rewrite is considered


class LeaseFileError(OSError):
    """The lease journal cannot be read or written (names the file)."""


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
                 offer_time: float = 60.0) -> None:
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
        # deferred_sync: appends are not fsync'ed one by one; the owner calls sync() before it
        # sends any reply that depends on them.
        self.deferred_sync = False
        self.dirty = False

    # --- journal ---
    def open(self) -> None:
        """Replay and compact the journal, then open it for appending."""
        if self.path is None:
            return
        try:
            raw = self.path.read_bytes() if self.path.exists() else b""
        except OSError as e:
            raise LeaseFileError(f"lease file {self.path}: cannot read: {e}") from e
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
                else:
                    log.warning("lease file %s: bad line %d skipped (%s): %r",
                                self.path, no, e, line[:80])
        self._compact()
        try:
            self._fh = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise LeaseFileError(f"lease file {self.path}: cannot open for append: {e}") from e

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            os.close(self._fh)
            self._fh = None

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
        assert self.path is not None
        now = self.clock()
        recs = [{"event": EVENT_BOUND, "mac": ls.mac, "ip": ls.ip, "expires": ls.expires,
                 "hostname": ls.hostname} for ls in self.by_mac.values() if ls.expires > now]
        recs += [{"event": EVENT_DECLINED, "mac": "", "ip": ip, "expires": until}
                 for ip, until in self.declined.items() if until > now]
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            raise LeaseFileError(f"lease file {self.path}: cannot rewrite: {e}") from e

    def _journal(self, rec: dict[str, object]) -> None:
        if self._fh is None:
            return
        line = (json.dumps(rec, sort_keys=True) + "\n").encode()
        try:
            os.write(self._fh, line)
            if not self.deferred_sync:
                os.fsync(self._fh)
            else:
                self.dirty = True
        except OSError as e:
            raise LeaseFileError(f"lease file {self.path}: cannot append: {e}") from e
        self._appended += 1

    def sync(self) -> None:
        """fsync the journal if records were appended since the last sync (group commit: the
        server handles a batch of packets, syncs once, then sends the batch's ACKs)."""
        if not self.dirty or self._fh is None:
            self.dirty = False
            return
        try:
            os.fsync(self._fh)
        except OSError as e:
            raise LeaseFileError(f"lease file {self.path}: cannot fsync: {e}") from e
        self.dirty = False

    def _maybe_compact(self) -> None:
        """Rewrite the journal when it has grown to several times the live state (called after
        the state change that was journaled, so the rewrite includes it)."""
        if self._fh is None or self._appended <= max(COMPACT_MIN, 4 * len(self.by_mac)):
            return
        assert self.path is not None
        self.sync()
        os.close(self._fh)
        self._fh = None
        self._compact()
        self._fh = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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

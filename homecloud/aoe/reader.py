"""The windowed multipath AoE reader (on an :class:`~homecloud.aoe.io.AoESocket`).

:class:`Reader` keeps ``window`` requests in flight (at most each path's buffer count on a
path), spreads them round-robin over the target's paths (MACs), retransmits a request after
``timeout`` (backing off to 2x, 4x, 8x; at most ``retries`` times; to another path when there is
one) and drops a path after ``path_failures`` consecutive timeouts with no reply from it for
``path_dead_time`` seconds; the read continues on the remaining paths.  A dropped path that
answers again (a late reply: it was stalled, not dead) is used again.
"""

from __future__ import annotations

import errno
import logging
import struct
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from homecloud.aoe import frames as F
from homecloud.aoe.frames import (
    AoEReplyError,
    AoETimeout,
    ATACommandError,
    ConfigReply,
    Target,
)
from homecloud.aoe.io import AOE_HDR, TAG, AoESocket, new_tag

log = logging.getLogger("homecloud.aoe")
_NEVER = float("inf")
_LBA_QWORD = struct.Struct("<Q")
_BACKOFF = [1, 1, 2, 4, *([8] * 300)]  # timeout multiplier by the number of tries so far

@dataclass
class PathState:
    mac: str
    mac_b: bytes
    buffer_count: int
    frame: bytearray  # the READ SECTORS EXT template of this path (built once by scapy)
    alive: bool = True
    inflight: int = 0
    failures: int = 0  # consecutive timeouts since the last reply
    replies: int = 0
    timeouts: int = 0
    last_reply: float = 0.0  # monotonic time of its last reply (or of the start of the read)


@dataclass
class ReadStats:
    frames_sent: int = 0
    retransmits: int = 0
    stray: int = 0  # AoE frames that matched no request in flight (late duplicates, others)
    bytes: int = 0
    dropped: list[str] = field(default_factory=list)  # MACs dropped, in order
    revived: list[str] = field(default_factory=list)  # dropped MACs that answered again


class _Req:
    __slots__ = ("chunk", "count", "deadline", "lba", "nbytes", "offset", "path", "tag", "tries")

    def __init__(self, chunk: _Chunk, lba: int, count: int, offset: int) -> None:
        self.chunk = chunk
        self.lba = lba
        self.count = count
        self.nbytes = count * F.SECTOR
        self.offset = offset
        self.tag = 0
        self.path: PathState | None = None
        self.deadline = 0.0
        self.tries = 0


class _Chunk:
    __slots__ = ("buf", "lba", "remaining", "sectors")

    def __init__(self, lba: int, sectors: int) -> None:
        self.lba = lba
        self.sectors = sectors
        self.buf = bytearray(sectors * F.SECTOR)
        self.remaining = 0


@dataclass
class ReaderConfig:
    window: int = 16  # requests in flight (capped by the paths' buffer counts)
    timeout: float = 0.25  # seconds before a request is sent again
    retries: int = 6  # retransmissions of one request before AoETimeout
    path_failures: int = 3  # consecutive timeouts that drop a path (if another is alive) ...
    path_dead_time: float = 1.0  # ... and no reply from it for this many seconds
    max_sectors: int | None = None  # sectors per request (default: what target and MTU allow)
    buffer_bytes: int = 16 << 20  # read-ahead across chunks


class Reader:
    """Reads extents of a target over all its paths with ``window`` requests in flight."""

    def __init__(self, sock: AoESocket, target: Target, paths: Sequence[ConfigReply],
                 config: ReaderConfig | None = None) -> None:
        if not paths:
            raise AoETimeout(target, None, [], what="read (no paths)")
        self.sock = sock
        self.target = target
        self.cfg = config or ReaderConfig()
        # a Query Config sector count of 0 says nothing: assume 2 (1 KiB), as Linux's aoe does
        limit = min([sock.max_sectors, *(p.max_sectors or 2 for p in paths)])
        self.max_sectors = max(1, min(limit, self.cfg.max_sectors or limit))
        self.paths = [
            PathState(p.mac, F.mac_bytes(p.mac), max(1, p.buffer_count),
                      F.build_ata_request(sock.mac, p.mac, target,
                                          command=F.ATA_READ_SECTORS_EXT,
                                          sectors=self.max_sectors))
            for p in paths
        ]
        self._by_mac = {p.mac_b: p for p in self.paths}
        self._rr = 0
        self._tag = new_tag()
        self.stats = ReadStats()

    @property
    def replies_per_path(self) -> dict[str, int]:
        return {p.mac: p.replies for p in self.paths}

    @property
    def replies(self) -> int:
        return sum(p.replies for p in self.paths)

    # -- path choice ---------------------------------------------------------------
    def alive_paths(self) -> list[PathState]:
        return [p for p in self.paths if p.alive]

    def _pick(self, avoid: PathState | None) -> PathState | None:
        n = len(self.paths)
        fallback: PathState | None = None
        for i in range(n):
            p = self.paths[(self._rr + i) % n]
            if not p.alive or p.inflight >= p.buffer_count:
                continue
            if p is avoid:
                fallback = p
                continue
            self._rr = (self._rr + i + 1) % n
            return p
        if fallback is not None and len(self.alive_paths()) == 1:
            return fallback
        return None

    def _revive(self, path: PathState) -> None:
        path.alive = True
        path.failures = 0
        self.stats.revived.append(path.mac)
        log.warning("AoE %s: path %s answers again; using it again", self.target, path.mac)

    def _drop(self, path: PathState, why: str) -> None:
        path.alive = False
        self.stats.dropped.append(path.mac)
        log.warning("AoE %s: dropping path %s (%s); %d path(s) left", self.target, path.mac, why,
                    len(self.alive_paths()))

    def _odd_frame(self, rbuf: bytearray, req: _Req | None, now: float) -> None:
        """A frame that is not a good reply to a request in flight: an AoE or ATA error (raised),
        a truncated reply (left to the timeout), a late duplicate (proof its path lives)."""
        self.stats.stray += 1
        vf, err, major, minor, cmd, _tag = AOE_HDR.unpack_from(rbuf, 14)
        if not vf & F.AOE_RESPONSE or (major, minor) != (self.target.shelf, self.target.slot):
            return
        src = bytes(rbuf[6:12])
        if req is not None and cmd == F.CMD_ATA:
            if vf & F.AOE_ERROR:
                raise AoEReplyError(self.target, req.lba, F.mac_str(src), err)
            status = rbuf[F.OFF_CMDSTAT]
            if status & (F.ATA_STATUS_ERR | F.ATA_STATUS_DF):
                raise ATACommandError(self.target, req.lba, F.mac_str(src), status,
                                      rbuf[F.OFF_ERRFEAT])
        path = self._by_mac.get(src)
        if path is not None:
            path.last_reply = now
            if not path.alive:
                self._revive(path)

    # -- the read loop -------------------------------------------------------------
    def read(self, extents: Iterable[tuple[int, int]]) -> Iterator[tuple[int, bytearray]]:
        """Yield ``(lba, data)`` for each ``(lba, sectors)`` extent, in the order given."""
        sock = self.sock
        cfg = self.cfg
        target = self.target
        shelf, slot = target.shelf, target.slot
        maxsec = self.max_sectors
        it = iter(extents)
        exhausted = False
        chunks: deque[_Chunk] = deque()
        buffered = 0
        queue: deque[_Req] = deque()  # ready to send: retransmissions go to the front
        inflight: dict[int, _Req] = {}  # tag -> request, in order of the last send
        rbuf = bytearray(16384)
        rmv = memoryview(rbuf)
        stats = self.stats
        unpack_hdr = AOE_HDR.unpack_from
        pack_tag = TAG.pack_into
        pack_lba = _LBA_QWORD.pack_into
        resp_bit = F.AOE_RESPONSE
        ok_mask = F.AOE_RESPONSE | F.AOE_ERROR  # response set, error clear
        by_mac = self._by_mac
        bad_status = F.ATA_STATUS_ERR | F.ATA_STATUS_DF
        timeout = cfg.timeout
        next_check = _NEVER  # earliest deadline of a request in flight (or later)
        for p in self.paths:
            p.last_reply = time.monotonic()
        window = cfg.window
        paths = self.paths
        npaths = len(paths)
        send = sock.sock.send

        while True:
            # 1. start extents while the read-ahead budget allows
            while not exhausted and (not chunks or buffered < cfg.buffer_bytes):
                try:
                    lba, nsec = next(it)
                except StopIteration:
                    exhausted = True
                    break
                if nsec <= 0:
                    raise ValueError(f"extent at LBA {lba} has {nsec} sectors")
                ch = _Chunk(lba, nsec)
                chunks.append(ch)
                buffered += len(ch.buf)
                off = 0
                while off < nsec:
                    cnt = min(maxsec, nsec - off)
                    queue.append(_Req(ch, lba + off, cnt, off * F.SECTOR))
                    ch.remaining += 1
                    off += cnt
            # 2. hand out finished extents in order
            while chunks and chunks[0].remaining == 0:
                ch = chunks.popleft()
                buffered -= len(ch.buf)
                stats.bytes += len(ch.buf)
                yield ch.lba, ch.buf
            if not chunks:
                if exhausted:
                    return
                continue
            # 3. fill the window
            now = time.monotonic()
            while queue and len(inflight) < window:
                req = queue[0]
                path = paths[self._rr]  # fast path: the next one round-robin is usable
                if path.alive and path.inflight < path.buffer_count and path is not req.path:
                    self._rr = (self._rr + 1) % npaths
                else:
                    path_or_none = self._pick(req.path)
                    if path_or_none is None:
                        break
                    path = path_or_none
                queue.popleft()
                if req.tries > cfg.retries:
                    raise AoETimeout(target, req.lba, [p.mac for p in self.paths],
                                     tries=req.tries)
                if req.tries:
                    stats.retransmits += 1
                else:
                    self._tag = (self._tag + 1) & 0xFFFFFFFF
                    req.tag = self._tag
                req.tries += 1
                req.path = path
                path.inflight += 1
                frame = path.frame
                pack_tag(frame, 20, req.tag)  # F.OFF_TAG
                frame[26] = req.count  # F.OFF_SECTORS
                pack_lba(frame, 28, req.lba)  # F.OFF_LBA
                try:
                    send(frame)
                except BlockingIOError:
                    sock.send(frame)
                except OSError as exc:  # ENOBUFS: the frame is lost, the timeout resends it
                    if exc.errno != errno.ENOBUFS:
                        raise
                stats.frames_sent += 1
                # back off on retransmissions: timeout, 2x, 4x, at most 8x
                req.deadline = deadline = now + timeout * _BACKOFF[req.tries]
                if deadline < next_check:
                    next_check = deadline
                inflight[req.tag] = req
            if not inflight:
                if queue and not self.alive_paths():
                    raise AoETimeout(target, queue[0].lba, [p.mac for p in self.paths],
                                     tries=queue[0].tries, what="read (every path dropped)")
                continue
            # 4. receive: drain what is waiting, else wait for the oldest deadline
            n = sock.recv_into(rbuf)
            if not n:
                wait = next_check - time.monotonic()
                if wait > 0 and sock.wait(wait):
                    n = sock.recv_into(rbuf)
                now = time.monotonic()
            got = 0
            while n:
                if n >= 36:  # F.DATA_OFFSET
                    vf, _err, major, minor, cmd, tag = unpack_hdr(rbuf, 14)
                    hit = inflight.pop(tag, None)
                    if (hit is not None and vf & ok_mask == resp_bit and major == shelf
                            and minor == slot and cmd == 0 and not rbuf[27] & bad_status
                            and n >= 36 + hit.nbytes):
                        # the common case: a good reply to a request in flight
                        ch = hit.chunk
                        ch.buf[hit.offset:hit.offset + hit.nbytes] = rmv[36:36 + hit.nbytes]
                        ch.remaining -= 1
                        answered = hit.path
                        assert answered is not None
                        answered.inflight -= 1
                        if rbuf[6:12] != answered.mac_b:  # a retransmission answered elsewhere
                            answered = by_mac.get(bytes(rbuf[6:12]), answered)
                        answered.failures = 0
                        answered.replies += 1
                        answered.last_reply = now
                        if not answered.alive:
                            self._revive(answered)
                        got += 1
                    else:
                        if hit is not None:
                            inflight[tag] = hit  # not (a usable) answer to it: keep waiting
                        self._odd_frame(rbuf, hit, now)
                n = sock.recv_into(rbuf) if got < 64 else 0
            # 5. retransmit what timed out
            now = time.monotonic()
            if now < next_check:
                continue
            expired = [r for r in inflight.values() if r.deadline <= now]
            for req in expired:
                if inflight.pop(req.tag, None) is None:
                    continue  # already moved by a path drop below
                late = req.path
                assert late is not None
                late.inflight -= 1
                late.timeouts += 1
                late.failures += 1
                queue.appendleft(req)
                if (late.alive and late.failures >= cfg.path_failures
                        and now - late.last_reply >= cfg.path_dead_time
                        and len(self.alive_paths()) > 1):
                    self._drop(late, f"{late.failures} requests unanswered")
                    for tag2, r2 in list(inflight.items()):  # resend its requests elsewhere now
                        if r2.path is late:
                            del inflight[tag2]
                            late.inflight -= 1
                            queue.appendleft(r2)
            next_check = min((r.deadline for r in inflight.values()), default=_NEVER)


def sector_extents(start: int, sectors: int, chunk_sectors: int) -> Iterator[tuple[int, int]]:
    """``(lba, count)`` extents of at most ``chunk_sectors`` covering [start, start+sectors)."""
    end = start + sectors
    lba = start
    while lba < end:
        cnt = min(chunk_sectors, end - lba)
        yield lba, cnt
        lba += cnt

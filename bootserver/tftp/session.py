"""TFTP limits and the per-transfer state: sessions, the shared file cache, rate-limited logs."""

from __future__ import annotations

import logging
import os
import socket
import struct
import tempfile
import time
from dataclasses import dataclass
from typing import IO

from bootserver.clientlog import Log
from bootserver.tftp.codec import (
    CACHE_BYTES,
    CACHE_FILE_MAX,
    MAX_PER_CLIENT,
    MAX_SESSIONS,
    MAX_TIMEOUT,
    MAX_WINDOWSIZE,
    OP_DATA,
    SESSION_RETRIES,
    SESSION_TIMEOUT,
)

log = logging.getLogger("homecloud.tftp")

@dataclass(frozen=True)
class TftpLimits:
    """Caps and timers of a TftpServer (docs/limits.md, ``hcboot serve --tftp-*``)."""

    max_sessions: int = MAX_SESSIONS
    max_per_client: int = MAX_PER_CLIENT
    timeout: float = SESSION_TIMEOUT
    max_timeout: int = MAX_TIMEOUT
    retries: int = SESSION_RETRIES
    max_windowsize: int = MAX_WINDOWSIZE

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_per_client", "max_timeout", "max_windowsize"):
            if getattr(self, name) < 1:
                raise ValueError(f"TftpLimits.{name} must be >= 1, not {getattr(self, name)}")
        if self.retries < 0:
            raise ValueError(f"TftpLimits.retries must be >= 0, not {self.retries}")
        if not 0 < self.timeout <= 255:
            raise ValueError(f"TftpLimits.timeout must be in (0, 255], not {self.timeout}")
        if self.max_timeout > 255:
            raise ValueError(f"TftpLimits.max_timeout must be <= 255, not {self.max_timeout}")
        if self.max_windowsize > 65535:
            raise ValueError(f"TftpLimits.max_windowsize must be <= 65535, "
                             f"not {self.max_windowsize}")

    @property
    def idle_life(self) -> float:
        """Longest a session lives without a valid ACK (with the largest timeout honoured)."""
        return max(self.timeout, self.max_timeout) * (self.retries + 1)


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _bytes_file(data: bytes) -> IO[bytes]:
    # A real file (read with preadv like any other): bytes from the resolver are usually small
    # pxelinux configs; a file keeps every session's source the same kind of object.
    f = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the session, closed by _end()
    f.write(data)
    f.seek(0)
    return f


class _Session:
    """One download.  Blocks are counted absolutely from 1 (block 0 is the OACK); the wire
    carries them modulo 2**16."""

    __slots__ = ("acked", "blksize", "buf", "cache_key", "deadline", "done", "dup_acks",
                 "established", "fd", "filefd", "fileobj", "host", "last_block", "name", "oack",
                 "payload", "peer", "pkts", "retransmits", "sent", "size", "sock", "started",
                 "timeout", "tries", "view", "window")

    def __init__(self, sock: socket.socket, peer: tuple[str, int], name: str,
                 fileobj: IO[bytes], size: int, blksize: int, window: int, timeout: float,
                 oack: bytes | None, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.host = peer[0]
        self.name = name
        self.fileobj = fileobj
        self.filefd = fileobj.fileno()
        self.pkts: list[bytes] | None = None  # ready DATA packets when cached (_FileCache)
        self.cache_key: tuple[int, ...] | None = None
        self.size = size
        self.blksize = blksize
        self.window = window
        self.timeout = timeout
        self.last_block = size // blksize + 1  # the short (maybe empty) final block
        self.oack = oack
        self.acked = -1 if oack is not None else 0  # highest block acknowledged
        self.sent = 0  # highest block sent
        self.deadline = now + timeout
        self.tries = 0
        self.buf = bytearray(4 + blksize)
        self.buf[1] = OP_DATA  # bytes 2-3: the block number, set per packet
        self.view = memoryview(self.buf)
        self.payload = [self.view[4:]]
        self.started = now
        self.established = False
        self.retransmits = 0
        self.dup_acks = 0
        self.done = False

    def __str__(self) -> str:
        return f"{self.host}:{self.peer[1]} {self.name!r}"


class _FileCache:
    """DATA packets shared by the transfers that are sending them (a rack booting fetches the
    same kernel a hundred times at once, with the same blksize): the file is read once and cut
    into ready packets once per blksize, so a block costs one ``send`` and no copy.

    An entry lives only while a session holds it, and a session holds its file open, so the
    inode of a key (device, inode, size, mtime, ctime) cannot be reused meanwhile; a file
    changed in place gets a new key, and running transfers keep the bytes they started with."""

    PACKET_OVERHEAD = 40  # bytes a small bytes object costs beyond its data (accounting only)

    def __init__(self, max_bytes: int = CACHE_BYTES, max_file: int = CACHE_FILE_MAX) -> None:
        self.max_bytes = max_bytes
        self.max_file = max_file
        self.total = 0
        self._entries: dict[tuple[int, ...], _CacheEntry] = {}

    def acquire(self, fd: int, blksize: int,
                size: int | None = None) -> tuple[tuple[int, ...], list[bytes]] | None:
        """(key, packets) where packets[i] is DATA block i + 1 of the file, or None when the
        file does not fit or is no longer ``size`` bytes long (the caller then reads it per
        block)."""
        st = os.fstat(fd)
        if size is not None and st.st_size != size:
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        entry = self._entries.get(key)
        if entry is None:
            if st.st_size > self.max_file or self.total + st.st_size > self.max_bytes:
                return None
            buf = bytearray(st.st_size)
            view = memoryview(buf)
            got = 0
            while got < st.st_size:
                n = os.preadv(fd, [view[got:]], got)
                if n == 0:
                    return None  # shrank while being read: serve it per block
                got += n
            entry = self._entries[key] = _CacheEntry(bytes(buf))
            self.total += entry.cost
        packets = entry.packets.get(blksize)
        if packets is None:
            blocks = len(entry.data) // blksize + 1
            cost = len(entry.data) + blocks * (4 + self.PACKET_OVERHEAD)
            if self.total + cost > self.max_bytes:
                if entry.users == 0:
                    del self._entries[key]
                    self.total -= entry.cost
                return None
            data = entry.data
            packets = [struct.pack("!HH", OP_DATA, (i + 1) & 0xFFFF)
                       + data[i * blksize:(i + 1) * blksize] for i in range(blocks)]
            entry.packets[blksize] = packets
            entry.cost += cost
            self.total += cost
        entry.users += 1
        return key, packets

    def release(self, key: tuple[int, ...]) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.users -= 1
        if entry.users <= 0:
            del self._entries[key]
            self.total -= entry.cost


class _CacheEntry:
    __slots__ = ("cost", "data", "packets", "users")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.packets: dict[int, list[bytes]] = {}
        self.users = 0
        self.cost = len(data)


class _RateLog:
    """Log a recurring event at most once per ``every`` seconds, with the count in between."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.last: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def __call__(self, logger: Log, key: str, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        n = self.count.get(key, 0) + 1
        if now - self.last.get(key, -1e9) >= self.every:
            suffix = f" ({n} such events since the last report)" if n > 1 else ""
            logger.log(level, msg + suffix, *args)
            self.last[key] = now
            self.count[key] = 0
        else:
            self.count[key] = n

"""Read-only TFTP server: RFC 1350, options (RFC 2347) blksize (2348), tsize and timeout (2349),
windowsize (RFC 7440); bounded sessions so a flood of requests cannot exhaust the server.

History: this module once drove tftpy 0.8.7's per-transfer context and download state machine.
Its request handling had already been replaced here (its ``dyn_file_func`` runs only for names
absent from the root and dies on an ``io.BytesIO``, it accepts uploads by default, follows
symlinks out of the root, OACKs options nobody asked for, and any exception that is not its own
kills its thread).  A profile of 100 clients then showed the per-block path spending more time
in tftpy's objects (a packet object per ACK and per DATA, eight ``log.debug`` calls, a second
``read`` per block) than in the two system calls a block needs, it had no windowsize, and
nothing bounded its sessions.  The server below has its own codec (``parse_request`` and
friends, property-tested) and a per-block path of one ``recv_into`` and one ``send``: files up
to CACHE_FILE_MAX are cut once into ready DATA packets shared by the transfers sending them
(``_FileCache``; the rest is read with one ``preadv`` per block into a preallocated buffer).
tftpy is no longer imported (bench/README.md, "TFTP storm", has the numbers).

Path rule (``normalize_tftp_path``): the requested name must be printable ASCII without
backslashes; leading ``/`` are stripped (PXE ROMs often send ``/pxelinux.0``) so *every* name is
relative to the root (``/etc/passwd`` means ``<root>/etc/passwd``); empty and ``.`` segments are
dropped; any ``..`` segment is refused outright (even one that would stay inside).  The file is
then opened with symlinks resolved: a symlink is followed only if its final target is inside the
resolved root (compared by path components, so ``/srv/tftp2`` is not inside ``/srv/tftp``), and
the open walks the resolved components with ``O_NOFOLLOW`` so a symlink swapped in after the
check is refused too.  Only regular files are served.

Modes: ``octet`` and ``netascii`` (any case) are accepted and both get the bytes unchanged (no
CR/LF translation; PXE clients all use octet); any other mode is an Illegal operation error.
Errors (RFC 1350 codes): 1 File not found, 2 Access violation (refused names, symlink escapes,
uploads), 4 Illegal operation (malformed requests, bad modes), 0 with a message for a resolver
that raised and for a request over a session cap.  Each transfer has its own socket connected to
the client's address and port: the kernel delivers nothing from another TID (so no error 5 goes
out; RFC 1350 allows it: the error "can be done only if the TFTP in fact receives a packet with
an incorrect TID", and tftp-hpa's server does the same), and an ICMP unreachable from a client
that went away ends its session at once.  Requests over 2048 bytes are malformed (RFC 2347 caps
them at 512); other opcodes on the request port are dropped and logged.
Every log line names the client IP and the file.

Options (only those asked for are ever acknowledged; an RRQ whose options are all declined gets
DATA 1 as in RFC 1350): ``blksize`` 8..65464 (larger values are lowered to 65464), ``tsize``
(the real size), ``timeout`` 1..``max_timeout`` echoed unchanged as RFC 2349 demands; a larger
one is declined (absent from the OACK) and the server's own ``timeout`` applies, so a request
asking for 255 s cannot hold a session for 21 minutes.  ``windowsize`` (RFC 7440) 1..65535,
lowered to ``max_windowsize`` and to what fits ``WINDOW_BYTES``; clients that do not ask stay
in lock-step.

Transfers: blocks are numbered modulo 2**16 (block 65535 is followed by 0, as tftp-hpa, curl,
iPXE and pxelinux expect), ACKs are mapped back to the absolute block inside the window that was
sent.  A duplicate ACK is ignored (never a retransmission: RFC 1123 4.2.3.1, no Sorcerer's
Apprentice); an ACK for a block inside the current window (RFC 7440: the client saw a gap)
restarts the window after it; an ACK from the future is ignored.  With no valid ACK for
``timeout`` seconds the unacknowledged window (or the OACK) is sent again; after ``retries``
retransmissions without progress the session ends, so a peer that never answers holds a
session for at most ``timeout * (retries + 1)`` seconds.

Caps (``TftpLimits``, ``hcboot serve --tftp-*``; docs/limits.md): at most ``max_sessions``
transfers at once and ``max_per_client`` per client address.  At a cap the oldest *half-open*
session (OACK or DATA 1 sent, never acknowledged: what a spoofed request leaves behind) of that
scope is evicted to make room (at the per-client cap only one half-open for HALF_OPEN_GRACE
seconds, so a client's own burst does not evict itself); if there is none the request is
refused with error 0 and a message.  The request socket is drained at most ``REQUESTS_PER_ROUND``
requests per poll round, so a flood cannot starve running transfers or evict a new session
before its first ACK is read.  Cap events are logged, at most once a second with a count.

The resolver ``resolver(path, client_ip)`` gets the normalised name and may return ``bytes``
(served as is), a ``Path`` (a relative one is confined to the root like a request; an absolute
one is trusted, e.g. the image store, but must be a regular file) or ``None`` (fall through to
the root).  It runs on the server thread: keep it fast.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import stat
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bootserver.clientlog import Log, MacOf, for_client

log = logging.getLogger("homecloud.tftp")

Resolver = Callable[[str, str], bytes | Path | None]

MIN_BLKSIZE = 8  # RFC 2348
MAX_BLKSIZE = 65464  # RFC 2348
DEFAULT_BLKSIZE = 512
MAX_NAME = 1024  # longest accepted file name (DHCP's file field is 128 bytes)
MAX_REQUEST = 2048  # RFC 2347 limits a request to 512 octets; be lenient but bounded
SESSION_TIMEOUT = 2.0  # default seconds before an unacknowledged window is resent
SESSION_RETRIES = 5  # retransmissions without progress before a session ends
MAX_TIMEOUT = 10  # largest "timeout" option honoured (RFC 2349 allows 1..255)
MAX_WINDOWSIZE = 32  # largest RFC 7440 windowsize granted (a client may ask up to 65535)
WINDOW_BYTES = 128 * 1024  # a window never holds more data than this (socket send buffer)
MAX_SESSIONS = 256  # transfers at once
MAX_PER_CLIENT = 8  # transfers at once from one client address
REQUESTS_PER_ROUND = 64  # requests read from the request port per poll round
CACHE_BYTES = 256 << 20  # file contents held in memory for running transfers, at most
CACHE_FILE_MAX = 32 << 20  # larger files are read with preadv per block: a cache fill reads
# the whole file on the server thread, which must not stall every other transfer for long
HALF_OPEN_GRACE = 0.5  # seconds a half-open session is safe from eviction at a per-client cap

# TFTP opcodes and error codes (RFC 1350, RFC 2347)
OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 2, 3, 4, 5, 6
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_ILLEGAL = 4
ERR_UNKNOWN_TID = 5  # never sent: session sockets are connected (see the module doc)
ERR_OPTIONS = 8
# send/recv errors on a connected session socket that mean the client is not there (an ICMP
# port or host unreachable came back)
_PEER_GONE = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                        errno.EHOSTDOWN))


class TftpPathError(ValueError):
    """A requested TFTP name that is refused (traversal, bad characters); names the path."""


class TftpNotFound(FileNotFoundError):
    """The requested name maps to nothing servable."""


def normalize_tftp_path(raw: str) -> str:
    """The relative path under the root that a requested TFTP name means (see module doc).

    Raises TftpPathError for names that are refused."""
    if not raw:
        raise TftpPathError("empty file name")
    if len(raw) > MAX_NAME:
        raise TftpPathError(f"file name longer than {MAX_NAME}: {raw[:40]!r}...")
    for ch in raw:
        if ch == "\\":
            raise TftpPathError(f"backslash in file name {raw!r}")
        if not " " <= ch <= "~":
            raise TftpPathError(f"NUL, control or non-ASCII character in file name {raw!r}")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TftpPathError(f"'..' in file name {raw!r}")
    if not parts:
        raise TftpPathError(f"file name {raw!r} names the root itself")
    return "/".join(parts)


def open_confined(root: Path, rel: str) -> int:
    """Open ``root/rel`` read-only without leaving ``root``; returns an fd of a regular file.

    ``root`` must already be resolved (``os.path.realpath``).  Raises TftpPathError when a
    symlink leads outside, TftpNotFound when nothing (or no regular file) is there."""
    rel = normalize_tftp_path(rel)
    target = Path(os.path.realpath(os.path.join(root, rel)))
    if target == root or not target.is_relative_to(root):
        raise TftpPathError(f"{rel!r} resolves to {str(target)!r}, outside the root {str(root)!r}")
    parts = target.relative_to(root).parts
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for comp in parts[:-1]:
            nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dfd)
    except FileNotFoundError as e:
        raise TftpNotFound(f"{rel!r}: no such file under {str(root)!r}") from e
    except NotADirectoryError as e:
        raise TftpNotFound(f"{rel!r}: a parent is not a directory") from e
    except OSError as e:  # ELOOP: a symlink appeared after the check; EACCES...
        raise TftpPathError(f"{rel!r}: {e.strerror}") from e
    finally:
        os.close(dfd)
    return _regular_or_close(fd, rel)


def _regular_or_close(fd: int, what: str) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise TftpNotFound(f"{what!r} is not a regular file")
    return fd


# -- codec ---------------------------------------------------------------------------------------

class TftpPacketError(ValueError):
    """A TFTP packet that does not parse; the message names what is wrong and quotes the bytes.

    The parsers below raise nothing else, whatever the input (tests/unit/test_tftp_codec.py)."""


@dataclass(frozen=True)
class TftpRequest:
    """An RRQ or WRQ as sent.  Strings are the packet's bytes decoded as latin-1 (every byte
    maps to one character, so ``encode_request`` gives the same bytes back); ``options`` keeps
    the order and spelling of the packet."""

    opcode: int
    filename: str
    mode: str
    options: tuple[tuple[str, str], ...] = ()

    def option_map(self) -> dict[str, str]:
        """Options by lower-cased name; the first of repeated names wins (RFC 2347: names are
        case-insensitive)."""
        out: dict[str, str] = {}
        for k, v in self.options:
            out.setdefault(k.lower(), v)
        return out


def _quote(buf: bytes) -> str:
    return repr(buf[:40]) + ("..." if len(buf) > 40 else "")


def parse_request(buf: bytes) -> TftpRequest:
    """Parse an RRQ/WRQ: opcode, then NUL-terminated filename, mode, and option name/value pairs.

    Raises TftpPacketError for anything else: another opcode, more than MAX_REQUEST bytes, a
    missing terminator, an empty filename or mode, an option without a value or an empty option
    name.  NULs after the last complete field (padding some ROMs add) are ignored."""
    if len(buf) < 2:
        raise TftpPacketError(f"request of {len(buf)} bytes has no opcode: {_quote(buf)}")
    if len(buf) > MAX_REQUEST:
        raise TftpPacketError(f"request of {len(buf)} bytes exceeds {MAX_REQUEST}")
    opcode = (buf[0] << 8) | buf[1]
    if opcode not in (OP_RRQ, OP_WRQ):
        raise TftpPacketError(f"opcode {opcode} is not a request: {_quote(buf)}")
    body = buf[2:]
    if not body.endswith(b"\0"):
        raise TftpPacketError(f"request does not end in NUL: {_quote(buf)}")
    fields = body[:-1].split(b"\0")
    # trailing padding NULs; an option's empty value ("name\0\0") is kept
    while len(fields) > 2 and fields[-1] == b"" and (len(fields) % 2 or fields[-2] == b""):
        fields.pop()
    if len(fields) < 2:
        raise TftpPacketError(f"request without a mode: {_quote(buf)}")
    if not fields[0]:
        raise TftpPacketError(f"request with an empty file name: {_quote(buf)}")
    if not fields[1]:
        raise TftpPacketError(f"request with an empty mode: {_quote(buf)}")
    rest = fields[2:]
    if len(rest) % 2:
        raise TftpPacketError(f"option {rest[-1][:40]!r} without a value: {_quote(buf)}")
    options = []
    for i in range(0, len(rest), 2):
        if not rest[i]:
            raise TftpPacketError(f"empty option name: {_quote(buf)}")
        options.append((rest[i].decode("latin-1"), rest[i + 1].decode("latin-1")))
    return TftpRequest(opcode, fields[0].decode("latin-1"), fields[1].decode("latin-1"),
                       tuple(options))


def encode_request(req: TftpRequest) -> bytes:
    """The packet for ``req`` (the inverse of parse_request for what it accepts)."""
    parts = [req.filename, req.mode, *(s for kv in req.options for s in kv)]
    return struct.pack("!H", req.opcode) + b"".join(p.encode("latin-1") + b"\0" for p in parts)


def encode_oack(options: Mapping[str, int | str]) -> bytes:
    return struct.pack("!H", OP_OACK) + b"".join(
        f"{k}\0{v}\0".encode("latin-1") for k, v in options.items())


def parse_oack(buf: bytes) -> dict[str, str]:
    """Options of an OACK (RFC 2347), names as sent.  Raises TftpPacketError."""
    if len(buf) < 2 or (buf[0] << 8 | buf[1]) != OP_OACK:
        raise TftpPacketError(f"not an OACK: {_quote(buf)}")
    if len(buf) == 2:
        return {}
    if not buf.endswith(b"\0"):
        raise TftpPacketError(f"OACK does not end in NUL: {_quote(buf)}")
    fields = buf[2:-1].split(b"\0")
    if len(fields) % 2:
        raise TftpPacketError(f"OACK option without a value: {_quote(buf)}")
    return {fields[i].decode("latin-1"): fields[i + 1].decode("latin-1")
            for i in range(0, len(fields), 2)}


def encode_error(code: int, message: str) -> bytes:
    """An ERROR packet (RFC 1350); the message is made ASCII and cut at 200 characters."""
    text = message.encode("ascii", "replace")[:200].replace(b"\0", b"?")
    return struct.pack("!HH", OP_ERROR, code & 0xFFFF) + text + b"\0"


def parse_error(buf: bytes) -> tuple[int, str]:
    """(code, message) of an ERROR packet; a missing final NUL is tolerated (some clients send
    none).  Raises TftpPacketError."""
    if len(buf) < 4 or (buf[0] << 8 | buf[1]) != OP_ERROR:
        raise TftpPacketError(f"not an ERROR packet: {_quote(buf)}")
    return (buf[2] << 8) | buf[3], buf[4:].split(b"\0", 1)[0].decode("latin-1")


def negotiate_options(requested: Mapping[str, str], *, max_timeout: int = MAX_TIMEOUT,
                      max_windowsize: int = MAX_WINDOWSIZE) -> dict[str, int]:
    """The options to acknowledge for an RRQ's options (names case-insensitive, RFC 2347).

    blksize (RFC 2348): lowered to 65464; below 8 or not a number it is declined (the transfer
    uses 512).  tsize (RFC 2349): acknowledged (the caller fills in the real size).  timeout
    (RFC 2349): 1..max_timeout echoed as asked, anything else declined (the OACK may not carry
    another value, so the server's own timeout applies).  windowsize (RFC 7440): 1..65535,
    lowered to max_windowsize and to WINDOW_BYTES / blksize (at least 1); declined outside
    1..65535.  Any other option is declined and never appears in the OACK."""
    out: dict[str, int] = {}
    for key, value in requested.items():
        name = key.lower()
        if name not in ("blksize", "tsize", "timeout", "windowsize"):
            log.debug("ignoring unsupported option %r", key)
            continue
        v = value.strip()
        if not (v.isascii() and v.isdigit()) or len(v) > 20:
            log.info("ignoring option %s=%r: not a decimal number", key, value[:40])
            continue
        num = int(v)
        if name == "blksize":
            if num < MIN_BLKSIZE:
                log.info("ignoring blksize %d < %d", num, MIN_BLKSIZE)
                continue
            out["blksize"] = min(num, MAX_BLKSIZE)
        elif name == "tsize":
            out["tsize"] = 0
        elif name == "timeout":
            if 1 <= num <= max_timeout:
                out["timeout"] = num
            else:
                log.info("declining timeout %d (honoured: 1..%d)", num, max_timeout)
        elif 1 <= num <= 65535:
            out["windowsize"] = num
    if "windowsize" in out:
        blksize = out.get("blksize", DEFAULT_BLKSIZE)
        out["windowsize"] = max(1, min(out["windowsize"], max_windowsize,
                                       WINDOW_BYTES // blksize))
    return out


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


class TftpServer:
    """Read-only TFTP server for ``root`` on ``bind_ip:port`` (one background thread).

    ``port=0`` picks a free port (read ``.port`` after ``start()``)."""

    def __init__(self, root: Path, bind_ip: str, port: int = 69,
                 resolver: Resolver | None = None, limits: TftpLimits | None = None,
                 mac_of: MacOf | None = None) -> None:
        """``mac_of(ip)``: the MAC of a client address, so every line about a client starts
        with its MAC (:mod:`bootserver.clientlog`); None: lines without it."""
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise NotADirectoryError(f"TFTP root {str(root)!r} is not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise PermissionError(f"TFTP root {str(root)!r} is not readable")
        self.bind_ip = bind_ip
        self.port = port
        self.resolver = resolver
        self.limits = limits or TftpLimits()
        self.mac_of = mac_of
        self._sessions: dict[tuple[str, int], _Session] = {}
        self._by_fd: dict[int, _Session] = {}
        self._per_client: dict[str, int] = {}
        self._half_open: OrderedDict[tuple[str, int], _Session] = OrderedDict()
        self._epoll: select.epoll | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ratelog = _RateLog()
        self._cache = _FileCache()
        self._rbuf = bytearray(2048)  # a session's packets: ACK (4), ERROR (<= 516); longer
        # datagrams are cut, which changes nothing for the first 4 bytes read from them
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "sessions", "completed", "failed", "expired", "evicted",
             "refused_busy", "refused_client", "retransmits", "dup_acks", "peak_sessions",
             "peak_per_client"), 0)

    # -- lifecycle -----------------------------------------------------------------------
    def _log(self, host: str) -> Log:
        """The logger for lines about the client at ``host`` (prefixed with its MAC)."""
        return for_client(log, host, self.mac_of)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("TftpServer already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((self.bind_ip, self.port))
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"tftp-{self.bind_ip}:{self.port}",
                                        daemon=True)
        self._thread.start()
        lim = self.limits
        log.info("TFTP serving %s on %s:%d (at most %d sessions, %d per client; timeout %g s, "
                 "up to %d s if asked, %d retries; windowsize up to %d; a session without ACKs "
                 "ends within %g s)", self.root, self.bind_ip, self.port, lim.max_sessions,
                 lim.max_per_client, lim.timeout, lim.max_timeout, lim.retries,
                 lim.max_windowsize, lim.idle_life)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def __enter__(self) -> TftpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request -> file object ------------------------------------------------------------
    def open_for(self, name: str, client_ip: str) -> IO[bytes]:
        """The file object to serve for a requested name (raises _Refused)."""
        try:
            rel = normalize_tftp_path(name)
        except TftpPathError as e:
            self._log(client_ip).warning("TFTP %s: refused %r: %s", client_ip, name, e)
            raise _Refused(ERR_ACCESS, "access violation") from None
        if self.resolver is not None:
            try:
                found = self.resolver(rel, client_ip)
            except Exception:
                self._log(client_ip).exception("TFTP %s: resolver failed for %r", client_ip, rel)
                raise _Refused(ERR_UNDEFINED, "internal error") from None
            if isinstance(found, bytes | bytearray):
                self._log(client_ip).info(
                    "TFTP %s: RRQ %s -> %d generated bytes", client_ip, rel, len(found))
                return _bytes_file(bytes(found))
            if found is not None:
                return self._open_path(Path(found), rel, client_ip)
        try:
            fd = open_confined(self.root, rel)
        except TftpPathError as e:
            self._log(client_ip).warning("TFTP %s: refused %r: %s", client_ip, name, e)
            raise _Refused(ERR_ACCESS, "access violation") from None
        except TftpNotFound as e:
            self._log(client_ip).info("TFTP %s: RRQ %s: not found (%s)", client_ip, rel, e)
            raise _Refused(ERR_NOT_FOUND, "file not found") from None
        self._log(client_ip).info("TFTP %s: RRQ %s", client_ip, rel)
        return os.fdopen(fd, "rb")

    def _open_path(self, path: Path, rel: str, client_ip: str) -> IO[bytes]:
        try:
            if not path.is_absolute():
                fd = open_confined(self.root, str(path))
            else:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                fd = _regular_or_close(fd, str(path))
        except TftpPathError as e:
            self._log(client_ip).warning(
                "TFTP %s: resolver path for %s refused: %s", client_ip, rel, e)
            raise _Refused(ERR_ACCESS, "access violation") from None
        except OSError as e:
            self._log(client_ip).warning(
                "TFTP %s: resolver path %s for %s: %s", client_ip, path, rel, e)
            raise _Refused(ERR_NOT_FOUND, "file not found") from None
        self._log(client_ip).info("TFTP %s: RRQ %s -> %s", client_ip, rel, path)
        return os.fdopen(fd, "rb")

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # pragma: no cover - the loop catches per packet; last resort
            log.exception("TFTP server loop died")
            raise
        finally:
            for s in list(self._sessions.values()):
                self._end(s, "server stopping")
            if self._epoll is not None:
                self._epoll.close()
                self._epoll = None
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            c = self.counters
            log.info("TFTP stopped: %d requests, %d sessions (%d completed, %d failed, %d expired "
                     "without an ACK, %d evicted), %d refused at the caps, peak %d sessions",
                     c["requests"], c["sessions"], c["completed"], c["failed"], c["expired"],
                     c["evicted"], c["refused_busy"] + c["refused_client"], c["peak_sessions"])

    def _loop(self) -> None:
        assert self._sock is not None
        main = self._sock.fileno()
        ep = self._epoll = select.epoll()
        ep.register(main, select.EPOLLIN)
        by_fd = self._by_fd
        on_session, on_packet = self._on_session, self._on_packet
        rbuf = self._rbuf
        poll, monotonic, stopped = ep.poll, time.monotonic, self._stop.is_set
        next_check = 0.0
        while not stopped():
            events = poll(0.05)
            now = monotonic()
            for fd, _ev in events:
                s = by_fd.get(fd)
                if s is None:  # the request port, or a session ended earlier in this round
                    if fd == main:
                        self._on_main(now)
                    continue
                try:
                    pkts = s.pkts
                    if pkts is None or s.window != 1:
                        on_session(s, now)
                        continue
                    # The storm's hot path, inline: a cached file in lock-step, the ACK of the
                    # block in flight that is not the last one -> send the next ready packet.
                    try:
                        got = s.sock.recv_into(rbuf)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:
                        self._recv_failed(s, e)
                        continue
                    sent = s.sent
                    if (got >= 4 and rbuf[1] == OP_ACK and rbuf[0] == 0
                            and (rbuf[2] << 8 | rbuf[3]) == sent & 0xFFFF
                            and s.last_block > sent > s.acked > 0):
                        s.acked = sent
                        s.tries = 0
                        s.sent = sent + 1
                        s.deadline = now + s.timeout
                        try:
                            s.sock.send(pkts[sent])
                        except OSError as e:
                            if e.errno in _PEER_GONE:
                                self._end(s, f"client gone ({e.strerror})")
                        continue
                    on_packet(s, got, now)
                except Exception as e:  # a bug must cost one transfer, never the server
                    self._log(s.host).exception("TFTP %s: unexpected error", s)
                    self._end(s, f"internal error {e!r}")
            if now >= next_check:
                try:
                    self._check_timeouts(now)
                except Exception:  # pragma: no cover - same rule as above
                    log.exception("TFTP: unexpected error checking timeouts")
                next_check = now + 0.05

    # -- requests ----------------------------------------------------------------------------
    def _on_main(self, now: float) -> None:
        assert self._sock is not None
        for _ in range(REQUESTS_PER_ROUND):
            try:
                buf, (host, port) = self._sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("TFTP recvfrom: %s", e)
                return
            try:
                self._on_request(buf, host, port, now)
            except Exception:  # one bad request never takes the loop down
                self._log(host).exception(
                    "TFTP %s:%d: unexpected error handling a request", host, port)

    def _reply_error(self, host: str, port: int, code: int, message: str) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(encode_error(code, message), (host, port))
        except OSError as e:
            self._log(host).debug("TFTP %s:%d: error reply not sent: %s", host, port, e)

    def _on_request(self, buf: bytes, host: str, port: int, now: float) -> None:
        key = (host, port)
        if key in self._sessions:
            self._log(host).debug("TFTP %s:%d: retransmitted request ignored", host, port)
            return
        opcode = (buf[0] << 8 | buf[1]) if len(buf) >= 2 else -1
        if opcode not in (OP_RRQ, OP_WRQ):
            self._ratelog(self._log(host), "stray", logging.WARNING,
                          "TFTP %s:%d: dropped %d-byte packet with opcode %d on the request port",
                          host, port, len(buf), opcode)
            return
        self.counters["requests"] += 1
        try:
            req = parse_request(buf)
        except TftpPacketError as e:
            self._ratelog(self._log(host), "malformed", logging.WARNING,
                          "TFTP %s:%d: malformed request: %s",
                          host, port, e)
            self._reply_error(host, port, ERR_ILLEGAL, "malformed request")
            return
        if req.opcode == OP_WRQ:
            self._log(host).warning(
                "TFTP %s: upload of %r refused (read-only server)", host, req.filename)
            self._reply_error(host, port, ERR_ACCESS, "read-only server: uploads refused")
            return
        if req.mode.lower() not in ("octet", "netascii"):
            self._log(host).warning(
                "TFTP %s: RRQ %r with unsupported mode %r", host, req.filename[:80],
                        req.mode[:32])
            self._reply_error(host, port, ERR_ILLEGAL, f"unsupported mode {req.mode[:32]!r}")
            return
        victim = self._make_room(host, port)
        if victim is False:
            return
        try:
            fileobj = self.open_for(req.filename, host)
        except _Refused as e:
            self._reply_error(host, port, e.code, str(e))
            return
        try:
            self._open_session(req, fileobj, host, port, victim, now)
        except BaseException:
            fileobj.close()
            raise

    def _make_room(self, host: str, port: int) -> _Session | bool | None:
        """The half-open session to evict for a new one (None: there is room), or False when
        the request was refused at a cap (an error has been sent)."""
        lim = self.limits
        if self._per_client.get(host, 0) >= lim.max_per_client:
            # only a session half-open for a while: a client's own requests in one burst (or
            # behind one NAT) must not evict each other before their first ACK is read
            young = time.monotonic() - HALF_OPEN_GRACE
            victim = next((s for s in self._half_open.values()
                           if s.host == host and s.started <= young), None)
            if victim is None:
                self.counters["refused_client"] += 1
                self._ratelog(self._log(host), "refused_client", logging.WARNING,
                              "TFTP %s:%d: per-client cap reached (%d transfers from %s, none "
                              "half-open for %g s): request refused", host, port,
                              lim.max_per_client, host, HALF_OPEN_GRACE)
                self._reply_error(host, port, ERR_UNDEFINED,
                                  f"too many transfers from {host} (max {lim.max_per_client})")
                return False
            self._ratelog(self._log(host), "evict_client", logging.WARNING,
                          "TFTP %s:%d: per-client cap reached (%d transfers from %s): evicting "
                          "the oldest unacknowledged one, %s", host, port, lim.max_per_client,
                          host, victim)
            return victim
        if len(self._sessions) >= lim.max_sessions:
            victim = next(iter(self._half_open.values()), None)
            if victim is None:
                self.counters["refused_busy"] += 1
                self._ratelog(self._log(host), "refused_busy", logging.WARNING,
                              "TFTP %s:%d: session cap reached (%d transfers, all "
                              "acknowledged): request refused", host, port, lim.max_sessions)
                self._reply_error(host, port, ERR_UNDEFINED,
                                  f"server busy ({lim.max_sessions} transfers), retry later")
                return False
            self._ratelog(self._log(host), "evict_busy", logging.WARNING,
                          "TFTP %s:%d: session cap reached (%d transfers): evicting the oldest "
                          "unacknowledged one, %s", host, port, lim.max_sessions, victim)
            return victim
        return None

    def _open_session(self, req: TftpRequest, fileobj: IO[bytes], host: str, port: int,
                      victim: _Session | bool | None, now: float) -> None:
        lim = self.limits
        size = os.fstat(fileobj.fileno()).st_size
        accepted = negotiate_options(req.option_map(), max_timeout=lim.max_timeout,
                                     max_windowsize=lim.max_windowsize)
        if "tsize" in accepted:
            accepted["tsize"] = size
        if isinstance(victim, _Session):
            self.counters["evicted"] += 1
            self._send_quiet(victim, encode_error(ERR_UNDEFINED, "server at its session cap"))
            self._end(victim, "evicted at the session cap", quiet=True)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as e:  # EMFILE/ENFILE: out of descriptors
            self.counters["refused_busy"] += 1
            self._log(host).error("TFTP %s:%d: cannot create a session socket: %s", host, port, e)
            self._reply_error(host, port, ERR_UNDEFINED, "server busy, retry later")
            fileobj.close()
            return
        try:
            sock.bind((self.bind_ip if self.bind_ip not in ("", "0.0.0.0") else "", 0))
            sock.connect((host, port))
            sock.setblocking(False)
            window = accepted.get("windowsize", 1)
            blksize = accepted.get("blksize", DEFAULT_BLKSIZE)
            if window > 1:  # room for a whole window (skb overhead ~1 KiB per datagram)
                need = window * (blksize + 1024)
                with contextlib.suppress(OSError):
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < need:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, need)
        except OSError as e:
            sock.close()
            self._log(host).error("TFTP %s:%d: cannot set up a session socket: %s", host, port, e)
            self._reply_error(host, port, ERR_UNDEFINED, "server error")
            fileobj.close()
            return
        oack = encode_oack(accepted) if accepted else None
        timeout = float(accepted.get("timeout", lim.timeout))
        s = _Session(sock, (host, port), req.filename, fileobj, size, blksize, window, timeout,
                     oack, now)
        with contextlib.suppress(OSError):
            cached = self._cache.acquire(s.filefd, blksize, size)
            if cached is not None:
                s.cache_key, s.pkts = cached
        key = (host, port)
        self._sessions[key] = s
        self._by_fd[s.fd] = s
        self._half_open[key] = s
        n = self._per_client[host] = self._per_client.get(host, 0) + 1
        c = self.counters
        c["sessions"] += 1
        c["peak_sessions"] = max(c["peak_sessions"], len(self._sessions))
        c["peak_per_client"] = max(c["peak_per_client"], n)
        assert self._epoll is not None
        self._epoll.register(s.fd, select.EPOLLIN)
        if accepted:
            self._log(s.host).debug("TFTP %s: OACK %s", s, accepted)
            self._send_quiet(s, oack)  # type: ignore[arg-type]
        else:
            self._send_window(s, now)

    # -- transfers ---------------------------------------------------------------------------
    def _send_quiet(self, s: _Session, pkt: bytes) -> None:
        try:
            s.sock.send(pkt)
        except OSError as e:  # a lost packet: the retransmission timer covers it
            self._log(s.host).debug("TFTP %s: send failed: %s", s, e)

    def _send_window(self, s: _Session, now: float) -> None:
        """Send the blocks after the last acknowledged one, up to the window (or the end)."""
        first = s.acked + 1
        last = min(s.acked + s.window, s.last_block)
        blksize, buf, view, payload = s.blksize, s.buf, s.view, s.payload
        send, filefd, pkts = s.sock.send, s.filefd, s.pkts
        for block in range(first, last + 1):
            if pkts is not None:
                pkt: bytes | memoryview = pkts[block - 1]
            else:
                try:
                    n = os.preadv(filefd, payload, (block - 1) * blksize)
                except OSError as e:
                    self._fail(s, ERR_UNDEFINED, "read error",
                               f"read error at block {block}: {e}")
                    return
                buf[2] = (block >> 8) & 0xFF
                buf[3] = block & 0xFF
                pkt = view[:4 + n]
            try:
                send(pkt)
            except OSError as e:
                if e.errno in _PEER_GONE:
                    self._end(s, f"client gone ({e.strerror})")
                    return
                self._log(s.host).debug("TFTP %s: send of block %d failed: %s", s, block, e)
                break  # lost (EAGAIN, ENOBUFS...): resent when the timer runs out
        s.sent = max(s.sent, last)
        s.deadline = now + s.timeout

    def _on_session(self, s: _Session, now: float) -> None:
        # One datagram per readiness event: in lock-step (and per window) the next ACK is not
        # there yet, and epoll is level-triggered.  The socket is connected to the client's
        # address and port, so the kernel delivers nothing from any other TID (RFC 1350: the
        # error for a foreign TID "can be done only if the TFTP in fact receives" the packet;
        # tftp-hpa does the same) and reports an ICMP unreachable as ECONNREFUSED.
        try:
            got = s.sock.recv_into(self._rbuf)  # a kept buffer: no allocation per ACK
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._recv_failed(s, e)
            return
        self._on_packet(s, got, now)

    def _recv_failed(self, s: _Session, e: OSError) -> None:
        if e.errno in _PEER_GONE:
            self._end(s, f"client gone ({e.strerror})", expired=not s.established)
        else:
            self._log(s.host).debug("TFTP %s: recv: %s", s, e)

    def _on_packet(self, s: _Session, got: int, now: float) -> None:
        """A datagram of ``got`` bytes from the client, in ``self._rbuf``."""
        buf = self._rbuf
        if got >= 4 and buf[1] == OP_ACK and buf[0] == 0:
            number = (buf[2] << 8) | buf[3]
            sent = s.sent
            if s.window == 1 and number == (sent & 0xFFFF) and sent > s.acked > 0:
                # the lock-step fast path: the ACK of the one block in flight
                s.acked = sent
                s.tries = 0
                if sent >= s.last_block:
                    self._end(s, "")
                    return
                block = sent + 1
                pkts = s.pkts
                if pkts is not None:
                    pkt: bytes | memoryview = pkts[sent]  # DATA block sent + 1, ready
                else:
                    try:
                        n = os.preadv(s.filefd, s.payload, sent * s.blksize)
                    except OSError as e:
                        self._fail(s, ERR_UNDEFINED, "read error",
                                   f"read error at block {block}: {e}")
                        return
                    b = s.buf
                    b[2] = (block >> 8) & 0xFF
                    b[3] = block & 0xFF
                    pkt = s.view[:4 + n]
                s.sent = block
                s.deadline = now + s.timeout
                try:
                    s.sock.send(pkt)
                except OSError as e:
                    if e.errno in _PEER_GONE:
                        self._end(s, f"client gone ({e.strerror})")
                return
            self._on_ack(s, number, now)
        elif got >= 4 and buf[1] == OP_ERROR and buf[0] == 0:
            code, msg = parse_error(bytes(buf[:got]))
            self._end(s, f"client sent error {code} {msg[:80]!r}",
                      aborted=s.acked < 0)  # after an OACK: a tsize probe (pxelinux)
        else:
            self._ratelog(self._log(s.host), "junk", logging.WARNING,
                          "TFTP %s: dropped %d-byte packet %r (expected ACK or ERROR)",
                          s, got, bytes(buf[:min(got, 8)]))

    def _on_ack(self, s: _Session, number: int, now: float) -> None:
        block = s.acked + ((number - s.acked) & 0xFFFF)  # the absolute block it names
        if block == s.acked or block > s.sent:
            if block == s.acked:
                s.dup_acks += 1  # RFC 1123 4.2.3.1: never answer a duplicate ACK
            else:
                self._log(s.host).debug(
                    "TFTP %s: ACK %d for a block not sent yet ignored", s, number)
            return
        if not s.established:
            s.established = True
            self._half_open.pop(s.peer, None)
        s.acked = block
        s.tries = 0
        if block >= s.last_block:
            self._end(s, "")
            return
        self._send_window(s, now)

    def _check_timeouts(self, now: float) -> None:
        retries = self.limits.retries
        for s in list(self._sessions.values()):
            if now < s.deadline:
                continue
            if s.tries >= retries:
                what = "the OACK" if s.acked < 0 else f"block {s.acked + 1}"
                self._end(s, f"no ACK for {what} after {s.tries} retransmissions "
                          f"({s.timeout:g} s apart)", expired=True)
                continue
            s.tries += 1
            s.retransmits += 1
            self.counters["retransmits"] += 1
            if s.acked < 0:
                assert s.oack is not None
                self._send_quiet(s, s.oack)
                s.deadline = now + s.timeout
            else:
                self._send_window(s, now)

    def _fail(self, s: _Session, code: int, message: str, reason: str) -> None:
        self._send_quiet(s, encode_error(code, message))
        self._end(s, reason)

    def _end(self, s: _Session, reason: str, *, quiet: bool = False, aborted: bool = False,
             expired: bool = False) -> None:
        """Close a session; ``reason`` empty means it completed."""
        if s.done:
            return
        s.done = True
        key = s.peer
        self._sessions.pop(key, None)
        self._half_open.pop(key, None)
        n = self._per_client.get(s.host, 0) - 1
        if n > 0:
            self._per_client[s.host] = n
        else:
            self._per_client.pop(s.host, None)
        if self._by_fd.get(s.fd) is s:
            del self._by_fd[s.fd]
            if self._epoll is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(s.fd)
        if s.cache_key is not None:
            self._cache.release(s.cache_key)
            s.pkts = None
        for closer in (s.sock.close, s.fileobj.close):
            try:
                closer()
            except Exception as e:  # never let cleanup take the loop down
                self._log(s.host).warning("TFTP %s: cleanup: %s", s, e)
        c = self.counters
        took = time.monotonic() - s.started
        if not reason:
            c["completed"] += 1
            c["dup_acks"] += s.dup_acks
            self._log(s.host).info(
                "TFTP %s: sent %s (%d bytes, blksize %d%s) in %.3f s%s", s.host, s.name,
                     s.size, s.blksize, f", windowsize {s.window}" if s.window > 1 else "",
                     took, f", {s.retransmits} retransmissions" if s.retransmits else "")
            return
        if quiet:
            return
        if aborted:
            self._log(s.host).info("TFTP %s: %s ended after the OACK: %s", s.host, s.name, reason)
            return
        if expired and not s.established:
            c["expired"] += 1
            self._ratelog(self._log(s.host), "expired", logging.WARNING,
                          "TFTP %s: transfer of %r never acknowledged, session ended: %s",
                          s.host, s.name, reason)
            return
        c["failed"] += 1
        self._log(s.host).warning("TFTP %s: transfer of %r ended: %s", s.host, s.name, reason)

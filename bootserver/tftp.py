"""Read-only TFTP server (RFC 1350 + RFC 2347 options: blksize RFC 2348, tsize/timeout RFC 2349).

This is the only module that imports tftpy.  tftpy 0.8.7 supplies the packet codec
(``TftpPacketFactory``), the per-transfer context (socket, retransmission, metrics) and the
download state machine (``TftpStateExpectACK``/``sendDAT``).  Its request handling and its
receive loop are replaced here because of what FIELD-NOTES.md and its source show:

* ``dyn_file_func`` only runs for names that do not exist under the root, and an ``io.BytesIO``
  it returns kills the server thread after the transfer (``lockfile`` reads ``.name``).  Here the
  resolver is consulted *before* the filesystem, bytes are served from a
  ``tempfile.TemporaryFile`` and flock is off (nothing here writes files, so there is nothing to
  lock against).
* uploads are accepted by default: WRQ is answered with an Access violation error before any
  tftpy write code runs, and ``upload_open`` refuses as well (defence in depth).
* an exception that is not a ``TftpException`` (UnicodeDecodeError on a non-ASCII name,
  ValueError on ``blksize=abc``, OSError from sendto...) escapes its loop and kills the thread:
  our loop catches everything per packet and per session, logs it, and keeps serving.
* it follows symlinks out of the root and OACKs ``blksize`` up to 65536 (RFC 2348 says 65464) and
  even when the client did not ask for it.

Path rule (``normalize_tftp_path``): the requested name must be printable ASCII without
backslashes; leading ``/`` are stripped (PXE ROMs often send ``/pxelinux.0``) so *every* name is
relative to the root (``/etc/passwd`` means ``<root>/etc/passwd``); empty and ``.`` segments are
dropped; any ``..`` segment is refused outright (even one that would stay inside).  The file is
then opened with symlinks resolved: a symlink is followed only if its final target is inside the
resolved root (compared by path components, so ``/srv/tftp2`` is not inside ``/srv/tftp``), and
the open walks the resolved components with ``O_NOFOLLOW`` so a symlink swapped in after the
check is refused too.  Only regular files are served.

Modes: ``octet`` and ``netascii`` are accepted and both get the bytes unchanged (no CR/LF
translation; PXE clients all use octet); any other mode is an Illegal operation error.  Errors:
1 File not found, 2 Access violation (refused names, symlink escapes, uploads), 4 Illegal
operation (malformed requests, bad modes), 0 for a resolver that raised.  Requests over 2048
bytes are malformed (RFC 2347 caps them at 512); other opcodes on the request port are dropped
and logged.  Every log line names the client IP and the file.

The resolver ``resolver(path, client_ip)`` gets the normalised name and may return ``bytes``
(served as is), a ``Path`` (a relative one is confined to the root like a request; an absolute
one is trusted, e.g. the image store, but must be a regular file) or ``None`` (fall through to
the root).  It runs on the server thread: keep it fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import tftpy
from tftpy.TftpContexts import TftpContextServer
from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import TftpPacketRRQ, TftpPacketWRQ
from tftpy.TftpShared import TftpException, TftpTimeout, TftpTimeoutExpectACK
from tftpy.TftpStates import TftpState, TftpStateExpectACK

log = logging.getLogger("bootserver.tftp")
# tftpy logs every transfer's progress at INFO; ours names client and file instead.
if logging.getLogger("tftpy").level == logging.NOTSET:
    logging.getLogger("tftpy").setLevel(logging.WARNING)

Resolver = Callable[[str, str], bytes | Path | None]

MIN_BLKSIZE = 8  # RFC 2348
MAX_BLKSIZE = 65464  # RFC 2348
DEFAULT_BLKSIZE = 512
MAX_NAME = 1024  # longest accepted file name (DHCP's file field is 128 bytes)
MAX_REQUEST = 2048  # RFC 2347 limits a request to 512 octets; be lenient but bounded
SESSION_TIMEOUT = 2.0  # seconds before a DATA is resent (clients may ask 1..255 via "timeout")
SESSION_RETRIES = 5

# TFTP error codes (RFC 1350, RFC 2347)
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_ILLEGAL = 4
ERR_OPTIONS = 8

OP_RRQ, OP_WRQ = 1, 2


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


def negotiate_options(requested: Mapping[str, str]) -> dict[str, int]:
    """The options to acknowledge for an RRQ's options (names case-insensitive, RFC 2347).

    blksize: clamped down to 65464; below 8 or not a number it is ignored (the transfer uses
    512).  tsize: acknowledged (the caller fills in the real size).  timeout: 1..255 accepted,
    else ignored.  Anything else (windowsize, ...) is ignored and never appears in the OACK."""
    out: dict[str, int] = {}
    for key, value in requested.items():
        name = key.lower()
        try:
            num = int(value.strip())
        except ValueError:
            log.info("ignoring option %s=%r: not a number", key, value)
            continue
        if name == "blksize":
            if num < MIN_BLKSIZE:
                log.info("ignoring blksize %d < %d", num, MIN_BLKSIZE)
                continue
            out["blksize"] = min(num, MAX_BLKSIZE)
        elif name == "tsize":
            out["tsize"] = 0
        elif name == "timeout":
            if 1 <= num <= 255:
                out["timeout"] = num
        else:
            log.debug("ignoring unsupported option %s", key)
    return out


def _error_packet(code: int, message: str) -> bytes:
    return struct.pack("!HH", 5, code) + message.encode("ascii", "replace")[:200] + b"\0"


def _refuse_upload(path: str, context: object) -> None:
    log.warning("upload of %s refused (read-only server)", path)
    return None


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Context(TftpContextServer):
    """tftpy's server context bound to our address, no flock, our request state."""

    def __init__(self, server: TftpServer, host: str, port: int) -> None:
        super().__init__(host, port, SESSION_TIMEOUT, str(server.root),
                         upload_open=_refuse_upload, retries=SESSION_RETRIES, flock=False)
        if server.bind_ip not in ("", "0.0.0.0"):
            self.sock.bind((server.bind_ip, 0))
        self.sock.setblocking(False)
        self.server = server
        self.state = _RequestState(self)
        self.finished_ok = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port} {self.file_to_transfer!r}"


class _RequestState(TftpState):
    """The first packet of a session: answer an RRQ (OACK or DATA 1) or refuse."""

    context: _Context

    def _send_error(self, code: int, message: str) -> None:
        ctx = self.context
        ctx.sock.sendto(_error_packet(code, message), (ctx.host, ctx.tidport))

    def handle(self, pkt: Any, raddress: str, rport: int) -> Any:
        ctx = self.context
        ctx.tidport = rport
        ctx.file_to_transfer = getattr(pkt, "filename", None)
        try:
            if isinstance(pkt, TftpPacketWRQ):
                raise _Refused(ERR_ACCESS, "read-only server: uploads refused")
            if not isinstance(pkt, TftpPacketRRQ):
                raise _Refused(ERR_ILLEGAL, "expected RRQ")
            if pkt.mode not in ("octet", "netascii"):
                raise _Refused(ERR_ILLEGAL, f"unsupported mode {pkt.mode[:32]!r}")
            fileobj = ctx.server.open_for(pkt.filename, raddress)
        except _Refused as e:
            self._send_error(e.code, str(e))
            raise TftpException(f"refused {ctx.file_to_transfer!r}: {e}") from None
        ctx.fileobj = fileobj
        accepted = negotiate_options(pkt.options)
        if "tsize" in accepted:
            fileobj.seek(0, os.SEEK_END)
            accepted["tsize"] = fileobj.tell()
            fileobj.seek(0)
        if "timeout" in accepted:
            ctx.timeout = accepted["timeout"]
        ctx.options = accepted  # getBlocksize() falls back to 512 without blksize
        if accepted:
            oack = struct.pack("!H", 6) + b"".join(
                f"{k}\0{v}\0".encode("ascii") for k, v in accepted.items())
            ctx.sock.sendto(oack, (ctx.host, ctx.tidport))
            ctx.last_pkt = _RawPacket(oack)
            ctx.next_block = 0
        else:
            ctx.next_block = 1
            ctx.pending_complete = self.sendDAT()
        return TftpStateExpectACK(ctx)


class _RawPacket:
    """Something ``resendLast`` can resend (it calls ``.encode().buffer`` and ``str``)."""

    def __init__(self, buffer: bytes) -> None:
        self.buffer = buffer

    def encode(self) -> _RawPacket:
        return self

    def __str__(self) -> str:
        return f"raw packet {self.buffer[:16]!r}"


def _bytes_file(data: bytes) -> IO[bytes]:
    # A real file, not io.BytesIO (FIELD-NOTES: tftpy reads .name of what it serves).
    f = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the transfer, closed by its end()
    f.write(data)
    f.seek(0)
    return f


class TftpServer:
    """Read-only TFTP server for ``root`` on ``bind_ip:port`` (one background thread).

    ``port=0`` picks a free port (read ``.port`` after ``start()``)."""

    def __init__(self, root: Path, bind_ip: str, port: int = 69,
                 resolver: Resolver | None = None) -> None:
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise NotADirectoryError(f"TFTP root {str(root)!r} is not a directory")
        self.bind_ip = bind_ip
        self.port = port
        self.resolver = resolver
        # tftpy's server object is kept for its root checks (exists, directory, readable) and
        # as the documented owner of upload_open; its listen() loop is replaced by _loop().
        self._tftpy = tftpy.TftpServer(str(self.root), upload_open=_refuse_upload)
        self._sessions: dict[tuple[str, int], _Context] = {}
        self._by_fd: dict[int, _Context] = {}
        self._poller = select.poll()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._factory = TftpPacketFactory()

    # -- lifecycle -----------------------------------------------------------------------
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
        log.info("TFTP serving %s on %s:%d", self.root, self.bind_ip, self.port)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
            log.warning("TFTP %s: refused %r: %s", client_ip, name, e)
            raise _Refused(ERR_ACCESS, "access violation") from None
        if self.resolver is not None:
            try:
                found = self.resolver(rel, client_ip)
            except Exception:
                log.exception("TFTP %s: resolver failed for %r", client_ip, rel)
                raise _Refused(ERR_UNDEFINED, "internal error") from None
            if isinstance(found, bytes | bytearray):
                log.info("TFTP %s: RRQ %s -> %d generated bytes", client_ip, rel, len(found))
                return _bytes_file(bytes(found))
            if found is not None:
                return self._open_path(Path(found), rel, client_ip)
        try:
            fd = open_confined(self.root, rel)
        except TftpPathError as e:
            log.warning("TFTP %s: refused %r: %s", client_ip, name, e)
            raise _Refused(ERR_ACCESS, "access violation") from None
        except TftpNotFound as e:
            log.info("TFTP %s: RRQ %s: not found (%s)", client_ip, rel, e)
            raise _Refused(ERR_NOT_FOUND, "file not found") from None
        log.info("TFTP %s: RRQ %s", client_ip, rel)
        return os.fdopen(fd, "rb")

    def _open_path(self, path: Path, rel: str, client_ip: str) -> IO[bytes]:
        try:
            if not path.is_absolute():
                fd = open_confined(self.root, str(path))
            else:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                fd = _regular_or_close(fd, str(path))
        except TftpPathError as e:
            log.warning("TFTP %s: resolver path for %s refused: %s", client_ip, rel, e)
            raise _Refused(ERR_ACCESS, "access violation") from None
        except OSError as e:
            log.warning("TFTP %s: resolver path %s for %s: %s", client_ip, path, rel, e)
            raise _Refused(ERR_NOT_FOUND, "file not found") from None
        log.info("TFTP %s: RRQ %s -> %s", client_ip, rel, path)
        return os.fdopen(fd, "rb")

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # pragma: no cover - the loop catches per packet; last resort
            log.exception("TFTP server loop died")
            raise
        finally:
            for ctx in list(self._sessions.values()):
                self._end(ctx, "server stopping")
            self._sessions.clear()
            self._by_fd.clear()
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _loop(self) -> None:
        assert self._sock is not None
        main = self._sock.fileno()
        self._poller = select.poll()
        self._poller.register(main, select.POLLIN)
        next_check = 0.0
        while not self._stop.is_set():
            for fd, _ev in self._poller.poll(200):
                if fd == main:
                    self._on_main()
                else:
                    ctx = self._by_fd.get(fd)
                    if ctx is not None:  # None: ended earlier in this round
                        self._on_session(ctx)
            now = time.monotonic()
            if now >= next_check:  # timeouts have a 1 s granularity at best: check 10x/s
                self._check_timeouts()
                next_check = now + 0.1

    def _on_main(self) -> None:
        assert self._sock is not None
        try:
            buf, (host, port) = self._sock.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("TFTP recvfrom: %s", e)
            return
        key = (host, port)
        if key in self._sessions:
            log.debug("TFTP %s:%d: retransmitted request ignored", host, port)
            return
        opcode = struct.unpack("!H", buf[:2])[0] if len(buf) >= 2 else -1
        if opcode not in (OP_RRQ, OP_WRQ):
            log.warning("TFTP %s:%d: dropped %d-byte packet with opcode %d on the request port",
                        host, port, len(buf), opcode)
            return
        try:
            if len(buf) > MAX_REQUEST:
                raise ValueError(f"request of {len(buf)} bytes exceeds {MAX_REQUEST}")
            pkt = self._factory.parse(buf)
        except Exception as e:
            log.warning("TFTP %s:%d: malformed request (%d bytes, %r...): %s",
                        host, port, len(buf), buf[:24], e)
            self._reply_error(host, port, ERR_ILLEGAL, "malformed request")
            return
        try:
            ctx = _Context(self, host, port)
        except OSError as e:
            log.error("TFTP %s:%d: cannot create a session socket: %s", host, port, e)
            return
        self._sessions[key] = ctx
        self._by_fd[ctx.sock.fileno()] = ctx
        self._poller.register(ctx.sock.fileno(), select.POLLIN)
        ctx.metrics.start_time = ctx.last_update = time.time()
        self._step(ctx, lambda: ctx.state.handle(pkt, host, port))

    def _reply_error(self, host: str, port: int, code: int, message: str) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(_error_packet(code, message), (host, port))
        except OSError as e:
            log.debug("TFTP %s:%d: error reply not sent: %s", host, port, e)

    def _on_session(self, ctx: _Context) -> None:
        def cycle() -> Any:
            try:
                buf, (host, port) = ctx.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return ctx.state
            if host != ctx.address or port != ctx.tidport:
                log.warning("TFTP %s: packet from unknown TID %s:%d dropped", ctx, host, port)
                with contextlib.suppress(OSError):
                    ctx.sock.sendto(_error_packet(5, "unknown transfer ID"), (host, port))
                return ctx.state
            ctx.last_update = time.time()
            ctx.timeout_expectACK = False
            try:
                pkt = self._factory.parse(buf)
            except Exception as e:
                log.warning("TFTP %s: malformed packet dropped: %s", ctx, e)
                return ctx.state
            state = ctx.state.handle(pkt, host, port)
            ctx.retry_count = 0
            return state

        self._step(ctx, cycle)

    def _step(self, ctx: _Context, fn: Callable[[], Any]) -> None:
        """Run one state transition; end the session on completion or any error."""
        try:
            ctx.state = fn()
        except TftpTimeoutExpectACK:
            ctx.timeout_expectACK = True
            return
        except TftpException as e:
            self._end(ctx, str(e))
            return
        except Exception as e:
            log.exception("TFTP %s: unexpected error", ctx)
            self._end(ctx, f"internal error {e!r}")
            return
        if ctx.state is None:
            ctx.finished_ok = True
            self._end(ctx, "")

    def _check_timeouts(self) -> None:
        now = time.time()
        for ctx in list(self._sessions.values()):
            try:
                ctx.checkTimeout(now)
            except TftpTimeout:
                ctx.retry_count += 1
                if ctx.retry_count >= ctx.retries:
                    self._end(ctx, f"no answer after {ctx.retry_count} retries")
                    continue
                try:
                    ctx.timeout_expectACK = False
                    ctx.last_update = now
                    ctx.state.resendLast()
                except Exception as e:
                    self._end(ctx, f"resend failed: {e}")

    def _end(self, ctx: _Context, reason: str) -> None:
        self._sessions.pop((ctx.host, ctx.port), None)
        fd = ctx.sock.fileno()
        if fd >= 0 and self._by_fd.get(fd) is ctx:
            del self._by_fd[fd]
            with contextlib.suppress(KeyError, ValueError):
                self._poller.unregister(fd)
        try:
            ctx.end()
        except Exception as e:  # never let cleanup take the loop down
            log.warning("TFTP %s: cleanup: %s", ctx, e)
        m = ctx.metrics
        if ctx.finished_ok:
            log.info("TFTP %s: sent %s (%d bytes, blksize %d) in %.3f s", ctx.host,
                     ctx.file_to_transfer, m.bytes, ctx.getBlocksize(),
                     m.end_time - m.start_time)
        else:
            log.warning("TFTP %s: transfer of %r ended: %s", ctx.host, ctx.file_to_transfer,
                        reason)

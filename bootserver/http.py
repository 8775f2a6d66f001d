"""Threaded HTTP/1.1 server for the boot path (iPXE scripts, kernels, initrds, readiness POSTs).

The server does the protocol; an ``App`` decides the content::

    class App(Protocol):
        def handle(self, method, path, client_ip, headers, body) -> Response | None

* ``method`` is ``GET``, ``HEAD`` or ``POST`` (anything else is answered 405 before the app is
  asked; HEAD is passed as ``HEAD`` and answered like GET without the body).
* ``path`` is the path percent-decoded exactly once (here; an app must not decode it again),
  with ``?`` and the raw query appended when the request had one
  (``/boot.ipxe?mac=52:54:00:...``).  Before the app sees it the server has refused (400)
  request targets that are not origin-form (or absolute-form http URLs), that contain NUL,
  control characters, backslashes or raw non-ASCII, a percent-encoded ``?`` or ``/``, or a
  ``..`` segment (raw or percent-encoded).  ``%252e%252e`` reaches the app as the literal
  ``%2e%2e``.  Confining paths to a directory is still the app's job.
* ``headers`` is a case-insensitive mapping; ``body`` is the request body (POST bodies need a
  Content-Length, at most ``max_body`` bytes: 411 / 413 otherwise).
* ``None`` means 404.  An exception in the app is logged and answered 500.

``Response(file=Path)`` is streamed with ``socket.sendfile`` (zero copy) from one fd opened once
per request, so a concurrent ``os.replace`` of the path yields entirely the old or entirely the
new version, never a mix (the image store's atomic publish relies on this).  Single byte ranges
(``Range: bytes=a-b``, ``a-``, ``-n``) get 206; multi-range requests get the whole file (200);
unsatisfiable ones 416.

Limits (``HttpLimits``; docs/security.md has the defaults and hcboot's flags): at most
``max_connections`` connections at once and ``max_per_client`` from one client address; the
whole request head (request line and headers) must arrive within ``head_timeout`` of the
connection's start or of the next request's first byte (a deadline, not a per-recv timeout),
else 408 and close; a kept-alive connection waits ``idle_timeout`` for its next request; the
whole request body must arrive within ``io_timeout``, and a response send that makes no progress
for ``io_timeout`` ends the connection.  A new
connection over a cap takes the place of the connection of that client (per-client cap) or of
any client (overall cap) that has waited longest for a request head, then for a request body,
then of the longest idle keep-alive connection; only when every connection is busy handling a
request or sending its reply is it answered 503.
So slow clients that never finish a head cannot lock out a client that sends one promptly.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import logging
import mimetypes
import os
import socket
import socketserver
import stat
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

log = logging.getLogger("bootserver.http")

ALLOWED_METHODS = ("GET", "HEAD", "POST")
DEFAULT_MAX_BODY = 1 << 20
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True)
class HttpLimits:
    """Connection caps and timeouts (seconds); see the module doc and docs/security.md."""

    max_connections: int = 256
    max_per_client: int = 64
    head_timeout: float = 10.0
    idle_timeout: float = 15.0
    io_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_per_client < 1:
            raise ValueError(f"HTTP connection caps must be >= 1: {self}")
        if min(self.head_timeout, self.idle_timeout, self.io_timeout) <= 0:
            raise ValueError(f"HTTP timeouts must be > 0: {self}")


class BadRequestPath(ValueError):
    """A request target refused at the protocol layer (names the target)."""


@dataclass(frozen=True)
class Response:
    """What an App answers: ``body`` bytes or a ``file`` to stream (not both; neither = empty).

    ``headers`` are extra response headers; Content-Length, Content-Range and
    Transfer-Encoding are the server's and refused here."""

    status: int = 200
    content_type: str = "application/octet-stream"
    body: bytes | None = None
    file: Path | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.body is not None and self.file is not None:
            raise ValueError("Response takes body or file, not both")
        if not 100 <= self.status <= 599:
            raise ValueError(f"Response status {self.status} out of range")
        for name, value in [("Content-Type", self.content_type), *self.headers.items()]:
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise ValueError(f"Response header {name!r} contains CR, LF or NUL")
            if name.lower() in ("content-length", "content-range", "transfer-encoding"):
                raise ValueError(f"Response header {name!r} is set by the server")


class App(Protocol):
    def handle(self, method: str, path: str, client_ip: str, headers: Mapping[str, str],
               body: bytes) -> Response | None: ...


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only request headers (repeated fields joined with ', ')."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._d: dict[str, tuple[str, str]] = {}
        for k, v in items:
            lk = k.lower()
            if lk in self._d:
                self._d[lk] = (self._d[lk][0], f"{self._d[lk][1]}, {v}")
            else:
                self._d[lk] = (k, v)

    def __getitem__(self, key: str) -> str:
        return self._d[key.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._d.values())

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._d


def _has_ctl(s: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in s)


def clean_request_path(target: str) -> str:
    """The path handed to the app for a request target (see module doc); BadRequestPath."""
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not target.startswith("/"):
        raise BadRequestPath(f"request target {target[:80]!r} is not an absolute path")
    if "\\" in target or "#" in target or _has_ctl(target) or not target.isascii():
        raise BadRequestPath(f"bad characters in request target {target[:80]!r}")
    raw_path, sep, query = target.partition("?")
    if "%2f" in raw_path.lower():
        raise BadRequestPath(f"percent-encoded '/' in {raw_path[:80]!r}")
    try:
        path = unquote(raw_path, errors="strict")
    except UnicodeDecodeError as e:
        raise BadRequestPath(f"bad percent-encoding in {raw_path[:80]!r}") from e
    if "\\" in path or "?" in path or _has_ctl(path):
        raise BadRequestPath(f"bad characters in decoded path {path[:80]!r}")
    if ".." in path.split("/"):
        raise BadRequestPath(f"'..' segment in {raw_path[:80]!r}")
    return path + (f"?{query}" if sep and query else "")


UNSATISFIABLE = "unsatisfiable"


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """A single byte range ``(first, last)`` inclusive for ``size`` bytes, ``UNSATISFIABLE``
    (answer 416), or None (ignore the header and send everything: bad syntax, other units or
    several ranges, which RFC 9110 lets a server ignore)."""
    unit, eq, spec = header.strip().partition("=")
    if not eq or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or not (first_s or last_s):
        return None
    if (first_s and not first_s.isdigit()) or (last_s and not last_s.isdigit()):
        return None
    if not first_s:  # suffix: the last n bytes
        n = int(last_s)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return (max(0, size - n), size - 1)
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None
    if first >= size:
        return UNSATISFIABLE
    last = int(last_s) if last_s else size - 1
    return (first, min(last, size - 1))


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


class _DeadlineReader(io.RawIOBase):
    """The socket's read side with one deadline for a whole phase (request head, keep-alive
    wait, body): each recv waits at most for what is left of it, so a client that sends a byte
    every few seconds cannot stretch the phase.  Raises TimeoutError naming the phase."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = 0.0
        self.phase = ""
        self.limit = 0.0

    def arm(self, seconds: float, phase: str, start: float | None = None) -> None:
        self.limit, self.phase = seconds, phase
        self.deadline = (time.monotonic() if start is None else start) + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{self.phase} not complete within {self.limit:g} s")
        self.sock.settimeout(left)
        try:
            return self.sock.recv_into(b)
        except TimeoutError:
            raise TimeoutError(f"{self.phase} not complete within {self.limit:g} s") from None


# connection states: waiting for / reading a request head, reading a request body, handling a
# request (and sending the reply), kept alive idle
HEAD, BODY, BUSY, IDLE = "head", "body", "busy", "idle"


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    ip: str
    state: str
    since: float
    dropped: str = ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "homecloud"
    sys_version = ""
    disable_nagle_algorithm = True
    # error replies to unparseable request lines get a status line (the stdlib default,
    # HTTP/0.9, sends a bare HTML body); HTTP/0.9 requests themselves are refused below.
    default_request_version = "HTTP/1.0"
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # reads go through the deadline reader instead
        self._reader = _DeadlineReader(self.connection)
        self._buf = io.BufferedReader(self._reader, 65536)
        self.rfile = self._buf
        lim = self.server.limits
        conn = self.server.conn_of(self.connection)
        self._reader.arm(lim.head_timeout, "request head",
                         start=conn.since if conn else None)
        self._served = 0

    # -- logging through the logging module, one line per request ----------------------------
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: object) -> None:
        log.warning("HTTP %s: " + format, self.client_address[0], *args)

    def log_message(self, format: str, *args: object) -> None:
        log.info("HTTP %s: " + format, self.client_address[0], *args)

    # -- request loop ---------------------------------------------------------------------
    def handle_one_request(self) -> None:
        lim = self.server.limits
        sock = self.connection
        try:
            if self._served:  # kept alive: wait for the next request's first byte
                self.server.set_state(sock, IDLE)
                self._reader.arm(lim.idle_timeout, "keep-alive wait")
                if not self._buf.peek(1):
                    self.close_connection = True
                    return
                self.server.set_state(sock, HEAD)
                self._reader.arm(lim.head_timeout, "request head")
            if not self._read_head():
                return
            conn = self.server.conn_of(sock)
            if conn is not None and conn.dropped:  # replaced by a newcomer (a cap): EOF seen
                self.close_connection = True
                return
        except TimeoutError as e:
            self.close_connection = True
            if self._reader.phase == "request head":
                log.info("HTTP %s: %s -> 408", self.client_address[0], e)
                self._timeout_reply()
            else:
                log.debug("HTTP %s: %s: closing", self.client_address[0], e)
            return
        except ConnectionError as e:
            log.debug("HTTP %s: connection dropped: %r", self.client_address[0], e)
            self.close_connection = True
            return
        self.server.set_state(sock, BUSY)
        self._served += 1
        self._reader.arm(lim.io_timeout, "request body")
        sock.settimeout(lim.io_timeout)  # response writes
        try:
            self._dispatch()
            self.wfile.flush()
        except (TimeoutError, ConnectionError) as e:
            log.debug("HTTP %s: connection dropped: %r", self.client_address[0], e)
            self.close_connection = True

    def _timeout_reply(self) -> None:
        """408 to a client whose request head missed its deadline (best effort: the client
        may not be reading)."""
        self.request_version, self.command, self.requestline = "HTTP/1.1", "", ""
        with contextlib.suppress(OSError):
            self.connection.settimeout(1.0)
            self._simple(408, "request head not complete in time\n", close=True)
            self.wfile.flush()

    def _read_head(self) -> bool:
        """Read and parse the request line and headers; False when the request was answered
        (400, 414, 431, 505) or the connection ended."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            return False
        if not self.raw_requestline:
            self.close_connection = True
            return False
        if len(self.raw_requestline.split()) != 3:  # also HTTP/0.9 "GET /path"
            self.request_version, self.command = self.default_request_version, ""
            self.requestline = self.raw_requestline.decode("latin-1").rstrip("\r\n")
            self.close_connection = True
            self.send_error(HTTPStatus.BAD_REQUEST, "Bad request line")
            return False
        if not self.parse_request():  # it has sent a 400/505/431 and set close_connection
            return False
        if self.headers.defects:  # e.g. a header line without a colon
            self.close_connection = True
            self.send_error(HTTPStatus.BAD_REQUEST, "Bad header syntax")
            return False
        return True

    def _dispatch(self) -> None:
        ip = self.client_address[0]
        method = self.command
        if method not in ALLOWED_METHODS:
            self._simple(405, f"method {method[:20]} not allowed\n",
                         {"Allow": ", ".join(ALLOWED_METHODS)}, close=True)
            return
        try:
            path = clean_request_path(self.path)
        except BadRequestPath as e:
            log.warning("HTTP %s: %s %s -> 400 (%s)", ip, method, self.path[:200], e)
            self._simple(400, "bad request path\n", close=True)
            return
        body = self._read_body()
        if body is None:
            return
        headers = Headers(list(self.headers.items()))
        try:
            resp = self.server.app.handle(method, path, ip, headers, body)
        except Exception:
            log.exception("HTTP %s: app failed on %s %s", ip, method, path)
            self._simple(500, "internal error\n")
            return
        if resp is None:
            self._simple(404, "not found\n")
            log.info("HTTP %s: %s %s -> 404", ip, method, path)
            return
        self._send(method, path, resp, headers)

    def _read_body(self) -> bytes | None:
        te = self.headers.get("Transfer-Encoding")
        cls = self.headers.get_all("Content-Length") or []
        if te is not None:
            self._simple(411 if self.command == "POST" else 501,
                         "Transfer-Encoding not supported; send Content-Length\n", close=True)
            return None
        if len(set(cls)) > 1 or (cls and not cls[0].strip().isdigit()):
            self._simple(400, "bad Content-Length\n", close=True)
            return None
        length = int(cls[0]) if cls else 0
        if length > self.server.max_body:
            self._simple(413, f"body larger than {self.server.max_body} bytes\n", close=True)
            return None
        if not length:
            return b""
        self.server.set_state(self.connection, BODY)
        body = self.rfile.read(length)
        self.server.set_state(self.connection, BUSY)
        if len(body) != length:
            self.close_connection = True
            return None
        return body

    # -- responses --------------------------------------------------------------------------
    def _simple(self, status: int, text: str, extra: Mapping[str, str] | None = None,
                close: bool = False) -> None:
        if close:
            self.close_connection = True
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send(self, method: str, path: str, resp: Response, req: Headers) -> None:
        ip = self.client_address[0]
        fd: int | None = None
        data = b""
        meta: dict[str, str] = {}
        try:
            if resp.file is not None:
                try:
                    fd = os.open(resp.file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                    st = os.fstat(fd)
                except FileNotFoundError:
                    log.warning("HTTP %s: %s %s: %s vanished -> 404", ip, method, path, resp.file)
                    self._simple(404, "not found\n")
                    return
                except PermissionError:
                    log.warning("HTTP %s: %s %s: %s not readable", ip, method, path, resp.file)
                    self._simple(403, "forbidden\n")
                    return
                if not stat.S_ISREG(st.st_mode):
                    log.warning("HTTP %s: %s %s: %s is no regular file", ip, method, path,
                                resp.file)
                    self._simple(404, "not found\n")
                    return
                size = st.st_size
                meta = {"ETag": _etag(st),
                        "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True)}
            else:
                data = resp.body or b""
                size = len(data)
            status, first, length = resp.status, 0, size
            extra = {**meta, **resp.headers}
            if status == 200:
                extra.setdefault("Accept-Ranges", "bytes")
                rng = req.get("Range")
                if_range = req.get("If-Range")
                if rng is not None and (if_range is None or if_range.strip() in meta.values()):
                    r = parse_range(rng, size)
                    if r == UNSATISFIABLE:
                        self._simple(416, "range not satisfiable\n",
                                     {"Content-Range": f"bytes */{size}"})
                        log.info("HTTP %s: %s %s range %s -> 416", ip, method, path, rng)
                        return
                    if isinstance(r, tuple):
                        status, first, length = 206, r[0], r[1] - r[0] + 1
                        extra["Content-Range"] = f"bytes {r[0]}-{r[1]}/{size}"
            self.send_response(status)
            self.send_header("Content-Type", resp.content_type)
            if status not in _NO_BODY_STATUSES:
                self.send_header("Content-Length", str(length))
            for k, v in extra.items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            sent = 0
            t0 = time.monotonic()
            if method != "HEAD" and status not in _NO_BODY_STATUSES and length:
                if fd is not None:
                    sent = self._sendfile(fd, first, length)
                else:
                    self.wfile.write(data[first:first + length])
                    sent = length
            log.info("HTTP %s: %s %s -> %d %d bytes in %.3f s", ip, method, path, status, sent,
                     time.monotonic() - t0)
        finally:
            if fd is not None:
                os.close(fd)

    def _sendfile(self, fd: int, offset: int, count: int) -> int:
        """Zero-copy send of count bytes at offset; closes the connection if it falls short
        (the file shrank in place, or the client went away)."""
        sock = self.connection
        # Blocking sendfile with a kernel send timeout: fewer wake-ups than Python's
        # select-per-chunk loop in socket.sendfile() when the socket has a timeout.
        sock.settimeout(None)
        tv = struct.pack("ll", max(1, int(self.server.limits.io_timeout)), 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        sent = 0
        try:
            while sent < count:
                n = os.sendfile(sock.fileno(), fd, offset + sent, min(count - sent, 1 << 30))
                if n == 0:
                    break
                sent += n
        except BlockingIOError:
            log.warning("HTTP %s: send timed out after %d bytes", self.client_address[0], sent)
        except OSError as e:
            log.info("HTTP %s: send aborted after %d bytes: %s", self.client_address[0], sent, e)
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))
                sock.settimeout(self.server.limits.io_timeout)
        if sent < count:
            self.close_connection = True
        return sent


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], app: App, max_body: int,
                 limits: HttpLimits) -> None:
        self.app = app
        self.max_body = max_body
        self.limits = limits
        self.conns: dict[socket.socket, _Conn] = {}
        self.active_lock = threading.Lock()
        self.refused = 0
        self.dropped = 0
        self._last_warning = 0.0
        super().__init__(addr, _Handler)

    # -- connection admission (runs in the accepting thread) ------------------------------
    def conn_of(self, sock: socket.socket) -> _Conn | None:
        with self.active_lock:
            return self.conns.get(sock)

    def set_state(self, sock: socket.socket, state: str) -> None:
        with self.active_lock:
            c = self.conns.get(sock)
            if c is not None and not c.dropped:
                c.state, c.since = state, time.monotonic()

    @staticmethod
    def _victim(conns: list[_Conn]) -> _Conn | None:
        """The connection a newcomer replaces: the one that has waited longest for a request
        head, else for a request body, else the longest idle keep-alive one; never one busy
        handling a request or sending its reply."""
        for state in (HEAD, BODY, IDLE):
            waiting = [c for c in conns if c.state == state]
            if waiting:
                return min(waiting, key=lambda c: c.since)
        return None

    def _admit(self, sock: socket.socket, ip: str) -> bool:
        lim = self.limits
        with self.active_lock:
            live = [c for c in self.conns.values() if not c.dropped]
            mine = [c for c in live if c.ip == ip]
            cap, pool = None, live
            if len(mine) >= lim.max_per_client:
                cap, pool = f"per-client cap {lim.max_per_client}", mine
            elif len(live) >= lim.max_connections:
                cap = f"connection cap {lim.max_connections}"
            if cap is not None:
                victim = self._victim(pool)
                if victim is None:
                    self.refused += 1
                    self._warn(f"HTTP {ip}: {cap} reached, every connection busy: 503")
                    return False
                victim.dropped = cap
                self.dropped += 1
                with contextlib.suppress(OSError):  # wakes its thread: the read returns EOF
                    victim.sock.shutdown(socket.SHUT_RDWR)
                self._warn(f"HTTP {victim.ip}: {cap}: dropped a connection {victim.state} "
                           f"for {time.monotonic() - victim.since:.1f} s to admit {ip}")
            self.conns[sock] = _Conn(sock, ip, HEAD, time.monotonic())
        return True

    def _warn(self, msg: str) -> None:
        """Cap events, logged at most every 5 s as warnings (a flood stays readable)."""
        now = time.monotonic()
        if now - self._last_warning >= 5:
            self._last_warning = now
            log.warning("%s (%d dropped, %d refused so far)", msg, self.dropped, self.refused)
        else:
            log.debug("%s", msg)

    def process_request(self, request: socket.socket,  # type: ignore[override]
                        client_address: tuple[str, int]) -> None:
        if not self._admit(request, client_address[0]):
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n"
                             b"\r\nbusy\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket,  # type: ignore[override]
                               client_address: tuple[str, int]) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.active_lock:
                self.conns.pop(request, None)


class HttpServer:
    """HTTP/1.1 server on ``bind_ip:port`` (0 = pick one; read ``.port`` after ``start()``)."""

    def __init__(self, bind_ip: str, port: int, app: App, *, max_body: int = DEFAULT_MAX_BODY,
                 limits: HttpLimits | None = None) -> None:
        self.bind_ip = bind_ip
        self.port = port
        self.app = app
        self.max_body = max_body
        self.limits = limits or HttpLimits()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("HttpServer already started")
        self._server = _Server((self.bind_ip, self.port), self.app, self.max_body, self.limits)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={
            "poll_interval": 0.2}, name=f"http-{self.bind_ip}:{self.port}", daemon=True)
        self._thread.start()
        log.info("HTTP serving on %s:%d (at most %d connections, %d per client; request head "
                 "within %g s, keep-alive %g s, stalled I/O %g s)", self.bind_ip, self.port,
                 self.limits.max_connections, self.limits.max_per_client,
                 self.limits.head_timeout, self.limits.idle_timeout, self.limits.io_timeout)

    def stop(self, timeout: float = 5.0) -> None:
        srv, self._server = self._server, None
        if srv is None:
            return
        srv.shutdown()
        srv.server_close()
        with srv.active_lock:
            conns = list(srv.conns)
        for c in conns:  # wake handler threads blocked on idle keep-alive connections
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        while srv.conns and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> HttpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StaticApp:
    """Serves the regular files under ``root`` for GET/HEAD (a helper for tests and benches).

    The path's query is ignored; directories, symlinks leading out of ``root`` and anything
    missing are 404 (None)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))

    def handle(self, method: str, path: str, client_ip: str, headers: Mapping[str, str],
               body: bytes) -> Response | None:
        if method not in ("GET", "HEAD"):
            return None
        rel = path.split("?", 1)[0].lstrip("/")
        if not rel:
            return None
        target = Path(os.path.realpath(self.root / rel))
        if not target.is_relative_to(self.root) or not target.is_file():
            return None
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return Response(content_type=ctype, file=target)

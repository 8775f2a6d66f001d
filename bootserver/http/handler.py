"""One HTTP connection of the boot path's server: the request loop under the deadlines, request
heads and bodies, dispatch to the app, responses (``sendfile`` for files, single ranges); and
the ``socketserver`` glue that admits each new connection through the connection table."""

from __future__ import annotations

import contextlib
import email.utils
import io
import logging
import os
import socket
import socketserver
import stat
import struct
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from bootserver import clientlog
from bootserver.http.limits import BODY, BUSY, HEAD, IDLE, ConnTable, DeadlineReader, HttpLimits
from bootserver.http.request import (
    ALLOWED_METHODS,
    NO_BODY_STATUSES,
    UNSATISFIABLE,
    App,
    BadRequestPath,
    Headers,
    Response,
    clean_request_path,
    etag,
    parse_range,
)

log = logging.getLogger("homecloud.http")


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
        self._reader = DeadlineReader(self.connection)
        self._buf = io.BufferedReader(self._reader, 65536)
        self.rfile = self._buf
        lim = self.server.limits
        conn = self.server.table.conn_of(self.connection)
        self._reader.arm(lim.head_timeout, "request head",
                         start=conn.since if conn else None)
        self._served = 0
        # every line about this client starts with its MAC (resolved through mac_of)
        self._log = clientlog.for_client(log, self.client_address[0], self.server.mac_of)

    # -- logging through the logging module, one line per request ----------------------------
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: object) -> None:
        self._log.warning("HTTP %s: " + format, self.client_address[0], *args)

    def log_message(self, format: str, *args: object) -> None:
        self._log.info("HTTP %s: " + format, self.client_address[0], *args)

    # -- request loop ---------------------------------------------------------------------
    def handle_one_request(self) -> None:
        lim = self.server.limits
        sock = self.connection
        try:
            if self._served:  # kept alive: wait for the next request's first byte
                self.server.table.set_state(sock, IDLE)
                self._reader.arm(lim.idle_timeout, "keep-alive wait")
                if not self._buf.peek(1):
                    self.close_connection = True
                    return
                self.server.table.set_state(sock, HEAD)
                self._reader.arm(lim.head_timeout, "request head")
            if not self._read_head():
                return
            conn = self.server.table.conn_of(sock)
            if conn is not None and conn.dropped:  # replaced by a newcomer (a cap): EOF seen
                self.close_connection = True
                return
        except TimeoutError as e:
            self.close_connection = True
            if self._reader.phase == "request head":
                self._log.info("HTTP %s: %s -> 408", self.client_address[0], e)
                self._timeout_reply()
            else:
                self._log.debug("HTTP %s: %s: closing", self.client_address[0], e)
            return
        except ConnectionError as e:
            self._log.debug("HTTP %s: connection dropped: %r", self.client_address[0], e)
            self.close_connection = True
            return
        self.server.table.set_state(sock, BUSY)
        self._served += 1
        self._reader.arm(lim.io_timeout, "request body")
        sock.settimeout(lim.io_timeout)  # response writes
        try:
            self._dispatch()
            self.wfile.flush()
        except (TimeoutError, ConnectionError) as e:
            self._log.debug("HTTP %s: connection dropped: %r", self.client_address[0], e)
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
            self._log.warning("HTTP %s: %s %s -> 400 (%s)", ip, method, self.path[:200], e)
            self._simple(400, "bad request path\n", close=True)
            return
        body = self._read_body()
        if body is None:
            return
        headers = Headers(list(self.headers.items()))
        try:
            resp = self.server.app.handle(method, path, ip, headers, body)
        except Exception:
            self._log.exception("HTTP %s: app failed on %s %s", ip, method, path)
            self._simple(500, "internal error\n")
            return
        if resp is None:
            self._simple(404, "not found\n")
            self._log.info("HTTP %s: %s %s -> 404", ip, method, path)
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
        self.server.table.set_state(self.connection, BODY)
        body = self.rfile.read(length)
        self.server.table.set_state(self.connection, BUSY)
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
                    self._log.warning("HTTP %s: %s %s: %s vanished -> 404", ip, method, path,
                                      resp.file)
                    self._simple(404, "not found\n")
                    return
                except PermissionError:
                    self._log.warning("HTTP %s: %s %s: %s not readable", ip, method, path,
                                      resp.file)
                    self._simple(403, "forbidden\n")
                    return
                if not stat.S_ISREG(st.st_mode):
                    self._log.warning("HTTP %s: %s %s: %s is no regular file", ip, method, path,
                                      resp.file)
                    self._simple(404, "not found\n")
                    return
                size = st.st_size
                meta = {"ETag": etag(st),
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
                        self._log.info("HTTP %s: %s %s range %s -> 416", ip, method, path, rng)
                        return
                    if isinstance(r, tuple):
                        status, first, length = 206, r[0], r[1] - r[0] + 1
                        extra["Content-Range"] = f"bytes {r[0]}-{r[1]}/{size}"
            self.send_response(status)
            self.send_header("Content-Type", resp.content_type)
            if status not in NO_BODY_STATUSES:
                self.send_header("Content-Length", str(length))
            for k, v in extra.items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            sent = 0
            t0 = time.monotonic()
            if method != "HEAD" and status not in NO_BODY_STATUSES and length:
                if fd is not None:
                    sent = self._sendfile(fd, first, length)
                else:
                    self.wfile.write(data[first:first + length])
                    sent = length
            self._log.info("HTTP %s: %s %s -> %d %d bytes in %.3f s", ip, method, path, status,
                           sent, time.monotonic() - t0)
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
            self._log.warning("HTTP %s: send timed out after %d bytes", self.client_address[0],
                              sent)
        except OSError as e:
            self._log.info("HTTP %s: send aborted after %d bytes: %s", self.client_address[0],
                           sent, e)
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

    def __init__(self, addr: tuple[str, int], app: App, max_body: int, limits: HttpLimits,
                 mac_of: clientlog.MacOf | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.limits = limits
        self.mac_of = mac_of
        self.table = ConnTable(limits)
        super().__init__(addr, _Handler)

    def process_request(self, request: socket.socket,  # type: ignore[override]
                        client_address: tuple[str, int]) -> None:
        if not self.table.admit(request, client_address[0]):
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
            self.table.remove(request)

"""The boot path's HTTP server: :class:`HttpServer` binds, serves in a thread and stops (the
package doc has the protocol and the limits)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

from bootserver import clientlog
from bootserver.http.handler import _Server
from bootserver.http.limits import HttpLimits
from bootserver.http.request import DEFAULT_MAX_BODY, App

log = logging.getLogger("homecloud.http")


class HttpServer:
    """HTTP/1.1 server on ``bind_ip:port`` (0 = pick one; read ``.port`` after ``start()``)."""

    def __init__(self, bind_ip: str, port: int, app: App, *, max_body: int = DEFAULT_MAX_BODY,
                 limits: HttpLimits | None = None,
                 mac_of: clientlog.MacOf | None = None) -> None:
        """``mac_of(ip)``: the MAC of a client address, for the MAC that starts every log line
        about a client (:mod:`bootserver.clientlog`); None = lines without it."""
        self.bind_ip = bind_ip
        self.port = port
        self.app = app
        self.max_body = max_body
        self.limits = limits or HttpLimits()
        self.mac_of = mac_of
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("HttpServer already started")
        self._server = _Server((self.bind_ip, self.port), self.app, self.max_body,
                               self.limits, self.mac_of)
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
        for c in srv.table.sockets():  # wake handler threads blocked on idle keep-alive connections
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        while len(srv.table) and time.monotonic() < deadline:
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

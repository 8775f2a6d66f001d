"""Connection limits and deadlines of the boot path's HTTP server: the caps and timeouts
(:class:`HttpLimits`), the read side with one deadline per phase (:class:`DeadlineReader`), and
the table of open connections that admits a newcomer over a cap by replacing the connection
that has waited longest (:class:`ConnTable`; see the package doc)."""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("homecloud.http")


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



class DeadlineReader(io.RawIOBase):
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
class Conn:
    sock: socket.socket
    ip: str
    state: str
    since: float
    dropped: str = ""



class ConnTable:
    """The open connections, their state and since when; admission over the caps.  Shared by
    the accepting thread (:meth:`admit`) and the handler threads (:meth:`set_state`)."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.conns: dict[socket.socket, Conn] = {}
        self.lock = threading.Lock()
        self.refused = 0
        self.dropped = 0
        self._last_warning = 0.0

    def __len__(self) -> int:
        with self.lock:
            return len(self.conns)

    def sockets(self) -> list[socket.socket]:
        with self.lock:
            return list(self.conns)

    def conn_of(self, sock: socket.socket) -> Conn | None:
        with self.lock:
            return self.conns.get(sock)

    def set_state(self, sock: socket.socket, state: str) -> None:
        with self.lock:
            c = self.conns.get(sock)
            if c is not None and not c.dropped:
                c.state, c.since = state, time.monotonic()

    def remove(self, sock: socket.socket) -> None:
        with self.lock:
            self.conns.pop(sock, None)

    @staticmethod
    def _victim(conns: list[Conn]) -> Conn | None:
        """The connection a newcomer replaces: the one that has waited longest for a request
        head, else for a request body, else the longest idle keep-alive one; never one busy
        handling a request or sending its reply."""
        for state in (HEAD, BODY, IDLE):
            waiting = [c for c in conns if c.state == state]
            if waiting:
                return min(waiting, key=lambda c: c.since)
        return None

    def admit(self, sock: socket.socket, ip: str) -> bool:
        """Take a new connection from ``ip`` (runs in the accepting thread); False = every
        connection is busy (answer 503)."""
        lim = self.limits
        with self.lock:
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
            self.conns[sock] = Conn(sock, ip, HEAD, time.monotonic())
        return True

    def _warn(self, msg: str) -> None:
        """Cap events, logged at most every 5 s as warnings (a flood stays readable)."""
        now = time.monotonic()
        if now - self._last_warning >= 5:
            self._last_warning = now
            log.warning("%s (%d dropped, %d refused so far)", msg, self.dropped, self.refused)
        else:
            log.debug("%s", msg)

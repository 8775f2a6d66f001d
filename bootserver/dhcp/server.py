"""The DHCP / ProxyDHCP socket server for PXE clients: sockets, the receive loop, threads, stats.

Layers: :mod:`codec` (bytes <-> :class:`DhcpPacket`) <- :mod:`protocol` (the RFC 2131 state
machine, no I/O) <- this module (sockets bound to one interface, the serving loop and its
thread) <- the policy (:class:`DhcpPolicy`, implemented by ``bootserver.policy``).

The serving loop never dies on a packet: decode errors and exceptions in handling are logged with
the MAC (when one can be read) and a hex preview, and the next packet is served.

Choices worth knowing
  * No ACK for a lease that is not on disk: the lease record is written whole and synced (one
    fsync per batch of up to 64 packets) before the batch's ACKs leave.  When the journal cannot
    be synced (disk full, EIO) the batch's ACKs are not sent (the clients retransmit; see
    :mod:`protocol` for why silence and not a NAK); the error is logged with the file, the errno
    and the MACs.  The batch's other replies (OFFERs, NAKs: memory only) still go out.
  * Replies to relays leave through the bound interface: relays must be reachable through it.
  * Sockets may be injected (already bound) so the server runs on loopback or lossy links in
    tests; :meth:`DhcpServer.handle` serves one datagram without any socket.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable

from bootserver import clientlog
from bootserver.dhcp.codec import hex_preview, safe_mac
from bootserver.dhcp.config import (
    BROADCAST,
    CLIENT_PORT,
    MAX_HOPS,
    PXE_PORT,
    SERVER_PORT,
    DhcpConfig,
    DhcpConfigError,
    DhcpPolicy,
    Mode,
)
from bootserver.dhcp.fit import drop_order
from bootserver.dhcp.leases import LeaseFileError, LeaseTable
from bootserver.dhcp.pool import Pool
from bootserver.dhcp.protocol import DhcpProtocol, Reply, Stats

__all__ = ["BROADCAST", "CLIENT_PORT", "MAX_HOPS", "PXE_PORT", "SERVER_PORT", "DhcpConfig",
           "DhcpConfigError", "DhcpPolicy", "DhcpProtocol", "DhcpServer", "Mode", "Reply",
           "Stats", "drop_order"]

log = logging.getLogger("homecloud.dhcp")

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


class DhcpServer:
    """DHCP (full) or ProxyDHCP (proxy) server on one interface.

    ``sock``/``pxe_sock`` may be passed in (already bound) for tests; otherwise :meth:`open`
    creates them.  The protocol logic is :attr:`protocol` (a :class:`DhcpProtocol`)."""

    def __init__(self, config: DhcpConfig, policy: DhcpPolicy, *,
                 sock: socket.socket | None = None, pxe_sock: socket.socket | None = None,
                 leases: LeaseTable | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.policy = policy
        self.sock = sock
        self.pxe_sock = pxe_sock
        self._own_socks = False
        if leases is None:
            leases = LeaseTable(config.lease_file, offer_time=config.offer_time,
                                clock=clock or time.time)
        self.leases = leases
        self.stats = Stats()
        self.protocol = DhcpProtocol(config, policy, leases, self.stats)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._opened = False
        self._loaded = False
        self._in_loop = False

    @property
    def pools(self) -> list[Pool]:
        return self.protocol.pools

    # --- life cycle -------------------------------------------------------------------------------
    def load(self) -> None:
        """Replay the lease journal (full mode); :meth:`open` does it too."""
        if self.config.mode == "full" and not self._loaded:
            self.leases.open()
            self._loaded = True

    def open(self) -> None:
        """Load leases and create the sockets that were not injected (run inside the namespace
        or on the host that owns ``config.interface``)."""
        if self._opened:
            return
        self.load()
        if self.sock is None:
            self.sock = self._bind(self.config.server_port)
            self._own_socks = True
        if self.config.mode == "proxy" and self.pxe_sock is None:
            self.pxe_sock = self._bind(self.config.pxe_port)
        self._opened = True
        log.info("dhcp %s mode on %s (%s), pools: %s", self.config.mode, self.config.interface,
                 self.config.server_ip, ", ".join(repr(p) for p in self.pools) or "none")

    def _bind(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.config.interface.encode())
            try:  # root may exceed net.core.rmem_max
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.config.rcvbuf)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.rcvbuf)
            s.bind(("0.0.0.0", port))
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"dhcp: cannot bind 0.0.0.0:{port} on"
                          f" {self.config.interface}: {e.strerror}") from e
        return s

    def start(self) -> threading.Thread:
        """Open (if needed) and serve in a daemon thread."""
        self.open()
        self._thread = threading.Thread(target=self.serve_forever, name="dhcp", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop, join its thread, close the sockets this server opened and the journal."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._own_socks:
            for s in (self.sock, self.pxe_sock):
                if s is not None:
                    s.close()
        self.leases.close()
        self._wake_r.close()
        self._wake_w.close()

    def serve_forever(self) -> None:
        if not self._opened:
            self.open()
        sel = selectors.DefaultSelector()
        socks = [s for s in (self.sock, self.pxe_sock) if s is not None]
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, s is self.pxe_sock)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.leases.deferred_sync = True  # group commit: _flush syncs once per batch
        self._in_loop = True
        try:
            while not self._stop.is_set():
                for key, _ in sel.select():
                    if key.data is None:
                        continue
                    try:
                        self._drain(key.fileobj, bool(key.data))  # type: ignore[arg-type]
                    except Exception:  # never let the loop die
                        self.stats.errors += 1
                        log.exception("dhcp: unexpected error in the serving loop")
        finally:
            self._in_loop = False
            self.leases.deferred_sync = False
            sel.close()

    def _drain(self, s: socket.socket, is_pxe: bool, budget: int = 512,
               batch: int = 64) -> None:
        """Serve what is queued on ``s``: handle up to ``batch`` packets, make their lease
        records durable with one fsync, send their replies; repeat up to ``budget`` packets."""
        port = self.config.pxe_port if is_pxe else self.config.server_port
        pending: list[tuple[Reply, bytes]] = []
        try:
            for _ in range(budget):
                try:
                    data, src = s.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    log.warning("dhcp: recvfrom on port %d failed: %s", port, e)
                    return
                self.stats.received += 1
                try:
                    reply = self.protocol.handle(data, src, port)  # the journal: synced in _flush
                except Exception:
                    self.stats.errors += 1
                    mac = safe_mac(data)
                    clientlog.for_mac(log, mac).exception(
                        "dhcp: error handling packet from %s:%d (mac %s); packet %s",
                        src[0], src[1], mac, hex_preview(data))
                    continue
                if reply is not None:
                    pending.append((reply, data))
                    if len(pending) >= batch:
                        self._flush(s, pending)
        finally:
            self._flush(s, pending)

    def _flush(self, s: socket.socket, pending: list[tuple[Reply, bytes]]) -> None:
        if not pending:
            return
        try:
            self.leases.sync()
            durable = True
        except LeaseFileError as e:
            held = [safe_mac(d) for r, d in pending if r.durable]
            log.error("dhcp: %s: NOT acknowledging %d REQUEST(s) (no ACK for a lease that is"
                      " not on disk; the clients retransmit): %s", e, len(held), " ".join(held))
            durable = False
        for reply, data in pending:
            if reply.durable and not durable:
                self.stats.errors += 1
                continue
            out = self.pxe_sock if reply.via_pxe and self.pxe_sock is not None else s
            try:
                out.sendto(reply.data, reply.addr)
                self.stats.replied += 1
            except OSError as e:
                self.stats.errors += 1
                lvl = logging.DEBUG if e.errno == errno.EAGAIN else logging.WARNING
                mac = safe_mac(data)
                clientlog.for_mac(log, mac).log(
                    lvl, "dhcp: sending %d bytes to %s:%d (mac %s) failed: %s",
                    len(reply.data), reply.addr[0], reply.addr[1], mac, e)
        pending.clear()

    def handle(self, data: bytes, src: tuple[str, int], port: int) -> Reply | None:
        """One request datagram received on ``port`` from ``src``; the reply to send, if any.

        Outside the serving loop the lease journal is fsync'ed before this returns; inside it,
        :meth:`_flush` syncs a whole batch before sending."""
        reply = self.protocol.handle(data, src, port)
        if not self._in_loop:
            try:
                self.leases.sync()
            except LeaseFileError as e:
                if reply is None or not reply.durable:
                    log.error("dhcp: %s", e)
                    return reply
                mac = safe_mac(data)
                clientlog.for_mac(log, mac).error(
                    "dhcp: %s: NOT acknowledging the REQUEST from %s", e, mac)
                self.stats.errors += 1
                return None
        return reply

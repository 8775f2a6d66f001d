"""The DHCP / ProxyDHCP socket server for PXE clients.

Layers: :mod:`codec` (bytes <-> :class:`DhcpPacket`) <- this module (sockets, leases, RFC 2131
state machine) <- the policy (:class:`DhcpPolicy`, implemented by ``bootserver.policy``).

Modes
  ``full``   hands out addresses from one or more pools (chosen by ``giaddr``'s subnet for relayed
             requests, by ``server_ip``'s subnet otherwise), plus the policy's static addresses,
             and puts boot info in the replies to PXE clients.
  ``proxy``  ProxyDHCP (PXE 2.1 §2.2.4, RFC 4578): another server hands out addresses; this one
             answers PXE DISCOVERs with an OFFER that has no ``yiaddr`` but the boot file, and
             REQUESTs on port 4011 with an ACK carrying the boot file.  It never hands out
             addresses.

Reply destinations (RFC 2131 §4.1): relayed requests (``giaddr`` set) are answered by unicast to
``giaddr`` port 67; clients with an address (``ciaddr``) by unicast to it; everything else is
broadcast to 255.255.255.255:68 on the bound interface.  Unicasting to ``yiaddr`` before the client
has the address would need an ARP entry written for ``chaddr``; broadcasting instead is what RFC
2131 §4.1 allows when that cannot be done, and every PXE ROM and iPXE accept it.

The serving loop never dies on a packet: decode errors and exceptions in handling are logged with
the MAC (when one can be read) and a hex preview, and the next packet is served.

Choices worth knowing
  * A PXE client is one whose option 60 starts with "PXEClient" or whose user class (option 77)
    is "iPXE".  Only PXE clients get boot info and are passed to ``policy.record_seen``
    (DISCOVER, REQUEST, INFORM, port-4011 requests, NAKs and "pool exhausted" drops included).
    ``record_seen`` failing is logged and does not stop the reply; ``boot_file`` failing drops the
    packet (logged), since wrong boot info is worse than none.
  * The server is authoritative for its pools: an INIT-REBOOT or RENEWING request for a free
    address in the pool is ACKed even without a record of the client (a lost lease file does not
    strand clients); an address leased to another MAC, outside the range, or on another subnet is
    NAKed.
  * An OFFER reserves its address for ``offer_time``; when a pool runs dry, the oldest tentative
    offer is reclaimed (bound leases never are), so a burst of new clients is always answered.
  * A static address from the policy wins over a dynamic lease of the same address (the other
    client is NAKed when it renews).  Keep static addresses outside the dynamic range.
  * Log levels: OFFERs are DEBUG (bursts), ACK/NAK/INFORM/RELEASE/DECLINE and ProxyDHCP answers
    are INFO, malformed packets and pool exhaustion WARNING; every line names the MAC.
  * Replies to relays leave through the bound interface: relays must be reachable through it.
  * No ACK for a lease that is not on disk: the lease record is written whole and synced (one
    fsync per batch of packets) before the batch's ACKs leave.  When the journal cannot be
    written (disk full, EIO) the REQUEST gets no answer, not a NAK: a NAK tells the client its
    address is wrong (RFC 2131 §4.3.2), so a RENEWING client would give up a valid address and
    restart from INIT, while silence makes it retransmit (§4.1) and keep its address until
    T2/expiry; the retransmission succeeds once the journal heals (leases.py).  The error is
    logged with the file, the errno and the MAC.  OFFERs (memory only) still go out.
  * A reply larger than the client accepts (option 57, at least 576 and at most one Ethernet
    frame) is not lost: the codec overloads ``file`` then ``sname`` (option 52) when they are
    unused, then optional options are dropped (``drop_order``), the echoed option 61 last; a
    reply that cannot fit even then is logged and not sent.
  * The client architecture is option 93, or when that is missing or malformed the
    ``Arch:NNNNN`` of option 60 (UEFI firmwares that send only "PXEClient:Arch:00007:...").
  * Leases are keyed by the hardware address, not by the client identifier (option 61): a PXE
    ROM (no option 61), iPXE and the booted OS (systemd-networkd sends a DUID-based one) are the
    same machine and keep one address, as the inventory assigns roles by MAC.  Option 61 is
    echoed in every reply (RFC 6842).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from bootserver.dhcp import codec
from bootserver.dhcp import options as o
from bootserver.dhcp.codec import DhcpPacket
from bootserver.dhcp.leases import LeaseFileError, LeaseTable
from bootserver.dhcp.pool import Pool, PoolConfig
from bootserver.machine import BootFile, Machine, arch_from_vendor_class

log = logging.getLogger("bootserver.dhcp")

BROADCAST = "255.255.255.255"
SERVER_PORT = 67
CLIENT_PORT = 68
PXE_PORT = 4011
FULL_RETRY = 1.0  # seconds an exhausted pool is not rescanned
MAX_HOPS = 16  # RFC 1542 §4.1.1: relays discard above 16; so do we
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)

Mode = Literal["full", "proxy"]
# Enum member access goes through a descriptor; module constants keep the hot path cheap.
_ACK = o.MessageType.ACK
_DECLINE = o.MessageType.DECLINE
_DISCOVER = o.MessageType.DISCOVER
_INFORM = o.MessageType.INFORM
_NAK = o.MessageType.NAK
_OFFER = o.MessageType.OFFER
_RELEASE = o.MessageType.RELEASE
_REQUEST = o.MessageType.REQUEST


class DhcpConfigError(ValueError):
    """An invalid DHCP server configuration (names the setting)."""


class DhcpPolicy(Protocol):
    """What the DHCP server asks the rest of hcboot (implemented in ``bootserver.policy``)."""

    def static_address(self, mac: str) -> tuple[str, str | None] | None:
        """``(ip, hostname)`` for a MAC assigned a fixed address, else None."""
        ...

    def boot_file(self, machine: Machine) -> BootFile | None:
        """Boot info for a PXE client; None = none (full mode still gives it an address)."""
        ...

    def record_seen(self, machine: Machine) -> None:
        """Called for every PXE DISCOVER/REQUEST/INFORM."""
        ...


@dataclass(frozen=True)
class DhcpConfig:
    interface: str  # SO_BINDTODEVICE: the one link served
    server_ip: str  # this server's address on that link (option 54, default next-server)
    mode: Mode = "full"
    pools: tuple[PoolConfig, ...] = ()
    lease_time: int = 3600
    lease_file: Path | None = None  # None = leases in memory only
    router: str | None = None  # defaults for pools that set none
    dns: tuple[str, ...] = ()
    domain: str | None = None
    offer_time: float = 60.0  # how long an OFFER reserves its address
    decline_time: float = 600.0  # how long a DECLINEd address stays out of use
    rcvbuf: int = 8 * 1024 * 1024  # bursts of 1000 DISCOVERs must fit
    server_port: int = SERVER_PORT
    client_port: int = CLIENT_PORT
    pxe_port: int = PXE_PORT  # proxy mode only
    max_hops: int = MAX_HOPS

    def __post_init__(self) -> None:
        if self.mode not in ("full", "proxy"):
            raise DhcpConfigError(f"dhcp mode: {self.mode!r} is not 'full' or 'proxy'")
        if not self.interface:
            raise DhcpConfigError("dhcp interface: must be set")
        try:
            ipaddress.IPv4Address(self.server_ip)
        except ValueError as e:
            raise DhcpConfigError(f"dhcp server_ip: {e}") from e
        if self.mode == "full" and not self.pools:
            raise DhcpConfigError("dhcp pools: full mode needs at least one pool")
        if self.lease_time <= 0:
            raise DhcpConfigError(f"dhcp lease_time: must be positive, got {self.lease_time}")


@dataclass(frozen=True)
class Reply:
    """A datagram to send: ``via_pxe`` = from the port-4011 socket; ``durable`` = an ACK that
    must not leave before the lease journal is synced."""

    data: bytes
    addr: tuple[str, int]
    via_pxe: bool = False
    durable: bool = False


@dataclass
class Stats:
    received: int = 0
    replied: int = 0
    malformed: int = 0
    ignored: int = 0
    errors: int = 0


def _hex_preview(data: bytes, n: int = 64) -> str:
    return data[:n].hex() + ("..." if len(data) > n else "")


@dataclass
class _Ctx:
    """Facts about one request, computed once."""

    pkt: DhcpPacket
    mac: str
    mt: o.MessageType
    machine: Machine
    pxe: bool
    requested: Sequence[int] = field(default_factory=tuple)


class DhcpServer:
    """DHCP (full) or ProxyDHCP (proxy) server on one interface.

    ``sock``/``pxe_sock`` may be passed in (already bound) for tests; otherwise :meth:`open`
    creates them.  :meth:`handle` is the whole protocol logic (bytes in, :class:`Reply` out) and
    is usable without sockets."""

    def __init__(self, config: DhcpConfig, policy: DhcpPolicy, *,
                 sock: socket.socket | None = None, pxe_sock: socket.socket | None = None,
                 leases: LeaseTable | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.policy = policy
        self.sock = sock
        self.pxe_sock = pxe_sock
        self._own_socks = False
        self.pools = [Pool(_with_defaults(p, config)) for p in config.pools]
        self._reserved = {config.server_ip}
        for p in self.pools:
            self._reserved.update(a for a in (p.cfg.router, *p.cfg.dns) if a)
        if config.mode == "full" and not any(p.contains(config.server_ip) for p in self.pools):
            log.warning("dhcp: no pool contains server_ip %s: only relayed clients (giaddr) on"
                        " the pools' subnets will be answered", config.server_ip)
        if leases is None:
            leases = LeaseTable(config.lease_file, offer_time=config.offer_time,
                                clock=clock or time.time)
        self.leases = leases
        self.stats = Stats()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._opened = False
        self._loaded = False
        self._in_loop = False
        self._pool_full_until: dict[Pool, float] = {}
        self._server_id = o.ip_bytes(config.server_ip)

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
                    reply = self.handle(data, src, port)
                except Exception:
                    self.stats.errors += 1
                    log.exception("dhcp: error handling packet from %s:%d (mac %s); packet %s",
                                  src[0], src[1], _safe_mac(data), _hex_preview(data))
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
            held = [_safe_mac(d) for r, d in pending if r.durable]
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
                log.log(lvl, "dhcp: sending %d bytes to %s:%d (mac %s) failed: %s",
                        len(reply.data), reply.addr[0], reply.addr[1], _safe_mac(data), e)
        pending.clear()

    # --- protocol ---
    def handle(self, data: bytes, src: tuple[str, int], port: int) -> Reply | None:
        """One request datagram received on ``port`` from ``src``; the reply to send, if any.

        Outside the serving loop the lease journal is fsync'ed before this returns; inside it,
        :meth:`_flush` syncs a whole batch before sending."""
        reply = self._handle(data, src, port)
        if not self._in_loop:
            try:
                self.leases.sync()
            except LeaseFileError as e:
                if reply is None or not reply.durable:
                    log.error("dhcp: %s", e)
                    return reply
                log.error("dhcp: %s: NOT acknowledging the REQUEST from %s", e, _safe_mac(data))
                self.stats.errors += 1
                return None
        return reply

    def _handle(self, data: bytes, src: tuple[str, int], port: int) -> Reply | None:
        try:
            pkt = codec.decode(data)
        except codec.DecodeError as e:
            self.stats.malformed += 1
            log.warning("dhcp: dropping malformed packet from %s:%d (mac %s): %s; packet %s",
                        src[0], src[1], _safe_mac(data), e, _hex_preview(data))
            return None
        if pkt.op != codec.BOOTREQUEST:
            return self._ignore(pkt, "a BOOTREPLY")
        mac = pkt.mac
        if mac is None:
            return self._ignore(pkt, f"hardware type {pkt.htype}/hlen {pkt.hlen} is not Ethernet")
        if pkt.hops > self.config.max_hops:
            return self._ignore(pkt, f"hops {pkt.hops} > {self.config.max_hops}")
        mt = pkt.message_type
        assert mt is not None  # decode requires option 53
        vendor = pkt.vendor_class
        classes = pkt.user_classes
        user = "iPXE" if "iPXE" in classes else (classes[0] if classes else None)
        arch = pkt.client_arch
        if arch is None:  # RFC 4578 §2.1 option 93 missing: "PXEClient:Arch:00007:..." says it
            arch = arch_from_vendor_class(vendor)
        pxe = (o.is_pxe_vendor_class(vendor) or o.is_http_vendor_class(vendor)
               or user == "iPXE")
        ip = None if pkt.ciaddr == codec.ZERO_IP else pkt.ciaddr
        machine = Machine(mac=mac, arch=arch, user_class=user, vendor_class=vendor, ip=ip)
        prl = pkt.options.get(o.PARAMETER_REQUEST_LIST, b"")
        ctx = _Ctx(pkt, mac, mt, machine, pxe, tuple(prl))
        if port == self.config.pxe_port and port != self.config.server_port:
            return self._pxe_port(ctx, src)
        if self.config.mode == "proxy":
            return self._proxy(ctx)
        return self._full(ctx)

    def _ignore(self, pkt: DhcpPacket, why: str,
                level: int = logging.DEBUG) -> Reply | None:
        self.stats.ignored += 1
        log.log(level, "dhcp: ignoring xid %#x from %s: %s", pkt.xid,
                pkt.mac or pkt.chaddr.hex(), why)
        return None

    # --- building replies ---
    def _reply(self, ctx: _Ctx, mt: o.MessageType, yiaddr: str = codec.ZERO_IP) -> DhcpPacket:
        req = ctx.pkt
        ciaddr = req.ciaddr if mt == _ACK else codec.ZERO_IP  # RFC 2131 table 3
        r = DhcpPacket(op=codec.BOOTREPLY, xid=req.xid, chaddr=req.chaddr, htype=req.htype,
                       hlen=req.hlen, flags=req.flags, ciaddr=ciaddr, yiaddr=yiaddr,
                       giaddr=req.giaddr)
        r.options[o.MESSAGE_TYPE] = bytes((mt,))
        r.options[o.SERVER_ID] = self._server_id
        return r

    def _encode(self, ctx: _Ctx, r: DhcpPacket) -> bytes | None:
        client_id = ctx.pkt.options.get(o.CLIENT_ID)
        if client_id is not None:  # RFC 6842: OFFER, ACK and NAK carry it back
            r.options[o.CLIENT_ID] = client_id
        relay = ctx.pkt.options.get(o.RELAY_AGENT_INFO)
        if relay is not None:  # RFC 3046 §2.2: echo it back
            r.options[o.RELAY_AGENT_INFO] = relay
        size = min(o.client_max_message_size(ctx.pkt.options.get(o.MAX_MESSAGE_SIZE)),
                   codec.MAX_PACKET_SIZE)  # never more than one Ethernet frame
        try:  # the codec overloads file/sname (option 52) when they are unused
            return codec.encode(r, max_size=size, requested=ctx.requested)
        except codec.OptionsTooLarge as e:
            too_large = e
        dropped: list[int] = []
        saved = dict(r.options)
        for code in drop_order(r, ctx.requested):
            del r.options[code]
            dropped.append(code)
            try:
                data = codec.encode(r, max_size=size, requested=ctx.requested)
            except codec.OptionsTooLarge:
                continue
            # the last drop may have made room for some dropped before it: take back what fits,
            # the most important first
            for back in reversed(dropped[:-1]):
                r.options[back] = saved[back]
                try:
                    data = codec.encode(r, max_size=size, requested=ctx.requested)
                    dropped.remove(back)
                except codec.OptionsTooLarge:
                    del r.options[back]
            log.warning("dhcp: reply to %s (xid %#x) does not fit the client's %d-byte limit even"
                        " with option overload (%s): dropped option(s) %s", ctx.mac, ctx.pkt.xid,
                        size, too_large, ", ".join(map(str, dropped)))
            return data
        log.error("dhcp: reply to %s (xid %#x) does not fit the client's %d-byte limit even"
                  " without options %s (echoed option 61 included): not sent (%s)", ctx.mac,
                  ctx.pkt.xid, size, ", ".join(map(str, dropped)), too_large)
        return None

    def _dest(self, ctx: _Ctx, mt: o.MessageType) -> tuple[str, int]:
        req = ctx.pkt
        if req.giaddr != codec.ZERO_IP:
            return (req.giaddr, self.config.server_port)
        if mt != _NAK and req.ciaddr != codec.ZERO_IP:
            return (req.ciaddr, self.config.client_port)
        return (BROADCAST, self.config.client_port)

    def _boot(self, ctx: _Ctx, r: DhcpPacket) -> BootFile | None:
        """Ask the policy for boot info and put it into ``r``."""
        if not ctx.pxe:
            return None
        self._seen(ctx)
        bf = self.policy.boot_file(ctx.machine)
        if bf is None:
            return None
        r.siaddr, r.file, opts = self._boot_fields(
            bf, o.is_pxe_vendor_class(ctx.machine.vendor_class),
            o.is_http_vendor_class(ctx.machine.vendor_class))
        r.options.update(opts)
        guid = ctx.pkt.options.get(o.CLIENT_MACHINE_ID)
        if guid is not None:  # PXE 2.1: replies carry the client's UUID back
            r.options[o.CLIENT_MACHINE_ID] = guid
        return bf

    def _seen(self, ctx: _Ctx) -> None:
        """Tell the policy about a PXE client; its failure must not keep the client from booting."""
        if not ctx.pxe:
            return
        try:
            self.policy.record_seen(ctx.machine)
        except Exception:
            log.exception("dhcp: policy.record_seen failed for %s", ctx.mac)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 (BootFile is frozen; the server lives long)
    def _boot_fields(self, bf: BootFile, pxe_rom: bool,
                     http_client: bool = False) -> tuple[str, bytes, dict[int, bytes]]:
        """(siaddr, file field, options) for a boot file."""
        next_server = bf.tftp_server or self.config.server_ip
        try:
            siaddr = str(ipaddress.IPv4Address(next_server))
        except ValueError:  # a name: option 66 carries it, siaddr is this server
            siaddr = self.config.server_ip
        name = bf.filename.encode()
        opts = {o.VENDOR_CLASS: o.PXE_VENDOR_CLASS.encode(),  # saves iPXE's 2 s ProxyDHCP wait
                o.TFTP_SERVER_NAME: next_server.encode(),
                o.BOOTFILE_NAME: name}
        if pxe_rom:  # PXE 2.1 §2.4: take the boot file from this offer, no boot server discovery
            opts[o.VENDOR_SPECIFIC] = o.pxe_vendor_options()
        if http_client:  # UEFI HTTP Boot: the client only takes offers that say HTTPClient
            opts[o.VENDOR_CLASS] = o.HTTP_VENDOR_CLASS.encode()
        return siaddr, name if len(name) < codec.FILE_SIZE else b"", opts

    def _send(self, ctx: _Ctx, r: DhcpPacket, mt: o.MessageType, what: str,
              via_pxe: bool = False, dest: tuple[str, int] | None = None) -> Reply | None:
        data = self._encode(ctx, r)
        if data is None:
            self.stats.errors += 1
            return None
        addr = dest or self._dest(ctx, mt)
        full_offer = mt == _OFFER and self.config.mode == "full"
        if log.isEnabledFor(logging.DEBUG if full_offer else logging.INFO):
            via = f" via {ctx.pkt.giaddr}" if ctx.pkt.giaddr != codec.ZERO_IP else ""
            log.log(logging.DEBUG if full_offer else logging.INFO,
                    "dhcp: %s from %s xid %#x%s -> %s %s to %s:%d", ctx.mt.name, ctx.mac,
                    ctx.pkt.xid, via, mt.name, what, addr[0], addr[1])
        return Reply(data, addr, via_pxe)

    # --- proxy mode ---
    def _proxy(self, ctx: _Ctx) -> Reply | None:
        """ProxyDHCP on port 67 answers DISCOVERs only (PXE 2.1 §2.2.4); the client's REQUEST
        on 67 belongs to the real DHCP server (which may even share this host's address), and a
        PXE client that wants more from the proxy asks on port 4011."""
        if ctx.mt != _DISCOVER:
            return self._ignore(ctx.pkt, f"{ctx.mt.name} on port {self.config.server_port}"
                                " in proxy mode")
        vc = ctx.machine.vendor_class
        if not (o.is_pxe_vendor_class(vc) or o.is_http_vendor_class(vc)):
            return self._ignore(ctx.pkt, "not a PXE or HTTP boot client (option 60)")
        r = self._reply(ctx, _OFFER)
        bf = self._boot(ctx, r)
        if bf is None:
            return self._ignore(ctx.pkt, "policy has no boot file", logging.INFO)
        return self._send(ctx, r, _OFFER, f"boot {bf.filename}")

    def _pxe_port(self, ctx: _Ctx, src: tuple[str, int]) -> Reply | None:
        """PXE 2.1 §2.2.5 boot server request on port 4011 (also iPXE's ProxyDHCP REQUEST)."""
        if ctx.mt not in (_REQUEST, _INFORM):
            return self._ignore(ctx.pkt, f"{ctx.mt.name} on port {self.config.pxe_port}")
        if not ctx.pxe:
            return self._ignore(ctx.pkt, "not a PXE client (option 60)")
        r = self._reply(ctx, _ACK)
        bf = self._boot(ctx, r)
        if bf is None:
            return self._ignore(ctx.pkt, "policy has no boot file", logging.INFO)
        dest = src if src[0] != codec.ZERO_IP else self._dest(ctx, _ACK)
        return self._send(ctx, r, _ACK, f"boot {bf.filename}", via_pxe=True,
                          dest=dest)

    # --- full mode ---
    def _pool_for(self, pkt: DhcpPacket) -> Pool | None:
        key = pkt.giaddr if pkt.giaddr != codec.ZERO_IP else self.config.server_ip
        for p in self.pools:
            if p.contains(key):
                return p
        return None

    def _lease_time(self, pool: Pool) -> int:
        return pool.cfg.lease_time or self.config.lease_time

    def _net_options(self, r: DhcpPacket, pool: Pool, hostname: str | None,
                     lease_time: int | None) -> None:
        opts = r.options
        if lease_time is not None:
            opts.update(self._lease_opts(lease_time))
        opts.update(self._pool_opts(pool))
        if hostname:
            opts[o.HOSTNAME] = hostname.encode()

    @functools.lru_cache(maxsize=64)  # noqa: B019 (a few lease times, server lives as long)
    def _lease_opts(self, lease_time: int) -> dict[int, bytes]:
        return {o.LEASE_TIME: o.u32_bytes(lease_time),
                o.RENEWAL_TIME: o.u32_bytes(lease_time // 2),  # RFC 2131 §4.4.5 T1
                o.REBINDING_TIME: o.u32_bytes(lease_time * 7 // 8)}  # T2

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _pool_opts(self, pool: Pool) -> dict[int, bytes]:
        opts = {o.SUBNET_MASK: o.ip_bytes(pool.netmask),
                o.BROADCAST_ADDRESS: o.ip_bytes(pool.broadcast)}
        if pool.cfg.router:
            opts[o.ROUTER] = o.ip_bytes(pool.cfg.router)
        if pool.cfg.dns:
            opts[o.DNS_SERVERS] = o.ips_bytes(pool.cfg.dns)
        if pool.cfg.domain:
            opts[o.DOMAIN_NAME] = pool.cfg.domain.encode()
        return opts

    def _static(self, mac: str, pool: Pool) -> tuple[str, str | None] | None:
        st = self.policy.static_address(mac)
        if st is None:
            return None
        if not pool.usable(st[0]):
            log.warning("dhcp: static address %s of %s is not on %s; using the pool",
                        st[0], mac, pool.cfg.network)
            return None
        return st

    def _choose(self, ctx: _Ctx, pool: Pool) -> tuple[str, str | None] | None:
        """RFC 2131 §4.3.1 address choice: static, current/previous lease, offer, requested,
        then a free one (no ping), reclaiming the oldest tentative offer when the pool is full."""
        mac, lt = ctx.mac, self.leases
        st = self._static(mac, pool)
        if st is not None:
            lt.take_over(st[0], mac)
            return st
        ls = lt.lease_of(mac)
        if ls is not None and pool.in_range(ls.ip) and self._free(ls.ip, mac):
            return ls.ip, ls.hostname
        off = lt.offered_ip(mac)
        if off is not None and pool.in_range(off):
            return off, None
        want = ctx.pkt.options.get(o.REQUESTED_IP)
        if want is not None and len(want) == 4:
            wanted = socket.inet_ntoa(want)
            if pool.in_range(wanted) and self._free(wanted, mac):
                return wanted, None
        # A full lap over an exhausted pool costs O(pool size); after one fails, skip the scan
        # for FULL_RETRY seconds and reclaim tentative offers directly (burst of new clients).
        now = lt.clock()
        ip = None
        if now >= self._pool_full_until.get(pool, 0.0):
            ip = pool.next_free(lambda a: self._free(a, mac))
            if ip is None:
                self._pool_full_until[pool] = now + FULL_RETRY
                log.warning("dhcp: pool %s has no free address (DISCOVER from %s): reclaiming"
                            " the oldest tentative offers", pool.cfg.network, mac)
        if ip is None:
            ip = lt.oldest_offer_in(pool.in_range)
            if ip is None:
                return None
            log.debug("dhcp: reclaiming tentative offer of %s for %s", ip, mac)
        return ip, None

    def _free(self, ip: str, mac: str) -> bool:
        """Not this server's, a router's or a DNS server's address, and not taken."""
        return ip not in self._reserved and self.leases.is_free_for(ip, mac)

    def _may_assign(self, ctx: _Ctx, pool: Pool, ip: str) -> tuple[bool, str | None]:
        st = self._static(ctx.mac, pool)
        if st is not None:
            return ip == st[0], st[1]
        if not pool.in_range(ip) or not self._free(ip, ctx.mac):
            return False, None
        ls = self.leases.lease_of(ctx.mac)
        return True, ls.hostname if ls is not None and ls.ip == ip else None

    def _nak(self, ctx: _Ctx, why: str) -> Reply | None:
        self._seen(ctx)
        r = self._reply(ctx, _NAK)
        r.options[o.MESSAGE] = why.encode()
        if ctx.pkt.giaddr != codec.ZERO_IP:
            r.flags |= codec.FLAG_BROADCAST  # RFC 2131 §4.3.2: relay must broadcast the NAK
        return self._send(ctx, r, _NAK, why)

    def _full(self, ctx: _Ctx) -> Reply | None:
        pkt, mt = ctx.pkt, ctx.mt
        pool = self._pool_for(pkt)
        if pool is None:
            where = f"relay {pkt.giaddr}" if pkt.giaddr != codec.ZERO_IP else "this link"
            return self._ignore(pkt, f"no pool for {where}", logging.WARNING)
        if mt == _DISCOVER:
            return self._discover(ctx, pool)
        if mt == _REQUEST:
            return self._request(ctx, pool)
        if mt == _INFORM:
            r = self._reply(ctx, _ACK)
            self._net_options(r, pool, None, None)
            self._boot(ctx, r)
            return self._send(ctx, r, _ACK, f"(inform {pkt.ciaddr})")
        if mt == _RELEASE:
            try:
                released = self.leases.release(ctx.mac, pkt.ciaddr)
            except LeaseFileError as e:
                log.error("dhcp: %s: RELEASE of %s from %s not recorded (the lease stays"
                          " bound)", e, pkt.ciaddr, ctx.mac)
                return None
            if released:
                log.info("dhcp: RELEASE from %s: %s released", ctx.mac, pkt.ciaddr)
            else:
                self._ignore(pkt, f"RELEASE of {pkt.ciaddr}, not its lease", logging.INFO)
            return None
        if mt == _DECLINE:
            ip = pkt.ip_option(o.REQUESTED_IP) if len(
                pkt.options.get(o.REQUESTED_IP, b"")) == 4 else None
            if ip is None or not pool.contains(ip):
                return self._ignore(pkt, "DECLINE without a usable option 50", logging.INFO)
            try:
                self.leases.decline(ctx.mac, ip, self.config.decline_time)
            except LeaseFileError as e:
                log.error("dhcp: %s: DECLINE of %s from %s not recorded", e, ip, ctx.mac)
                return None
            log.warning("dhcp: DECLINE from %s: %s is in use by someone else; held %ds",
                        ctx.mac, ip, self.config.decline_time)
            return None
        return self._ignore(pkt, f"{mt.name} sent to a server")

    def _discover(self, ctx: _Ctx, pool: Pool) -> Reply | None:
        choice = self._choose(ctx, pool)
        if choice is None:
            self._seen(ctx)
            return self._ignore(ctx.pkt, f"pool {pool.cfg.network} has no free address",
                                logging.WARNING)
        ip, hostname = choice
        self.leases.offer(ctx.mac, ip)
        r = self._reply(ctx, _OFFER, ip)
        ctx.machine = Machine(ctx.mac, ctx.machine.arch, ctx.machine.user_class,
                              ctx.machine.vendor_class, ip)
        self._net_options(r, pool, hostname, self._lease_time(pool))
        bf = self._boot(ctx, r)
        return self._send(ctx, r, _OFFER, ip + (f" boot {bf.filename}" if bf else ""))

    def _request(self, ctx: _Ctx, pool: Pool) -> Reply | None:
        """RFC 2131 §4.3.2: SELECTING, INIT-REBOOT, RENEWING/REBINDING."""
        pkt = ctx.pkt
        sid = pkt.options.get(o.SERVER_ID)
        want = pkt.options.get(o.REQUESTED_IP)
        req_ip = socket.inet_ntoa(want) if want is not None and len(want) == 4 else None
        ip: str
        if sid is not None:  # SELECTING
            if sid != self._server_id:
                self.leases.drop_offer(ctx.mac)
                return self._ignore(pkt, f"client chose server {socket.inet_ntoa(sid[:4])}"
                                    if len(sid) == 4 else "client chose another server")
            if req_ip is None:
                return self._ignore(pkt, "SELECTING REQUEST without option 50", logging.INFO)
            ip = req_ip
        elif req_ip is not None:  # INIT-REBOOT
            if not pool.contains(req_ip):
                return self._nak(ctx, f"{req_ip} is not on network {pool.cfg.network}")
            ip = req_ip
        elif pkt.ciaddr != codec.ZERO_IP:  # RENEWING / REBINDING
            ip = pkt.ciaddr
        else:
            return self._ignore(pkt, "REQUEST with neither option 50 nor ciaddr", logging.INFO)
        ok, hostname = self._may_assign(ctx, pool, ip)
        if not ok:
            return self._nak(ctx, f"{ip} is not available to {ctx.mac}")
        lease_time = self._lease_time(pool)
        try:
            self.leases.bind(ctx.mac, ip, lease_time, hostname)  # journal synced before the ACK
        except LeaseFileError as e:
            # No ACK for a lease that is not on disk.  Silence, not a NAK: a NAK tells the
            # client its address is wrong (RFC 2131 §4.3.2), so a RENEWING client would drop a
            # valid address and restart from INIT; silence makes it retransmit (§4.1) and keep
            # its address until T2/expiry, and the retransmission succeeds once the journal
            # can be written again.
            self.stats.errors += 1
            log.error("dhcp: %s: NOT acknowledging %s for %s (xid %#x)", e, ip, ctx.mac,
                      pkt.xid)
            return None
        r = self._reply(ctx, _ACK, ip)
        ctx.machine = Machine(ctx.mac, ctx.machine.arch, ctx.machine.user_class,
                              ctx.machine.vendor_class, ip)
        self._net_options(r, pool, hostname, lease_time)
        bf = self._boot(ctx, r)
        reply = self._send(ctx, r, _ACK, ip + (f" boot {bf.filename}" if bf else ""))
        return None if reply is None else dataclasses.replace(reply, durable=True)


# Never dropped to make a reply fit: the message type and server identifier (RFC 2131 table 3
# MUST), the lease time of an OFFER/ACK (MUST), and the relay agent information (RFC 3046 §2.2:
# the relay needs it to forward the reply).
_KEEP = frozenset((o.MESSAGE_TYPE, o.SERVER_ID, o.LEASE_TIME, o.RELAY_AGENT_INFO))
# What a PXE client needs to boot: dropped after every other optional option.
_BOOT = (o.TFTP_SERVER_NAME, o.BOOTFILE_NAME, o.VENDOR_SPECIFIC, o.VENDOR_CLASS)


def drop_order(r: DhcpPacket, requested: Sequence[int] = ()) -> list[int]:
    """The options of reply ``r`` in the order they are given up when it does not fit the
    client's maximum message size even with option overload:

    1. copies: option 67 equal to the ``file`` field, option 66 equal to ``siaddr``;
    2. options the client did not ask for (option 55), last-added first;
    3. options it asked for, its least wanted (last in option 55) first;
    4. the boot information (66, 67, 43, 60);
    5. the echoed client identifier (option 61, RFC 6842) last of all.
    Never: 53, 54, 51 and 82 (``_KEEP``)."""
    opts = r.options
    first: list[int] = []
    if opts.get(o.BOOTFILE_NAME) and opts[o.BOOTFILE_NAME] == r.file:
        first.append(o.BOOTFILE_NAME)
    if opts.get(o.TFTP_SERVER_NAME) == r.siaddr.encode() and r.siaddr != codec.ZERO_IP:
        first.append(o.TFTP_SERVER_NAME)
    late = set(_KEEP) | set(_BOOT) | {o.CLIENT_ID} | set(first)
    asked = [c for c in dict.fromkeys(requested) if c in opts and c not in late]
    unasked = [c for c in reversed(list(opts)) if c not in late and c not in asked]
    boot = [c for c in _BOOT if c in opts and c not in first]
    tail = [o.CLIENT_ID] if o.CLIENT_ID in opts else []
    return first + unasked + list(reversed(asked)) + boot + tail


def _with_defaults(p: PoolConfig, c: DhcpConfig) -> PoolConfig:
    return dataclasses.replace(
        p, router=p.router if p.router is not None else c.router, dns=p.dns or c.dns,
        domain=p.domain if p.domain is not None else c.domain)


def _safe_mac(data: bytes) -> str:
    try:
        return codec.peek_mac(data) or "unknown"
    except Exception:
        return "unknown"

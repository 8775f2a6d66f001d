"""The RFC 2131 / PXE state machine: one request datagram in, the reply (if any) out.

No socket, no thread: :meth:`DhcpProtocol.handle` takes the datagram, where it came from and
the port it arrived on, asks the policy (:class:`~bootserver.dhcp.config.DhcpPolicy`), acts on
the lease table (offer, bind, release, decline; the table's clock is the protocol's clock) and
returns a :class:`Reply` for the socket loop (:mod:`bootserver.dhcp.server`) to send.  An ACK's
reply is marked ``durable``: its lease record was appended to the journal, and it must not leave
before the journal is synced (the loop syncs once per batch of packets).

Modes (``full``: addresses and boot info; ``proxy``: ProxyDHCP, boot info only) are described
at :data:`~bootserver.dhcp.config.Mode`.

Reply destinations (RFC 2131 §4.1): relayed requests (``giaddr`` set) are answered by unicast to
``giaddr`` port 67; clients with an address (``ciaddr``) by unicast to it; everything else is
broadcast to 255.255.255.255:68 on the bound interface.  Unicasting to ``yiaddr`` before the client
has the address would need an ARP entry written for ``chaddr``; broadcasting instead is what RFC
2131 §4.1 allows when that cannot be done, and every PXE ROM and iPXE accept it.

Choices worth knowing
  * A PXE client is one whose option 60 starts with "PXEClient" or whose user class (option 77)
    is "iPXE".  Only PXE clients get boot info and are passed to ``policy.record_seen``
    (DISCOVER, REQUEST, INFORM, port-4011 requests, NAKs and "pool exhausted" drops included).
    ``record_seen`` failing is logged and does not stop the reply; ``boot_file`` failing raises
    (the loop logs it and drops the packet), since wrong boot info is worse than none.
  * The server is authoritative for its pools: an INIT-REBOOT or RENEWING request for a free
    address in the pool is ACKed even without a record of the client (a lost lease file does not
    strand clients); an address leased to another MAC, outside the range, or on another subnet is
    NAKed.
  * An OFFER reserves its address for ``offer_time``; when a pool runs dry, the oldest tentative
    offer is reclaimed (bound leases never are), so a burst of new clients is always answered.
  * ``static_only`` (the instance network): only MACs the policy gives a static address get
    an answer; every other MAC gets silence (not a NAK: another server may own it) and the pool
    is never drawn from.
  * A static address from the policy wins over a dynamic lease of the same address (the other
    client is NAKed when it renews).  Keep static addresses outside the dynamic range.
  * Log levels: OFFERs are DEBUG (bursts), ACK/NAK/INFORM/RELEASE/DECLINE and ProxyDHCP answers
    are INFO, malformed packets and pool exhaustion WARNING; every line starts with the MAC
    (:mod:`bootserver.clientlog`).
  * No ACK for a lease that is not on disk.  When the journal cannot be written (disk full, EIO)
    the REQUEST gets no answer, not a NAK: a NAK tells the client its address is wrong (RFC 2131
    §4.3.2), so a RENEWING client would give up a valid address and restart from INIT, while
    silence makes it retransmit (§4.1) and keep its address until T2/expiry; the retransmission
    succeeds once the journal heals (leases.py).  OFFERs (memory only) still go out.
  * Oversized replies are fitted to the client's option 57 (:mod:`bootserver.dhcp.fit`).
  * The client architecture is option 93, or when that is missing or malformed the
    ``Arch:NNNNN`` of option 60 (UEFI firmwares that send only "PXEClient:Arch:00007:...").
  * Leases are keyed by the hardware address, not by the client identifier (option 61): a PXE
    ROM (no option 61), iPXE and the booted OS (systemd-networkd sends a DUID-based one) are the
    same machine and keep one address, as the inventory assigns roles by MAC.  Option 61 is
    echoed in every reply (RFC 6842).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from bootserver import clientlog
from bootserver.dhcp import codec
from bootserver.dhcp import options as o
from bootserver.dhcp.assign import FULL_RETRY as FULL_RETRY  # re-exported
from bootserver.dhcp.assign import Addresses
from bootserver.dhcp.codec import DhcpPacket
from bootserver.dhcp.config import BROADCAST, DhcpConfig, DhcpPolicy
from bootserver.dhcp.fit import encode_fitting
from bootserver.dhcp.leases import LeaseFileError, LeaseTable
from bootserver.dhcp.pool import Pool
from bootserver.machine import BootFile, Machine, arch_from_vendor_class

log = logging.getLogger("homecloud.dhcp")

# Enum member access goes through a descriptor; module constants keep the hot path cheap.
_ACK = o.MessageType.ACK
_DECLINE = o.MessageType.DECLINE
_DISCOVER = o.MessageType.DISCOVER
_INFORM = o.MessageType.INFORM
_NAK = o.MessageType.NAK
_OFFER = o.MessageType.OFFER
_RELEASE = o.MessageType.RELEASE
_REQUEST = o.MessageType.REQUEST


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


@dataclass
class _Ctx:
    """Facts about one request, computed once."""

    pkt: DhcpPacket
    mac: str
    mt: o.MessageType
    machine: Machine
    pxe: bool
    log: clientlog.ClientLog
    requested: Sequence[int] = field(default_factory=tuple)


class DhcpProtocol:
    """The DHCP (full) or ProxyDHCP (proxy) logic for one link: :meth:`handle` is the whole
    protocol, bytes in, :class:`Reply` out.  ``leases`` must be open (full mode); the caller
    syncs its journal before sending a ``durable`` reply."""

    def __init__(self, config: DhcpConfig, policy: DhcpPolicy, leases: LeaseTable,
                 stats: Stats | None = None) -> None:
        self.config = config
        self.policy = policy
        self.leases = leases
        self.stats = stats if stats is not None else Stats()
        self.pools = [Pool(p) for p in config.pool_configs()]
        self.addresses = Addresses(config, policy, leases, self.pools)
        if config.mode == "full" and not any(p.contains(config.server_ip) for p in self.pools):
            log.warning("dhcp: no pool contains server_ip %s: only relayed clients (giaddr) on"
                        " the pools' subnets will be answered", config.server_ip)
        self._server_id = o.ip_bytes(config.server_ip)

    def handle(self, data: bytes, src: tuple[str, int], port: int) -> Reply | None:
        """One request datagram received on ``port`` from ``src``; the reply to send, if any.
        Lease changes are appended to the journal (synced unless ``leases.deferred_sync``)."""
        try:
            pkt = codec.decode(data)
        except codec.DecodeError as e:
            self.stats.malformed += 1
            who = codec.safe_mac(data)
            clientlog.for_mac(log, who).warning(
                "dhcp: dropping malformed packet from %s:%d (mac %s): %s; packet %s",
                src[0], src[1], who, e, codec.hex_preview(data))
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
        ctx = _Ctx(pkt, mac, mt, machine, pxe, clientlog.for_mac(log, mac), tuple(prl))
        if port == self.config.pxe_port and port != self.config.server_port:
            return self._pxe_port(ctx, src)
        if self.config.mode == "proxy":
            return self._proxy(ctx)
        return self._full(ctx)

    def _ignore(self, pkt: DhcpPacket, why: str,
                level: int = logging.DEBUG) -> Reply | None:
        self.stats.ignored += 1
        if log.isEnabledFor(level):
            mac = pkt.mac or pkt.chaddr.hex()
            clientlog.for_mac(log, mac).log(level, "dhcp: ignoring xid %#x from %s: %s",
                                            pkt.xid, mac, why)
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
        return encode_fitting(r, size, ctx.requested, ctx.pkt.xid, ctx.log)

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
            ctx.log.exception("dhcp: policy.record_seen failed for %s", ctx.mac)

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
        level = logging.DEBUG if mt == _OFFER and self.config.mode == "full" else logging.INFO
        if log.isEnabledFor(level):
            via = f" via {ctx.pkt.giaddr}" if ctx.pkt.giaddr != codec.ZERO_IP else ""
            ctx.log.log(level, "dhcp: %s from %s xid %#x%s -> %s %s to %s:%d", ctx.mt.name,
                        ctx.mac, ctx.pkt.xid, via, mt.name, what, addr[0], addr[1])
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
    def _net_options(self, r: DhcpPacket, pool: Pool, hostname: str | None,
                     lease_time: int | None) -> None:
        opts = r.options
        if lease_time is not None:
            opts.update(o.lease_time_options(lease_time))
        opts.update(pool.options)
        if hostname:
            opts[o.HOSTNAME] = hostname.encode()

    def _nak(self, ctx: _Ctx, why: str) -> Reply | None:
        self._seen(ctx)
        r = self._reply(ctx, _NAK)
        r.options[o.MESSAGE] = why.encode()
        if ctx.pkt.giaddr != codec.ZERO_IP:
            r.flags |= codec.FLAG_BROADCAST  # RFC 2131 §4.3.2: relay must broadcast the NAK
        return self._send(ctx, r, _NAK, why)

    def _full(self, ctx: _Ctx) -> Reply | None:
        pkt, mt = ctx.pkt, ctx.mt
        if self.config.static_only and self.policy.static_address(ctx.mac) is None:
            return self._ignore(pkt, "no static address for this MAC (static-only server)")
        pool = self.addresses.pool_for(pkt.giaddr)
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
                ctx.log.error("dhcp: %s: RELEASE of %s from %s not recorded (the lease stays"
                          " bound)", e, pkt.ciaddr, ctx.mac)
                return None
            if released:
                ctx.log.info("dhcp: RELEASE from %s: %s released", ctx.mac, pkt.ciaddr)
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
                ctx.log.error("dhcp: %s: DECLINE of %s from %s not recorded", e, ip, ctx.mac)
                return None
            ctx.log.warning("dhcp: DECLINE from %s: %s is in use by someone else; held %ds",
                        ctx.mac, ip, self.config.decline_time)
            return None
        return self._ignore(pkt, f"{mt.name} sent to a server")

    def _discover(self, ctx: _Ctx, pool: Pool) -> Reply | None:
        choice = self.addresses.choose(ctx.mac, ctx.pkt.options.get(o.REQUESTED_IP), ctx.log,
                                       pool)
        if choice is None:
            self._seen(ctx)
            why = (f"its static address is not on {pool.cfg.network}" if self.config.static_only
                   else f"pool {pool.cfg.network} has no free address")
            return self._ignore(ctx.pkt, why, logging.WARNING)
        ip, hostname = choice
        self.leases.offer(ctx.mac, ip)
        r = self._reply(ctx, _OFFER, ip)
        ctx.machine = Machine(ctx.mac, ctx.machine.arch, ctx.machine.user_class,
                              ctx.machine.vendor_class, ip)
        self._net_options(r, pool, hostname, self.addresses.lease_time(pool))
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
        ok, hostname = self.addresses.may_assign(ctx.mac, ctx.log, pool, ip)
        if not ok:
            return self._nak(ctx, f"{ip} is not available to {ctx.mac}")
        lease_time = self.addresses.lease_time(pool)
        try:
            self.leases.bind(ctx.mac, ip, lease_time, hostname)  # journal synced before the ACK
        except LeaseFileError as e:
            # No ACK for a lease that is not on disk.  Silence, not a NAK: a NAK tells the
            # client its address is wrong (RFC 2131 §4.3.2), so a RENEWING client would drop a
            # valid address and restart from INIT; silence makes it retransmit (§4.1) and keep
            # its address until T2/expiry, and the retransmission succeeds once the journal
            # can be written again.
            self.stats.errors += 1
            ctx.log.error("dhcp: %s: NOT acknowledging %s for %s (xid %#x)", e, ip, ctx.mac,
                      pkt.xid)
            return None
        r = self._reply(ctx, _ACK, ip)
        ctx.machine = Machine(ctx.mac, ctx.machine.arch, ctx.machine.user_class,
                              ctx.machine.vendor_class, ip)
        self._net_options(r, pool, hostname, lease_time)
        bf = self._boot(ctx, r)
        reply = self._send(ctx, r, _ACK, ip + (f" boot {bf.filename}" if bf else ""))
        return None if reply is None else dataclasses.replace(reply, durable=True)


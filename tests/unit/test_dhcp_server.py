"""DhcpProtocol.handle(): the RFC 2131 / PXE state machine, without sockets (and DhcpServer.handle,
its socket-free entry that also syncs the lease journal)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bootserver.dhcp import codec
from bootserver.dhcp import options as o
from bootserver.dhcp.codec import DhcpPacket
from bootserver.dhcp.config import DhcpConfig, DhcpConfigError
from bootserver.dhcp.leases import LeaseTable
from bootserver.dhcp.options import MessageType as MT
from bootserver.dhcp.pool import PoolConfig
from bootserver.dhcp.protocol import DhcpProtocol, Reply
from bootserver.dhcp.server import DhcpServer
from bootserver.machine import BootFile, Machine

SERVER = "192.0.2.1"
CLIENT = ("0.0.0.0", 68)
MAC = "52:54:00:12:34:56"


@dataclass
class Policy:
    """A real (tiny) policy: static addresses and boot files from dicts, records what it saw."""

    statics: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    boot: dict[str, BootFile] = field(default_factory=dict)
    default: BootFile | None = field(default_factory=lambda: BootFile("undionly.kpxe", "hnode"))
    seen: list[Machine] = field(default_factory=list)

    def static_address(self, mac: str) -> tuple[str, str | None] | None:
        return self.statics.get(mac)

    def boot_file(self, machine: Machine) -> BootFile | None:
        return self.boot.get(machine.mac, self.default)

    def record_seen(self, machine: Machine) -> None:
        self.seen.append(machine)


POOLS = (PoolConfig("192.0.2.0/24", "192.0.2.100", "192.0.2.103", router="192.0.2.1",
                    dns=("192.0.2.53",), domain="lab.example"),
         PoolConfig("198.51.100.0/24", "198.51.100.50", "198.51.100.60", lease_time=600))


def make(tmp_path: Path | None = None, mode: Any = "full", policy: Policy | None = None,
         **kw: Any) -> tuple[DhcpProtocol, Policy]:
    pol = policy or Policy()
    cfg = DhcpConfig(interface="veth0", server_ip=SERVER, mode=mode,
                     pools=POOLS if mode == "full" else (),
                     lease_file=tmp_path / "leases.jsonl" if tmp_path else None, **kw)
    leases = LeaseTable(cfg.lease_file, offer_time=cfg.offer_time)
    leases.open()
    return DhcpProtocol(cfg, pol, leases), pol


def request(mt: MT, mac: str = MAC, pxe: bool = True, xid: int = 0x1000,
            options: dict[int, bytes] | None = None, **fields: Any) -> bytes:
    opts: dict[int, bytes] = {o.MESSAGE_TYPE: bytes((mt,))}
    if pxe:
        opts[o.VENDOR_CLASS] = b"PXEClient:Arch:00000:UNDI:002001"
        opts[o.CLIENT_ARCH] = b"\x00\x00"
        opts[o.CLIENT_MACHINE_ID] = b"\x00" + bytes(range(16))
    opts.update(options or {})
    p = DhcpPacket(op=1, xid=xid, chaddr=bytes.fromhex(mac.replace(":", "")), options=opts,
                   **fields)
    return codec.encode(p, max_size=1472)


def parse(reply: Reply | None) -> DhcpPacket:
    assert reply is not None
    return codec.decode(reply.data)


def dora(srv: DhcpProtocol, mac: str = MAC, **kw: Any) -> DhcpPacket:
    offer = parse(srv.handle(request(MT.DISCOVER, mac, **kw), CLIENT, 67))
    ack = parse(srv.handle(request(MT.REQUEST, mac, options={
        o.SERVER_ID: o.ip_bytes(SERVER), o.REQUESTED_IP: o.ip_bytes(offer.yiaddr)}, **kw),
        CLIENT, 67))
    assert ack.message_type == MT.ACK and ack.yiaddr == offer.yiaddr
    return ack


# --- full mode ----------------------------------------------------------------------------------

def test_discover_offer_carries_address_and_boot_info(tmp_path: Path) -> None:
    srv, pol = make(tmp_path)
    r = srv.handle(request(MT.DISCOVER, options={o.PARAMETER_REQUEST_LIST: bytes((1, 3, 67))}),
                   CLIENT, 67)
    assert r is not None and r.addr == ("255.255.255.255", 68) and not r.via_pxe
    p = codec.decode(r.data)
    assert p.op == codec.BOOTREPLY and p.xid == 0x1000 and p.mac == MAC
    assert p.message_type == MT.OFFER
    assert p.yiaddr == "192.0.2.100" and p.siaddr == SERVER and p.file == b"undionly.kpxe"
    assert p.ip_option(o.SERVER_ID) == SERVER
    assert p.ip_option(o.SUBNET_MASK) == "255.255.255.0"
    assert p.ip_option(o.ROUTER) == "192.0.2.1" and p.options[o.DNS_SERVERS] == o.ip_bytes(
        "192.0.2.53")
    assert p.options[o.DOMAIN_NAME] == b"lab.example"
    assert o.decode_u32(51, p.options[o.LEASE_TIME]) == 3600
    assert o.decode_u32(58, p.options[o.RENEWAL_TIME]) == 1800
    assert o.decode_u32(59, p.options[o.REBINDING_TIME]) == 3150
    assert p.options[o.VENDOR_CLASS] == b"PXEClient"
    assert p.options[o.TFTP_SERVER_NAME] == SERVER.encode()
    assert p.options[o.BOOTFILE_NAME] == b"undionly.kpxe"
    assert p.options[o.VENDOR_SPECIFIC] == bytes((6, 1, 8, 255))
    assert p.options[o.CLIENT_MACHINE_ID] == b"\x00" + bytes(range(16))
    assert list(p.options)[:5] == [53, 54, 1, 3, 67]  # 53, 54, then the client's order
    assert pol.seen[-1] == Machine(MAC, 0, None, "PXEClient:Arch:00000:UNDI:002001",
                                   "192.0.2.100")


def test_full_dora_journals_lease_before_ack(tmp_path: Path) -> None:
    srv, _ = make(tmp_path)
    ack = dora(srv)
    assert (tmp_path / "leases.jsonl").read_text().count(MAC) == 1
    assert ack.ciaddr == "0.0.0.0"
    # a second client gets the next address; the first keeps its own on a new DISCOVER
    assert dora(srv, "52:54:00:00:00:02").yiaddr == "192.0.2.101"
    again = parse(srv.handle(request(MT.DISCOVER, xid=2), CLIENT, 67))
    assert again.yiaddr == ack.yiaddr


def test_restart_keeps_leases(tmp_path: Path) -> None:
    srv, _ = make(tmp_path)
    dora(srv, "52:54:00:00:00:09")
    ack = dora(srv)
    srv.leases.close()
    srv2, _ = make(tmp_path)
    offer = parse(srv2.handle(request(MT.DISCOVER), CLIENT, 67))
    assert offer.yiaddr == ack.yiaddr
    # INIT-REBOOT of the known address is ACKed
    r = parse(srv2.handle(request(MT.REQUEST, options={o.REQUESTED_IP: o.ip_bytes(ack.yiaddr)}),
                          CLIENT, 67))
    assert r.message_type == MT.ACK and r.yiaddr == ack.yiaddr


def test_request_for_wrong_address_is_naked(tmp_path: Path) -> None:
    srv, _ = make(tmp_path)
    dora(srv, "52:54:00:00:00:09")  # owns .100
    r = srv.handle(request(MT.REQUEST, options={o.SERVER_ID: o.ip_bytes(SERVER),
                                                o.REQUESTED_IP: o.ip_bytes("192.0.2.100")}),
                   CLIENT, 67)
    p = parse(r)
    assert p.message_type == MT.NAK and p.yiaddr == "0.0.0.0"
    assert r is not None and r.addr == ("255.255.255.255", 68)
    assert b"not available" in p.options[o.MESSAGE]
    # INIT-REBOOT on the wrong network: NAK
    p = parse(srv.handle(request(MT.REQUEST, options={o.REQUESTED_IP: o.ip_bytes("203.0.113.9")}),
                         CLIENT, 67))
    assert p.message_type == MT.NAK and b"not on network" in p.options[o.MESSAGE]


def test_request_selecting_other_server_frees_offer() -> None:
    srv, _ = make()
    offer = parse(srv.handle(request(MT.DISCOVER), CLIENT, 67))
    assert srv.leases.offered_ip(MAC) == offer.yiaddr
    r = srv.handle(request(MT.REQUEST, options={o.SERVER_ID: o.ip_bytes("192.0.2.250"),
                                                o.REQUESTED_IP: o.ip_bytes(offer.yiaddr)}),
                   CLIENT, 67)
    assert r is None and srv.leases.offered_ip(MAC) is None


def test_renew_is_unicast_to_ciaddr() -> None:
    srv, _ = make()
    ack = dora(srv)
    r = srv.handle(request(MT.REQUEST, ciaddr=ack.yiaddr), (ack.yiaddr, 68), 67)
    p = parse(r)
    assert p.message_type == MT.ACK and p.ciaddr == ack.yiaddr and p.yiaddr == ack.yiaddr
    assert r is not None and r.addr == (ack.yiaddr, 68)


def test_static_address_and_hostname_from_policy() -> None:
    pol = Policy(statics={MAC: ("192.0.2.20", "hnode-1")})
    srv, _ = make(policy=pol)
    ack = dora(srv)
    assert ack.yiaddr == "192.0.2.20" and ack.options[o.HOSTNAME] == b"hnode-1"
    # a REQUEST for another address is NAKed: the static address wins
    p = parse(srv.handle(request(MT.REQUEST, options={o.REQUESTED_IP: o.ip_bytes("192.0.2.101")}),
                         CLIENT, 67))
    assert p.message_type == MT.NAK


def test_non_pxe_client_gets_address_only_and_is_not_recorded() -> None:
    srv, pol = make()
    p = parse(srv.handle(request(MT.DISCOVER, pxe=False), CLIENT, 67))
    assert p.yiaddr == "192.0.2.100" and p.file == b"" and o.BOOTFILE_NAME not in p.options
    assert o.VENDOR_CLASS not in p.options and pol.seen == []


def test_policy_without_boot_file_still_gets_address() -> None:
    srv, pol = make(policy=Policy(default=None))
    p = parse(srv.handle(request(MT.DISCOVER), CLIENT, 67))
    assert p.yiaddr == "192.0.2.100" and o.BOOTFILE_NAME not in p.options
    assert len(pol.seen) == 1


@pytest.mark.parametrize("raw", [b"iPXE", b"\x04iPXE"])
def test_ipxe_user_class_both_forms(raw: bytes) -> None:
    srv, pol = make(policy=Policy(boot={MAC: BootFile("http://192.0.2.1/boot/x.ipxe", "hnode")}))
    p = parse(srv.handle(request(MT.DISCOVER, options={o.USER_CLASS: raw}), CLIENT, 67))
    assert pol.seen[-1].is_ipxe and pol.seen[-1].user_class == "iPXE"
    assert p.options[o.BOOTFILE_NAME] == b"http://192.0.2.1/boot/x.ipxe"


def test_relay_pool_by_giaddr_unicast_to_relay_and_82_echoed_last() -> None:
    srv, _ = make()
    agent = bytes((1, 4)) + b"port"
    r = srv.handle(request(MT.DISCOVER, giaddr="198.51.100.1", hops=1,
                           options={o.RELAY_AGENT_INFO: agent}), ("198.51.100.1", 67), 67)
    p = parse(r)
    assert r is not None and r.addr == ("198.51.100.1", 67)
    assert p.yiaddr == "198.51.100.50" and p.giaddr == "198.51.100.1"
    assert p.ip_option(o.SUBNET_MASK) == "255.255.255.0"
    assert o.decode_u32(51, p.options[o.LEASE_TIME]) == 600
    assert list(p.options)[-1] == o.RELAY_AGENT_INFO and p.options[82] == agent


def test_relay_too_many_hops_or_unknown_subnet_dropped() -> None:
    srv, _ = make()
    assert srv.handle(request(MT.DISCOVER, giaddr="198.51.100.1", hops=17),
                      ("198.51.100.1", 67), 67) is None
    assert srv.handle(request(MT.DISCOVER, giaddr="203.0.113.1"), ("203.0.113.1", 67), 67) is None
    assert srv.stats.ignored == 2


def test_release_and_decline() -> None:
    srv, _ = make()
    ack = dora(srv)
    assert srv.handle(request(MT.RELEASE, ciaddr=ack.yiaddr), (ack.yiaddr, 68), 67) is None
    assert srv.leases.lease_of(MAC) is None
    other = "52:54:00:00:00:02"
    ack2 = dora(srv, other)
    assert srv.handle(request(MT.DECLINE, other, options={
        o.REQUESTED_IP: o.ip_bytes(ack2.yiaddr), o.SERVER_ID: o.ip_bytes(SERVER)}),
        CLIENT, 67) is None
    for i in range(3):  # nobody is offered the declined address
        p = parse(srv.handle(request(MT.DISCOVER, f"52:54:00:00:01:0{i}"), CLIENT, 67))
        assert p.yiaddr != ack2.yiaddr


def test_inform_acks_without_address_or_lease_time() -> None:
    srv, _ = make()
    r = srv.handle(request(MT.INFORM, ciaddr="192.0.2.77"), ("192.0.2.77", 68), 67)
    p = parse(r)
    assert p.message_type == MT.ACK and p.yiaddr == "0.0.0.0" and p.ciaddr == "192.0.2.77"
    assert o.LEASE_TIME not in p.options and p.ip_option(o.SUBNET_MASK) == "255.255.255.0"
    assert r is not None and r.addr == ("192.0.2.77", 68)


def test_pool_full_reclaims_oldest_offer_but_not_leases() -> None:
    srv, _ = make()
    macs = [f"52:54:00:00:02:{i:02x}" for i in range(6)]
    got = [parse(srv.handle(request(MT.DISCOVER, m), CLIENT, 67)).yiaddr for m in macs]
    assert got[:4] == ["192.0.2.100", "192.0.2.101", "192.0.2.102", "192.0.2.103"]
    assert got[4] == "192.0.2.100" and got[5] == "192.0.2.101"  # oldest tentative offers
    srv2, _ = make()
    for m in macs[:4]:
        dora(srv2, m)
    assert srv2.handle(request(MT.DISCOVER, macs[5]), CLIENT, 67) is None


def test_reply_fits_client_max_message_size() -> None:
    long = "http://192.0.2.1/" + "x" * 200
    pol = Policy(default=BootFile(long, "hnode"))
    srv, _ = make(policy=pol)
    opts = {o.MAX_MESSAGE_SIZE: o.u16_bytes(576), o.RELAY_AGENT_INFO: b"\x01\x40" + b"a" * 64}
    r = srv.handle(request(MT.DISCOVER, options=opts), CLIENT, 67)
    assert r is not None and len(r.data) <= 548
    p = codec.decode(r.data)
    assert p.options[o.BOOTFILE_NAME] == long.encode() and p.file == b""
    big = srv.handle(request(MT.DISCOVER, options={o.MAX_MESSAGE_SIZE: o.u16_bytes(1500)}),
                     CLIENT, 67)
    assert big is not None and len(big.data) > 548  # fits whole: no overload needed
    assert big.data[44:236] == bytes(192)


def test_malformed_is_logged_with_mac_and_hex(caplog: pytest.LogCaptureFixture) -> None:
    srv, _ = make()
    bad = bytearray(request(MT.DISCOVER))
    bad[236] = 0  # magic cookie
    with caplog.at_level(logging.WARNING, "homecloud.dhcp"):
        assert srv.handle(bytes(bad), CLIENT, 67) is None
    assert MAC in caplog.text and "magic cookie" in caplog.text
    assert bytes(bad[:16]).hex() in caplog.text
    assert srv.stats.malformed == 1


def test_bootreply_and_non_ethernet_ignored() -> None:
    srv, _ = make()
    p = codec.decode(request(MT.DISCOVER))
    p.op = codec.BOOTREPLY
    assert srv.handle(codec.encode(p), CLIENT, 67) is None
    p = codec.decode(request(MT.DISCOVER))
    p.htype, p.hlen, p.chaddr = 6, 8, b"12345678"
    assert srv.handle(codec.encode(p), CLIENT, 67) is None


# --- proxy mode ---------------------------------------------------------------------------------

def test_proxy_offer_has_no_address_but_boot_info() -> None:
    srv, pol = make(mode="proxy")
    r = srv.handle(request(MT.DISCOVER), CLIENT, 67)
    p = parse(r)
    assert r is not None and r.addr == ("255.255.255.255", 68)
    assert p.message_type == MT.OFFER and p.yiaddr == "0.0.0.0"
    assert p.siaddr == SERVER and p.file == b"undionly.kpxe"
    assert p.options[o.VENDOR_CLASS] == b"PXEClient"
    assert p.options[o.VENDOR_SPECIFIC] == bytes((6, 1, 8, 255))
    assert p.options[o.CLIENT_MACHINE_ID] == b"\x00" + bytes(range(16))
    assert p.ip_option(o.SERVER_ID) == SERVER
    assert o.LEASE_TIME not in p.options and o.SUBNET_MASK not in p.options
    assert len(pol.seen) == 1


def test_proxy_ignores_non_pxe_and_unknown_and_plain_requests() -> None:
    srv, _ = make(mode="proxy", policy=Policy(default=None))
    assert srv.handle(request(MT.DISCOVER), CLIENT, 67) is None  # policy: no boot file
    srv, _ = make(mode="proxy")
    assert srv.handle(request(MT.DISCOVER, pxe=False), CLIENT, 67) is None
    # a REQUEST on port 67 is for the real DHCP server, even when it shares our address
    for sid in ("192.0.2.2", SERVER):
        assert srv.handle(request(MT.REQUEST, options={
            o.SERVER_ID: o.ip_bytes(sid), o.REQUESTED_IP: o.ip_bytes("192.0.2.50")}),
            CLIENT, 67) is None


def test_proxy_4011_request_gets_ack_with_boot_file_to_source() -> None:
    srv, _ = make(mode="proxy", policy=Policy(boot={MAC: BootFile("ipxe.efi", "hnode",
                                                                  "192.0.2.9")}))
    src = ("192.0.2.150", 68)
    r = srv.handle(request(MT.REQUEST, ciaddr="192.0.2.150", options={
        o.CLIENT_ARCH: b"\x00\x07"}), src, 4011)
    p = parse(r)
    assert r is not None and r.addr == src and r.via_pxe
    assert p.message_type == MT.ACK and p.yiaddr == "0.0.0.0" and p.ciaddr == "192.0.2.150"
    assert p.file == b"ipxe.efi" and p.siaddr == "192.0.2.9"
    assert p.options[o.TFTP_SERVER_NAME] == b"192.0.2.9"
    assert srv.handle(request(MT.DISCOVER), src, 4011) is None


def test_config_errors() -> None:
    with pytest.raises(DhcpConfigError, match="mode"):
        DhcpConfig("veth0", SERVER, mode="relay")  # type: ignore[arg-type]
    with pytest.raises(DhcpConfigError, match="pools"):
        DhcpConfig("veth0", SERVER)
    with pytest.raises(DhcpConfigError, match="server_ip"):
        DhcpConfig("veth0", "not-an-ip", mode="proxy")


def test_record_seen_failure_does_not_block_boot(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Policy):
        def record_seen(self, machine: Machine) -> None:
            raise OSError("seen store full")

    srv, _ = make(policy=Broken())
    with caplog.at_level(logging.ERROR, "homecloud.dhcp"):
        p = parse(srv.handle(request(MT.DISCOVER), CLIENT, 67))
    assert p.options[o.BOOTFILE_NAME] == b"undionly.kpxe"
    assert "record_seen failed for " + MAC in caplog.text


def test_mac_is_normalized_form() -> None:
    from bootserver.machine import normalize_mac
    p = codec.decode(request(MT.DISCOVER, "52:54:00:AB:CD:EF"))
    assert p.mac == normalize_mac("52-54-00-ab-cd-ef") == "52:54:00:ab:cd:ef"


# --- golden replies (wire-format stability); HC_REGEN_GOLDEN=1 prints new values to paste -----

GOLDEN = {
    "full-offer": (
        "0201060000c0ffee0000000000000000c0000264c00002010000000052540012345600000000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000000000000000756e64696f6e6c792e6b7078650000000000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000638253633501023604c00002010104ffffff000304c00002010604c0"
        "0002352b04060108ff3c09505845436c69656e7442093139322e302e322e31430d756e64696f6e6c792e6b70"
        "7865330400000e103a04000007083b0400000c4e1c04c00002ff0f0b6c61622e6578616d706c656111000001"
        "02030405060708090a0b0c0d0e0fff"),
    "proxy-offer": (
        "0201060000c0ffee000000000000000000000000c00002010000000052540012345600000000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000000000000000756e64696f6e6c792e6b7078650000000000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000638253633501023604c00002012b04060108ff3c09505845436c6965"
        "6e7442093139322e302e322e31430d756e64696f6e6c792e6b707865611100000102030405060708090a0b0c"
        "0d0e0fff"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_reply(name: str) -> None:
    import os
    mode = "proxy" if name.startswith("proxy") else "full"
    srv, _ = make(mode=mode)
    r = srv.handle(request(MT.DISCOVER, xid=0xC0FFEE, options={
        o.PARAMETER_REQUEST_LIST: bytes((1, 3, 6, 43, 60, 66, 67))}), CLIENT, 67)
    assert r is not None
    got = r.data.rstrip(b"\0").hex()
    if os.environ.get("HC_REGEN_GOLDEN"):
        pytest.skip(f'"{name}": "{got}",')
    assert got == GOLDEN[name]


def test_server_router_and_dns_addresses_are_never_handed_out() -> None:
    pool = PoolConfig("192.0.2.0/24", "192.0.2.1", "192.0.2.4", router="192.0.2.2",
                      dns=("192.0.2.3",))
    cfg = DhcpConfig(interface="veth0", server_ip=SERVER, pools=(pool,))
    srv = DhcpProtocol(cfg, Policy(), LeaseTable())
    got = [parse(srv.handle(request(MT.DISCOVER, f"52:54:00:00:03:{i:02x}"), CLIENT, 67)).yiaddr
           for i in range(2)]
    assert got == ["192.0.2.4", "192.0.2.4"]  # the second reclaims the only free one
    p = parse(srv.handle(request(MT.REQUEST, options={o.REQUESTED_IP: o.ip_bytes(SERVER)}),
                         CLIENT, 67))
    assert p.message_type == MT.NAK


def test_handle_outside_loop_syncs_journal_before_returning_ack(tmp_path: Path) -> None:
    cfg = DhcpConfig(interface="veth0", server_ip=SERVER, pools=POOLS,
                     lease_file=tmp_path / "leases.jsonl")
    srv = DhcpServer(cfg, Policy())
    srv.load()
    srv.leases.deferred_sync = True  # as in the serving loop; handle() must still sync
    offer = parse(srv.handle(request(MT.DISCOVER), CLIENT, 67))
    r = srv.handle(request(MT.REQUEST, options={o.SERVER_ID: o.ip_bytes(SERVER),
                                                o.REQUESTED_IP: o.ip_bytes(offer.yiaddr)}),
                   CLIENT, 67)
    assert r is not None and r.durable and not srv.leases.dirty
    assert MAC in (tmp_path / "leases.jsonl").read_text()


@pytest.mark.parametrize("mode", ["full", "proxy"])
def test_uefi_http_boot_client_gets_httpclient_and_url(mode: str) -> None:
    url = "http://192.0.2.1/firststage/ipxe.efi"
    srv, _ = make(mode=mode, policy=Policy(default=BootFile(url, "hnode")))
    opts = {o.VENDOR_CLASS: b"HTTPClient:Arch:00016:UNDI:003001", o.CLIENT_ARCH: b"\x00\x10"}
    p = parse(srv.handle(request(MT.DISCOVER, pxe=False, options=opts), CLIENT, 67))
    assert p.message_type == MT.OFFER
    assert p.options[o.VENDOR_CLASS] == b"HTTPClient"  # UEFI 2.x §24.7: else it is ignored
    assert p.file == url.encode() and p.options[o.BOOTFILE_NAME] == url.encode()


@pytest.mark.parametrize("mt", [MT.DISCOVER, MT.REQUEST])
def test_client_identifier_echoed_in_replies(mt: MT) -> None:
    """RFC 6842: a server that gets option 61 returns it in OFFER, ACK and NAK."""
    srv, _ = make()
    cid = b"\xff\x00\x00\x00\x01\x00\x04" + bytes(range(16))  # RFC 4361 IAID + DUID form
    opts = {o.CLIENT_ID: cid}
    if mt == MT.REQUEST:
        opts[o.REQUESTED_IP] = o.ip_bytes("192.0.2.100")
    p = parse(srv.handle(request(mt, options=opts), CLIENT, 67))
    assert p.message_type in (MT.OFFER, MT.ACK) and p.options[o.CLIENT_ID] == cid
    nak = parse(srv.handle(request(MT.REQUEST, options={
        o.CLIENT_ID: cid, o.REQUESTED_IP: o.ip_bytes("203.0.113.9")}), CLIENT, 67))
    assert nak.message_type == MT.NAK and nak.options[o.CLIENT_ID] == cid
    plain = parse(srv.handle(request(MT.DISCOVER), CLIENT, 67))
    assert o.CLIENT_ID not in plain.options


def test_protocol_leaves_the_journal_sync_to_its_caller(tmp_path: Path) -> None:
    """With deferred sync (the serving loop's batching) the state machine appends the lease
    record, marks the ACK durable and leaves the fsync to the socket loop."""
    srv, _ = make(tmp_path)
    srv.leases.deferred_sync = True
    offer = parse(srv.handle(request(MT.DISCOVER), CLIENT, 67))
    r = srv.handle(request(MT.REQUEST, options={o.SERVER_ID: o.ip_bytes(SERVER),
                                                o.REQUESTED_IP: o.ip_bytes(offer.yiaddr)}),
                   CLIENT, 67)
    assert r is not None and r.durable and srv.leases.dirty
    srv.leases.sync()
    assert not srv.leases.dirty and MAC in (tmp_path / "leases.jsonl").read_text()
    # an OFFER is memory only: never durable
    again = srv.handle(request(MT.DISCOVER, "52:54:00:00:09:01"), CLIENT, 67)
    assert again is not None and not again.durable


def test_interface_mtu_option_26_from_the_server_or_its_pool() -> None:
    """RFC 2132 §5.1: option 26 is a 16-bit MTU.  The server-wide ``mtu`` (hcboot serve --mtu,
    jumbo frames on the storage network) reaches every pool that sets none; a pool's own wins;
    no mtu, no option 26 (the link stays 1500)."""
    import struct

    srv, _ = make(mtu=9000)
    offer = parse(srv.handle(request(MT.DISCOVER), CLIENT, 67))
    assert struct.unpack("!H", offer.options[o.INTERFACE_MTU]) == (9000,)
    plain, _ = make()
    assert o.INTERFACE_MTU not in parse(plain.handle(request(MT.DISCOVER), CLIENT, 67)).options
    own = DhcpConfig(interface="veth0", server_ip=SERVER, mode="full", mtu=9000,
                     pools=(PoolConfig("192.0.2.0/24", "192.0.2.100", "192.0.2.103", mtu=1500),))
    assert [p.mtu for p in own.pool_configs()] == [1500]


@pytest.mark.parametrize("bad", [67, 65536, 0, True, "9000"])
def test_a_pool_mtu_outside_rfc_2132_is_refused_naming_the_pool(bad: Any) -> None:
    from bootserver.dhcp.pool import Pool, PoolConfigError
    with pytest.raises(PoolConfigError, match=r"pool 192.0.2.0/24: mtu .* is not an MTU"):
        Pool(PoolConfig("192.0.2.0/24", "192.0.2.100", "192.0.2.103", mtu=bad))

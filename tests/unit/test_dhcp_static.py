"""The instance network's DHCP (static_only): the protocol without sockets, with
bootserver.dhcp.static's policy and configuration, and the serve-side lookup over an inventory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bootserver.dhcp import codec
from bootserver.dhcp import options as o
from bootserver.dhcp.codec import DhcpPacket
from bootserver.dhcp.config import DhcpConfig, DhcpConfigError
from bootserver.dhcp.leases import LeaseTable
from bootserver.dhcp.options import MessageType as MT
from bootserver.dhcp.protocol import DhcpProtocol
from bootserver.dhcp.static import StaticPolicy, static_config
from homecloud.core.model import Instance, Inventory
from homecloud.serve import inventory_instances
from tests.support.memstore import MemoryStore

SERVER = "203.0.113.1"
CLIENT = ("0.0.0.0", 68)
KNOWN = "0a:48:43:00:00:01"
STRANGER = "0a:48:43:00:00:02"


def make(tmp_path: Path, known: dict[str, tuple[str, str | None]],
         **kw: Any) -> DhcpProtocol:
    cfg = static_config("hcbr1", f"{SERVER}/24", lease_file=tmp_path / "inst.jsonl", **kw)
    leases = LeaseTable(cfg.lease_file, offer_time=cfg.offer_time)
    leases.open()
    return DhcpProtocol(cfg, StaticPolicy(known.get), leases)


def pkt(mt: MT, mac: str, pxe: bool = False, **opts: bytes) -> bytes:
    options: dict[int, bytes] = {o.MESSAGE_TYPE: bytes((mt,))}
    if pxe:
        options[o.VENDOR_CLASS] = b"PXEClient:Arch:00000:UNDI:002001"
    for k, v in opts.items():
        options[int(k[1:])] = v
    return codec.encode(DhcpPacket(op=1, xid=7, chaddr=bytes.fromhex(mac.replace(":", "")),
                                   options=options), max_size=1472)


def answer(proto: DhcpProtocol, data: bytes) -> DhcpPacket | None:
    r = proto.handle(data, CLIENT, 67)
    return None if r is None else codec.decode(r.data)


def test_known_mac_dora_static_address_hostname_no_boot(tmp_path: Path) -> None:
    proto = make(tmp_path, {KNOWN: ("203.0.113.50", "web1")})
    offer = answer(proto, pkt(MT.DISCOVER, KNOWN, pxe=True))
    assert offer is not None and offer.message_type == MT.OFFER
    assert offer.yiaddr == "203.0.113.50" and offer.options[o.HOSTNAME] == b"web1"
    assert offer.siaddr == codec.ZERO_IP and offer.file == b""
    for code in (o.ROUTER, o.DNS_SERVERS, o.DOMAIN_NAME, o.BOOTFILE_NAME, o.TFTP_SERVER_NAME,
                 o.VENDOR_CLASS, o.VENDOR_SPECIFIC):
        assert code not in offer.options, code
    ack = answer(proto, pkt(MT.REQUEST, KNOWN, _54=o.ip_bytes(SERVER),
                            _50=o.ip_bytes("203.0.113.50")))
    assert ack is not None and ack.message_type == MT.ACK and ack.yiaddr == "203.0.113.50"
    assert ack.ip_option(o.SERVER_ID) == SERVER
    assert '"203.0.113.50"' in (tmp_path / "inst.jsonl").read_text()


def test_unknown_mac_silence_for_every_message(tmp_path: Path) -> None:
    proto = make(tmp_path, {KNOWN: ("203.0.113.50", "web1")})
    for data in (pkt(MT.DISCOVER, STRANGER),
                 pkt(MT.REQUEST, STRANGER, _54=o.ip_bytes(SERVER), _50=o.ip_bytes("203.0.113.9")),
                 pkt(MT.REQUEST, STRANGER, _50=o.ip_bytes("203.0.113.9")),  # INIT-REBOOT
                 pkt(MT.INFORM, STRANGER)):
        assert answer(proto, data) is None
    assert proto.stats.ignored == 4 and proto.leases.lease_of(STRANGER) is None


def test_known_mac_asking_for_another_address_is_naked(tmp_path: Path) -> None:
    proto = make(tmp_path, {KNOWN: ("203.0.113.50", None)})
    nak = answer(proto, pkt(MT.REQUEST, KNOWN, _50=o.ip_bytes("203.0.113.60")))
    assert nak is not None and nak.message_type == MT.NAK


def test_static_address_off_the_subnet_is_not_answered(tmp_path: Path) -> None:
    proto = make(tmp_path, {KNOWN: ("192.0.2.5", "x")})
    assert answer(proto, pkt(MT.DISCOVER, KNOWN)) is None
    assert answer(proto, pkt(MT.REQUEST, KNOWN, _50=o.ip_bytes("203.0.113.7"))).message_type \
        == MT.NAK  # type: ignore[union-attr]


def test_router_dns_domain_when_configured(tmp_path: Path) -> None:
    proto = make(tmp_path, {KNOWN: ("203.0.113.50", "web1")}, router=SERVER,
                 dns=("203.0.113.53",), domain="inst.example")
    offer = answer(proto, pkt(MT.DISCOVER, KNOWN))
    assert offer is not None and offer.ip_option(o.ROUTER) == SERVER
    assert offer.options[o.DNS_SERVERS] == o.ip_bytes("203.0.113.53")
    assert offer.options[o.DOMAIN_NAME] == b"inst.example"


def test_lookup_that_raises_is_no_answer(tmp_path: Path) -> None:
    def broken(mac: str) -> tuple[str, str | None] | None:
        raise RuntimeError("inventory unreadable")

    cfg = static_config("hcbr1", f"{SERVER}/24", lease_file=None)
    leases = LeaseTable(None, offer_time=cfg.offer_time)
    leases.open()
    assert DhcpProtocol(cfg, StaticPolicy(broken), leases).handle(
        pkt(MT.DISCOVER, KNOWN), CLIENT, 67) is None


@pytest.mark.parametrize("cidr", ["203.0.113.1", "203.0.113.1/31", "nonsense/24"])
def test_static_config_rejects_bad_networks(cidr: str) -> None:
    with pytest.raises(DhcpConfigError, match="instance network"):
        static_config("hcbr1", cidr if "/" in cidr else cidr + "/32", lease_file=None)


def test_static_only_needs_full_mode() -> None:
    with pytest.raises(DhcpConfigError, match="static_only"):
        DhcpConfig(interface="x", server_ip=SERVER, mode="proxy", static_only=True)


def _inst(name: str, mac: str, ip: str = "", n: int = 1) -> Instance:
    return Instance(name, template="domu-t", mac=mac, ip=ip, volume=f"{name}-root",
                    uuid=f"5f0c0000-0000-4000-8000-00000000000{n}", state="stopped")


def test_inventory_instances_lookup() -> None:
    store = MemoryStore()
    store.compare_and_set("", Inventory(instances=(
        _inst("web1", KNOWN, "203.0.113.50"),)))
    lookup = inventory_instances(store)
    assert lookup(KNOWN) == ("203.0.113.50", "web1")
    assert lookup(KNOWN.upper().replace(":", "-")) == ("203.0.113.50", "web1")  # any spelling
    assert lookup(STRANGER) is None  # no instance's MAC
    assert lookup("0a:48:43:00:00:03") is None
    snap = store.snapshot()
    store.compare_and_set(snap.revision, Inventory(instances=(
        _inst("web1", KNOWN, "203.0.113.51"),)))
    assert lookup(KNOWN) == ("203.0.113.51", "web1")  # live: asked at each request


def test_inventory_without_instances_answers_nobody() -> None:
    assert inventory_instances(MemoryStore())(KNOWN) is None

"""Replies that would be too large degrade instead of vanishing; option 57; option 60 arch.

Checked on the reply bytes themselves (offsets of RFC 2131 §2), not only through our decoder."""

from __future__ import annotations

import logging
import struct

import pytest

from bootserver.dhcp import codec
from bootserver.dhcp import options as o
from bootserver.dhcp.codec import DhcpPacket
from bootserver.dhcp.fit import drop_order
from bootserver.dhcp.options import MessageType as MT
from bootserver.machine import arch_from_vendor_class
from tests.unit.test_dhcp_server import CLIENT, MAC, SERVER, make, parse, request

PRL = bytes([1, 3, 6, 12, 15, 28, 43, 60, 66, 67])


def raw_options(data: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    """The option instances of one field, read straight from the bytes (RFC 2132 §2)."""
    out, i = [], start
    while i < end and data[i] != o.END:
        if data[i] == o.PAD:
            i += 1
            continue
        code, n = data[i], data[i + 1]
        out.append((code, data[i + 2:i + 2 + n]))
        i += 2 + n
    return out


def test_254_byte_client_identifier_gets_an_offer_overloading_sname() -> None:
    """The audit's case: a legal 254-byte option 61 made the reply too big and no reply left."""
    srv, _ = make()
    cid = b"\x00" + bytes(range(1, 254))  # type 0 + 253 bytes: 254 bytes
    reply = srv.handle(request(MT.DISCOVER, options={o.CLIENT_ID: cid,
                                                     o.PARAMETER_REQUEST_LIST: PRL}), CLIENT, 67)
    assert reply is not None
    data = reply.data
    assert len(data) <= 548  # no option 57: RFC 2131 §2's 576-byte datagram
    main = raw_options(data, 240, len(data))
    assert (o.OPTION_OVERLOAD, bytes((o.OVERLOAD_SNAME,))) in main  # file holds the boot file
    assert data[108:108 + 14] == b"undionly.kpxe\x00"
    in_sname = raw_options(data, 44, 108)
    assert in_sname, "sname carries options"
    cid_bytes = b"".join(v for c, v in main + in_sname if c == o.CLIENT_ID)
    assert cid_bytes == cid  # RFC 6842 echo, possibly split (RFC 3396)
    p = codec.decode(data)
    assert p.message_type == MT.OFFER and p.options[o.CLIENT_ID] == cid
    assert p.options[o.VENDOR_CLASS] == b"PXEClient" and p.file == b"undionly.kpxe"
    assert o.LEASE_TIME in p.options and p.options[o.SERVER_ID] == o.ip_bytes(SERVER)


def test_non_pxe_client_overloads_file_first() -> None:
    """No boot file: ``file`` is free and is the first field overloaded (RFC 2131 §4.1)."""
    srv, _ = make()
    cid = bytes(range(254))
    reply = srv.handle(request(MT.DISCOVER, pxe=False, options={
        o.CLIENT_ID: cid, o.PARAMETER_REQUEST_LIST: PRL}), CLIENT, 67)
    assert reply is not None and len(reply.data) <= 548
    main = raw_options(reply.data, 240, len(reply.data))
    assert (o.OPTION_OVERLOAD, bytes((o.OVERLOAD_FILE,))) in main
    assert raw_options(reply.data, 108, 236)  # options in `file`
    assert reply.data[44:108] == bytes(64)  # sname untouched: it was not needed
    p = codec.decode(reply.data)
    assert p.options[o.CLIENT_ID] == cid and p.file == b"" and p.sname == b""


def test_optional_options_go_before_the_client_identifier(
        caplog: pytest.LogCaptureFixture) -> None:
    """An option 61 so long (RFC 3396 lets it pass 255) that nothing else would fit beside it:
    it is the one dropped, the boot information stays, and the log says so."""
    srv, _ = make()
    cid = bytes(600)
    with caplog.at_level(logging.WARNING, "homecloud.dhcp"):
        reply = srv.handle(request(MT.DISCOVER, options={o.CLIENT_ID: cid,
                                                         o.PARAMETER_REQUEST_LIST: PRL}),
                           CLIENT, 67)
    p = parse(reply)
    assert o.CLIENT_ID not in p.options
    assert p.file == b"undionly.kpxe" and p.options[o.VENDOR_CLASS] == b"PXEClient"
    assert p.options[o.SUBNET_MASK] == o.ip_bytes("255.255.255.0")
    assert "dropped option(s) 61" in caplog.text and MAC in caplog.text


def test_client_identifier_is_the_last_option_given_up(caplog: pytest.LogCaptureFixture) -> None:
    """Many requested options plus a long option 61: optional options are dropped first
    (unrequested, then least wanted), and option 61 is still echoed."""
    srv, _ = make()
    cid = bytes(range(250))
    prl = bytes([1, 3, 6, 15, 28, 12, 43, 60, 66, 67])
    agent = b"\x01\x3a" + bytes(58)
    with caplog.at_level(logging.WARNING, "homecloud.dhcp"):
        reply = srv.handle(request(MT.DISCOVER, options={
            o.CLIENT_ID: cid, o.PARAMETER_REQUEST_LIST: prl, o.RELAY_AGENT_INFO: agent},
            giaddr="192.0.2.254"), CLIENT, 67)
    p = parse(reply)
    assert len(reply.data) <= 548  # type: ignore[union-attr]
    assert p.options[o.CLIENT_ID] == cid
    assert p.options[o.RELAY_AGENT_INFO] == agent  # never dropped
    assert "dropped option(s) 67, 66, 97, 59, 58, 28, 15" in caplog.text
    assert {1, 3, 6, 43, 60, 51}.issubset(p.options)


def test_reply_that_cannot_fit_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """Option 82 is never dropped (the relay needs it); 900 bytes of it cannot fit: no reply,
    an error that names the MAC, and the server goes on."""
    srv, _ = make()
    agent = b"\x01\xff" + bytes(255) + b"\x02\xff" + bytes(255) + b"\x09\xff" + bytes(255)
    with caplog.at_level(logging.ERROR, "homecloud.dhcp"):
        reply = srv.handle(request(MT.DISCOVER, options={o.RELAY_AGENT_INFO: agent},
                                   giaddr="192.0.2.254"), CLIENT, 67)
    assert reply is None
    assert "does not fit" in caplog.text and MAC in caplog.text and "not sent" in caplog.text
    assert parse(srv.handle(request(MT.DISCOVER), CLIENT, 67)).message_type == MT.OFFER


@pytest.mark.parametrize(("opt57", "limit"), [(None, 548), (576, 548), (300, 548),
                                               (1000, 972), (1500, 1472), (65535, 1472)])
def test_option_57_bounds_the_reply(opt57: int | None, limit: int) -> None:
    srv, _ = make()
    opts = {o.CLIENT_ID: bytes(255), o.PARAMETER_REQUEST_LIST: PRL,
            o.CLIENT_MACHINE_ID: bytes(17)}
    if opt57 is not None:
        opts[o.MAX_MESSAGE_SIZE] = struct.pack("!H", opt57)
    reply = srv.handle(request(MT.DISCOVER, options=opts), CLIENT, 67)
    assert reply is not None and len(reply.data) <= limit
    main = raw_options(reply.data, 240, len(reply.data))
    overloaded = any(c == o.OPTION_OVERLOAD for c, _ in main)
    assert overloaded == (limit == 548)  # room enough: everything in the options field
    assert codec.decode(reply.data).options[o.CLIENT_ID] == bytes(255)


def test_nak_with_a_huge_client_identifier_still_leaves() -> None:
    srv, _ = make()
    cid = bytes(range(255))
    nak = parse(srv.handle(request(MT.REQUEST, options={
        o.CLIENT_ID: cid, o.REQUESTED_IP: o.ip_bytes("203.0.113.9")}), CLIENT, 67))
    assert nak.message_type == MT.NAK and nak.options[o.CLIENT_ID] == cid


def test_drop_order() -> None:
    r = DhcpPacket(op=2, xid=1, chaddr=bytes(6), siaddr=SERVER, file=b"undionly.kpxe")
    for code, v in ((53, b"\x02"), (54, o.ip_bytes(SERVER)), (51, bytes(4)), (1, bytes(4)),
                    (3, bytes(4)), (6, bytes(4)), (58, bytes(4)), (59, bytes(4)), (28, bytes(4)),
                    (60, b"PXEClient"), (66, SERVER.encode()), (67, b"undionly.kpxe"),
                    (43, b"\x06\x01\x08\xff"), (97, bytes(17)), (61, b"\x01" * 7), (82, b"ab")):
        r.options[code] = v
    assert drop_order(r, requested=[1, 3, 6, 43, 60, 66, 67]) == [
        67, 66,  # copies of file / siaddr: nothing lost
        97, 28, 59, 58,  # not asked for, last added first
        6, 3, 1,  # asked for, least wanted first
        43, 60,  # boot information
        61]  # the echoed client identifier last; 53, 54, 51, 82 never


# --- architecture from option 60 -----------------------------------------------------------------

@pytest.mark.parametrize(("vc", "arch"), [
    ("PXEClient:Arch:00007:UNDI:003016", 7), ("PXEClient:Arch:00009", 9),
    ("PXEClient:Arch:00000:UNDI:002001", 0), ("HTTPClient:Arch:00016:UNDI:003001", 16),
    ("PXEClient", None), ("PXEClient:Arch:7", None), ("PXEClient:Arch:99999", None),
    ("udhcp 1.35.0", None), ("PXEClient:Arch:00007x", None), (None, None)])
def test_arch_from_vendor_class(vc: str | None, arch: int | None) -> None:
    assert arch_from_vendor_class(vc) == arch


def test_uefi_client_without_option_93_is_taken_as_uefi() -> None:
    srv, pol = make()
    srv.handle(request(MT.DISCOVER, pxe=False, options={
        o.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016"}), CLIENT, 67)
    assert pol.seen[-1].arch == 7
    # option 93 wins when both are there; a malformed 93 falls back to 60
    srv.handle(request(MT.DISCOVER, pxe=False, options={
        o.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016", o.CLIENT_ARCH: b"\x00\x09"}),
        CLIENT, 67)
    assert pol.seen[-1].arch == 9
    srv.handle(request(MT.DISCOVER, pxe=False, options={
        o.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016", o.CLIENT_ARCH: b"\x00"}),
        CLIENT, 67)
    assert pol.seen[-1].arch == 7

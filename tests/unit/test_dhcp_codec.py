"""DHCP codec: golden bytes (by hand and from scapy as an independent codec), round trips,
option overload / RFC 3396, and malformed input -> the specific DecodeError."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from bootserver.dhcp import codec
from bootserver.dhcp import options as o
from bootserver.dhcp.codec import DhcpPacket

MAC = bytes.fromhex("525400abcdef")


def header(op: int = 1, htype: int = 1, hlen: int = 6, hops: int = 0, xid: int = 0x01020304,
           secs: int = 0, flags: int = 0, ciaddr: bytes = bytes(4), yiaddr: bytes = bytes(4),
           siaddr: bytes = bytes(4), giaddr: bytes = bytes(4), chaddr: bytes = MAC,
           sname: bytes = b"", file: bytes = b"") -> bytes:
    """The fixed BOOTP header written out field by field (RFC 2131 figure 1)."""
    return (bytes((op, htype, hlen, hops)) + struct.pack("!IHH", xid, secs, flags)
            + ciaddr + yiaddr + siaddr + giaddr + chaddr.ljust(16, b"\0")
            + sname.ljust(64, b"\0") + file.ljust(128, b"\0"))


COOKIE = bytes((99, 130, 83, 99))
DISCOVER_OPTS = bytes((53, 1, 1, 60, 9)) + b"PXEClient" + bytes((93, 2, 0, 7, 255))


def scapy_bytes(pkt: object, pad_to: int = 300) -> bytes:
    raw = bytes(pkt)  # type: ignore[call-overload]
    return raw.ljust(pad_to, b"\0")


# --- golden bytes ---------------------------------------------------------------------------------

def test_decode_hand_built_discover() -> None:
    data = header(flags=0x8000) + COOKIE + DISCOVER_OPTS
    p = codec.decode(data)
    assert p.op == 1 and p.xid == 0x01020304 and p.broadcast
    assert p.mac == "52:54:00:ab:cd:ef"
    assert p.message_type == o.MessageType.DISCOVER
    assert p.vendor_class == "PXEClient"
    assert p.client_arch == 7
    assert list(p.options) == [53, 60, 93]


def test_encode_matches_hand_built_bytes_padded_to_300() -> None:
    p = DhcpPacket(op=1, xid=0x01020304, chaddr=MAC, flags=0x8000,
                   options={53: b"\x01", 60: b"PXEClient", 93: b"\x00\x07"})
    want = (header(flags=0x8000) + COOKIE + DISCOVER_OPTS).ljust(300, b"\0")
    assert codec.encode(p) == want


def test_encode_offer_matches_scapy() -> None:
    p = DhcpPacket(op=2, xid=0xDEADBEEF, chaddr=MAC, yiaddr="192.0.2.10", siaddr="192.0.2.1",
                   file=b"undionly.kpxe")
    p.options[o.MESSAGE_TYPE] = b"\x02"
    p.options[o.SERVER_ID] = o.ip_bytes("192.0.2.1")
    p.options[o.LEASE_TIME] = o.u32_bytes(3600)
    p.options[o.SUBNET_MASK] = o.ip_bytes("255.255.255.0")
    p.options[o.ROUTER] = o.ip_bytes("192.0.2.1")
    p.options[o.VENDOR_CLASS] = b"PXEClient"
    p.options[o.BOOTFILE_NAME] = b"undionly.kpxe"
    ref = BOOTP(op=2, xid=0xDEADBEEF, chaddr=MAC, yiaddr="192.0.2.10", siaddr="192.0.2.1",
                file=b"undionly.kpxe", options=COOKIE) / DHCP(options=[
                    ("message-type", "offer"), ("server_id", "192.0.2.1"), ("lease_time", 3600),
                    ("subnet_mask", "255.255.255.0"), ("router", "192.0.2.1"),
                    ("vendor_class_id", b"PXEClient"), ("boot-file-name", b"undionly.kpxe"),
                    "end"])
    assert codec.encode(p) == scapy_bytes(ref)


def test_decode_scapy_request() -> None:
    ref = BOOTP(op=1, xid=7, chaddr=MAC, ciaddr="0.0.0.0", flags=0x8000, options=COOKIE) / DHCP(
        options=[("message-type", "request"), ("server_id", "192.0.2.1"),
                 ("requested_addr", "192.0.2.10"), ("param_req_list", [1, 3, 6, 67]),
                 (77, b"iPXE"), "end"])
    p = codec.decode(bytes(ref))
    assert p.message_type == o.MessageType.REQUEST
    assert p.ip_option(o.SERVER_ID) == "192.0.2.1"
    assert p.ip_option(o.REQUESTED_IP) == "192.0.2.10"
    assert p.options[o.PARAMETER_REQUEST_LIST] == bytes((1, 3, 6, 67))
    assert p.user_classes == ["iPXE"]


def test_scapy_reads_our_encoding() -> None:
    p = DhcpPacket(op=2, xid=99, chaddr=MAC, yiaddr="198.51.100.7",
                   options={53: b"\x05", 54: o.ip_bytes("198.51.100.1"), 51: o.u32_bytes(600)})
    ref = BOOTP(codec.encode(p))
    assert ref.yiaddr == "198.51.100.7" and ref.xid == 99
    opts: dict[str, Any] = dict(x for x in ref[DHCP].options if isinstance(x, tuple))
    assert opts["message-type"] == 5 and opts["server_id"] == "198.51.100.1"
    assert opts["lease_time"] == 600


# --- round trips ----------------------------------------------------------------------------------

ROUND_TRIPS = [
    DhcpPacket(op=1, xid=1, chaddr=MAC, options={53: b"\x01"}),
    DhcpPacket(op=2, xid=0xFFFFFFFF, chaddr=MAC, hops=3, secs=9, flags=0x8000,
               ciaddr="203.0.113.5", yiaddr="203.0.113.6", siaddr="203.0.113.7",
               giaddr="203.0.113.8", sname=b"boot", file=b"pxelinux.0",
               options={53: b"\x05", 54: b"\xcb\x00\x71\x01", 43: o.pxe_vendor_options(),
                        82: b"\x01\x03abc"}),
    DhcpPacket(op=1, xid=5, chaddr=bytes(range(16)), htype=6, hlen=16,
               options={53: b"\x08", 12: b"x" * 255, 77: b""}),
]


@pytest.mark.parametrize("pkt", ROUND_TRIPS, ids=["minimal", "all-fields", "hlen16"])
def test_round_trip(pkt: DhcpPacket) -> None:
    data = codec.encode(pkt, max_size=1472)
    assert codec.decode(data) == pkt
    assert codec.encode(codec.decode(data), max_size=1472) == data


# --- RFC 3396 long options and option order -------------------------------------------------------

def test_long_option_split_and_concatenated() -> None:
    long = bytes(range(256)) * 2  # 512 bytes: 255 + 255 + 2
    p = DhcpPacket(op=2, xid=1, chaddr=MAC, options={53: b"\x02", 43: long})
    data = codec.encode(p, max_size=1472)
    body = data[240:]
    assert body[:3] == bytes((53, 1, 2))
    assert body[3:5] == bytes((43, 255)) and body[260:262] == bytes((43, 255))
    assert body[517:519] == bytes((43, 2))
    assert codec.decode(data).options[43] == long


def test_repeated_option_instances_concatenate_on_decode() -> None:
    opts = bytes((53, 1, 1, 77, 2)) + b"ab" + bytes((12, 1)) + b"h" + bytes((77, 2)) + b"cd"
    p = codec.decode(header() + COOKIE + opts + b"\xff")
    assert p.options[77] == b"abcd"
    assert list(p.options) == [53, 77, 12]


def test_option_order_53_54_requested_then_rest_82_last() -> None:
    codes = [82, 3, 1, 54, 6, 53, 51]
    assert codec.ordered_codes(codes, requested=[6, 1, 99]) == [53, 54, 6, 1, 3, 51, 82]
    p = DhcpPacket(op=2, xid=1, chaddr=MAC, options={c: b"\x00\x00\x00\x00" for c in codes})
    p.options[53] = b"\x02"
    body = codec.encode(p, requested=[6, 1])[240:]
    seen = []
    i = 0
    while body[i] != 255:
        seen.append(body[i])
        i += 2 + body[i + 1]
    assert seen == [53, 54, 6, 1, 3, 51, 82]


def test_zero_length_option_round_trips() -> None:
    p = DhcpPacket(op=1, xid=1, chaddr=MAC, options={53: b"\x01", 80: b""})
    assert codec.decode(codec.encode(p)).options == {53: b"\x01", 80: b""}


# --- option 52 overload ---------------------------------------------------------------------------

def test_decode_overload_both_fields_in_rfc_order() -> None:
    # options field -> file -> sname (RFC 2131 §4.1); 12 split across all three (RFC 3396)
    opts = bytes((53, 1, 5, 52, 1, 3, 12, 1)) + b"a" + b"\xff"
    file = bytes((12, 1)) + b"b" + bytes((67, 4)) + b"boot" + b"\xff"
    sname = bytes((12, 1)) + b"c" + bytes((66, 3)) + b"tft"  # no END: field end suffices
    p = codec.decode(header(op=2, sname=sname, file=file) + COOKIE + opts)
    assert p.options[12] == b"abc"
    assert p.options[67] == b"boot" and p.options[66] == b"tft"
    assert p.sname == b"" and p.file == b""
    assert 52 not in p.options


def test_decode_overload_file_only_keeps_sname() -> None:
    opts = bytes((53, 1, 2, 52, 1, 1, 255))
    file = bytes((67, 3)) + b"abc" + b"\xff"
    p = codec.decode(header(op=2, sname=b"server1", file=file) + COOKIE + opts)
    assert p.sname == b"server1" and p.file == b"" and p.options[67] == b"abc"


def test_no_overload_means_sname_file_are_names_even_if_they_look_like_options() -> None:
    p = codec.decode(header(sname=bytes((12, 1)) + b"x") + COOKIE + bytes((53, 1, 1, 255)))
    assert 12 not in p.options and p.sname == bytes((12, 1)) + b"x"


def test_encode_overloads_file_then_sname_when_options_do_not_fit() -> None:
    big = {53: b"\x02", 54: o.ip_bytes("192.0.2.1")}
    big.update({c: bytes([c]) * 60 for c in range(100, 107)})  # 7 * 62: main 4, file 2, sname 1
    p = DhcpPacket(op=2, xid=3, chaddr=MAC, options=dict(big))
    data = codec.encode(p, max_size=548)
    assert 300 <= len(data) <= 548
    main = data[240:]
    assert bytes((52, 1, 3)) in main  # both fields used
    back = codec.decode(data)
    assert back.options == big


def test_encode_overload_uses_only_free_fields() -> None:
    p = DhcpPacket(op=2, xid=3, chaddr=MAC, file=b"undionly.kpxe",
                   options={53: b"\x02", 120: b"x" * 250, 121: b"y" * 80})
    data = codec.encode(p, max_size=548)
    back = codec.decode(data)
    assert back.file == b"undionly.kpxe" and back.sname == b""
    assert back.options[120] == b"x" * 250 and back.options[121] == b"y" * 80


def test_encode_too_large_raises() -> None:
    p = DhcpPacket(op=2, xid=3, chaddr=MAC, file=b"f", sname=b"s",
                   options={53: b"\x02", 120: b"x" * 400})
    with pytest.raises(codec.OptionsTooLarge, match="548-byte"):
        codec.encode(p, max_size=548)


def test_encode_respects_larger_max_size_without_overload() -> None:
    p = DhcpPacket(op=2, xid=3, chaddr=MAC, options={53: b"\x02", 120: b"x" * 400})
    data = codec.encode(p, max_size=1000)
    assert bytes((52, 1)) not in data[240:245] and len(data) == 240 + 3 + 2 + 255 + 2 + 145 + 1


@pytest.mark.parametrize("field, value", [("sname", b"s" * 65), ("file", b"f" * 129),
                                          ("chaddr", b"c" * 17)])
def test_encode_field_too_long(field: str, value: bytes) -> None:
    p = DhcpPacket(op=2, xid=1, chaddr=MAC, options={53: b"\x02"})
    setattr(p, field, value)
    with pytest.raises(codec.FieldTooLong, match=field):
        codec.encode(p)


# --- malformed input: each maps to one specific error naming field/offset -------------------------

def _good(opts: bytes = bytes((53, 1, 1, 255)), **kw: object) -> bytes:
    return header(**kw) + COOKIE + opts  # type: ignore[arg-type]


MALFORMED = [
    ("empty", b"", codec.TruncatedPacket, "0 bytes"),
    ("header-only", header(), codec.TruncatedPacket, "offset 236"),
    ("oversized", _good() + bytes(1300), codec.OversizedPacket, "1472"),
    ("bad-op", _good(op=3), codec.BadOpcode, "op"),
    ("hlen-0", _good(hlen=0), codec.BadHlen, "hlen"),
    ("hlen-17", _good(hlen=17), codec.BadHlen, "hlen"),
    ("cookie", header() + b"\x63\x82\x53\x64" + bytes((53, 1, 1, 255)), codec.BadMagicCookie,
     "offset 236"),
    ("no-53", _good(bytes((12, 1)) + b"h" + b"\xff"), codec.MissingMessageType, "option 53"),
    ("53-len2", _good(bytes((53, 2, 1, 1, 255))), codec.BadMessageType, "option 53"),
    ("53-value-9", _good(bytes((53, 1, 9, 255))), codec.BadMessageType, "option 53"),
    ("overrun", _good(bytes((53, 1, 1, 12, 50)) + b"abc"), codec.OptionOverrun,
     "option 12 at offset 243 in options"),
    ("no-length-byte", _good(bytes((53, 1, 1, 12))), codec.OptionOverrun, "no length byte"),
    ("bad-52", _good(bytes((53, 1, 1, 52, 1, 7, 255))), codec.BadOverload, "option 52"),
    ("overload-garbage-file", header(file=b"\x0c\xff" + b"garbage") + COOKIE
     + bytes((53, 1, 1, 52, 1, 1, 255)), codec.OptionOverrun, "in file"),
    ("overload-garbage-sname", header(sname=b"\x01" * 64) + COOKIE
     + bytes((53, 1, 1, 52, 1, 2, 255)), codec.OptionOverrun, "in sname"),
]


@pytest.mark.parametrize("data, exc, needle", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed(data: bytes, exc: type[codec.DecodeError], needle: str) -> None:
    with pytest.raises(exc, match=needle) as info:
        codec.decode(data)
    assert isinstance(info.value, codec.DecodeError)
    assert type(info.value) is exc


def test_missing_message_type_allowed_when_asked() -> None:
    p = codec.decode(_good(bytes((255,))), require_message_type=False)
    assert p.message_type is None


def test_peek_mac_on_undecodable_packet() -> None:
    assert codec.peek_mac(_good(hlen=0)[:40]) is None
    assert codec.peek_mac(header(hlen=6)[:40]) == "52:54:00:ab:cd:ef"


def test_missing_end_option_tolerated() -> None:
    p = codec.decode(_good(bytes((53, 1, 3))))
    assert p.message_type == o.MessageType.REQUEST

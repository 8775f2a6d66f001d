"""Option value helpers: option 93 architecture, option 77 user class (RFC 3004 and iPXE's raw
string), option 43 PXE sub-options, option 57 maximum size."""

from __future__ import annotations

import pytest

from bootserver.dhcp import options as o


@pytest.mark.parametrize("raw, want", [
    (b"\x00\x00", 0),
    (b"\x00\x07", 7),
    (b"\x00\x09\x00\x00", 9),  # a list: the first type is the client's
    (b"\x00\x10", 16),
    (b"", None),
    (b"\x00", None),
    (b"\x00\x07\x00", None),
])
def test_client_arch(raw: bytes, want: int | None) -> None:
    assert o.decode_client_arch(raw) == want


@pytest.mark.parametrize("raw, want", [
    (b"iPXE", ["iPXE"]),  # iPXE: the bare string
    (b"\x04iPXE", ["iPXE"]),  # RFC 3004 single instance
    (b"\x04iPXE\x03foo", ["iPXE", "foo"]),  # RFC 3004 two instances
    (b"gPXE\x00", ["gPXE"]),  # raw with a trailing NUL
    (b"\x05iPXE", ["\x05iPXE"]),  # length says 5, only 4 follow: raw
    (b"", []),
    (b"\x00", []),
])
def test_user_class(raw: bytes, want: list[str]) -> None:
    assert o.decode_user_class(raw) == want


def test_user_class_encode_round_trip() -> None:
    raw = o.encode_user_class(["iPXE", "hc"])
    assert raw == b"\x04iPXE\x02hc"
    assert o.decode_user_class(raw) == ["iPXE", "hc"]
    with pytest.raises(o.OptionValueError, match="option 77"):
        o.encode_user_class([""])


def test_pxe_vendor_options_discovery_control() -> None:
    assert o.pxe_vendor_options() == bytes((6, 1, 8, 255))
    assert o.encode_suboptions({6: b"\x03", 8: b"ab"}) == bytes((6, 1, 3, 8, 2)) + b"ab\xff"


@pytest.mark.parametrize("raw, want", [
    (None, 548), (b"\x02\x40", 548), (b"\x05\xdc", 1472), (b"\x01\x00", 548), (b"\x05", 548),
])
def test_client_max_message_size(raw: bytes | None, want: int) -> None:
    assert o.client_max_message_size(raw) == want


@pytest.mark.parametrize("fn, raw, needle", [
    (o.decode_ip, b"\x01\x02\x03", "4 bytes"),
    (o.decode_u32, b"\x01", "32-bit"),
    (o.decode_u16, b"\x01", "16-bit"),
])
def test_bad_value_shapes_name_the_option(fn: object, raw: bytes, needle: str) -> None:
    with pytest.raises(o.OptionValueError, match=f"option 54: .*{needle}"):
        fn(54, raw)  # type: ignore[operator]


def test_message_type() -> None:
    assert o.decode_message_type(b"\x01") is o.MessageType.DISCOVER
    with pytest.raises(o.OptionValueError, match="unknown message type 9"):
        o.decode_message_type(b"\x09")


def test_is_pxe_vendor_class() -> None:
    assert o.is_pxe_vendor_class("PXEClient:Arch:00000:UNDI:002001")
    assert not o.is_pxe_vendor_class("udhcp 1.35.0")
    assert not o.is_pxe_vendor_class(None)

"""Property-based tests (hypothesis) for bootserver.tftp's request parser, option negotiation,
OACK/ERROR codec and the path rule; the examples hypothesis finds are kept by its database only
for the session, so the interesting ones are pinned below as plain cases."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bootserver import tftp
from bootserver.tftp import (
    MAX_BLKSIZE,
    MAX_REQUEST,
    TftpPacketError,
    TftpPathError,
    TftpRequest,
    encode_error,
    encode_oack,
    encode_request,
    negotiate_options,
    normalize_tftp_path,
    parse_error,
    parse_oack,
    parse_request,
)

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# a field of a request: any bytes but NUL, not empty
field = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b)
latin1_field = field.map(lambda b: b.decode("latin-1"))


@st.composite
def requests(draw: st.DrawFn) -> TftpRequest:
    opts = draw(st.lists(st.tuples(latin1_field, st.binary(max_size=20).filter(
        lambda b: b"\0" not in b).map(lambda b: b.decode("latin-1"))), max_size=6))
    req = TftpRequest(draw(st.sampled_from([1, 2])), draw(latin1_field), draw(latin1_field),
                      tuple(opts))
    if len(encode_request(req)) > MAX_REQUEST:
        return TftpRequest(req.opcode, req.filename, req.mode)
    return req


@SETTINGS
@given(st.binary(max_size=3000))
@example(b"")
@example(b"\x00\x01")
@example(b"\x00\x01a\x00")
@example(b"\x00\x01a\x00octet\x00blksize\x00")
@example(b"\x00\x01\x00octet\x00")
@example(b"\x00\x01a\x00octet\x00\x00\x00")
@example(b"\x00\x01a\x00\x00")
@example(b"\x00\x01a\x00octet\x00multicast\x00\x00")
@example(b"\x00\x01\xff\xfe\x00octet\x00")
def test_any_bytes_parse_or_raise_the_parsers_error(buf: bytes) -> None:
    try:
        req = parse_request(buf)
    except TftpPacketError:
        return
    assert req.opcode in (1, 2)
    assert req.filename and req.mode
    assert len(buf) <= MAX_REQUEST


@SETTINGS
@given(st.binary(max_size=600))
def test_request_prefixed_bytes_parse_or_raise(body: bytes) -> None:
    for opcode in (b"\x00\x01", b"\x00\x02"):
        try:
            req = parse_request(opcode + body)
        except TftpPacketError:
            continue
        # what parses re-encodes to the same bytes, up to trailing padding NULs
        assert (opcode + body).startswith(encode_request(req))


@SETTINGS
@given(requests())
def test_request_round_trip(req: TftpRequest) -> None:
    assert parse_request(encode_request(req)) == req


@SETTINGS
@given(requests(), st.integers(min_value=1, max_value=5))
def test_trailing_padding_is_ignored(req: TftpRequest, pad: int) -> None:
    assert parse_request(encode_request(req) + b"\0" * pad) == req


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["blksize", "tsize", "timeout", "windowsize", "BlkSize",
                                        "TIMEOUT", "multicast", "x"]),
                       st.one_of(st.integers(-10, 100000).map(str), st.text(max_size=8)),
                       max_size=6))
def test_negotiated_options_are_bounded(requested: dict[str, str]) -> None:
    out = negotiate_options(requested)
    lower = {k.lower() for k in requested}
    assert set(out) <= lower & {"blksize", "tsize", "timeout", "windowsize"}  # only asked ones
    if "blksize" in out:
        assert tftp.MIN_BLKSIZE <= out["blksize"] <= MAX_BLKSIZE
    if "timeout" in out:  # RFC 2349: echoed exactly, within bounds
        assert 1 <= out["timeout"] <= tftp.MAX_TIMEOUT
        assert any(k.lower() == "timeout" and v.strip().isdigit()
                   and int(v) == out["timeout"] for k, v in requested.items())
    if "windowsize" in out:
        assert 1 <= out["windowsize"] <= tftp.MAX_WINDOWSIZE
        assert out["windowsize"] * out.get("blksize", 512) <= max(
            tftp.WINDOW_BYTES, out.get("blksize", 512))


@SETTINGS
@given(st.dictionaries(st.text(st.characters(min_codepoint=33, max_codepoint=126),
                               min_size=1, max_size=12),
                       st.integers(0, 10**9), max_size=5))
def test_oack_round_trip(options: dict[str, int]) -> None:
    assert parse_oack(encode_oack(options)) == {k: str(v) for k, v in options.items()}


@SETTINGS
@given(st.binary(max_size=200))
def test_oack_and_error_parsers_raise_only_their_error(buf: bytes) -> None:
    for parser in (parse_oack, parse_error):
        with contextlib.suppress(TftpPacketError):
            parser(buf)  # type: ignore[operator]


@SETTINGS
@given(st.integers(0, 0xFFFF), st.text(max_size=300))
def test_error_round_trip(code: int, message: str) -> None:
    pkt = encode_error(code, message)
    got_code, got_msg = parse_error(pkt)
    assert got_code == code and pkt.endswith(b"\0") and len(got_msg) <= 200
    assert got_msg == message.encode("ascii", "replace")[:200].replace(b"\0", b"?").decode()


path_chars = st.sampled_from([*"ab./\\\0 ~\x7f\n", "..", "/..", "../", "\u00e9"])


@SETTINGS
@given(st.one_of(st.text(max_size=60), st.lists(path_chars, max_size=30).map("".join)))
@example("..")
@example("a/../b")
@example("/./../x")
def test_normalized_paths_never_escape(raw: str) -> None:
    try:
        rel = normalize_tftp_path(raw)
    except TftpPathError:
        return
    parts = rel.split("/")
    assert ".." not in parts and "." not in parts and "" not in parts
    assert not rel.startswith("/") and "\\" not in rel and "\0" not in rel
    assert all(" " <= c <= "~" for c in rel)
    assert normalize_tftp_path(rel) == rel  # idempotent


@pytest.mark.parametrize(("buf", "why"), [
    (b"\x00\x03\x00\x01x", "not a request"),
    (b"\x00\x01" + b"a" * (MAX_REQUEST + 1) + b"\x00octet\x00", "exceeds"),
    (b"\x00\x01a\x00octet", "does not end in NUL"),
    (b"\x00\x01a\x00octet\x00blksize\x00", "without a value"),
    (b"\x00\x01a\x00octet\x00\x00512\x00", "empty option name"),
])
def test_parser_errors_name_the_problem(buf: bytes, why: str) -> None:
    with pytest.raises(TftpPacketError, match=why):
        parse_request(buf)


def test_request_fields_keep_their_bytes() -> None:
    req = parse_request(struct.pack("!H", 1) + b"caf\xc3\xa9\x00OCTET\x00BlkSize\x001468\x00"
                        b"blksize\x00512\x00")
    assert req.filename == "caf\u00c3\u00a9" and req.mode == "OCTET"  # latin-1: byte for byte
    assert req.option_map() == {"blksize": "1468"}  # names fold case; the first one wins
    with pytest.raises(TftpPathError):
        normalize_tftp_path(req.filename)  # non-ASCII names are refused by the path rule


def test_packet_cache_numbers_blocks_modulo_65536(tmp_path: Path) -> None:
    f = tmp_path / "f"
    data = bytes(range(256)) * 2100  # 537,600 bytes: 67,200 blocks of 8, then an empty one
    f.write_bytes(data)
    cache = tftp._FileCache(max_bytes=64 << 20)
    with f.open("rb") as fh:
        got = cache.acquire(fh.fileno(), 8)
        assert got is not None
        key, pkts = got
        assert len(pkts) == len(data) // 8 + 1 and pkts[-1] == b"\x00\x03" + struct.pack(
            "!H", len(pkts) & 0xFFFF)
        for i in (0, 1, 65534, 65535, 65536, len(pkts) - 2):
            assert pkts[i][:2] == b"\x00\x03"
            assert struct.unpack("!H", pkts[i][2:4])[0] == (i + 1) % 65536
            assert pkts[i][4:] == data[i * 8:(i + 1) * 8]
        assert cache.acquire(fh.fileno(), 8) == (key, pkts)  # shared, not rebuilt
        cache.release(key)
        cache.release(key)
        assert cache.total == 0  # dropped with its last user
    small = tftp._FileCache(max_bytes=1000)
    with f.open("rb") as fh:
        assert small.acquire(fh.fileno(), 512) is None  # does not fit: read per block

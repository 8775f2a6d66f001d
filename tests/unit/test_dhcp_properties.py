"""Property-based tests (hypothesis) of the DHCP codec and of the server's replies.

* decode(encode(p)) == p for generated packets (long options split per RFC 3396, overload of
  file/sname per RFC 2131 §4.1 when needed);
* decode of arbitrary bytes, and of valid packets with bytes flipped, raises nothing but
  codec.DecodeError;
* encode never returns more than the limit it was given; every reply the server builds for a
  generated request fits the client's limit (option 57, at most one Ethernet frame) and the
  server never raises on any datagram.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from pathlib import Path

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from bootserver.dhcp import codec
from bootserver.dhcp import options as o
from bootserver.dhcp.codec import DhcpPacket
from bootserver.dhcp.options import MessageType as MT
from tests.unit.test_dhcp_server import CLIENT, make

SETTINGS = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

ips = st.builds(lambda n: socket.inet_ntoa(struct.pack("!I", n)), st.integers(0, 2**32 - 1))
nonul = st.binary(max_size=128).map(lambda b: b.replace(b"\x00", b"x"))
option_codes = st.integers(1, 254).filter(lambda c: c != o.OPTION_OVERLOAD)
option_values = st.one_of(st.binary(max_size=16), st.binary(max_size=300), st.just(b""))


@st.composite
def packets(draw: st.DrawFn) -> DhcpPacket:
    hlen = draw(st.integers(1, 16))
    opts = draw(st.dictionaries(option_codes, option_values, max_size=12))
    opts[o.MESSAGE_TYPE] = bytes((draw(st.integers(1, 8)),))
    order = draw(st.permutations(list(opts)))
    return DhcpPacket(
        op=draw(st.sampled_from((codec.BOOTREQUEST, codec.BOOTREPLY))),
        xid=draw(st.integers(0, 2**32 - 1)), chaddr=draw(st.binary(min_size=hlen, max_size=hlen)),
        htype=draw(st.integers(0, 255)), hlen=hlen, hops=draw(st.integers(0, 255)),
        secs=draw(st.integers(0, 65535)), flags=draw(st.integers(0, 65535)),
        ciaddr=draw(ips), yiaddr=draw(ips), siaddr=draw(ips), giaddr=draw(ips),
        sname=draw(nonul.map(lambda b: b[:64])), file=draw(nonul),
        options={c: opts[c] for c in order})


@SETTINGS
@given(packets(), st.integers(300, codec.MAX_PACKET_SIZE),
       st.lists(st.integers(0, 255), max_size=20))
def test_decode_inverts_encode(p: DhcpPacket, max_size: int, requested: list[int]) -> None:
    try:
        data = codec.encode(p, max_size=max_size, requested=requested)
    except codec.OptionsTooLarge:
        assume(False)
        return
    assert len(data) <= max_size
    assert codec.decode(data) == p


@SETTINGS
@given(packets(), st.integers(0, 4000))
def test_encode_never_exceeds_its_limit(p: DhcpPacket, max_size: int) -> None:
    try:
        data = codec.encode(p, max_size=max_size)
    except codec.OptionsTooLarge:
        return
    assert len(data) <= max(max_size, codec.BOOTP_MIN_SIZE)


@SETTINGS
@given(st.binary(max_size=1600))
@example(b"")
@example(bytes(236) + codec.MAGIC_COOKIE + bytes((52, 1, 3, 53, 1, 1)))
def test_decode_of_arbitrary_bytes_raises_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(codec.DecodeError):
        codec.decode(data)


def _valid() -> bytes:
    p = DhcpPacket(op=1, xid=7, chaddr=bytes.fromhex("525400000001"), options={
        o.MESSAGE_TYPE: b"\x01", o.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016",
        o.CLIENT_ARCH: b"\x00\x07", o.CLIENT_ID: bytes(300), o.PARAMETER_REQUEST_LIST:
        bytes(range(1, 80))})
    return codec.encode(p, max_size=576)  # overloaded: options in file and sname too


VALID = _valid()
mutations = st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                     min_size=1, max_size=12)


def _mutate(muts: list[tuple[int, int]], cut: int) -> bytes:
    b = bytearray(VALID)
    for at, v in muts:
        b[at] = v
    return bytes(b[:cut])


@SETTINGS
@given(mutations, st.integers(0, len(VALID)))
def test_decode_of_mutated_packets_raises_only_decode_errors(muts: list[tuple[int, int]],
                                                            cut: int) -> None:
    data = _mutate(muts, cut)
    try:
        p = codec.decode(data)
    except codec.DecodeError:
        return
    # what decodes also has typed views that do not raise anything unexpected
    _ = (p.mac, p.vendor_class, p.user_classes, p.client_arch)
    with contextlib.suppress(o.OptionValueError):
        _ = p.message_type


# --- the server ----------------------------------------------------------------------------------

@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, int]:
    """A request and the largest reply its client accepts."""
    mt = draw(st.sampled_from((MT.DISCOVER, MT.REQUEST, MT.INFORM)))
    opts: dict[int, bytes] = {o.MESSAGE_TYPE: bytes((mt,))}
    if draw(st.booleans()):
        opts[o.VENDOR_CLASS] = draw(st.sampled_from(
            (b"PXEClient:Arch:00000:UNDI:002001", b"PXEClient:Arch:00007:UNDI:003016",
             b"HTTPClient:Arch:00016", b"PXEClient")))
    if draw(st.booleans()):
        opts[o.CLIENT_ID] = draw(st.binary(min_size=2, max_size=700))
    if draw(st.booleans()):
        opts[o.PARAMETER_REQUEST_LIST] = draw(st.binary(max_size=255))
    if draw(st.booleans()):
        opts[o.USER_CLASS] = b"iPXE"
    if draw(st.booleans()):
        opts[o.CLIENT_MACHINE_ID] = draw(st.binary(max_size=40))
    limit = 548
    if draw(st.booleans()):
        v = draw(st.integers(0, 65535))
        opts[o.MAX_MESSAGE_SIZE] = struct.pack("!H", v)
        limit = min(max(v, 576) - 28, codec.MAX_PACKET_SIZE)
    relayed = draw(st.booleans())
    if relayed:
        opts[o.RELAY_AGENT_INFO] = draw(st.binary(max_size=120))
    if mt == MT.REQUEST:
        opts[o.REQUESTED_IP] = o.ip_bytes(f"192.0.2.{draw(st.integers(90, 110))}")
    p = DhcpPacket(op=1, xid=draw(st.integers(0, 2**32 - 1)),
                   chaddr=bytes.fromhex("5254000000") + bytes((draw(st.integers(0, 255)),)),
                   giaddr="192.0.2.254" if relayed else codec.ZERO_IP,
                   ciaddr="192.0.2.100" if mt == MT.INFORM else codec.ZERO_IP, options=opts)
    return codec.encode(p, max_size=codec.MAX_PACKET_SIZE), limit


@SETTINGS
@given(requests())
def test_every_server_reply_fits_the_clients_limit(req: tuple[bytes, int]) -> None:
    data, limit = req
    srv, _ = make()
    reply = srv.handle(data, CLIENT, 67)
    if reply is not None:
        assert len(reply.data) <= limit
        codec.decode(reply.data)


@SETTINGS
@given(mutations, st.integers(0, len(VALID)), st.sampled_from((67, 4011)))
def test_server_never_raises_on_mutated_datagrams(muts: list[tuple[int, int]], cut: int,
                                                  port: int) -> None:
    srv, _ = make(mode="proxy" if port == 4011 else "full")
    reply = srv.handle(_mutate(muts, cut), CLIENT, port)
    if reply is not None:
        assert len(reply.data) <= codec.MAX_PACKET_SIZE


# --- the regression corpus (tests/corpus/serve.txt), replayed without sockets -------------------

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "serve.txt"


def test_corpus_dhcp_inputs_are_answered_or_dropped_cleanly() -> None:
    lines = [ln.split(" ", 1) for ln in CORPUS.read_text().splitlines()
             if ln.startswith("dhcp ")]
    assert len(lines) >= 3
    srv, pol = make()
    prx, _ = make(mode="proxy")
    replies = []
    for _, hexdata in lines:
        data = bytes.fromhex(hexdata)
        replies.append(srv.handle(data, CLIENT, 67))
        prx.handle(data, CLIENT, 67)
        prx.handle(data, CLIENT, 4011)
    first = replies[0]  # the 254-byte client identifier: answered, identifier echoed
    assert first is not None and len(first.data) <= 548
    assert codec.decode(first.data).options[o.CLIENT_ID] == b"\x00" + bytes(range(1, 254))
    assert replies[1] is not None
    assert [m.arch for m in pol.seen if m.vendor_class and "00007" in m.vendor_class] == [7]
    assert srv.stats.errors == 0

"""Seeded mutational fuzzing inputs for hcboot's DHCP, TFTP and HTTP servers.

Every generator takes a ``random.Random`` (so a run is reproduced from its seed) and valid seed
inputs, and applies a few mutations: generic ones (bit flips, byte overwrites with interesting
values, truncation, insertion, deletion, duplication, splicing two seeds) and protocol-aware ones
(DHCP option-length lies, huge option counts, odd opcodes and message types, overload lies; TFTP
opcodes, missing NULs, option storms, traversal names; HTTP bad request lines, huge headers, bad
percent-encoding, NULs, traversal, body-length lies).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator, Sequence

from bootserver.dhcp import codec
from bootserver.dhcp import options as o
from bootserver.dhcp.codec import DhcpPacket
from bootserver.dhcp.options import MessageType as MT

INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFE, 0xFF)
TRAVERSAL = ("../../../../etc/passwd", "/etc/passwd", "..\\..\\..\\etc\\passwd",
             "%2e%2e/%2e%2e/etc/passwd", "%252e%252e/%252e%252e/etc/passwd",
             "pxelinux.cfg/../../../etc/shadow", "....//....//etc/passwd", "..", ".", "/",
             "a/" * 300, "\\\\server\\share", "undionly.kpxe/..", "./undionly.kpxe")

Mutation = Callable[[random.Random, bytearray], bytearray]


# --- generic -------------------------------------------------------------------------------------

def bit_flips(rng: random.Random, b: bytearray) -> bytearray:
    for _ in range(rng.randint(1, 8)):
        if b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return b


def byte_sets(rng: random.Random, b: bytearray) -> bytearray:
    for _ in range(rng.randint(1, 6)):
        if b:
            b[rng.randrange(len(b))] = rng.choice((*INTERESTING, rng.randrange(256)))
    return b


def truncate(rng: random.Random, b: bytearray) -> bytearray:
    return b[:rng.randint(0, len(b))]


def insert(rng: random.Random, b: bytearray) -> bytearray:
    at = rng.randint(0, len(b))
    b[at:at] = rng.randbytes(rng.choice((1, 2, 4, 16, 300)))
    return b


def delete(rng: random.Random, b: bytearray) -> bytearray:
    if b:
        at = rng.randrange(len(b))
        del b[at:at + rng.randint(1, 64)]
    return b


def duplicate(rng: random.Random, b: bytearray) -> bytearray:
    if b:
        at = rng.randrange(len(b))
        chunk = b[at:at + rng.randint(1, 64)]
        b[at:at] = chunk * rng.randint(1, 20)
    return b


GENERIC: tuple[Mutation, ...] = (bit_flips, byte_sets, truncate, insert, delete, duplicate)


def mutate(rng: random.Random, data: bytes, extra: Sequence[Mutation] = (),
           others: Sequence[bytes] = (), rounds: int | None = None) -> bytes:
    """``data`` with 1-4 mutations from GENERIC + ``extra`` (or a splice with ``others``)."""
    b = bytearray(data)
    pool = tuple(GENERIC) + tuple(extra)
    for _ in range(rounds or rng.randint(1, 4)):
        if others and rng.random() < 0.05:
            other = rng.choice(others)
            cut = rng.randint(0, len(b))
            b = b[:cut] + bytearray(other[rng.randint(0, len(other)):])
        else:
            b = rng.choice(pool)(rng, b)
    return bytes(b)


# --- DHCP ----------------------------------------------------------------------------------------

def dhcp_seeds() -> list[bytes]:
    """Valid client messages of every kind the server answers."""
    mac = bytes.fromhex("525400f00001")
    srv = o.ip_bytes("192.0.2.1")
    pxe = {o.VENDOR_CLASS: b"PXEClient:Arch:00000:UNDI:002001", o.CLIENT_ARCH: b"\x00\x00",
           o.CLIENT_MACHINE_ID: b"\x00" + bytes(range(16)),
           o.PARAMETER_REQUEST_LIST: bytes([1, 3, 6, 43, 60, 66, 67])}
    uefi = {o.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016", o.CLIENT_ARCH: b"\x00\x07"}

    def p(mt: MT, opts: dict[int, bytes], **kw: object) -> bytes:
        pkt = DhcpPacket(op=1, xid=0xF0221, chaddr=mac, flags=0x8000,
                         options={o.MESSAGE_TYPE: bytes((mt,)), **opts},
                         **kw)  # type: ignore[arg-type]
        return codec.encode(pkt, max_size=1472)

    seeds = [
        p(MT.DISCOVER, pxe), p(MT.DISCOVER, uefi),
        p(MT.DISCOVER, {o.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016"}),
        p(MT.DISCOVER, {o.VENDOR_CLASS: b"HTTPClient:Arch:00016:UNDI:003001"}),
        p(MT.DISCOVER, {o.USER_CLASS: b"iPXE", **pxe}),
        p(MT.DISCOVER, {o.CLIENT_ID: b"\x00" + bytes(253), o.MAX_MESSAGE_SIZE: b"\x02\x40"}),
        p(MT.REQUEST, {o.SERVER_ID: srv, o.REQUESTED_IP: o.ip_bytes("192.0.2.120"), **pxe}),
        p(MT.REQUEST, {o.REQUESTED_IP: o.ip_bytes("192.0.2.121")}),
        p(MT.REQUEST, {}, ciaddr="192.0.2.122"),
        p(MT.INFORM, pxe, ciaddr="192.0.2.123"),
        p(MT.RELEASE, {o.SERVER_ID: srv}, ciaddr="192.0.2.124"),
        p(MT.DECLINE, {o.SERVER_ID: srv, o.REQUESTED_IP: o.ip_bytes("192.0.2.125")}),
        p(MT.DISCOVER, {o.RELAY_AGENT_INFO: b"\x01\x04port\x02\x03abc"}, giaddr="192.0.2.254",
          hops=1),
    ]
    big = DhcpPacket(op=1, xid=0xF0222, chaddr=mac, options={
        o.MESSAGE_TYPE: b"\x01", o.CLIENT_ID: bytes(range(256)) + bytes(150), **pxe})
    seeds.append(codec.encode(big, max_size=576))  # options overloaded into file and sname
    return seeds


def _tlvs(b: bytearray, start: int = codec.OPTIONS_OFFSET) -> list[int]:
    """Offsets of the option codes in the options field (stops at END or a bad length)."""
    out, i = [], start
    while i + 1 < len(b) and b[i] != o.END:
        if b[i] == o.PAD:
            i += 1
            continue
        out.append(i)
        i += 2 + b[i + 1]
    return out


def option_length_lie(rng: random.Random, b: bytearray) -> bytearray:
    offs = _tlvs(b)
    if offs:
        at = rng.choice(offs) + 1
        b[at] = rng.choice((0, 1, 255, max(0, b[at] - 1), min(255, b[at] + 1),
                            rng.randrange(256)))
    return b


def huge_option_count(rng: random.Random, b: bytearray) -> bytearray:
    offs = _tlvs(b)
    end = offs[-1] + 2 + b[offs[-1] + 1] if offs else codec.OPTIONS_OFFSET
    n = rng.choice((100, 300, 700))
    code = rng.choice((None, o.MESSAGE_TYPE, o.CLIENT_ID, o.PARAMETER_REQUEST_LIST, 250))
    many = bytearray()
    for _ in range(n):
        c = code if code is not None else rng.randrange(1, 255)
        ln = rng.randint(0, 2)
        many += bytes((c, ln)) + rng.randbytes(ln)
    b[end:end] = many
    return b


def odd_opcodes(rng: random.Random, b: bytearray) -> bytearray:
    if len(b) > 3:
        field = rng.randrange(3)
        b[field] = rng.choice((*INTERESTING, 3, 6, 16, 17, rng.randrange(256)))
    for at in _tlvs(b):
        if b[at] == o.MESSAGE_TYPE and b[at + 1] == 1 and at + 2 < len(b):
            b[at + 2] = rng.choice((0, 2, 5, 6, 8, 9, 18, 255, rng.randrange(256)))
    return b


def overload_lie(rng: random.Random, b: bytearray) -> bytearray:
    if len(b) < codec.OPTIONS_OFFSET:
        return b
    b[codec.OPTIONS_OFFSET:codec.OPTIONS_OFFSET] = bytes((o.OPTION_OVERLOAD, 1,
                                                          rng.choice((1, 2, 3, 0, 4, 255))))
    for off, size in ((codec.SNAME_OFFSET, codec.SNAME_SIZE), (codec.FILE_OFFSET, codec.FILE_SIZE)):
        if rng.random() < 0.7:
            b[off:off + size] = bytes(rng.choice((rng.randbytes(size), bytes((53, 1, 3)) * (
                size // 3) + bytes(size % 3), bytes((61, 255)) * (size // 2))))
    return b


def dhcp_mutations(rng: random.Random, n: int) -> Iterator[bytes]:
    seeds = dhcp_seeds()
    extra = (option_length_lie, huge_option_count, odd_opcodes, overload_lie)
    for _ in range(n):
        seed = rng.choice(seeds)
        rounds = rng.choice((1, 1, 2, 3))
        if rng.random() < 0.5:  # header and cookie intact: the options parser and the server
            head = seed[:codec.OPTIONS_OFFSET]
            yield head + mutate(rng, seed[codec.OPTIONS_OFFSET:], (), (), rounds)
        else:
            yield mutate(rng, seed, extra, seeds, rounds)


# --- TFTP ----------------------------------------------------------------------------------------

def tftp_request(name: bytes, mode: bytes = b"octet", opts: Sequence[tuple[bytes, bytes]] = (),
                 opcode: int = 1) -> bytes:
    out = struct.pack("!H", opcode) + name + b"\0" + mode + b"\0"
    for k, v in opts:
        out += k + b"\0" + v + b"\0"
    return out


def tftp_seeds(files: Sequence[str]) -> list[bytes]:
    """RRQs for existing files (with and without RFC 2347 options), and the other opcodes.

    No ``timeout`` option for existing files: sessions must end quickly (the client answers
    every DATA with an ERROR)."""
    out = []
    for f in files:
        name = f.encode()
        out += [tftp_request(name), tftp_request(name, b"netascii"),
                tftp_request(name, opts=[(b"blksize", b"1468"), (b"tsize", b"0")]),
                tftp_request(name, opts=[(b"windowsize", b"8"), (b"blksize", b"512")])]
    out += [tftp_request(b"missing.bin", opts=[(b"timeout", b"5")]),
            tftp_request(b"upload.bin", opcode=2),  # WRQ
            struct.pack("!HH", 3, 1) + b"x" * 512,  # DATA
            struct.pack("!HH", 4, 1),  # ACK
            struct.pack("!HH", 5, 1) + b"oops\0",  # ERROR
            struct.pack("!H", 6) + b"blksize\0" + b"512\0"]  # OACK
    return out


def tftp_opcode(rng: random.Random, b: bytearray) -> bytearray:
    if len(b) >= 2:
        b[0:2] = struct.pack("!H", rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 255, 0x0101, 0xFFFF)))
    return b


def tftp_nuls(rng: random.Random, b: bytearray) -> bytearray:
    if rng.random() < 0.5:
        return bytearray(bytes(b).replace(b"\0", b"", rng.randint(1, 4)))
    at = rng.randint(2, max(2, len(b)))
    b[at:at] = b"\0" * rng.randint(1, 8)
    return b


def tftp_option_storm(rng: random.Random, b: bytearray) -> bytearray:
    names = (b"blksize", b"tsize", b"timeout", b"windowsize", b"BLKSIZE", b"multicast", b"x" * 300)
    values = (b"0", b"1", b"7", b"8", b"65464", b"65465", b"99999999999999999999", b"-1", b"",
              b"1e3", b"0x10", b" 512", b"\xff\xfe", b"nan")
    for _ in range(rng.choice((1, 5, 50, 400))):
        b += rng.choice(names) + b"\0" + rng.choice(values) + b"\0"
    return b


def tftp_name(rng: random.Random, b: bytearray) -> bytearray:
    name = rng.choice(TRAVERSAL).encode() if rng.random() < 0.7 else rng.randbytes(
        rng.choice((1, 100, 1100)))
    return bytearray(tftp_request(name, rng.choice((b"octet", b"netascii", b"mail", b"OCTET",
                                                    b"", b"binary"))))


def tftp_mutations(rng: random.Random, n: int, files: Sequence[str]) -> Iterator[bytes]:
    seeds = tftp_seeds(files)
    extra = (tftp_opcode, tftp_nuls, tftp_option_storm, tftp_name)
    for _ in range(n):
        yield mutate(rng, rng.choice(seeds), extra, seeds)


# --- HTTP ----------------------------------------------------------------------------------------

def http_seeds(paths: Sequence[str], host: str) -> list[bytes]:
    out = [f"GET {p} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hc-fuzz\r\n\r\n".encode()
           for p in paths]
    out.append(f"HEAD /healthz HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    out.append(f"GET {paths[0]} HTTP/1.1\r\nHost: {host}\r\nRange: bytes=0-99\r\n\r\n".encode())
    body = b'{"state": "dom0-up"}'
    out.append(f"POST /report/52:54:00:f0:00:01 HTTP/1.1\r\nHost: {host}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
               + body)
    return out


def _http_line(rng: random.Random, b: bytearray) -> bytearray:
    method = rng.choice((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"get",
                         b"G\xffT", b"", b"GET" * 100, b"CONNECT", b"TRACE"))
    target = rng.choice((b"/", b"*", b"", b"http://x/y", b"/healthz", b"/boot/" + b"A" * 5000,
                         b"/images/%", b"/images/%zz", b"/images/%2", b"/images/%%41",
                         b"/images/%00", b"/images/%ff%fe", b"/a\0b", b"/\x80\x81",
                         b"/images/" + rng.choice(TRAVERSAL).encode()))
    version = rng.choice((b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"HTTP/1", b"", b"HTTP/1.1 x",
                          b"http/1.1", b"HTTP/1.1\0"))
    sep = rng.choice((b"\r\n", b"\n", b"\r", b""))
    rest = bytes(b).split(b"\n", 1)[1] if b"\n" in b else b"\r\n"
    return bytearray(b" ".join(x for x in (method, target, version) if x) + sep + rest)


def _http_huge_header(rng: random.Random, b: bytearray) -> bytearray:
    at = bytes(b).find(b"\r\n") + 2
    if rng.random() < 0.5:
        hdr = b"X-Big: " + b"A" * rng.choice((8000, 70000, 300000)) + b"\r\n"
    else:
        hdr = b"".join(b"X-%d: v\r\n" % i for i in range(rng.choice((100, 1000, 20000))))
    b[at:at] = hdr
    return b


def _http_body_lie(rng: random.Random, b: bytearray) -> bytearray:
    head = rng.choice((b"Content-Length: -1", b"Content-Length: 99999999999",
                       b"Content-Length: abc", b"Content-Length: 5\r\nContent-Length: 7",
                       b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
                       b"Content-Length: 100000000", b"Expect: 100-continue",
                       b"Connection: keep-alive", b"Range: bytes=999999-1",
                       b"Range: bytes=-0", b"Range: bytes=a-b,1-", b"Host: \0"))
    at = bytes(b).find(b"\r\n") + 2
    b[at:at] = head + b"\r\n"
    if b"chunked" in head:
        b += rng.choice((b"zz\r\nabc\r\n0\r\n\r\n", b"ffffffffffff\r\n", b"5\r\nab"))
    return b


def _http_nuls(rng: random.Random, b: bytearray) -> bytearray:
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(b))
        b[at:at] = b"\0"
    return b


def http_mutations(rng: random.Random, n: int, paths: Sequence[str],
                   host: str) -> Iterator[bytes]:
    seeds = http_seeds(paths, host)
    extra = (_http_line, _http_huge_header, _http_body_lie, _http_nuls)
    for _ in range(n):
        seed = rng.choice(seeds)
        if rng.random() < 0.6:  # mostly protocol-aware: a request the parser gets far into
            b = bytearray(seed)
            for _ in range(rng.randint(1, 2)):
                b = rng.choice(extra)(rng, b)
            yield bytes(b)
        else:
            yield mutate(rng, seed, extra, seeds)

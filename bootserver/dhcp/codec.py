"""DHCP/BOOTP message codec (RFC 951, RFC 2131 §2, RFC 2132, RFC 3396). Pure: bytes in, bytes out.

:func:`decode` turns a UDP payload into a :class:`DhcpPacket` or raises one specific
:class:`DecodeError` subclass whose message names the field and byte offset at fault.
:func:`encode` is its inverse: options are written in a fixed order (53 first, 54 next, the rest in
the client's parameter-request order, 82 last), long options are split into several instances
(RFC 3396), the message is padded to the 300-byte BOOTP minimum, and if the options do not fit in
the client's maximum message size, the ``file`` and ``sname`` fields are overloaded (RFC 2131 §4.1,
RFC 2132 §9.3) when they are free.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from bootserver.dhcp import options as o
from bootserver.machine import normalize_mac
from homecloud.core.errors import HomecloudError

BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHERNET = 1
FLAG_BROADCAST = 0x8000  # RFC 2131 §2, figure 2

MAGIC_COOKIE = b"\x63\x82\x53\x63"  # RFC 2131 §3: 99.130.83.99
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_SIZE = _HEADER.size  # 236
OPTIONS_OFFSET = HEADER_SIZE + len(MAGIC_COOKIE)  # 240
SNAME_OFFSET, SNAME_SIZE = 44, 64
FILE_OFFSET, FILE_SIZE = 108, 128
BOOTP_MIN_SIZE = 300  # RFC 951: 236-byte header + 64-byte vendor area
# The largest payload that fits an Ethernet frame (1500 - IP - UDP).  Nothing a client sends is
# bigger; anything bigger is refused before parsing.
MAX_PACKET_SIZE = 1472
DEFAULT_MAX_MESSAGE = o.MIN_MAX_MESSAGE_SIZE - o.IP_UDP_HEADERS  # 548, RFC 2131 §2

ZERO_IP = "0.0.0.0"


class DecodeError(HomecloudError, ValueError):
    """A datagram that is not a well-formed DHCP message."""

    def __init__(self, message: str, *, offset: int | None = None, field: str | None = None):
        super().__init__(message)
        self.offset = offset
        self.field = field


class TruncatedPacket(DecodeError):
    """Shorter than the fixed BOOTP header plus the magic cookie (240 bytes)."""


class OversizedPacket(DecodeError):
    """Longer than any client may send (``MAX_PACKET_SIZE``)."""


class BadOpcode(DecodeError):
    """``op`` is neither BOOTREQUEST (1) nor BOOTREPLY (2)."""


class BadHlen(DecodeError):
    """``hlen`` is 0 or more than the 16 bytes of ``chaddr``."""


class BadMagicCookie(DecodeError):
    """Bytes 236-239 are not 99.130.83.99: a plain BOOTP packet or garbage."""


class OptionOverrun(DecodeError):
    """An option's length byte (or the length byte itself) runs past the end of its field."""


class BadOverload(DecodeError):
    """Option 52 is not a single byte 1, 2 or 3."""


class MissingMessageType(DecodeError):
    """No option 53: a BOOTP message, which this server does not answer."""


class BadMessageType(DecodeError):
    """Option 53 is not one byte, or names no DHCP message type."""


class EncodeError(HomecloudError, ValueError):
    """A packet that cannot be serialised."""


class FieldTooLong(EncodeError):
    """``sname``, ``file`` or ``chaddr`` is longer than its fixed field."""


class OptionsTooLarge(EncodeError):
    """The options do not fit in the maximum message size even with option overload."""


@dataclass(slots=True)
class DhcpPacket:
    """One DHCP message.  Addresses are dotted-quad strings; ``chaddr`` holds ``hlen`` bytes;
    ``options`` maps code -> payload in wire order, each code once (RFC 3396 instances are joined
    on decode and split again on encode).  Option 52 is a transport detail: decode consumes it and
    encode adds it when it overloads ``file``/``sname``."""

    op: int
    xid: int
    chaddr: bytes
    htype: int = HTYPE_ETHERNET
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: str = ZERO_IP
    yiaddr: str = ZERO_IP
    siaddr: str = ZERO_IP
    giaddr: str = ZERO_IP
    sname: bytes = b""
    file: bytes = b""
    options: dict[int, bytes] = field(default_factory=dict)

    # --- typed views of common options ---
    @property
    def message_type(self) -> o.MessageType | None:
        raw = self.options.get(o.MESSAGE_TYPE)
        return None if raw is None else o.decode_message_type(raw)

    @property
    def mac(self) -> str | None:
        """The normalised Ethernet MAC in ``chaddr``, or None for other hardware types."""
        if self.htype != HTYPE_ETHERNET or self.hlen != 6 or len(self.chaddr) < 6:
            return None
        return self.chaddr[:6].hex(":")  # == normalize_mac() form, without the regex

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)

    @property
    def vendor_class(self) -> str | None:
        raw = self.options.get(o.VENDOR_CLASS)
        return None if raw is None else o.decode_text(raw)

    @property
    def user_classes(self) -> list[str]:
        raw = self.options.get(o.USER_CLASS)
        return [] if raw is None else o.decode_user_class(raw)

    @property
    def client_arch(self) -> int | None:
        raw = self.options.get(o.CLIENT_ARCH)
        return None if raw is None else o.decode_client_arch(raw)

    def ip_option(self, code: int) -> str | None:
        raw = self.options.get(code)
        return None if raw is None else o.decode_ip(code, raw)


# --- decode ---

def _parse_field(data: bytes, start: int, end: int, name: str,
                 opts: dict[int, bytes]) -> None:
    i = start
    while i < end:
        code = data[i]
        if code == o.PAD:
            i += 1
            continue
        if code == o.END:
            return
        if i + 1 >= end:
            raise OptionOverrun(
                f"option {code} at offset {i} in {name}: no length byte before the end of the field"
                f" (offset {end})", offset=i, field=name)
        n = data[i + 1]
        if i + 2 + n > end:
            raise OptionOverrun(
                f"option {code} at offset {i} in {name}: length {n} runs past the end of the field"
                f" (offset {end}, {end - i - 2} bytes left)", offset=i, field=name)
        value = data[i + 2:i + 2 + n]
        prev = opts.get(code)
        opts[code] = value if prev is None else prev + value  # RFC 3396 §7: concatenate
        i += 2 + n
    # Reaching the end of the field without END is tolerated (many clients omit it in sname/file).


def _cstr(raw: bytes) -> bytes:
    nul = raw.find(b"\x00")
    return raw if nul < 0 else raw[:nul]


def decode(data: bytes, *, max_size: int = MAX_PACKET_SIZE,
           require_message_type: bool = True) -> DhcpPacket:
    """Parse one DHCP message; raise a :class:`DecodeError` subclass naming the fault."""
    n = len(data)
    if n > max_size:
        raise OversizedPacket(f"packet of {n} bytes is larger than the {max_size}-byte maximum",
                              offset=max_size)
    if n < OPTIONS_OFFSET:
        raise TruncatedPacket(
            f"packet of {n} bytes is shorter than the 236-byte BOOTP header plus the 4-byte magic"
            f" cookie at offset {HEADER_SIZE}", offset=n)
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     bootfile) = _HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise BadOpcode(f"op (offset 0) is {op}, not 1 (BOOTREQUEST) or 2 (BOOTREPLY)",
                        offset=0, field="op")
    if hlen == 0 or hlen > 16:
        raise BadHlen(f"hlen (offset 2) is {hlen}: must be 1-16 (the size of chaddr)",
                      offset=2, field="hlen")
    cookie = data[HEADER_SIZE:OPTIONS_OFFSET]
    if cookie != MAGIC_COOKIE:
        raise BadMagicCookie(f"magic cookie at offset {HEADER_SIZE} is {cookie.hex()},"
                             f" not {MAGIC_COOKIE.hex()}", offset=HEADER_SIZE, field="cookie")
    opts: dict[int, bytes] = {}
    _parse_field(data, OPTIONS_OFFSET, n, "options", opts)
    overload = 0
    raw52 = opts.pop(o.OPTION_OVERLOAD, None)
    if raw52 is not None:
        if len(raw52) != 1 or raw52[0] not in (1, 2, 3):
            raise BadOverload(f"option 52 (overload) must be one byte 1-3, got {raw52.hex()!r}",
                              field="options")
        overload = raw52[0]
    # RFC 2131 §4.1: options, then file, then sname.  Option 52 inside them means nothing.
    if overload & o.OVERLOAD_FILE:
        _parse_field(data, FILE_OFFSET, FILE_OFFSET + FILE_SIZE, "file", opts)
        bootfile = b""
    if overload & o.OVERLOAD_SNAME:
        _parse_field(data, SNAME_OFFSET, SNAME_OFFSET + SNAME_SIZE, "sname", opts)
        sname = b""
    opts.pop(o.OPTION_OVERLOAD, None)
    mt = opts.get(o.MESSAGE_TYPE)
    if mt is None:
        if require_message_type:
            raise MissingMessageType("no option 53 (DHCP message type): a BOOTP packet",
                                     field="options")
    elif len(mt) != 1 or not 1 <= mt[0] <= 8:
        raise BadMessageType(f"option 53 (message type) is {mt.hex()!r}: expected one byte 1-8",
                             field="options")
    return DhcpPacket(
        op=op, htype=htype, hlen=hlen, hops=hops, xid=xid, secs=secs, flags=flags,
        ciaddr=socket.inet_ntoa(ciaddr), yiaddr=socket.inet_ntoa(yiaddr),
        siaddr=socket.inet_ntoa(siaddr), giaddr=socket.inet_ntoa(giaddr),
        chaddr=chaddr[:hlen], sname=_cstr(sname), file=_cstr(bootfile), options=opts)


def peek_mac(data: bytes) -> str | None:
    """Best-effort MAC of a datagram that may not decode (for log lines about bad packets)."""
    if len(data) < 34 or data[1] != HTYPE_ETHERNET or data[2] != 6:
        return None
    return normalize_mac(data[28:34].hex())  # always valid: 12 hex digits


def safe_mac(data: bytes) -> str:
    """:func:`peek_mac` that never fails: "unknown" when there is none."""
    try:
        return peek_mac(data) or "unknown"
    except Exception:
        return "unknown"


def hex_preview(data: bytes, n: int = 64) -> str:
    """The first ``n`` bytes in hex (for log lines about bad packets)."""
    return data[:n].hex() + ("..." if len(data) > n else "")


# --- encode ---

_NOT_ORDERED = frozenset((o.PAD, o.END, o.OPTION_OVERLOAD, o.MESSAGE_TYPE, o.SERVER_ID,
                         o.RELAY_AGENT_INFO))


def ordered_codes(codes: Collection[int], requested: Sequence[int] = ()) -> list[int]:
    """Wire order of option codes: 53, 54, then those the client asked for in its order (option
    55), then the others as given, and 82 last (RFC 3046 §2.1)."""
    out = [c for c in (o.MESSAGE_TYPE, o.SERVER_ID) if c in codes]
    seen: set[int] = set()
    for c in requested:
        if c in codes and c not in _NOT_ORDERED and c not in seen:
            out.append(c)
            seen.add(c)
    for c in codes:
        if c not in _NOT_ORDERED and c not in seen:
            out.append(c)
            seen.add(c)
    if o.RELAY_AGENT_INFO in codes:
        out.append(o.RELAY_AGENT_INFO)
    return out


def _pieces(pkt: DhcpPacket, codes: list[int]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for code in codes:
        value = pkt.options[code]
        if not value:
            out.append((code, b""))
        for k in range(0, len(value), 255):  # RFC 3396 §5: split long options
            out.append((code, value[k:k + 255]))
    return out


def _fill(pieces: list[tuple[int, bytes]], capacity: int, next_capacity: int) -> bytes:
    """Take option instances from ``pieces`` (in place) into a field of ``capacity`` bytes.

    An instance that does not fit moves whole to the next field when it fits there; otherwise it
    is split (RFC 3396 allows any split; the receiver concatenates)."""
    out = bytearray()
    while pieces:
        code, value = pieces[0]
        need = 2 + len(value)
        room = capacity - len(out)
        if need <= room:
            out += bytes((code, len(value))) + value
            pieces.pop(0)
            continue
        if need <= next_capacity or room < 3:
            break
        take = room - 2
        out += bytes((code, take)) + value[:take]
        pieces[0] = (code, value[take:])
        break
    return bytes(out)


_TL = struct.Struct("!BB").pack


def _overload(pkt: DhcpPacket, pieces: list[tuple[int, bytes]], room: int,
              max_size: int) -> tuple[bytearray, bytes, bytes]:
    """RFC 2131 §4.1 / RFC 2132 §9.3: options that do not fit the options field go on into
    'file' first, then 'sname', if those carry nothing else.  Returns (options, sname, file)."""
    total = sum(2 + len(v) for _, v in pieces)
    sname, bootfile = pkt.sname, pkt.file
    spill = []
    if not pkt.file:
        spill.append((o.OVERLOAD_FILE, FILE_SIZE - 1))  # -1: END
    if not pkt.sname:
        spill.append((o.OVERLOAD_SNAME, SNAME_SIZE - 1))
    main_cap = room - 3  # option 52 takes 3 bytes
    body = bytearray(_fill(pieces, main_cap, spill[0][1] if spill else 0))
    overload = 0
    for k, (flag, cap) in enumerate(spill):
        if not pieces:
            break
        nxt = spill[k + 1][1] if k + 1 < len(spill) else 0
        chunk = _fill(pieces, cap, nxt) + bytes((o.END,))
        if flag == o.OVERLOAD_FILE:
            bootfile = chunk
        else:
            sname = chunk
        overload |= flag
    if pieces:
        left = sum(2 + len(v) for _, v in pieces)
        raise OptionsTooLarge(
            f"{total} bytes of options do not fit in a {max_size}-byte message"
            f" ({left} bytes left over after overloading file/sname)")
    body += bytes((o.OPTION_OVERLOAD, 1, overload))
    return body, sname, bootfile


def encode(pkt: DhcpPacket, *, max_size: int = DEFAULT_MAX_MESSAGE,
           requested: Sequence[int] = ()) -> bytes:
    """Serialise ``pkt`` into at most ``max_size`` bytes (but at least 300).

    ``requested`` is the client's parameter request list (option 55), which orders the options."""
    if len(pkt.sname) > SNAME_SIZE:
        raise FieldTooLong(f"sname is {len(pkt.sname)} bytes, the field holds {SNAME_SIZE}")
    if len(pkt.file) > FILE_SIZE:
        raise FieldTooLong(f"file is {len(pkt.file)} bytes, the field holds {FILE_SIZE}")
    if len(pkt.chaddr) > 16:
        raise FieldTooLong(f"chaddr is {len(pkt.chaddr)} bytes, the field holds 16")
    max_size = max(max_size, BOOTP_MIN_SIZE)
    codes = ordered_codes(pkt.options, requested)
    sname, bootfile = pkt.sname, pkt.file
    room = max_size - OPTIONS_OFFSET - 1  # -1: END
    body = bytearray()
    opts = pkt.options
    for c in codes:  # fast path: every option short, all fit in the options field
        v = opts[c]
        n = len(v)
        if n > 255:
            body = bytearray(room + 1)
            break
        body.append(c)
        body.append(n)
        body += v
    if len(body) > room:  # long options (RFC 3396) or overload needed
        pieces = _pieces(pkt, codes)
        total = sum(2 + len(v) for _, v in pieces)
        if total <= room:
            body = bytearray(b"".join(_TL(c, len(v)) + v for c, v in pieces))
        else:
            body, sname, bootfile = _overload(pkt, pieces, room, max_size)
    body.append(o.END)
    aton = socket.inet_aton
    head = _HEADER.pack(
        pkt.op, pkt.htype, pkt.hlen, pkt.hops, pkt.xid & 0xFFFFFFFF, pkt.secs, pkt.flags,
        aton(pkt.ciaddr), aton(pkt.yiaddr), aton(pkt.siaddr), aton(pkt.giaddr),
        pkt.chaddr, sname, bootfile)
    out = head + MAGIC_COOKIE + body
    if len(out) < BOOTP_MIN_SIZE:
        out += bytes(BOOTP_MIN_SIZE - len(out))
    return bytes(out)

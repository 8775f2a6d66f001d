"""TFTP packets (RFC 1350, options RFC 2347/2348/2349, windowsize RFC 7440): constants, the
request parser, OACK/ERROR codecs and option negotiation.  Pure: no sockets."""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from homecloud.core.errors import HomecloudError

log = logging.getLogger("homecloud.tftp")

MIN_BLKSIZE = 8  # RFC 2348
MAX_BLKSIZE = 65464  # RFC 2348
DEFAULT_BLKSIZE = 512
MAX_NAME = 1024  # longest accepted file name (DHCP's file field is 128 bytes)
MAX_REQUEST = 2048  # RFC 2347 limits a request to 512 octets; be lenient but bounded
SESSION_TIMEOUT = 2.0  # default seconds before an unacknowledged window is resent
SESSION_RETRIES = 5  # retransmissions without progress before a session ends
MAX_TIMEOUT = 10  # largest "timeout" option honoured (RFC 2349 allows 1..255)
MAX_WINDOWSIZE = 32  # largest RFC 7440 windowsize granted (a client may ask up to 65535)
WINDOW_BYTES = 128 * 1024  # a window never holds more data than this (socket send buffer)
MAX_SESSIONS = 256  # transfers at once
MAX_PER_CLIENT = 8  # transfers at once from one client address
REQUESTS_PER_ROUND = 64  # requests read from the request port per poll round
CACHE_BYTES = 256 << 20  # file contents held in memory for running transfers, at most
CACHE_FILE_MAX = 32 << 20  # larger files are read with preadv per block: a cache fill reads
# the whole file on the server thread, which must not stall every other transfer for long
HALF_OPEN_GRACE = 0.5  # seconds a half-open session is safe from eviction at a per-client cap

# TFTP opcodes and error codes (RFC 1350, RFC 2347)
OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 2, 3, 4, 5, 6
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_ILLEGAL = 4
ERR_UNKNOWN_TID = 5  # never sent: session sockets are connected (see the module doc)
ERR_OPTIONS = 8


class TftpPacketError(HomecloudError, ValueError):
    """A TFTP packet that does not parse; the message names what is wrong and quotes the bytes.

    The parsers below raise nothing else, whatever the input (tests/unit/test_tftp_codec.py)."""


@dataclass(frozen=True)
class TftpRequest:
    """An RRQ or WRQ as sent.  Strings are the packet's bytes decoded as latin-1 (every byte
    maps to one character, so ``encode_request`` gives the same bytes back); ``options`` keeps
    the order and spelling of the packet."""

    opcode: int
    filename: str
    mode: str
    options: tuple[tuple[str, str], ...] = ()

    def option_map(self) -> dict[str, str]:
        """Options by lower-cased name; the first of repeated names wins (RFC 2347: names are
        case-insensitive)."""
        out: dict[str, str] = {}
        for k, v in self.options:
            out.setdefault(k.lower(), v)
        return out


def _quote(buf: bytes) -> str:
    return repr(buf[:40]) + ("..." if len(buf) > 40 else "")


def parse_request(buf: bytes) -> TftpRequest:
    """Parse an RRQ/WRQ: opcode, then NUL-terminated filename, mode, and option name/value pairs.

    Raises TftpPacketError for anything else: another opcode, more than MAX_REQUEST bytes, a
    missing terminator, an empty filename or mode, an option without a value or an empty option
    name.  NULs after the last complete field (padding some ROMs add) are ignored."""
    if len(buf) < 2:
        raise TftpPacketError(f"request of {len(buf)} bytes has no opcode: {_quote(buf)}")
    if len(buf) > MAX_REQUEST:
        raise TftpPacketError(f"request of {len(buf)} bytes exceeds {MAX_REQUEST}")
    opcode = (buf[0] << 8) | buf[1]
    if opcode not in (OP_RRQ, OP_WRQ):
        raise TftpPacketError(f"opcode {opcode} is not a request: {_quote(buf)}")
    body = buf[2:]
    if not body.endswith(b"\0"):
        raise TftpPacketError(f"request does not end in NUL: {_quote(buf)}")
    fields = body[:-1].split(b"\0")
    # trailing padding NULs; an option's empty value ("name\0\0") is kept
    while len(fields) > 2 and fields[-1] == b"" and (len(fields) % 2 or fields[-2] == b""):
        fields.pop()
    if len(fields) < 2:
        raise TftpPacketError(f"request without a mode: {_quote(buf)}")
    if not fields[0]:
        raise TftpPacketError(f"request with an empty file name: {_quote(buf)}")
    if not fields[1]:
        raise TftpPacketError(f"request with an empty mode: {_quote(buf)}")
    rest = fields[2:]
    if len(rest) % 2:
        raise TftpPacketError(f"option {rest[-1][:40]!r} without a value: {_quote(buf)}")
    options = []
    for i in range(0, len(rest), 2):
        if not rest[i]:
            raise TftpPacketError(f"empty option name: {_quote(buf)}")
        options.append((rest[i].decode("latin-1"), rest[i + 1].decode("latin-1")))
    return TftpRequest(opcode, fields[0].decode("latin-1"), fields[1].decode("latin-1"),
                       tuple(options))


def encode_request(req: TftpRequest) -> bytes:
    """The packet for ``req`` (the inverse of parse_request for what it accepts)."""
    parts = [req.filename, req.mode, *(s for kv in req.options for s in kv)]
    return struct.pack("!H", req.opcode) + b"".join(p.encode("latin-1") + b"\0" for p in parts)


def encode_oack(options: Mapping[str, int | str]) -> bytes:
    return struct.pack("!H", OP_OACK) + b"".join(
        f"{k}\0{v}\0".encode("latin-1") for k, v in options.items())


def parse_oack(buf: bytes) -> dict[str, str]:
    """Options of an OACK (RFC 2347), names as sent.  Raises TftpPacketError."""
    if len(buf) < 2 or (buf[0] << 8 | buf[1]) != OP_OACK:
        raise TftpPacketError(f"not an OACK: {_quote(buf)}")
    if len(buf) == 2:
        return {}
    if not buf.endswith(b"\0"):
        raise TftpPacketError(f"OACK does not end in NUL: {_quote(buf)}")
    fields = buf[2:-1].split(b"\0")
    if len(fields) % 2:
        raise TftpPacketError(f"OACK option without a value: {_quote(buf)}")
    return {fields[i].decode("latin-1"): fields[i + 1].decode("latin-1")
            for i in range(0, len(fields), 2)}


def encode_error(code: int, message: str) -> bytes:
    """An ERROR packet (RFC 1350); the message is made ASCII and cut at 200 characters."""
    text = message.encode("ascii", "replace")[:200].replace(b"\0", b"?")
    return struct.pack("!HH", OP_ERROR, code & 0xFFFF) + text + b"\0"


def parse_error(buf: bytes) -> tuple[int, str]:
    """(code, message) of an ERROR packet; a missing final NUL is tolerated (some clients send
    none).  Raises TftpPacketError."""
    if len(buf) < 4 or (buf[0] << 8 | buf[1]) != OP_ERROR:
        raise TftpPacketError(f"not an ERROR packet: {_quote(buf)}")
    return (buf[2] << 8) | buf[3], buf[4:].split(b"\0", 1)[0].decode("latin-1")


def negotiate_options(requested: Mapping[str, str], *, max_timeout: int = MAX_TIMEOUT,
                      max_windowsize: int = MAX_WINDOWSIZE) -> dict[str, int]:
    """The options to acknowledge for an RRQ's options (names case-insensitive, RFC 2347).

    blksize (RFC 2348): lowered to 65464; below 8 or not a number it is declined (the transfer
    uses 512).  tsize (RFC 2349): acknowledged (the caller fills in the real size).  timeout
    (RFC 2349): 1..max_timeout echoed as asked, anything else declined (the OACK may not carry
    another value, so the server's own timeout applies).  windowsize (RFC 7440): 1..65535,
    lowered to max_windowsize and to WINDOW_BYTES / blksize (at least 1); declined outside
    1..65535.  Any other option is declined and never appears in the OACK."""
    out: dict[str, int] = {}
    for key, value in requested.items():
        name = key.lower()
        if name not in ("blksize", "tsize", "timeout", "windowsize"):
            log.debug("ignoring unsupported option %r", key)
            continue
        v = value.strip()
        if not (v.isascii() and v.isdigit()) or len(v) > 20:
            log.info("ignoring option %s=%r: not a decimal number", key, value[:40])
            continue
        num = int(v)
        if name == "blksize":
            if num < MIN_BLKSIZE:
                log.info("ignoring blksize %d < %d", num, MIN_BLKSIZE)
                continue
            out["blksize"] = min(num, MAX_BLKSIZE)
        elif name == "tsize":
            out["tsize"] = 0
        elif name == "timeout":
            if 1 <= num <= max_timeout:
                out["timeout"] = num
            else:
                log.info("declining timeout %d (honoured: 1..%d)", num, max_timeout)
        elif 1 <= num <= 65535:
            out["windowsize"] = num
    if "windowsize" in out:
        blksize = out.get("blksize", DEFAULT_BLKSIZE)
        out["windowsize"] = max(1, min(out["windowsize"], max_windowsize,
                                       WINDOW_BYTES // blksize))
    return out

"""DHCP option codes and value helpers (pure: no sockets, no state).

Codes are named after the RFC that defines them; policy and server code use these names, never
bare numbers.  Value helpers convert between option payload bytes and Python values and raise
:class:`OptionValueError` (naming the option) on payloads of the wrong shape.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import struct
from collections.abc import Iterable, Mapping

from homecloud.core.errors import HomecloudError

# --- RFC 2132 §3 / §9: framing and the DHCP extensions -----------------------------------------
PAD = 0
END = 255

# RFC 2132 §3
SUBNET_MASK = 1
ROUTER = 3
DNS_SERVERS = 6
HOSTNAME = 12
DOMAIN_NAME = 15
# RFC 2132 §5.1: interface MTU, 16 bits, at least 68
INTERFACE_MTU = 26
MIN_MTU = 68
BROADCAST_ADDRESS = 28
VENDOR_SPECIFIC = 43  # §8.4; for PXE clients: PXE vendor-encapsulated sub-options (PXE 2.1 §2.4)

# RFC 2132 §9
REQUESTED_IP = 50
LEASE_TIME = 51
OPTION_OVERLOAD = 52
MESSAGE_TYPE = 53
SERVER_ID = 54
PARAMETER_REQUEST_LIST = 55
MESSAGE = 56
MAX_MESSAGE_SIZE = 57
RENEWAL_TIME = 58  # T1
REBINDING_TIME = 59  # T2
VENDOR_CLASS = 60
CLIENT_ID = 61
TFTP_SERVER_NAME = 66
BOOTFILE_NAME = 67

# RFC 3004: user class (iPXE sends the bare string "iPXE" instead of the length-prefixed form)
USER_CLASS = 77
# RFC 3046: relay agent information, echoed back unchanged as the last option
RELAY_AGENT_INFO = 82
# RFC 4578 §2.1-§2.3: PXE client system architecture, network interface id, machine UUID
CLIENT_ARCH = 93
CLIENT_NDI = 94
CLIENT_MACHINE_ID = 97

# RFC 2132 §9.3: values of option 52
OVERLOAD_FILE = 1
OVERLOAD_SNAME = 2
OVERLOAD_BOTH = 3

# PXE 2.1 §2.4 table 2-1: sub-options of option 43 for PXE clients
PXE_DISCOVERY_CONTROL = 6
# bit 3 of PXE_DISCOVERY_CONTROL: "if a boot file name is present in the initial DHCP or ProxyDHCP
# offer, download it (no boot server discovery, no menu)".
PXE_DISCOVERY_USE_BOOTFILE = 0x08

PXE_VENDOR_CLASS = "PXEClient"  # prefix of option 60 sent by PXE ROMs, and what servers echo

# RFC 2131 §2: the smallest message a client must accept is a 576-byte IP datagram.
MIN_MAX_MESSAGE_SIZE = 576
IP_UDP_HEADERS = 28


class MessageType(enum.IntEnum):
    """RFC 2132 §9.6: values of option 53."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class OptionValueError(HomecloudError, ValueError):
    """An option payload has the wrong shape for its code."""

    def __init__(self, code: int, value: bytes, why: str) -> None:
        super().__init__(f"option {code}: {why} (payload {value[:32].hex()})")
        self.code = code
        self.value = value


# --- encoders ------------------------------------------------------------------------------------

def ip_bytes(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


def ips_bytes(addrs: Iterable[str]) -> bytes:
    return b"".join(ipaddress.IPv4Address(a).packed for a in addrs)


def u32_bytes(value: int) -> bytes:
    return struct.pack("!I", value)


@functools.lru_cache(maxsize=64)
def lease_time_options(lease_time: int) -> dict[int, bytes]:
    """Options 51, 58 and 59 for a lease of ``lease_time`` seconds (a shared dict: do not
    modify it)."""
    return {LEASE_TIME: u32_bytes(lease_time),
            RENEWAL_TIME: u32_bytes(lease_time // 2),  # RFC 2131 §4.4.5 T1
            REBINDING_TIME: u32_bytes(lease_time * 7 // 8)}  # T2


def u16_bytes(value: int) -> bytes:
    return struct.pack("!H", value)


def encode_suboptions(subs: Mapping[int, bytes]) -> bytes:
    """Vendor-encapsulated sub-options (RFC 2132 §8.4), terminated by END as PXE 2.1 requires."""
    out = bytearray()
    for code, value in subs.items():
        if len(value) > 255:
            raise OptionValueError(code, value, "sub-option longer than 255 bytes")
        out += bytes((code, len(value))) + value
    out.append(END)
    return bytes(out)


def pxe_vendor_options(discovery_control: int = PXE_DISCOVERY_USE_BOOTFILE) -> bytes:
    """Option 43 telling a PXE ROM to take the boot file from this offer (PXE 2.1 §2.4)."""
    return encode_suboptions({PXE_DISCOVERY_CONTROL: bytes((discovery_control,))})


# --- decoders ------------------------------------------------------------------------------------

def decode_ip(code: int, value: bytes) -> str:
    if len(value) != 4:
        raise OptionValueError(code, value, f"expected 4 bytes (an IPv4 address), got {len(value)}")
    return str(ipaddress.IPv4Address(value))


def decode_u16(code: int, value: bytes) -> int:
    if len(value) != 2:
        raise OptionValueError(code, value, f"expected a 16-bit value, got {len(value)} bytes")
    return int(struct.unpack("!H", value)[0])


def decode_u32(code: int, value: bytes) -> int:
    if len(value) != 4:
        raise OptionValueError(code, value, f"expected a 32-bit value, got {len(value)} bytes")
    return int(struct.unpack("!I", value)[0])


_MESSAGE_TYPES = {bytes((m.value,)): m for m in MessageType}


def decode_message_type(value: bytes) -> MessageType:
    mt = _MESSAGE_TYPES.get(value)
    if mt is not None:
        return mt
    if len(value) != 1:
        raise OptionValueError(MESSAGE_TYPE, value, f"expected 1 byte, got {len(value)}")
    raise OptionValueError(MESSAGE_TYPE, value, f"unknown message type {value[0]}")


def decode_text(value: bytes) -> str:
    """NVT ASCII text (RFC 2132 §2): trailing NULs (some ROMs add one) are dropped."""
    return value.rstrip(b"\x00").decode("ascii", errors="replace")


def decode_client_arch(value: bytes) -> int | None:
    """RFC 4578 §2.1: a list of 16-bit architecture types; the first one is the client's.

    Returns None for an empty or odd-length payload (a malformed option is ignored, not fatal)."""
    if len(value) < 2 or len(value) % 2:
        return None
    return int(struct.unpack_from("!H", value)[0])


def decode_user_class(value: bytes) -> list[str]:
    """Option 77: RFC 3004 instances (length byte + data, repeated), or the raw-string form that
    iPXE and many other clients send ("iPXE").  A payload that does not parse exactly as RFC 3004
    instances of printable data is one raw string."""
    items: list[str] = []
    i = 0
    ok = bool(value)
    while ok and i < len(value):
        n = value[i]
        chunk = value[i + 1:i + 1 + n]
        if n == 0 or len(chunk) != n or not all(0x20 <= b < 0x7F for b in chunk):
            ok = False
            break
        items.append(chunk.decode("ascii"))
        i += 1 + n
    if ok:
        return items
    text = decode_text(value)
    return [text] if text else []


def encode_user_class(classes: Iterable[str]) -> bytes:
    """RFC 3004 form of option 77."""
    out = bytearray()
    for c in classes:
        raw = c.encode("ascii")
        if not 0 < len(raw) <= 255:
            raise OptionValueError(USER_CLASS, raw, "user class instance must be 1-255 bytes")
        out += bytes((len(raw),)) + raw
    return bytes(out)


def is_pxe_vendor_class(vendor_class: str | None) -> bool:
    return vendor_class is not None and vendor_class.startswith(PXE_VENDOR_CLASS)


# UEFI 2.x §24.7 HTTP Boot: "HTTPClient:Arch:00016:UNDI:003001"; the reply carries option 60
# "HTTPClient" and a full URL as the boot file.
HTTP_VENDOR_CLASS = "HTTPClient"


def is_http_vendor_class(vendor_class: str | None) -> bool:
    return vendor_class is not None and vendor_class.startswith(HTTP_VENDOR_CLASS)


def client_max_message_size(value: bytes | None) -> int:
    """The largest DHCP message (UDP payload) a client accepts, from option 57.

    Option 57 is read as the IP datagram size (RFC 2131 §2 sizes the minimum, 576, that way, and
    dnsmasq reads it so too); values below 576 or malformed ones fall back to 576."""
    size = MIN_MAX_MESSAGE_SIZE
    if value is not None and len(value) == 2:
        size = max(size, int(struct.unpack("!H", value)[0]))
    return size - IP_UDP_HEADERS

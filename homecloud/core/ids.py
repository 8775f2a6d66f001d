"""Identifiers with one parsing rule each: MAC addresses and AoE targets (``eSHELF.SLOT``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from homecloud.core.errors import HomecloudError

_MAC_HEX = re.compile(r"[0-9a-f]{12}")
_TARGET_RE = re.compile(r"^e?(\d+)\.(\d+)$")


class BadMac(HomecloudError, ValueError):
    """A MAC address in none of the accepted spellings."""


class BadTarget(HomecloudError, ValueError):
    """An AoE target that is not ``eSHELF.SLOT`` or out of range."""


def normalize_mac(value: object) -> str:
    """``52:54:00:AB:CD:EF``, ``52-54-00-ab-cd-ef``, ``5254.00ab.cdef``, ``525400abcdef`` and
    ``01-52-54-...`` (pxelinux's ARP type prefix) all become ``52:54:00:ab:cd:ef``."""
    if not isinstance(value, str):
        raise BadMac(f"MAC must be a string, got {type(value).__name__} {value!r}"
                     " (quote it in YAML: an unquoted MAC of digits can parse as a number)")
    s = value.strip().lower()
    hexs = re.sub(r"[:\-.]", "", s)
    if len(hexs) == 14 and hexs.startswith("01") and s[:3] in ("01-", "01:"):
        hexs = hexs[2:]
    if not _MAC_HEX.fullmatch(hexs):
        raise BadMac(f"not a MAC address: {value!r}")
    return ":".join(hexs[i:i + 2] for i in range(0, 12, 2))


def mac_bytes(mac: str | bytes) -> bytes:
    """A MAC as its 6 bytes (any spelling :func:`normalize_mac` takes, or 6 bytes as they are)."""
    if isinstance(mac, bytes):
        if len(mac) != 6:
            raise BadMac(f"MAC must be 6 bytes, got {len(mac)}")
        return mac
    return bytes.fromhex(normalize_mac(mac).replace(":", ""))


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


@dataclass(frozen=True, order=True)
class Target:
    """An AoE address: shelf (major, 16 bits) and slot (minor, 8 bits), written ``eS.L``.

    Shelf 0xFFFF and slot 0xFF are the protocol's broadcast values, never a target's address."""

    shelf: int
    slot: int

    def __post_init__(self) -> None:
        if not (0 <= self.shelf < 0xFFFF and 0 <= self.slot < 0xFF):
            raise BadTarget(f"AoE target e{self.shelf}.{self.slot} out of range"
                            " (shelf 0-65534, slot 0-254)")

    @classmethod
    def parse(cls, text: object) -> Target:
        m = _TARGET_RE.match(text.strip()) if isinstance(text, str) else None
        if not m:
            raise BadTarget(f"not an AoE target (want eSHELF.SLOT, e.g. e1.0): {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"e{self.shelf}.{self.slot}"

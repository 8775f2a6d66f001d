"""Plain data passed between the protocol servers and the policy (no I/O, no imports upward)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 4578 §2.1 client system architecture types (option 93), IANA registry names.
ARCH_BIOS = 0
ARCH_EFI_IA32 = 6
ARCH_EFI_BC = 7  # EFI byte code (historically reused by firmwares for x86-64)
ARCH_EFI_X64 = 9
ARCH_EFI_ARM32 = 10
ARCH_EFI_ARM64 = 11
ARCH_EFI_X64_HTTP = 16

_MAC_HEX = re.compile(r"[0-9a-f]{12}")


class BadMac(ValueError):
    """A MAC address in none of the accepted spellings."""


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


@dataclass(frozen=True)
class Machine:
    """A booting client as the DHCP/TFTP/HTTP layer sees it."""

    mac: str  # normalised, lower-case, colon-separated
    arch: int | None = None  # option 93, None if absent (treated as BIOS)
    user_class: str | None = None  # option 77 ("iPXE" once iPXE is running)
    vendor_class: str | None = None  # option 60 ("PXEClient:Arch:00000:UNDI:002001")
    ip: str | None = None  # client address if known

    @property
    def is_ipxe(self) -> bool:
        return self.user_class == "iPXE"


@dataclass(frozen=True)
class BootFile:
    """What DHCP puts in ``file``/option 67 (and ``siaddr``/option 66) for a machine."""

    filename: str  # a TFTP path ("undionly.kpxe") or an http:// URL for iPXE
    role: str
    tftp_server: str | None = None  # next-server; None = this server's address on that link

"""Plain data passed between the protocol servers and the policy (no I/O, no imports upward)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from homecloud.core.ids import BadMac, normalize_mac

# RFC 4578 §2.1 client system architecture types (option 93), IANA registry names.
ARCH_BIOS = 0
ARCH_EFI_IA32 = 6
ARCH_EFI_BC = 7  # EFI byte code (historically reused by firmwares for x86-64)
ARCH_EFI_X64 = 9
ARCH_EFI_ARM32 = 10
ARCH_EFI_ARM64 = 11
ARCH_EFI_X64_HTTP = 16

__all__ = ["BadMac", "BootFile", "Machine", "arch_from_vendor_class", "normalize_mac"]

# PXE 2.1 §2.2 / UEFI 2.x §24.7: option 60 "PXEClient:Arch:xxxxx:UNDI:yyyzzz" (or "HTTPClient:..."),
# the architecture as five decimal digits.
_VENDOR_ARCH = re.compile(r"(?:PXEClient|HTTPClient):Arch:(\d{5})(?::|$)")


def arch_from_vendor_class(vendor_class: str | None) -> int | None:
    """The client architecture a PXE/HTTP-boot vendor class names, for clients that send option
    60 but no option 93 (some UEFI firmwares); None when it names none or an impossible one."""
    if not vendor_class:
        return None
    m = _VENDOR_ARCH.match(vendor_class)
    if m is None:
        return None
    arch = int(m.group(1))
    return arch if arch <= 0xFFFF else None


@dataclass(frozen=True)
class Machine:
    """A booting client as the DHCP/TFTP/HTTP layer sees it."""

    mac: str  # normalised, lower-case, colon-separated
    arch: int | None = None  # option 93, else from option 60; None if neither (BIOS)
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

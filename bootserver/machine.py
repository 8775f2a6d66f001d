"""Plain data passed between the protocol servers and the policy (no I/O, no imports upward)."""

from __future__ import annotations

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

__all__ = ["BadMac", "BootFile", "Machine", "normalize_mac"]


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

"""First-stage boot binaries from Debian's packages, gathered into the TFTP root.

They are copied (not symlinked: the TFTP server refuses symlinks that point out of its root).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("homecloud.boot")

# file name in the TFTP root -> candidate locations (Debian packages ipxe, pxelinux,
# syslinux-common)
SOURCES: dict[str, tuple[str, ...]] = {
    "undionly.kpxe": ("/usr/lib/ipxe/undionly.kpxe",),
    "ipxe.efi": ("/usr/lib/ipxe/ipxe.efi", "/boot/ipxe.efi"),
    "snponly.efi": ("/usr/lib/ipxe/snponly.efi",),
    "pxelinux.0": ("/usr/lib/PXELINUX/pxelinux.0",),
    "lpxelinux.0": ("/usr/lib/PXELINUX/lpxelinux.0",),
    "ldlinux.c32": ("/usr/lib/syslinux/modules/bios/ldlinux.c32",),
    "libcom32.c32": ("/usr/lib/syslinux/modules/bios/libcom32.c32",),
    "libutil.c32": ("/usr/lib/syslinux/modules/bios/libutil.c32",),
    "mboot.c32": ("/usr/lib/syslinux/modules/bios/mboot.c32",),
    "menu.c32": ("/usr/lib/syslinux/modules/bios/menu.c32",),
}
PACKAGES = {"undionly.kpxe": "ipxe", "ipxe.efi": "ipxe", "snponly.efi": "ipxe",
            "pxelinux.0": "pxelinux", "lpxelinux.0": "pxelinux"}


def populate(tftp_root: Path, search_root: Path = Path("/")) -> dict[str, Path | None]:
    """Copy every available first-stage binary into ``tftp_root``; returns name -> source."""
    tftp_root.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path | None] = {}
    for name, candidates in SOURCES.items():
        src = next((search_root / c.lstrip("/") for c in candidates
                    if (search_root / c.lstrip("/")).is_file()), None)
        found[name] = src
        dst = tftp_root / name
        if src is None:
            log.warning("%s not found (install Debian package %s); that boot path is unavailable",
                        name, PACKAGES.get(name, "syslinux-common"))
            continue
        if dst.is_file() and not dst.is_symlink() and dst.stat().st_size == src.stat().st_size \
                and dst.read_bytes() == src.read_bytes():
            continue
        tmp = dst.with_name(f".{name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return found

"""Find AoE targets on a link: broadcast Query Config, group replies per shelf.slot, IDENTIFY."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homecloud.aoe import io
from homecloud.aoe.frames import (
    SECTOR,
    AoEError,
    ConfigReply,
    Identify,
    Target,
    TargetNotFound,
)
from homecloud.aoe.io import AoESocket


@dataclass(frozen=True)
class ScanTarget:
    """One target (shelf.slot) and every path (MAC) that answered for it."""

    target: Target
    paths: tuple[ConfigReply, ...]
    identify: Identify | None
    identify_error: str | None = None

    @property
    def macs(self) -> list[str]:
        return [p.mac for p in self.paths]

    @property
    def sectors(self) -> int | None:
        return self.identify.sectors if self.identify else None

    @property
    def size_bytes(self) -> int | None:
        return self.identify.sectors * SECTOR if self.identify else None

    @property
    def firmware(self) -> int:
        return self.paths[0].firmware

    @property
    def config(self) -> str:
        return self.paths[0].config.decode("utf-8", "replace")

    @property
    def buffer_count(self) -> int:
        return self.paths[0].buffer_count

    def to_dict(self) -> dict[str, Any]:
        ident = self.identify
        return {
            "target": str(self.target),
            "shelf": self.target.shelf,
            "slot": self.target.slot,
            "macs": self.macs,
            "sectors": self.sectors,
            "size_bytes": self.size_bytes,
            "firmware": self.firmware,
            "firmware_hex": f"0x{self.firmware:04x}",
            "config": self.config,
            "buffer_count": self.buffer_count,
            "lba48": ident.lba48 if ident else None,
            "model": ident.model if ident else None,
            "serial": ident.serial if ident else None,
            "identify_error": self.identify_error,
            "paths": [
                {
                    "mac": p.mac,
                    "firmware": p.firmware,
                    "buffer_count": p.buffer_count,
                    "max_sectors": p.max_sectors,
                    "aoe_version": p.aoe_version,
                    "config": p.config.decode("utf-8", "replace"),
                }
                for p in self.paths
            ],
        }


def group_replies(replies: list[ConfigReply]) -> dict[Target, tuple[ConfigReply, ...]]:
    groups: dict[Target, list[ConfigReply]] = {}
    for r in replies:
        groups.setdefault(r.target, []).append(r)
    return {t: tuple(sorted(rs, key=lambda r: r.mac)) for t, rs in sorted(groups.items())}


def scan(sock: AoESocket, *, timeout: float = 1.0, identify_timeout: float = 0.3,
         identify_retries: int = 3) -> list[ScanTarget]:
    """Every target that answers a broadcast Query Config within ``timeout`` seconds, with its
    size from ATA IDENTIFY (asked of each path in turn until one answers)."""
    out: list[ScanTarget] = []
    for target, paths in group_replies(io.query_config(sock, None, timeout)).items():
        try:
            ident, _mac = io.identify(sock, target, [p.mac for p in paths],
                                      timeout=identify_timeout, retries=identify_retries)
            out.append(ScanTarget(target, paths, ident))
        except AoEError as exc:
            out.append(ScanTarget(target, paths, None, str(exc)))
    return out


def discover(sock: AoESocket, target: Target, *, timeout: float = 0.5) -> tuple[ConfigReply, ...]:
    """The paths of one target (Query Config addressed to it); TargetNotFound if none answers."""
    paths = group_replies(io.query_config(sock, target, timeout)).get(target)
    if not paths:
        raise TargetNotFound(target, sock.interface, timeout)
    return paths

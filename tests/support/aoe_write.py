"""An AoE ATA WRITE for tests (homecloud.aoe builds read commands only, on purpose): write
sectors to a target from a test namespace, to prove a volume is writable and durable."""

from __future__ import annotations

from homecloud.aoe import frames as F
from homecloud.aoe.io import AoESocket, exchange, new_tag
from homecloud.core.ids import Target

ATA_WRITE_SECTORS_EXT = 0x34


def write_sectors(sock: AoESocket, target: Target, mac: str, lba: int, data: bytes,
                  timeout: float = 1.0, retries: int = 4) -> None:
    """Write ``data`` (whole sectors, at most 2 per frame at MTU 1500) at ``lba``; raises
    AssertionError naming the target on an error reply or no reply."""
    assert data and len(data) % 512 == 0 and len(data) <= 1024, len(data)
    sectors = len(data) // 512
    tag = new_tag()
    frame = F.build_ata_request(sock.mac, mac, target, sectors=sectors, lba=lba, tag=tag)
    frame[F.OFF_AFLAGS] = F.ATA_EXTENDED | F.ATA_WRITE
    frame[F.OFF_CMDSTAT] = ATA_WRITE_SECTORS_EXT
    frame = frame[:F.DATA_OFFSET] + bytearray(data)
    try:
        exchange(sock, target, mac, frame, tag, lba=lba, what="write", timeout=timeout,
                 retries=retries)
    except F.AoEError as exc:
        raise AssertionError(f"write {target} lba {lba}: {exc}") from None

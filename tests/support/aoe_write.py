"""An AoE ATA WRITE for tests (homecloud.aoe builds read commands only, on purpose): write
sectors to a target from a test namespace, to prove a volume is writable and durable."""

from __future__ import annotations

import time

from homecloud.aoe import frames as F
from homecloud.aoe.io import AoESocket, new_tag
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
    buf = bytearray(16384)
    macb = F.mac_bytes(mac)
    for _ in range(retries + 1):
        sock.send(frame)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.wait(left):
                break
            while n := sock.recv_into(buf):
                if n < F.DATA_OFFSET or buf[6:12] != macb:
                    continue
                if int.from_bytes(buf[F.OFF_TAG:F.OFF_TAG + 4], "big") != tag:
                    continue
                if buf[F.OFF_VERFLAGS] & F.AOE_ERROR:
                    raise AssertionError(f"write {target} lba {lba}: AoE error {buf[F.OFF_ERROR]}")
                status = buf[F.OFF_CMDSTAT]
                if status & (F.ATA_STATUS_ERR | F.ATA_STATUS_DF):
                    raise AssertionError(f"write {target} lba {lba}: ATA status 0x{status:02x}"
                                         f" error 0x{buf[F.OFF_ERRFEAT]:02x}")
                return
    raise AssertionError(f"write {target} lba {lba}: no reply from {mac}")

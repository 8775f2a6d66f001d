"""A minimal IPv6 router advertisement sender for the lab bridge.

iPXE waits about 13 s for IPv6 autoconfiguration on a link where no router advertises
(FIELD-NOTES, "PXE under QEMU TCG").  An RA with router lifetime 0 (not a default router), no
prefix and no M/O flags tells it there is nothing to configure, so every PXE boot in the lab is
that much faster.  Run inside the lab namespace only (``python -m bootserver.lab.ra IFACE``).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from types import FrameType

ICMPV6_RA = 134


def ra_packet(mac: bytes) -> bytes:
    """ICMPv6 RA: hop limit 64, no flags, router lifetime 0, source link-layer option.
    The kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets."""
    head = struct.pack("!BBHBBHII", ICMPV6_RA, 0, 0, 64, 0, 0, 0, 0)
    return head + struct.pack("!BB", 1, 1) + mac


def run(ifname: str, interval: float = 0.5) -> None:
    mac = bytes.fromhex(Path(f"/sys/class/net/{ifname}/address").read_text().strip()
                        .replace(":", ""))
    index = socket.if_nametoindex(ifname)
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
    pkt = ra_packet(mac)
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop:
        # OSError: no link-local address yet (bridge without carrier): try again later
        with contextlib.suppress(OSError):
            s.sendto(pkt, ("ff02::1", 0, 0, index))
        time.sleep(interval)


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m bootserver.lab.ra IFACE [LAB-DIR]")  # LAB-DIR: a tag only
    run(sys.argv[1])

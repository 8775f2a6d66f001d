"""A no-op IPv6 Router Advertisement responder (RFC 4861 §4.2, §6.2.6).

iPXE configures IPv4 (DHCP) and IPv6 (router solicitation) in parallel and waits for both: on a
link without an IPv6 router it retransmits solicitations for ~13 s before it gives up (FIELD-NOTES).
An answer to its Router Solicitation that carries no prefix, router lifetime 0 ("not a default
router") and neither the Managed nor the Other flag ends its IPv6 autoconfiguration at once and
changes nothing on any host that hears it.  ``hcboot serve --no-ipv6-ra`` turns it off.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading

log = logging.getLogger("homecloud.boot")

ICMPV6_RS = 133
ICMPV6_RA = 134
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
OPT_SOURCE_LLADDR = 1
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def build_ra(mac: str | None) -> bytes:
    """ICMPv6 RA body; the kernel fills in the checksum for raw ICMPv6 sockets."""
    # type, code, checksum, cur hop limit 0 (unspecified), flags 0 (no M, no O),
    # router lifetime 0, reachable time 0, retrans timer 0
    ra = struct.pack("!BBHBBHII", ICMPV6_RA, 0, 0, 0, 0, 0, 0, 0)
    if mac:
        ra += struct.pack("!BB", OPT_SOURCE_LLADDR, 1) + bytes.fromhex(mac.replace(":", ""))
    return ra


def is_router_solicitation(data: bytes) -> bool:
    return len(data) >= 8 and data[0] == ICMPV6_RS and data[1] == 0


class RaResponder:
    def __init__(self, interface: str) -> None:
        self.interface = interface
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sock: socket.socket | None = None
        self.answered = 0

    def start(self) -> bool:
        """Open the socket and start answering; False (logged) if IPv6 is unavailable."""
        try:
            ifindex = socket.if_nametoindex(self.interface)
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            mreq = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", ifindex)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        except OSError as exc:
            log.warning("IPv6 RA responder off on %s: %s (iPXE clients may wait ~13 s for IPv6)",
                        self.interface, exc)
            return False
        self.sock = s
        self._ifindex = ifindex
        try:
            with open(f"/sys/class/net/{self.interface}/address") as f:
                self._mac: str | None = f.read().strip()
        except OSError:
            self._mac = None
        self._ra = build_ra(self._mac)
        self._thread = threading.Thread(target=self._loop, name="ipv6-ra", daemon=True)
        self._thread.start()
        log.info("answering IPv6 router solicitations on %s with a no-op advertisement",
                 self.interface)
        return True

    def _loop(self) -> None:
        assert self.sock is not None
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self.sock], [], [], 0.5)
                if not r:
                    continue
                data, addr = self.sock.recvfrom(1500)
                if not is_router_solicitation(data):
                    continue
                dst = addr[0] if addr[0] != "::" else ALL_NODES
                self.sock.sendto(self._ra, (dst.split("%")[0], 0, 0, self._ifindex))
                self.answered += 1
                log.debug("router solicitation from %s answered", addr[0])
            except OSError as exc:
                if not self._stop.is_set():
                    log.warning("RA responder on %s: %s", self.interface, exc)
                    self._stop.wait(1)
            except Exception:  # the loop never dies
                log.exception("RA responder on %s", self.interface)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        if self.sock:
            self.sock.close()

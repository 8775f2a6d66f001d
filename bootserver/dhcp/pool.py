"""Address pools: one subnet, a dynamic range inside it, and the options that go with it."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from bootserver.dhcp import options as o
from homecloud.core.errors import HomecloudError


class PoolConfigError(HomecloudError, ValueError):
    """A pool whose range, network or options do not fit together (names the pool)."""


@dataclass(frozen=True)
class PoolConfig:
    """One subnet served by the DHCP server.  ``router``/``dns``/``domain``/``lease_time`` left
    unset fall back to the server-wide values in :class:`~bootserver.dhcp.config.DhcpConfig`."""

    network: str  # "192.0.2.0/24"
    start: str  # first dynamic address
    end: str  # last dynamic address
    router: str | None = None
    dns: tuple[str, ...] = ()
    domain: str | None = None
    lease_time: int | None = None
    mtu: int | None = None  # option 26: the link's MTU (e.g. 9000 on a jumbo-frame segment)


class Pool:
    """A validated :class:`PoolConfig` plus a next-fit cursor over its dynamic range."""

    def __init__(self, cfg: PoolConfig) -> None:
        self.cfg = cfg
        try:
            self.network = ipaddress.IPv4Network(cfg.network, strict=True)
            start = ipaddress.IPv4Address(cfg.start)
            end = ipaddress.IPv4Address(cfg.end)
            for addr in (cfg.router, *cfg.dns):
                if addr is not None:
                    ipaddress.IPv4Address(addr)
        except ValueError as e:
            raise PoolConfigError(f"pool {cfg.network}: {e}") from e
        if start not in self.network or end not in self.network:
            raise PoolConfigError(
                f"pool {cfg.network}: range {cfg.start}-{cfg.end} is not inside the network")
        if int(start) > int(end):
            raise PoolConfigError(f"pool {cfg.network}: range start {cfg.start} is after end"
                                  f" {cfg.end}")
        for a in (start, end):
            if a in (self.network.network_address, self.network.broadcast_address):
                raise PoolConfigError(f"pool {cfg.network}: range includes the network or"
                                      f" broadcast address {a}")
        if cfg.mtu is not None and (isinstance(cfg.mtu, bool) or not isinstance(cfg.mtu, int)
                                    or not o.MIN_MTU <= cfg.mtu <= 0xFFFF):
            raise PoolConfigError(f"pool {cfg.network}: mtu {cfg.mtu!r} is not an MTU "
                                  f"({o.MIN_MTU}-65535, RFC 2132 option 26)")
        if cfg.lease_time is not None and cfg.lease_time <= 0:
            raise PoolConfigError(f"pool {cfg.network}: lease_time must be positive")
        self.start = int(start)
        self.end = int(end)
        self.netmask = str(self.network.netmask)
        self.broadcast = str(self.network.broadcast_address)
        self._net = int(self.network.network_address)
        self._mask = int(self.network.netmask)
        self._bcast = int(self.network.broadcast_address)
        self._cursor = self.start
        # the subnet's options, the same in every OFFER/ACK/INFORM answer from this pool
        self.options: dict[int, bytes] = {o.SUBNET_MASK: o.ip_bytes(self.netmask),
                                          o.BROADCAST_ADDRESS: o.ip_bytes(self.broadcast)}
        if cfg.router:
            self.options[o.ROUTER] = o.ip_bytes(cfg.router)
        if cfg.dns:
            self.options[o.DNS_SERVERS] = o.ips_bytes(cfg.dns)
        if cfg.domain:
            self.options[o.DOMAIN_NAME] = cfg.domain.encode()
        if cfg.mtu is not None:
            self.options[o.INTERFACE_MTU] = struct.pack("!H", cfg.mtu)

    def __repr__(self) -> str:
        return f"Pool({self.cfg.network} {self.cfg.start}-{self.cfg.end})"

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def contains(self, ip: str) -> bool:
        """``ip`` is on this pool's subnet."""
        n = _int(ip)
        return n is not None and n & self._mask == self._net

    def in_range(self, ip: str) -> bool:
        """``ip`` is in the dynamic range."""
        n = _int(ip)
        return n is not None and self.start <= n <= self.end

    def usable(self, ip: str) -> bool:
        """On the subnet and neither its network nor its broadcast address."""
        n = _int(ip)
        return n is not None and n & self._mask == self._net and n not in (self._net, self._bcast)

    def next_free(self, is_free: Callable[[str], bool]) -> str | None:
        """The next address after the cursor that ``is_free`` accepts (one lap at most)."""
        cur = self._cursor
        for _ in range(self.size):
            ip = socket.inet_ntoa(_U32(cur))
            cur = cur + 1 if cur < self.end else self.start
            if is_free(ip):
                self._cursor = cur
                return ip
        return None


_U32 = struct.Struct("!I").pack


def _int(ip: str) -> int | None:
    """Dotted quad -> int; None for anything else (inet_aton alone accepts "1" or "1.2")."""
    if ip.count(".") != 3:
        return None
    try:
        return int.from_bytes(socket.inet_aton(ip), "big")
    except OSError:
        return None

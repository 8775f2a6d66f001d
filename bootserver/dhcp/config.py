"""What the DHCP server is told: its configuration and the policy protocol it asks.

Shared by the state machine (:mod:`bootserver.dhcp.protocol`) and the socket loop
(:mod:`bootserver.dhcp.server`); ``bootserver.policy`` implements :class:`DhcpPolicy`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from bootserver.dhcp.pool import PoolConfig
from bootserver.machine import BootFile, Machine
from homecloud.core.errors import HomecloudError

BROADCAST = "255.255.255.255"
SERVER_PORT = 67
CLIENT_PORT = 68
PXE_PORT = 4011
MAX_HOPS = 16  # RFC 1542 §4.1.1: relays discard above 16; so do we

Mode = Literal["full", "proxy"]
"""``full``  hands out addresses from one or more pools (chosen by ``giaddr``'s subnet for
          relayed requests, by ``server_ip``'s subnet otherwise), plus the policy's static
          addresses, and puts boot info in the replies to PXE clients.
``proxy`` ProxyDHCP (PXE 2.1 §2.2.4, RFC 4578): another server hands out addresses; this one
          answers PXE DISCOVERs with an OFFER that has no ``yiaddr`` but the boot file, and
          REQUESTs on port 4011 with an ACK carrying the boot file.  It never hands out
          addresses."""


class DhcpConfigError(HomecloudError, ValueError):
    """An invalid DHCP server configuration (names the setting)."""


class DhcpPolicy(Protocol):
    """What the DHCP server asks the rest of hcboot (implemented in ``bootserver.policy``)."""

    def static_address(self, mac: str) -> tuple[str, str | None] | None:
        """``(ip, hostname)`` for a MAC assigned a fixed address, else None."""
        ...

    def boot_file(self, machine: Machine) -> BootFile | None:
        """Boot info for a PXE client; None = none (full mode still gives it an address)."""
        ...

    def record_seen(self, machine: Machine) -> None:
        """Called for every PXE DISCOVER/REQUEST/INFORM."""
        ...


@dataclass(frozen=True)
class DhcpConfig:
    interface: str  # SO_BINDTODEVICE: the one link served
    server_ip: str  # this server's address on that link (option 54, default next-server)
    mode: Mode = "full"
    pools: tuple[PoolConfig, ...] = ()
    lease_time: int = 3600
    lease_file: Path | None = None  # None = leases in memory only
    router: str | None = None  # defaults for pools that set none
    dns: tuple[str, ...] = ()
    domain: str | None = None
    mtu: int | None = None  # option 26 for pools that set none (None: not sent)
    offer_time: float = 60.0  # how long an OFFER reserves its address
    decline_time: float = 600.0  # how long a DECLINEd address stays out of use
    rcvbuf: int = 8 * 1024 * 1024  # bursts of 1000 DISCOVERs must fit
    server_port: int = SERVER_PORT
    client_port: int = CLIENT_PORT
    pxe_port: int = PXE_PORT  # proxy mode only
    max_hops: int = MAX_HOPS
    # answer only MACs the policy gives a static address (silence for every other MAC, no
    # dynamic addresses): the instance network (bootserver.dhcp.static)
    static_only: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("full", "proxy"):
            raise DhcpConfigError(f"dhcp mode: {self.mode!r} is not 'full' or 'proxy'")
        if self.static_only and self.mode != "full":
            raise DhcpConfigError("dhcp static_only: needs mode 'full' (it hands out addresses)")
        if not self.interface:
            raise DhcpConfigError("dhcp interface: must be set")
        try:
            ipaddress.IPv4Address(self.server_ip)
        except ValueError as e:
            raise DhcpConfigError(f"dhcp server_ip: {e}") from e
        if self.mode == "full" and not self.pools:
            raise DhcpConfigError("dhcp pools: full mode needs at least one pool")
        if self.lease_time <= 0:
            raise DhcpConfigError(f"dhcp lease_time: must be positive, got {self.lease_time}")

    def pool_configs(self) -> tuple[PoolConfig, ...]:
        """The pools with the server-wide router, DNS servers and domain filled in where a
        pool sets none."""
        return tuple(dataclasses.replace(
            p, router=p.router if p.router is not None else self.router, dns=p.dns or self.dns,
            domain=p.domain if p.domain is not None else self.domain,
            mtu=p.mtu if p.mtu is not None else self.mtu) for p in self.pools)

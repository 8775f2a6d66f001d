"""What an instance gets from the cloud: a MAC from homecloud's locally administered prefix and
an address on the instance network.

Pure functions of the inventory: :mod:`homecloud.control.instances` calls them inside its
compare-and-set ``change`` function, so two concurrent creates can never get the same MAC or
address (the loser of the race re-reads the inventory and allocates again).  The lowest free
value is taken, so what a destroyed instance freed is reused.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from homecloud.control.lifecycle import InstanceError
from homecloud.core.model import INSTANCE_MAC_PREFIX, Inventory

#: dom0's bridge on the instance network (the lab's and the hnode image's name)
DEFAULT_BRIDGE = "xenbr1"
DEFAULT_NETWORK = "203.0.113.0/24"


class AllocationError(InstanceError):
    """No MAC or address is left."""


@dataclass(frozen=True)
class InstanceNetwork:
    """The instance network: guests' addresses come from ``cidr`` (minus the config node's
    ``gateway`` address and anything the inventory already uses), their NIC is on ``bridge``
    in every dom0.  ``first``/``last`` narrow the pool (host numbers within ``cidr``)."""

    cidr: str = DEFAULT_NETWORK
    gateway: str | None = "203.0.113.1"
    bridge: str = DEFAULT_BRIDGE
    first: int = 10
    last: int | None = None

    def __post_init__(self) -> None:
        try:
            net = ipaddress.IPv4Network(self.cidr, strict=True)
        except ValueError as exc:
            raise InstanceError(f"instance network {self.cidr!r}: {exc}") from None
        if self.gateway is not None and ipaddress.IPv4Address(self.gateway) not in net:
            raise InstanceError(f"instance network {self.cidr}: gateway {self.gateway} "
                                "is outside it")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    def pool(self) -> list[str]:
        hosts = list(self.network.hosts())
        last = len(hosts) if self.last is None else min(self.last, len(hosts))
        return [str(a) for a in hosts[max(self.first, 1) - 1:last] if str(a) != self.gateway]


def used_macs(inv: Inventory) -> set[str]:
    return {c.mac for n in inv.nodes for c in n.nics} | {i.mac for i in inv.instances}


def used_ips(inv: Inventory) -> set[str]:
    return {c.ip for n in inv.nodes for c in n.nics if c.ip} | {i.ip for i in inv.instances}


def allocate_mac(inv: Inventory, pool_size: int = 1 << 24) -> str:
    """The lowest free ``0a:48:43:xx:xx:xx`` (``00:00:00`` is never handed out)."""
    used = used_macs(inv)
    for n in range(1, min(pool_size, 1 << 24)):
        mac = f"{INSTANCE_MAC_PREFIX}:{n >> 16:02x}:{(n >> 8) & 0xff:02x}:{n & 0xff:02x}"
        if mac not in used:
            return mac
    raise AllocationError(f"no free instance MAC left: all {min(pool_size, 1 << 24) - 1} "
                          f"addresses under {INSTANCE_MAC_PREFIX} are in use (destroy an "
                          "instance to free one)")


def allocate_ip(inv: Inventory, net: InstanceNetwork) -> str:
    used = used_ips(inv)
    pool = net.pool()
    for ip in pool:
        if ip not in used:
            return ip
    raise AllocationError(f"no free address left on the instance network {net.cidr}: all "
                          f"{len(pool)} in the pool are in use (destroy an instance to free one)")

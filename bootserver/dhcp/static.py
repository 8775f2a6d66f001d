"""DHCP for a network of known clients only: the instance network.

Instances (Xen guests) get their address from the config node's DHCP on the instance network,
a segment apart from the provisioning/storage one.  There the server answers only MACs a lookup
knows -- ``(mac) -> (ip, hostname) | None``; ``homecloud.serve`` injects one over the inventory's
instances -- with their static address, option 12 (hostname), the subnet's mask and broadcast,
and a router, DNS servers and domain only when configured.  No PXE or boot options, no dynamic
pool, and silence for every MAC the lookup does not know.

The protocol is the boot path's own (:class:`~bootserver.dhcp.protocol.DhcpProtocol`, RFC 2131,
lease journal) with :attr:`DhcpConfig.static_only` set; :func:`static_config` builds that
configuration and :class:`StaticPolicy` is the :class:`DhcpPolicy` it asks.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path

from bootserver import clientlog
from bootserver.dhcp.config import DhcpConfig, DhcpConfigError
from bootserver.dhcp.pool import PoolConfig
from bootserver.machine import BootFile, Machine

log = logging.getLogger("homecloud.dhcp")

StaticLookup = Callable[[str], "tuple[str, str | None] | None"]
"""``(mac) -> (ip, hostname) | None``: the address (and option 12) of a known client's MAC
(lower-case, colon-separated), None for a MAC that must get no answer."""


class StaticPolicy:
    """The :class:`~bootserver.dhcp.config.DhcpPolicy` of a static-only server: addresses from
    the lookup, never boot info, no seen-machines record (instances are not machines to
    assign).  A lookup that raises is logged with the MAC and treated as "unknown": the client
    retransmits and gets its answer once the lookup works again."""

    def __init__(self, lookup: StaticLookup) -> None:
        self.lookup = lookup

    def static_address(self, mac: str) -> tuple[str, str | None] | None:
        try:
            return self.lookup(mac)
        except Exception:
            clientlog.for_mac(log, mac).exception("dhcp: instance lookup failed for %s", mac)
            return None

    def boot_file(self, machine: Machine) -> BootFile | None:
        return None

    def record_seen(self, machine: Machine) -> None:
        return None


def static_config(interface: str, server_cidr: str, *, lease_file: Path | None,
                  router: str | None = None, dns: tuple[str, ...] = (),
                  domain: str | None = None, lease_time: int = 3600) -> DhcpConfig:
    """A static-only DHCP configuration for ``interface`` where this server is ``server_cidr``
    (e.g. ``203.0.113.1/24``): one pool spanning the subnet (it only checks that a static
    address is on the subnet; nothing is allocated from it)."""
    try:
        iface = ipaddress.IPv4Interface(server_cidr)
    except ValueError as e:
        raise DhcpConfigError(f"instance network {server_cidr!r}: {e}") from None
    net = iface.network
    if net.prefixlen > 30:
        raise DhcpConfigError(f"instance network {net}: too small (at most /30)")
    pool = PoolConfig(network=str(net), start=str(net.network_address + 1),
                      end=str(net.broadcast_address - 1),
                      router=router, dns=dns, domain=domain)
    return DhcpConfig(interface=interface, server_ip=str(iface.ip), mode="full", pools=(pool,),
                      lease_time=lease_time, lease_file=lease_file, static_only=True)

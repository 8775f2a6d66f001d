"""Who is asking: the MAC behind a client address, and whether a request comes from the admin.

Node endpoints trust nobody by default (docs/security.md): a node may read its own plan and post
its own reports; only the admin may read everything.  The MAC of an address comes from, in this
order: the DHCP lease that hands it out (full mode), a static address in the inventory, and the
kernel's neighbour table for the serving interface (``/proc/net/arp``: in proxy mode another DHCP
server leases the addresses, and the TCP handshake that carried the request has resolved the
client's MAC).  On the provisioning segment this is as strong as the segment itself: a host that
forges both a node's MAC and its address can act as that node, so the operator isolates that
segment (see the threat model).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path

from homecloud.core.files import atomic_write
from homecloud.core.model import Inventory

log = logging.getLogger("homecloud.control")
ADMIN_TOKEN_NAME = "admin.token"
ARP_TABLE = Path("/proc/net/arp")
_ATF_COM = 0x2  # a completed entry (the MAC is known)


def neighbour_mac(ip: str, interface: str | None, table: Path = ARP_TABLE) -> str | None:
    """The MAC of ``ip`` in the kernel's IPv4 neighbour table (on ``interface``, if given)."""
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        f = line.split()
        if len(f) < 6 or f[0] != ip or (interface and f[5] != interface):
            continue
        if int(f[2], 16) & _ATF_COM and f[3] != "00:00:00:00:00:00":
            return f[3].lower()
    return None


def load_admin_token(state_dir: Path, create: bool = True) -> str | None:
    """The admin token in ``<state>/admin.token`` (mode 0600), made on first use."""
    path = Path(state_dir) / ADMIN_TOKEN_NAME
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    if not create:
        return None
    token = secrets.token_urlsafe(32)
    atomic_write(path, token + "\n", mode=0o600)
    os.chmod(path, 0o600)
    return token


class ClientIdentity:
    def __init__(self, lease_mac: Callable[[str], str | None],
                 inventory: Callable[[], Inventory], interface: str | None,
                 own_addresses: tuple[str, ...], admin_token: str | None,
                 arp_table: Path = ARP_TABLE) -> None:
        self.lease_mac = lease_mac
        self.inventory = inventory
        self.interface = interface
        self.own = frozenset(own_addresses)
        self.admin_token = admin_token
        self.arp_table = arp_table

    def mac_of(self, ip: str) -> str | None:
        mac = self.lease_mac(ip)
        if mac is not None:
            return mac
        for node in self.inventory().nodes:
            for nic in node.nics:
                if nic.ip == ip:
                    return nic.mac
        return neighbour_mac(ip, self.interface, self.arp_table)

    def vouches(self, mac: str, ip: str) -> bool:
        """Whether a request from ``ip`` speaks for machine ``mac``: it is that machine or the
        admin (the config node itself)."""
        return self.is_admin(ip, {}) or self.mac_of(ip) == mac

    def is_admin(self, ip: str, headers: Mapping[str, str]) -> bool:
        if ip in self.own:
            return True
        try:
            if ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback:
                return True
        except ValueError:
            return False
        auth = headers.get("Authorization", "")
        if self.admin_token and auth.startswith("Bearer "):
            return hmac.compare_digest(auth[7:].strip().encode(), self.admin_token.encode())
        return False

"""Which address a full-mode DHCP client gets (RFC 2131 §4.3.1) and whether it may have the
one it requests (§4.3.2): the policy's static address first, then its current or previous
lease, its offer, the address it asks for, a free one (no ping), and when the pool is full
the oldest tentative offer (bound leases are never reclaimed).  This server's address and the
pools' routers and DNS servers are never handed out.  No packets: the caller
(:class:`bootserver.dhcp.protocol.DhcpProtocol`) reads them and answers."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from bootserver import clientlog
from bootserver.dhcp import codec
from bootserver.dhcp.config import DhcpConfig, DhcpPolicy
from bootserver.dhcp.leases import LeaseTable
from bootserver.dhcp.pool import Pool

FULL_RETRY = 1.0  # seconds an exhausted pool is not rescanned


class Addresses:
    """The address choice over ``pools`` and the lease table (its clock is the protocol's)."""

    def __init__(self, config: DhcpConfig, policy: DhcpPolicy, leases: LeaseTable,
                 pools: Sequence[Pool]) -> None:
        self.config = config
        self.policy = policy
        self.leases = leases
        self.pools = pools
        self._reserved = {config.server_ip}
        for p in pools:
            self._reserved.update(a for a in (p.cfg.router, *p.cfg.dns) if a)
        self._pool_full_until: dict[Pool, float] = {}

    def pool_for(self, giaddr: str) -> Pool | None:
        """The pool of the relay ``giaddr``, or of this link (``codec.ZERO_IP``)."""
        key = giaddr if giaddr != codec.ZERO_IP else self.config.server_ip
        for p in self.pools:
            if p.contains(key):
                return p
        return None

    def lease_time(self, pool: Pool) -> int:
        return pool.cfg.lease_time or self.config.lease_time

    def static(self, mac: str, log: clientlog.ClientLog, pool: Pool
               ) -> tuple[str, str | None] | None:
        st = self.policy.static_address(mac)
        if st is None:
            return None
        if not pool.usable(st[0]):
            log.warning("dhcp: static address %s of %s is not on %s; %s", st[0], mac,
                        pool.cfg.network,
                        "not answering" if self.config.static_only else "using the pool")
            return None
        return st

    def choose(self, mac: str, requested: bytes | None, log: clientlog.ClientLog, pool: Pool
               ) -> tuple[str, str | None] | None:
        """RFC 2131 §4.3.1 address choice (``requested``: option 50's bytes, if sent): static,
        current/previous lease, offer, requested, then a free one (no ping), reclaiming the
        oldest tentative offer when the pool is full.  (address, hostname) or None."""
        lt = self.leases
        st = self.static(mac, log, pool)
        if st is not None:
            lt.take_over(st[0], mac)
            return st
        if self.config.static_only:  # static addresses only: no lease, offer or pool address
            return None
        ls = lt.lease_of(mac)
        if ls is not None and pool.in_range(ls.ip) and self.free(ls.ip, mac):
            return ls.ip, ls.hostname
        off = lt.offered_ip(mac)
        if off is not None and pool.in_range(off):
            return off, None
        if requested is not None and len(requested) == 4:
            wanted = socket.inet_ntoa(requested)
            if pool.in_range(wanted) and self.free(wanted, mac):
                return wanted, None
        # A full lap over an exhausted pool costs O(pool size); after one fails, skip the scan
        # for FULL_RETRY seconds and reclaim tentative offers directly (burst of new clients).
        now = lt.clock()
        ip = None
        if now >= self._pool_full_until.get(pool, 0.0):
            ip = pool.next_free(lambda a: self.free(a, mac))
            if ip is None:
                self._pool_full_until[pool] = now + FULL_RETRY
                log.warning("dhcp: pool %s has no free address (DISCOVER from %s):"
                            " reclaiming the oldest tentative offers", pool.cfg.network, mac)
        if ip is None:
            ip = lt.oldest_offer_in(pool.in_range)
            if ip is None:
                return None
            log.debug("dhcp: reclaiming tentative offer of %s for %s", ip, mac)
        return ip, None

    def free(self, ip: str, mac: str) -> bool:
        """Not this server's, a router's or a DNS server's address, and not taken."""
        return ip not in self._reserved and self.leases.is_free_for(ip, mac)

    def may_assign(self, mac: str, log: clientlog.ClientLog, pool: Pool, ip: str
                   ) -> tuple[bool, str | None]:
        """May ``mac`` have ``ip`` (a REQUEST)?  (yes or no, the hostname to give it)."""
        st = self.static(mac, log, pool)
        if st is not None:
            return ip == st[0], st[1]
        if self.config.static_only:
            return False, None
        if not pool.in_range(ip) or not self.free(ip, mac):
            return False, None
        ls = self.leases.lease_of(mac)
        return True, ls.hostname if ls is not None and ls.ip == ip else None

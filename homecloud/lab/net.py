"""The lab's network: one network namespace holding two bridges and the VMs' taps.

Two segments, as on real hardware (issue 11): the provisioning/storage bridge (``hcbr0``,
198.51.100.0/24: PXE, AoE, the nodes' reports) where every node has its first NIC, and the
instance bridge (``hcbr1``, 203.0.113.0/24) where the hardware nodes that run guests (hnodes)
have their second NIC and dom0 bridges the guests.  The config node (hcboot serve, in the
namespace) has an address on both; the namespace does not forward between them (IPv4/IPv6
forwarding off) and the two bridges share no port, so no frame -- AoE is raw Ethernet -- crosses
from the instance segment to the storage segment.

Nothing here touches the host's interfaces: the namespace has no veth to the host and no route
out; the bridge and every tap are created *inside* it (``ip -n NS ...``), and QEMU runs inside it
(``ip netns exec NS qemu-system-x86_64 ...``) so it can open its tap.  Deleting the namespace
removes the bridge and the taps with it.  Addresses come from a documentation range
(198.51.100.0/24 and 203.0.113.0/24 by default).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from homecloud.lab.errors import LabError

NETNS_DIR = Path("/run/netns")
IFNAME_MAX = 15


def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise LabError(f"{cmd[0]}: not installed ({exc})") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(cmd)}: no answer after {timeout}s") from None
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(cmd)} -> {r.returncode}: {r.stderr.strip()}")
    return r


#: Ethernet's standard MTU: the instance bridge's, and the storage bridge's without jumbo frames
ETHERNET_MTU = 1500


@dataclass(frozen=True)
class LabNet:
    """Names and addresses of one lab network (pure data; see the functions below)."""

    netns: str
    bridge: str = "hcbr0"
    server_cidr: str = "198.51.100.1/24"
    bridge_mac: str = "52:54:00:4c:43:01"  # fixed (a bridge would take its lowest port's MAC)
    inst_bridge: str = "hcbr1"
    inst_cidr: str = "203.0.113.1/24"
    inst_bridge_mac: str = "52:54:00:4c:49:01"
    # the provisioning/storage bridge and its taps (jumbo frames: AoE, DRBD, migrations carry
    # 8 KiB per frame instead of 1 KiB); the instance bridge keeps 1500
    mtu: int = ETHERNET_MTU

    @property
    def server_ip(self) -> str:
        return self.server_cidr.split("/", 1)[0]

    @property
    def inst_ip(self) -> str:
        return self.inst_cidr.split("/", 1)[0]

    def prefix(self) -> str:
        """The /24 prefix as 'a.b.c.' (the lab only uses /24 networks)."""
        return self.server_ip.rsplit(".", 1)[0] + "."

    def exec_argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def tap_names(node: str) -> tuple[str, str]:
    """The taps of lab node ``node``: (provisioning NIC, instance NIC); at most 15 characters
    (IFNAMSIZ), distinct for distinct lab node names (role + number up to 255)."""
    prov, inst = f"tap-{node}", f"tapi-{node}"
    for name in (prov, inst):
        if len(name) > IFNAME_MAX:
            raise LabError(f"lab node name {node!r}: tap {name!r} is longer than "
                           f"{IFNAME_MAX} characters")
    return prov, inst


def _bridge(net: LabNet, name: str, mac: str, cidr: str, mtu: int = ETHERNET_MTU) -> None:
    run("ip", "-n", net.netns, "link", "add", name, "address", mac, "mtu", str(mtu), "type",
        "bridge", "forward_delay", "0", "stp_state", "0")
    run("ip", "-n", net.netns, "addr", "add", cidr, "dev", name)
    run("ip", "-n", net.netns, "link", "set", name, "up")


def create_netns(net: LabNet) -> None:
    """The namespace (loopback up), the provisioning bridge and the instance bridge with the
    config node's addresses; no link out, no forwarding between the two."""
    if netns_exists(net.netns):
        raise LabError(f"network namespace {net.netns} already exists (hcboot lab down first)")
    if net.bridge == net.inst_bridge:
        raise LabError(f"the instance bridge must not be the provisioning bridge {net.bridge}")
    run("ip", "netns", "add", net.netns)
    run("ip", "-n", net.netns, "link", "set", "lo", "up")
    # a new namespace starts with forwarding off; say it, so that nothing routes instance
    # traffic onto the storage segment even if a default changes
    for key in ("net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"):
        run("ip", "netns", "exec", net.netns, "sysctl", "-q", "-w", key)
    _bridge(net, net.bridge, net.bridge_mac, net.server_cidr, net.mtu)
    # IPv6 link-local on the bridge: hcboot serve answers iPXE's router solicitations from it
    run("ip", "netns", "exec", net.netns, "sysctl", "-q", "-w",
        f"net.ipv6.conf.{net.bridge}.disable_ipv6=0", check=False)
    _bridge(net, net.inst_bridge, net.inst_bridge_mac, net.inst_cidr)


def create_tap(net: LabNet, name: str, bridge: str | None = None) -> None:
    """A tap inside the namespace, enslaved to ``bridge`` (default: the provisioning bridge)."""
    if len(name) > IFNAME_MAX:
        raise LabError(f"interface name {name!r} is longer than {IFNAME_MAX} characters")
    run("ip", "-n", net.netns, "tuntap", "add", "dev", name, "mode", "tap")
    if (bridge or net.bridge) == net.bridge and net.mtu != ETHERNET_MTU:
        # before it joins: a bridge takes the smallest MTU of its ports
        run("ip", "-n", net.netns, "link", "set", name, "mtu", str(net.mtu))
    run("ip", "-n", net.netns, "link", "set", name, "master", bridge or net.bridge)
    run("ip", "-n", net.netns, "link", "set", name, "up")


def delete_tap(net: LabNet, name: str) -> None:
    if netns_exists(net.netns):
        run("ip", "-n", net.netns, "link", "del", name, check=False)


def netns_pids(name: str) -> list[int]:
    """PIDs of the processes living in namespace ``name`` (all of them were started by the lab:
    nothing else runs in a namespace only the lab created)."""
    if not netns_exists(name):
        return []
    r = run("ip", "netns", "pids", name, check=False)
    return [int(p) for p in r.stdout.split() if p.isdigit()]


def delete_netns(name: str) -> bool:
    """Kill what is left inside the namespace (by PID), then delete it; True if it existed."""
    if not netns_exists(name):
        return False
    for pid in netns_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    run("ip", "netns", "del", name, check=False)
    return True


def bridge_ports(net: LabNet, bridge: str) -> list[str]:
    """The interfaces enslaved to ``bridge`` inside the namespace (for status and tests)."""
    if not netns_exists(net.netns):
        return []
    r = run("ip", "-n", net.netns, "-o", "link", "show", "master", bridge, check=False)
    return [p[1].strip().split("@", 1)[0] for p in (line.split(":", 2) for line in
                                                     r.stdout.splitlines()) if len(p) >= 2]


def links(net: LabNet) -> list[str]:
    """Interface names inside the namespace (for status and tests)."""
    if not netns_exists(net.netns):
        return []
    r = run("ip", "-n", net.netns, "-o", "link", "show", check=False)
    out = []
    for line in r.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            out.append(parts[1].strip().split("@", 1)[0])
    return out

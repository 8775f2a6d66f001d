"""The lab's network: one network namespace holding a bridge and one tap per VM.

Nothing here touches the host's interfaces: the namespace has no veth to the host and no route
out; the bridge and every tap are created *inside* it (``ip -n NS ...``), and QEMU runs inside it
(``ip netns exec NS qemu-system-x86_64 ...``) so it can open its tap.  Deleting the namespace
removes the bridge and the taps with it.  Addresses come from a documentation range
(198.51.100.0/24 by default).
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


@dataclass(frozen=True)
class LabNet:
    """Names and addresses of one lab network (pure data; see the functions below)."""

    netns: str
    bridge: str = "hcbr0"
    server_cidr: str = "198.51.100.1/24"
    bridge_mac: str = "52:54:00:4c:43:01"  # fixed (a bridge would take its lowest port's MAC)

    @property
    def server_ip(self) -> str:
        return self.server_cidr.split("/", 1)[0]

    def prefix(self) -> str:
        """The /24 prefix as 'a.b.c.' (the lab only uses /24 networks)."""
        return self.server_ip.rsplit(".", 1)[0] + "."

    def exec_argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create_netns(net: LabNet) -> None:
    """The namespace (loopback up) and its bridge with the server address; no link out."""
    if netns_exists(net.netns):
        raise LabError(f"network namespace {net.netns} already exists (hcboot lab down first)")
    run("ip", "netns", "add", net.netns)
    run("ip", "-n", net.netns, "link", "set", "lo", "up")
    run("ip", "-n", net.netns, "link", "add", net.bridge, "address", net.bridge_mac, "type",
        "bridge",
        "forward_delay", "0", "stp_state", "0")
    # IPv6 link-local on the bridge: hcboot serve answers iPXE's router solicitations from it
    run("ip", "netns", "exec", net.netns, "sysctl", "-q", "-w",
        f"net.ipv6.conf.{net.bridge}.disable_ipv6=0", check=False)
    run("ip", "-n", net.netns, "addr", "add", net.server_cidr, "dev", net.bridge)
    run("ip", "-n", net.netns, "link", "set", net.bridge, "up")


def create_tap(net: LabNet, name: str) -> None:
    """A tap inside the namespace, enslaved to the lab bridge."""
    if len(name) > IFNAME_MAX:
        raise LabError(f"interface name {name!r} is longer than {IFNAME_MAX} characters")
    run("ip", "-n", net.netns, "tuntap", "add", "dev", name, "mode", "tap")
    run("ip", "-n", net.netns, "link", "set", name, "master", net.bridge)
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

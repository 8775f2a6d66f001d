"""Shared helpers for bench/bench_pxe.py and bench/bench_clients.py (hcboot vs dnsmasq).

Both benchmarks build the same small world: a server namespace with a bridge on 192.0.2.1/24,
``hcboot serve --mode full`` in one such namespace and a tuned dnsmasq (DHCP + TFTP) in another,
serving the same kernel + initrd.  Everything is created through ``tests.support.netns.Lab`` (unique
``hct*`` names, removed on exit, processes killed by PID).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from builder.manifest import BootInfo  # noqa: E402
from tests.support.hcboot import Served, start_hcboot  # noqa: E402
from tests.support.images import publish  # noqa: E402
from tests.support.netns import Lab, Netns  # noqa: E402

SERVER = "192.0.2.1"
NET = "192.0.2.0/24"
DNSMASQ = "dnsmasq"


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("this benchmark needs root (network namespaces, taps)")


def machine_note() -> str:
    """One line describing where the numbers come from (they are noisy on a shared machine)."""
    load = os.getloadavg()
    return (f"{os.cpu_count()}-core {platform.machine()} host, shared with other jobs "
            f"(load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start); "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def emit_json(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=1, sort_keys=True))


# ------------------------------------------------------------------ servers

@dataclass
class DnsmasqServer:
    lab: Lab
    ns: Netns
    pid: int
    log: Path
    tftp_root: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def publish_role(images: Path, role: str, kernel: Path, initrd: Path, cmdline: str) -> None:
    """One role in an image store in hcbuild's format (kernel + initrd, iPXE loader)."""
    files: dict[str, Path | bytes] = {"kernel": kernel, "initrd": initrd}
    publish(images, role, files, BootInfo(kind="linux", loader="ipxe", cmdline=cmdline))


def server_ns(lab: Lab, tag: str) -> Netns:
    """A namespace holding bridge br0 with the server address."""
    ns = lab.netns(tag)
    lab.bridge(ns, "br0", f"{SERVER}/24")
    return ns


def start_hcboot_full(lab: Lab, ns: Netns, workdir: Path, images: Path,
                      pool: tuple[str, str]) -> Served:
    return start_hcboot(lab, ns, "br0", SERVER, workdir / "state", images,
                        "--range", f"{pool[0]}-{pool[1]}", mode="full")


def start_dnsmasq(lab: Lab, ns: Netns, workdir: Path, tftp_root: Path,
                  pool: tuple[str, str]) -> DnsmasqServer:
    """dnsmasq as tuned in FIELD-NOTES: DHCP + TFTP, no ping before offers, option 60 PXEClient
    in every reply (saves iPXE's 2 s ProxyDHCP wait), iPXE clients (user class "iPXE") get the
    small iPXE script boot.ipxe over TFTP, others undionly.kpxe."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "dnsmasq.log"
    argv = [
        DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
        "--user=root", "--group=root", f"--pid-file={workdir / 'dnsmasq.pid'}",
        "--interface=br0", "--bind-interfaces", "--log-facility=-",
        f"--dhcp-range={pool[0]},{pool[1]},255.255.255.0,1h",
        f"--dhcp-leasefile={workdir / 'dnsmasq.leases'}", "--dhcp-authoritative",
        "--no-ping", "--dhcp-option-force=60,PXEClient",
        "--dhcp-userclass=set:ipxe,iPXE", "--dhcp-boot=tag:ipxe,boot.ipxe",
        "--dhcp-boot=tag:!ipxe,undionly.kpxe",
        "--enable-tftp", f"--tftp-root={tftp_root}",
    ]
    p = lab.popen(argv, ns=ns, log=log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"dnsmasq exited {p.returncode}:\n{log.read_text()}")
        if "TFTP root is" in log.read_text(errors="replace"):
            return DnsmasqServer(lab, ns, p.pid, log, tftp_root)
        time.sleep(0.1)
    raise RuntimeError(f"dnsmasq did not come up:\n{log.read_text()}")


# ------------------------------------------------------------------ sockets inside a namespace

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with the calling thread inside network namespace ``name`` (sockets created
    there stay in it after the thread switches back)."""
    with open("/proc/thread-self/ns/net", "rb") as home, open(f"/run/netns/{name}", "rb") as ns:
        if _libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back from {name}: {os.strerror(err)}")


def packet_socket(ns: str, ifname: str, proto: int) -> tuple[socket.socket, bytes, int]:
    """An AF_PACKET raw socket bound to ``ifname`` in namespace ``ns``; (socket, mac, ifindex)."""
    with in_netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
        s.bind((ifname, proto))
        ifindex = socket.if_nametoindex(ifname)
        mac = bytes.fromhex(Path(f"/sys/class/net/{ifname}/address").read_text()
                            .strip().replace(":", ""))
    return s, mac, ifindex


# ------------------------------------------------------------------ IPv6 router advertisements

ETH_P_IPV6 = 0x86DD
ICMPV6_RS, ICMPV6_RA = 133, 134


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def link_local(mac: bytes) -> bytes:
    """fe80::/64 address from a MAC (modified EUI-64)."""
    eui = bytes((mac[0] ^ 0x02,)) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return b"\xfe\x80" + b"\0" * 6 + eui


def router_advertisement(src_mac: bytes) -> bytes:
    """The smallest RA that ends iPXE's IPv6 autoconfiguration at once: to ff02::1, M=O=0
    (no DHCPv6), router lifetime 0 (not a default router), no prefix, only the source
    link-layer address option.  iPXE (ndp.c ipv6conf_rx_router_advertisement) stops its router
    solicitation timer on the first RA and, with neither M nor O set, finishes the ipv6
    configurator; without any RA it retries solicitations until its timer gives up (~13 s)."""
    src_ip = link_local(src_mac)
    dst_ip = bytes.fromhex("ff020000000000000000000000000001")
    icmp = struct.pack("!BBHBBHII", ICMPV6_RA, 0, 0, 64, 0, 0, 0, 0) + bytes((1, 1)) + src_mac
    pseudo = src_ip + dst_ip + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", _csum(pseudo + icmp)) + icmp[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255) + src_ip + dst_ip
    eth = bytes.fromhex("333300000001") + src_mac + struct.pack("!H", ETH_P_IPV6)
    return eth + ip6 + icmp


class RaResponder:
    """Answers every IPv6 Router Solicitation on ``ifname`` (in namespace ``ns``) with
    ``router_advertisement()``: a prototype of what hcboot could do (see bench/README.md)."""

    def __init__(self, ns: str, ifname: str) -> None:
        self.sock, self.mac, _ = packet_socket(ns, ifname, ETH_P_IPV6)
        self.frame = router_advertisement(self.mac)
        self.sent = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"ra-{ns}", daemon=True)

    def start(self) -> RaResponder:
        self.thread.start()
        return self

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop_event.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            # addr[2] is the packet type: skip our own transmissions (PACKET_OUTGOING = 4)
            if addr[2] == 4 or len(data) < 14 + 40 + 4:
                continue
            if data[14 + 6] == 58 and data[14 + 40] == ICMPV6_RS:
                self.sock.send(self.frame)
                self.sent += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(2)
        self.sock.close()

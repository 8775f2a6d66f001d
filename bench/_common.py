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
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from homecloud.core.manifest import BootInfo  # noqa: E402
from tests.support.hcboot import Served, start_hcboot  # noqa: E402
from tests.support.images import publish  # noqa: E402
from tests.support.netns import Lab, Netns  # noqa: E402

SERVER = "192.0.2.1"
NET = "192.0.2.0/24"
V6_PREFIX = "2001:db8:0:1::"  # documentation prefix, only inside the namespaces
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
                      pool: tuple[str, str], ra: bool = True) -> Served:
    """``hcboot serve --mode full``; ``ra=False`` passes --no-ipv6-ra."""
    extra = ["--range", f"{pool[0]}-{pool[1]}"]
    if not ra:
        extra.append("--no-ipv6-ra")
    return start_hcboot(lab, ns, "br0", SERVER, workdir / "state", images, *extra, mode="full")


def start_dnsmasq(lab: Lab, ns: Netns, workdir: Path, tftp_root: Path,
                  pool: tuple[str, str], ra: bool = False) -> DnsmasqServer:
    """dnsmasq as tuned in FIELD-NOTES: DHCP + TFTP, no ping before offers, option 60 PXEClient
    in every reply (saves iPXE's 2 s ProxyDHCP wait), iPXE clients (user class "iPXE") get the
    small iPXE script boot.ipxe over TFTP, others undionly.kpxe.

    ``ra``: dnsmasq also sends IPv6 router advertisements (``--enable-ra``, ``ra-only`` for a
    documentation prefix put on br0): without any RA on the link iPXE waits ~13 s for an IPv6
    router (FIELD-NOTES); hcboot answers router solicitations itself (bootserver/ra.py)."""
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
        # default --tftp-max is 50 concurrent transfers: 100 clients at once need more
        "--enable-tftp", f"--tftp-root={tftp_root}", "--tftp-max=256",
    ]
    if ra:
        ns.run("ip", "-6", "addr", "add", f"{V6_PREFIX}1/64", "dev", "br0", "nodad")
        argv += ["--enable-ra", "--dhcp-range=::,constructor:br0,ra-only"]
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


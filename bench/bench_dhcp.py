#!/usr/bin/env python3
"""Benchmark hcboot's DHCP server against dnsmasq, side by side, in one run.

Two isolated pairs of network namespaces (server -- veth -- client), one running
``bootserver.dhcp.DhcpServer`` (full mode, in its own process) and one running dnsmasq 2.90
(``--no-ping`` so neither server probes addresses; both journal leases to a file).  The client
is this process: packets are pre-built bytes patched with ``struct`` (xid, chaddr), sent from a
plain UDP socket created inside the client namespace; no scapy in the hot path.

Measured per server, in alternating rounds, medians reported:
  * DISCOVER->OFFER latency (one outstanding; 100 client MACs cycled: the steady state),
  * OFFERs/s with one outstanding (1 / mean round trip over a fixed number of exchanges),
  * REQUEST->ACK latency (40 MACs cycled; includes each server's lease-file write),
  * a burst of 1000 DISCOVERs from distinct MACs sent back to back: % answered.

Run as root:  python bench/bench_dhcp.py [--rounds 5]
Everything happens in namespaces this script creates (192.0.2.0/24) and removes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SRV_IP, CLI_IP = "192.0.2.1", "192.0.2.2"
RANGE = ("192.0.2.10", "192.0.2.250")
CLONE_NEWNET = 0x40000000
SO_BINDTODEVICE, SO_RCVBUFFORCE = 25, 33


# --- server child (runs inside the server namespace) ----------------------------------------------

def serve_hcboot(lease_file: str, log_file: str) -> None:
    import logging
    import signal
    import threading

    from bootserver.dhcp.pool import PoolConfig
    from bootserver.dhcp.server import DhcpConfig, DhcpServer
    from bootserver.machine import BootFile, Machine

    logging.basicConfig(level=logging.INFO, filename=log_file,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")

    class Policy:
        def static_address(self, mac: str) -> tuple[str, str | None] | None:
            return None

        def boot_file(self, machine: Machine) -> BootFile | None:
            return BootFile("undionly.kpxe", "hnode")

        def record_seen(self, machine: Machine) -> None:
            return None

    cfg = DhcpConfig(interface="eth0", server_ip=SRV_IP, mode="full",
                     pools=(PoolConfig("192.0.2.0/24", *RANGE, router=SRV_IP),),
                     lease_time=3600, lease_file=Path(lease_file))
    srv = DhcpServer(cfg, Policy())
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    srv.start()
    print("READY", flush=True)
    done.wait()
    srv.stop()


# --- client side ----------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def entered(ns_name: str) -> Iterator[None]:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns_name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns_name}")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def client_socket(ns_name: str) -> socket.socket:
    with entered(ns_name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"eth0")
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        s.bind(("0.0.0.0", 68))
    return s


def template(msg_type: int, extra: bytes = b"") -> bytearray:
    """A BOOTREQUEST with broadcast flag, PXE vendor class and arch; xid/chaddr patched later."""
    head = struct.pack("!BBBBIHH", 1, 1, 6, 0, 0, 0, 0x8000) + bytes(16) + bytes(16) + bytes(192)
    opts = (bytes((53, 1, msg_type)) + bytes((60, 32)) + b"PXEClient:Arch:00000:UNDI:002001"
            + bytes((93, 2, 0, 0)) + bytes((55, 6, 1, 3, 6, 60, 66, 67)) + extra + b"\xff")
    return bytearray(head + b"\x63\x82\x53\x63" + opts)


DISCOVER = template(1)


def patch(buf: bytearray, xid: int, mac_n: int) -> bytes:
    struct.pack_into("!I", buf, 4, xid)
    struct.pack_into("!HI", buf, 28, 0x5254, mac_n)
    return bytes(buf)


def request_for(mac_n: int, xid: int, ip: bytes) -> bytes:
    extra = bytes((54, 4)) + socket.inet_aton(SRV_IP) + bytes((50, 4)) + ip
    return patch(template(3, extra), xid, mac_n)


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.xid = int.from_bytes(os.urandom(3), "big") << 8

    def next_xid(self) -> int:
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        return self.xid

    def drain(self) -> None:
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(65536)
        self.sock.setblocking(True)

    def exchange(self, data: bytes, xid: int, timeout: float = 1.0) -> bytes | None:
        self.sock.settimeout(timeout)
        self.sock.sendto(data, ("255.255.255.255", 67))
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self.sock.recv(65536)
            except TimeoutError:
                return None
            if len(reply) >= 8 and struct.unpack_from("!I", reply, 4)[0] == xid:
                return reply
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)

    def offer_latency(self, n: int, macs: int = 100) -> tuple[list[float], int]:
        lat, lost = [], 0
        buf = bytearray(DISCOVER)
        for i in range(n):
            xid = self.next_xid()
            data = patch(buf, xid, i % macs)
            t0 = time.perf_counter()
            if self.exchange(data, xid) is None:
                lost += 1
                continue
            lat.append(time.perf_counter() - t0)
        return lat, lost

    def ack_latency(self, n: int, macs: int = 40) -> tuple[list[float], int]:
        lat, lost = [], 0
        buf = bytearray(DISCOVER)
        for i in range(n):
            xid = self.next_xid()
            offer = self.exchange(patch(buf, xid, 10_000 + i % macs), xid)
            if offer is None:
                lost += 1
                continue
            req = request_for(10_000 + i % macs, xid, offer[16:20])
            t0 = time.perf_counter()
            ack = self.exchange(req, xid)
            if ack is None or b"\x35\x01\x05" not in ack[240:]:
                lost += 1
                continue
            lat.append(time.perf_counter() - t0)
        return lat, lost

    def burst(self, n: int, base: int) -> int:
        buf = bytearray(DISCOVER)
        first = self.next_xid()
        pkts = [patch(buf, first + i, base + i) for i in range(n)]
        self.xid = first + n
        for p in pkts:
            self.sock.sendto(p, ("255.255.255.255", 67))
        got: set[int] = set()
        self.sock.settimeout(1.0)
        with contextlib.suppress(TimeoutError):
            while len(got) < n:
                reply = self.sock.recv(65536)
                x = struct.unpack_from("!I", reply, 4)[0]
                if first <= x < first + n:
                    got.add(x)
        return len(got)


# --- orchestration --------------------------------------------------------------------------------

def setup(lab: object, tag: str) -> tuple[object, object]:
    from tests.support.netns import Lab
    assert isinstance(lab, Lab)
    srv, cli = lab.netns(f"{tag}s"), lab.netns(f"{tag}c")
    lab.veth(srv, "eth0", cli, "eth0")
    lab.addr(srv, "eth0", f"{SRV_IP}/24")
    lab.addr(cli, "eth0", f"{CLI_IP}/24")
    return srv, cli


def wait_ready(p: subprocess.Popen[bytes], log: Path, needle: str, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited with {p.returncode}: {log.read_text()[-2000:]}")
        if needle in log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready: {log.read_text()[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000, help="exchanges per latency round")
    ap.add_argument("--lease-dir", type=Path, default=None,
                    help="where both servers keep their lease files (default: a temporary"
                    " directory under /tmp; try /dev/shm to take the disk's fsync out)")
    ap.add_argument("--serve-hcboot", nargs=2, metavar=("LEASES", "LOG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_hcboot:
        serve_hcboot(*args.serve_hcboot)
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    from tests.support.netns import Lab, Netns

    with tempfile.TemporaryDirectory(prefix="bench-dhcp-", dir=args.lease_dir) as td, \
            Lab() as lab:
        tmp = Path(td)
        hs, hc = setup(lab, "h")
        ds, dc = setup(lab, "d")
        assert isinstance(hs, Netns) and isinstance(hc, Netns)
        assert isinstance(ds, Netns) and isinstance(dc, Netns)
        hlog = tmp / "hcboot.log"
        hp = lab.popen([sys.executable, str(Path(__file__).resolve()), "--serve-hcboot",
                        str(tmp / "hc.leases"), str(tmp / "hcboot-dhcp.log")], ns=hs, log=hlog)
        dlog = tmp / "dnsmasq.log"
        dp = lab.popen(["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
                        "--interface=eth0", "--bind-interfaces", "--no-ping",
                        "--dhcp-authoritative", f"--dhcp-range={RANGE[0]},{RANGE[1]},1h",
                        f"--dhcp-option=3,{SRV_IP}", f"--dhcp-boot=undionly.kpxe,,{SRV_IP}",
                        f"--dhcp-leasefile={tmp / 'dm.leases'}", "--pid-file=",
                        "--dhcp-lease-max=100000"], ns=ds, log=dlog)
        wait_ready(hp, hlog, "READY", "hcboot")
        time.sleep(0.5)
        if dp.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {dlog.read_text()}")
        clients = {"hcboot": Client(client_socket(hc.name)),
                   "dnsmasq": Client(client_socket(dc.name))}
        res: dict[str, dict[str, list[float]]] = {
            k: {"offer_us": [], "rate": [], "ack_us": [], "burst": [], "lost": []}
            for k in clients}
        for c in clients.values():  # warm-up
            c.offer_latency(200)
            c.drain()
        def interleaved(fn: Callable[[Client, int], tuple[list[float], int]], total: int,
                        block: int) -> dict[str, tuple[list[float], int]]:
            """Run ``fn`` in blocks alternating between the servers, so both see the same
            background load (this machine is shared)."""
            acc: dict[str, tuple[list[float], int]] = {n: ([], 0) for n in clients}
            for b in range(max(1, total // block)):
                names = list(clients) if b % 2 == 0 else list(reversed(clients))
                for name in names:
                    lat, lost = fn(clients[name], block)
                    acc[name] = (acc[name][0] + lat, acc[name][1] + lost)
            return acc

        for r in range(args.rounds):
            offers = interleaved(lambda c, n: c.offer_latency(n), args.n, 100)
            acks = interleaved(lambda c, n: c.ack_latency(n), min(args.n, 400), 20)
            for name in clients:
                lat, lost = offers[name]
                res[name]["offer_us"].append(statistics.median(lat) * 1e6)
                res[name]["rate"].append(len(lat) / sum(lat))
                alat, alost = acks[name]
                res[name]["ack_us"].append(statistics.median(alat) * 1e6)
                res[name]["lost"].append(lost + alost)
            order = list(clients) if r % 2 == 0 else list(reversed(clients))
            for name in order:
                c = clients[name]
                c.drain()
                res[name]["burst"].append(c.burst(1000, 0x100000 * (r + 1)) / 10)
                time.sleep(0.5)
                c.drain()
            print(f"round {r + 1}/{args.rounds}: " + "; ".join(
                f"{n} offer {res[n]['offer_us'][-1]:.0f} us, {res[n]['rate'][-1]:.0f}/s, "
                f"ack {res[n]['ack_us'][-1]:.0f} us, burst {res[n]['burst'][-1]:.1f}%"
                for n in clients), flush=True)
        for c in clients.values():
            c.sock.close()
        lab.stop(hp)
        lab.stop(dp)

    def med(n: str, k: str) -> float:
        return statistics.median(res[n][k])

    print()
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
          " (the ratios are only comparable on a quiet machine)")
    print(f"{'metric (median of ' + str(args.rounds) + ' rounds)':<36}{'hcboot':>12}"
          f"{'dnsmasq':>12}{'hc/dm':>9}")
    rows = [("DISCOVER->OFFER latency (us)", "offer_us"),
            ("OFFERs/s, one outstanding", "rate"),
            ("REQUEST->ACK latency (us)", "ack_us"),
            ("burst of 1000 DISCOVERs answered (%)", "burst")]
    for label, k in rows:
        h, d = med("hcboot", k), med("dnsmasq", k)
        print(f"{label:<36}{h:>12.1f}{d:>12.1f}{h / d:>9.2f}")
    print(f"lost exchanges (total): hcboot {sum(res['hcboot']['lost']):.0f},"
          f" dnsmasq {sum(res['dnsmasq']['lost']):.0f}")
    rate = med("hcboot", "rate") / med("dnsmasq", "rate")
    print(f"targets: rate >= 0.5x dnsmasq: {'PASS' if rate >= 0.5 else 'FAIL'} ({rate:.2f}x);"
          f" burst >= 99%: {'PASS' if med('hcboot', 'burst') >= 99 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

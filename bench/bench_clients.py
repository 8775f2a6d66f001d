#!/usr/bin/env python3
"""100 PXE clients at once: DHCP, then kernel + initrd; hcboot (HTTP) vs dnsmasq (TFTP).

World (per server, each in its own namespaces, created here and removed on exit):
server namespace with bridge br0 = 192.0.2.1/24 running the server, and one client namespace
joined to the bridge by a veth.  The servers:
  * hcboot: ``hcboot serve --mode full``, the 100 MACs assigned to one role (kernel + initrd);
  * dnsmasq 2.90 tuned as in FIELD-NOTES (DHCP + TFTP, --no-ping, option 60, iPXE user class
    gets boot.ipxe), kernel + initrd in its TFTP root.

Each round, for each server (order alternating):
  1. DHCP: 100 clients with distinct MACs, DISCOVER -> OFFER -> REQUEST -> ACK, from one AF_PACKET
     socket in the client namespace (each frame carries its client's source MAC).  Frames are
     built once by scapy as templates before the clock starts and patched with struct (xid,
     MAC, offered address, server id); the 100 DISCOVERs go out back to back.  A client that
     has no answer after 1 s retransmits (at most 4 tries per message), like a PXE ROM.
  2. Fetch: the 100 leased addresses are added to the client veth and 100 curl processes (one
     per client, bound to its address, released at the same instant) fetch kernel then initrd
     the way that server's clients would: HTTP from hcboot (its iPXE clients) and TFTP at
     blksize 1468 from dnsmasq.  ``--hcboot-tftp`` adds hcboot's own TFTP (what its pxelinux
     clients use) as a third row, for reference.
Failures: no ACK after the retries, a curl exit code other than 0, or a wrong size (a TFTP
client not done after ``--tftp-timeout`` s, an HTTP one after 120 s, counts as failed).  Aggregate
MB/s = bytes delivered / (release -> last client done), MB = 10^6 bytes; server CPU seconds from
/proc/PID/stat.  Targets (FIELD-NOTES): 0 failures; hcboot >= dnsmasq's 111-147 MB/s aggregate.

    python3 bench/bench_clients.py [--runs 3] [--clients 100] [--hcboot-tftp] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    SERVER,
    emit_json,
    machine_note,
    median,
    met,
    packet_socket,
    publish_role,
    require_root,
    server_ns,
    start_dnsmasq,
    start_hcboot_full,
)

from homecloud.core.model import Inventory, Nic, Node, default_node_name
from homecloud.inventory.schema import to_yaml
from tests.support import artifacts
from tests.support.netns import Lab, Netns

ROLE = "benchclients"
POOL = ("192.0.2.10", "192.0.2.250")
DNSMASQ_FLOOR_MBPS = 111.0      # FIELD-NOTES: dnsmasq 111-147 MB/s aggregate for 100 clients
TFTP_BLKSIZE = 1468
ETH_P_IP = 0x0800
TRIES = 4
RETRY_S = 1.0
HTTP_TIMEOUT_S = 120
VARIANTS = ("hcboot-http", "dnsmasq-tftp", "hcboot-tftp")

# offsets in an Ethernet + IPv4 (20) + UDP frame carrying BOOTP
BOOTP = 14 + 20 + 8
XID, YIADDR, CHADDR, OPTIONS = BOOTP + 4, BOOTP + 16, BOOTP + 28, BOOTP + 240  # options: after
# the fixed 236-byte header and the 4-byte magic cookie
REQ_IP_MARK = bytes((203, 0, 113, 77))   # placeholders found in the REQUEST template
SRV_ID_MARK = bytes((203, 0, 113, 78))


def mac_of(i: int) -> bytes:
    return bytes((0x52, 0x54, 0x00, 0xC1, i >> 8, i & 0xFF))


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


# ------------------------------------------------------------------ DHCP client swarm

@dataclass
class Templates:
    discover: bytes
    request: bytes
    req_ip_off: int
    srv_id_off: int


def build_templates() -> Templates:
    """DISCOVER/REQUEST frames as an iPXE ROM sends them, built once with scapy."""
    from scapy.layers.dhcp import BOOTP as Bootp
    from scapy.layers.dhcp import DHCP
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    common = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"), (77, b"iPXE"),
              (93, b"\x00\x00"), ("param_req_list", [1, 3, 6, 12, 15, 17, 43, 60, 66, 67])]

    def frame(options: list[Any]) -> bytes:
        pkt = (Ether(src="00:00:00:00:00:00", dst="ff:ff:ff:ff:ff:ff")
               / IP(src="0.0.0.0", dst="255.255.255.255")
               / UDP(sport=68, dport=67, chksum=0)   # no UDP checksum: patched frames stay valid
               / Bootp(op=1, xid=0, flags=0x8000, chaddr=b"\0" * 16)
               / DHCP(options=options))
        return bytes(pkt)

    discover = frame([("message-type", "discover"), *common, "end"])
    request = frame([("message-type", "request"), ("requested_addr", "203.0.113.77"),
                     ("server_id", "203.0.113.78"), *common, "end"])
    return Templates(discover, request, request.index(REQ_IP_MARK, OPTIONS),
                     request.index(SRV_ID_MARK, OPTIONS))


def _options(data: bytes) -> dict[int, bytes]:
    opts: dict[int, bytes] = {}
    i = OPTIONS  # right after the magic cookie
    while i < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        n = data[i + 1]
        opts[code] = data[i + 2:i + 2 + n]
        i += 2 + n
    return opts


@dataclass
class DhcpResult:
    leases: dict[int, str] = field(default_factory=dict)   # client index -> address
    failed: list[int] = field(default_factory=list)
    retransmits: int = 0
    seconds: float = 0.0


def dhcp_swarm(ns: str, ifname: str, n: int, t: Templates, xid_base: int) -> DhcpResult:
    """All ``n`` clients through DISCOVER/OFFER/REQUEST/ACK at once; bounded by TRIES."""
    sock, _, _ = packet_socket(ns, ifname, ETH_P_IP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setblocking(False)
    discovers = []
    for i in range(n):
        f = bytearray(t.discover)
        f[6:12] = mac_of(i)
        f[CHADDR:CHADDR + 6] = mac_of(i)
        struct.pack_into("!I", f, XID, xid_base + i)
        discovers.append(bytes(f))
    state = ["discover"] * n          # discover -> request -> done | failed
    tries = [0] * n
    last = [0.0] * n
    request: list[bytes | None] = [None] * n
    res = DhcpResult()

    def send(i: int) -> None:
        frame = discovers[i] if state[i] == "discover" else request[i]
        assert frame is not None
        if tries[i] > 0:
            res.retransmits += 1
        tries[i] += 1
        last[i] = time.monotonic()
        sock.send(frame)

    start = time.monotonic()
    for i in range(n):
        send(i)
    deadline = start + TRIES * RETRY_S + 2
    pending = n
    try:
        while pending and time.monotonic() < deadline:
            r, _, _ = select.select([sock], [], [], 0.05)
            if r:
                while True:
                    try:
                        data, addr = sock.recvfrom(2048)
                    except BlockingIOError:
                        break
                    if (addr[2] == 4 or len(data) < OPTIONS + 8 or data[23] != 17
                            or data[36:38] != b"\x00\x44" or data[BOOTP] != 2):
                        continue
                    i = struct.unpack_from("!I", data, XID)[0] - xid_base
                    if not 0 <= i < n or data[CHADDR:CHADDR + 6] != mac_of(i):
                        continue
                    opts = _options(data)
                    mt = opts.get(53, b"\0")[0]
                    if mt == 2 and state[i] == "discover":           # OFFER
                        f = bytearray(t.request)
                        f[6:12] = mac_of(i)
                        f[CHADDR:CHADDR + 6] = mac_of(i)
                        struct.pack_into("!I", f, XID, xid_base + i)
                        f[t.req_ip_off:t.req_ip_off + 4] = data[YIADDR:YIADDR + 4]
                        f[t.srv_id_off:t.srv_id_off + 4] = opts.get(54, b"\0\0\0\0")[:4]
                        request[i] = bytes(f)
                        state[i], tries[i] = "request", 0
                        send(i)
                    elif mt == 5 and state[i] == "request":          # ACK
                        state[i] = "done"
                        res.leases[i] = socket.inet_ntoa(data[YIADDR:YIADDR + 4])
                        pending -= 1
                    elif mt == 6 and state[i] == "request":          # NAK: start over
                        state[i], tries[i] = "discover", 0
                        send(i)
            now = time.monotonic()
            for i in range(n):
                if state[i] in ("discover", "request") and now - last[i] >= RETRY_S:
                    if tries[i] >= TRIES:
                        state[i] = "failed"
                        pending -= 1
                    else:
                        send(i)
    finally:
        sock.close()
    res.seconds = time.monotonic() - start
    res.failed = [i for i in range(n) if state[i] != "done"]
    return res


# ------------------------------------------------------------------ fetch swarm

def machine_idle() -> tuple[float, float]:
    """(idle + iowait, total) jiffies of the whole machine from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return f[3] + f[4], sum(f[:8])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children (all threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class FetchResult:
    seconds: float
    bytes_ok: int
    failures: list[str]
    per_client_s: list[float]


def fetch_swarm(ns: Netns, ifname: str, leases: dict[int, str], urls: list[str],
                sizes: list[int], tftp: bool, workdir: Path, timeout: float) -> FetchResult:
    """One curl per client, bound to its leased address, all released at the same time."""
    ns.run("ip", "addr", "flush", "dev", ifname)
    batch = "".join(f"addr add {ip}/24 dev {ifname}\n" for ip in leases.values())
    (workdir / "addrs.batch").write_text(batch)
    ns.run("ip", "-batch", str(workdir / "addrs.batch"))
    procs: list[tuple[int, subprocess.Popen[bytes], Path]] = []
    try:
        for i, ip in leases.items():
            # curl's TFTP re-ACKs a stalled transfer every max-time/50 s: max-time is kept small
            argv = ["curl", "-sS", "--max-time", str(int(timeout)), "--interface", ip,
                    "-w", "%{size_download} %{time_total}\\n"]
            if tftp:
                argv += ["--tftp-blksize", str(TFTP_BLKSIZE)]
            for u in urls:
                argv += ["-o", "/dev/null", u]
            out = workdir / f"c{i}.out"
            # the shell waits for the go line, then becomes curl (the fork/exec is not timed)
            cmd = ns.cmd("sh", "-c", 'read go && exec "$@"', "sh", *argv)
            with open(out, "wb") as fh:
                p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
            procs.append((i, p, out))
        time.sleep(0.5)  # every shell is blocked in read
        start = time.monotonic()
        for _, p, _ in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.close()
        deadline = start + timeout + 10
        ends: dict[int, float] = {}
        while len(ends) < len(procs) and time.monotonic() < deadline:
            for i, p, _ in procs:
                if i not in ends and p.poll() is not None:
                    ends[i] = time.monotonic()
            time.sleep(0.005)
        seconds = max(ends.values(), default=time.monotonic()) - start
    finally:
        for _, p, _ in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 9)
                p.wait(5)
    failures: list[str] = []
    bytes_ok = 0
    for i, p, out in procs:
        lines = out.read_text(errors="replace").split("\n")
        got = [ln.split() for ln in lines if ln.strip()]
        sizes_got = [int(g[0]) for g in got if len(g) == 2 and g[0].isdigit()]
        if p.returncode < 0:
            failures.append(f"client {i} ({leases[i]}): not done after {timeout:.0f} s "
                            f"(curl killed), sizes {sizes_got}")
        elif p.returncode != 0 or sizes_got != sizes:
            failures.append(f"client {i} ({leases[i]}): curl exit {p.returncode}, "
                            f"sizes {sizes_got}, {' '.join(lines)[:200]}")
        else:
            bytes_ok += sum(sizes)
    per_client = [ends[i] - start for i in ends]
    ns.run("ip", "addr", "flush", "dev", ifname)
    return FetchResult(seconds, bytes_ok, failures, per_client)


# ------------------------------------------------------------------ one world per server

@dataclass
class World:
    name: str
    server_pid: int
    client: Netns
    urls: dict[str, list[str]]   # variant -> urls


def setup_hcboot(lab: Lab, work: Path, kernel: Path, initrd: Path, n: int) -> World:
    images = work / "images"
    publish_role(images, ROLE, kernel, initrd, "console=ttyS0")
    state = work / "hcboot" / "state"
    state.mkdir(parents=True)
    nodes = tuple(Node(default_node_name(ROLE, mac_str(mac_of(i))), ROLE,
                       (Nic(mac_str(mac_of(i))),)) for i in range(n))
    (state / "inventory.yaml").write_text(to_yaml(Inventory(nodes)))
    ns = server_ns(lab, "hc")
    srv = start_hcboot_full(lab, ns, work / "hcboot", images, POOL)
    cl = lab.netns("hcc")
    lab.port(ns, "br0", cl, "eth0")
    base = f"images/{ROLE}/current"
    return World("hcboot", srv.proc.pid, cl, {
        "hcboot-http": [f"http://{SERVER}/{base}/{f}" for f in ("kernel", "initrd")],
        "hcboot-tftp": [f"tftp://{SERVER}/{base}/{f}" for f in ("kernel", "initrd")]})


def setup_dnsmasq(lab: Lab, work: Path, kernel: Path, initrd: Path) -> World:
    tftp = work / "tftp"
    tftp.mkdir(parents=True)
    for name, src in (("kernel", kernel), ("initrd", initrd)):
        shutil.copyfile(src, tftp / name)
    (tftp / "boot.ipxe").write_text(f"#!ipxe\nkernel tftp://{SERVER}/kernel initrd=initrd\n"
                                    f"initrd tftp://{SERVER}/initrd\nboot\n")
    ns = server_ns(lab, "dq")
    dq = start_dnsmasq(lab, ns, work / "dnsmasq", tftp, POOL)
    cl = lab.netns("dqc")
    lab.port(ns, "br0", cl, "eth0")
    return World("dnsmasq", dq.pid, cl, {
        "dnsmasq-tftp": [f"tftp://{SERVER}/{f}" for f in ("kernel", "initrd")]})


@dataclass
class Round:
    variant: str
    index: int
    dhcp_s: float
    dhcp_failed: int
    retransmits: int
    fetch_s: float
    mbps: float
    failures: list[str]
    client_median_s: float
    server_cpu_s: float
    idle_pct: float  # of the whole machine during the fetch
    client_cpu_s: float  # all curl processes of the round (reaped children of this script)


def one_round(world: World, variant: str, index: int, t: Templates, n: int, sizes: list[int],
              work: Path, tftp_timeout: float) -> Round:
    d = dhcp_swarm(world.client.name, "eth0", n, t, xid_base=0x10000000 * (index + 1))
    rdir = work / f"{variant}-{index}"
    rdir.mkdir(parents=True)
    cpu0 = cpu_seconds(world.server_pid)
    idle0 = machine_idle()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    tftp = variant.endswith("tftp")
    f = fetch_swarm(world.client, "eth0", d.leases, world.urls[variant], sizes, tftp=tftp,
                    workdir=rdir, timeout=tftp_timeout if tftp else HTTP_TIMEOUT_S)
    cpu = cpu_seconds(world.server_pid) - cpu0
    idle1 = machine_idle()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    idle = 100.0 * (idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1])
    failures = [f"client {i}: no DHCP ACK after {TRIES} tries" for i in d.failed] + f.failures
    return Round(variant, index, d.seconds, len(d.failed), d.retransmits, f.seconds,
                 f.bytes_ok / f.seconds / 1e6 if f.seconds > 0 else 0.0, failures,
                 median(f.per_client_s), cpu, idle, client_cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds (each: every variant once)")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--hcboot-tftp", action="store_true",
                    help="also measure hcboot's own TFTP (what its pxelinux clients use)")
    ap.add_argument("--tftp-only", action="store_true",
                    help="only the TFTP storm: hcboot TFTP vs dnsmasq TFTP (no HTTP rows)")
    ap.add_argument("--tftp-timeout", type=float, default=120,
                    help="curl --max-time per TFTP client, s (default 120; later = failure)")
    ap.add_argument("--json", action="store_true", help="print one JSON document at the end")
    args = ap.parse_args()
    require_root()
    n = args.clients
    note = machine_note()
    kernel = artifacts.debian_kernel().vmlinuz
    initrd = artifacts.aoe_root_initramfs()
    sizes = [kernel.stat().st_size, initrd.stat().st_size]
    variants = [v for v in VARIANTS if args.hcboot_tftp or args.tftp_only or v != "hcboot-tftp"]
    if args.tftp_only:
        variants = [v for v in variants if v != "hcboot-http"]
    if not args.json:
        print(f"bench_clients: {n} clients x (kernel {sizes[0]} + initrd {sizes[1]} bytes), "
              f"{args.runs} rounds, variants alternating; {note}", flush=True)
    t = build_templates()
    work = Path(tempfile.mkdtemp(prefix="bench-clients-"))
    rounds: list[Round] = []
    try:
        with Lab() as lab:
            hc = setup_hcboot(lab, work / "hc", kernel, initrd, n)
            dq = setup_dnsmasq(lab, work / "dq", kernel, initrd)
            worlds = {"hcboot-http": hc, "hcboot-tftp": hc, "dnsmasq-tftp": dq}
            for r in range(args.runs):
                order = variants if r % 2 == 0 else variants[::-1]
                for v in order:
                    rd = one_round(worlds[v], v, r, t, n, sizes, work / "runs",
                                   args.tftp_timeout)
                    rounds.append(rd)
                    if not args.json:
                        print(f"  round {r + 1} {v:12s} DHCP {rd.dhcp_s:5.2f} s "
                              f"({rd.retransmits} retransmits, {rd.dhcp_failed} failed)  "
                              f"fetch {rd.fetch_s:6.2f} s = {rd.mbps:6.1f} MB/s aggregate, "
                              f"client median {rd.client_median_s:5.2f} s, "
                              f"server CPU {rd.server_cpu_s:5.2f} s, "
                              f"clients' CPU {rd.client_cpu_s:5.1f} s, "
                              f"machine idle {rd.idle_pct:4.1f}%, "
                              f"failures {len(rd.failures)}", flush=True)
                        for msg in rd.failures[:5]:
                            print(f"    {msg}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_bytes = n * sum(sizes)
    summary: dict[str, Any] = {}
    for v in variants:
        rs = [x for x in rounds if x.variant == v]
        summary[v] = {
            "mbps_runs": [round(x.mbps, 1) for x in rs],
            "mbps_median": median([x.mbps for x in rs]),
            "fetch_s_median": median([x.fetch_s for x in rs]),
            "dhcp_s_median": median([x.dhcp_s for x in rs]),
            "dhcp_retransmits": [x.retransmits for x in rs],
            "failures": sum(len(x.failures) for x in rs),
            "failure_samples": [m for x in rs for m in x.failures][:10],
            "server_cpu_s_per_gb": median([x.server_cpu_s / (total_bytes / 1e9) for x in rs]),
            "machine_idle_pct": [round(x.idle_pct, 1) for x in rs],
            "client_cpu_s": [round(x.client_cpu_s, 1) for x in rs],
        }
    dmb = summary["dnsmasq-tftp"]["mbps_median"]
    # each hcboot variant against dnsmasq's TFTP in the same run: 0 failures and >= its MB/s
    targets: dict[str, dict[str, bool]] = {}
    for v in (x for x in variants if x != "dnsmasq-tftp"):
        hmb = summary[v]["mbps_median"]
        targets[v] = {
            "zero_failures": summary[v]["failures"] == 0 and summary["dnsmasq-tftp"]["failures"]
            == 0,
            "ge_dnsmasq_measured": hmb >= dmb,
            "ge_field_notes_111_mbps": hmb >= DNSMASQ_FLOOR_MBPS,
        }
    if args.json:
        emit_json({"benchmark": "clients", "machine": note, "clients": n, "rounds": args.runs,
                   "bytes_per_client": sum(sizes), "summary": summary, "targets": targets,
                   "machine_end": machine_note()})
    else:
        print(f"medians over {args.runs} rounds ({n} clients, {total_bytes / 1e6:.0f} MB per "
              f"round, MB = 10^6 bytes):")
        for v in variants:
            s = summary[v]
            print(f"  {v:12s} {s['mbps_median']:7.1f} MB/s aggregate, fetch "
                  f"{s['fetch_s_median']:5.2f} s, DHCP {s['dhcp_s_median']:5.2f} s, failures "
                  f"{s['failures']}, server CPU {s['server_cpu_s_per_gb']:.2f} s/GB")
        for v, t in targets.items():
            hmb = summary[v]["mbps_median"]
            print(f"target 0 failures ({v}, dnsmasq-tftp): {met(t['zero_failures'])}")
            print(f"target {v} >= dnsmasq TFTP measured here ({hmb:.1f} vs {dmb:.1f} MB/s, "
                  f"x{hmb / dmb if dmb else float('nan'):.2f}): "
                  f"{met(t['ge_dnsmasq_measured'])}")
            if v == "hcboot-http":
                print(f"target hcboot HTTP >= FIELD-NOTES dnsmasq 111-147 MB/s: "
                      f"{met(t['ge_field_notes_111_mbps'])}")
        print(f"at the end: {machine_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

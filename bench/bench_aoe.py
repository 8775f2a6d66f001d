#!/usr/bin/env python3
"""Throughput of ``hcboot aoe verify`` against vblade over veth, and what it is compared with.

Run as root from the repository root::

    python bench/bench_aoe.py [--size-mib 256] [--runs 3] [--mtu 1500] [--window 16]

Measures (medians over ``--runs``):

* ``verify``: homecloud.aoe.verify.verify(), full mode (sha256 of the whole export plus a
  per-chunk comparison with the local artifact file), one vblade on a direct veth;
* ``verify-2path``: the same with two vblades exporting the same shelf.slot behind a bridge;
* ``scapy-srp``: plain scapy, every request frame built by scapy, one batch ``srp()`` of
  ``--srp-requests`` requests; a bounded sample, EXTRAPOLATED to the whole export;
* ``scapy-srp1``: plain scapy, ``srp1()`` per request, ``--srp1-requests`` requests, extrapolated;
* ``local``: reading and sha256-hashing the image file (page cache warm): the ceiling.

For the verify runs it also prints the CPU seconds of the client (this process) and of the
busiest vblade, and the rate those would allow with a free core each: on a shared, loaded
machine the wall-clock rate mostly measures the CPU share this bench got.  ``--mtu 9000`` lets
vblade offer 17 sectors per request instead of 2.

The scapy runs happen in a child process inside the client namespace (``ip netns exec``) so scapy
sees only that namespace's interfaces.  Everything runs in namespaces created here and removed on
exit; vblade processes are stopped by PID.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from homecloud.aoe import io  # noqa: E402
from homecloud.aoe.frames import Target  # noqa: E402
from homecloud.aoe.io import AoESocket  # noqa: E402
from homecloud.aoe.reader import ReaderConfig  # noqa: E402
from homecloud.aoe.scan import discover  # noqa: E402
from homecloud.aoe.verify import ExpectedImage, verify  # noqa: E402
from tests.support.netns import Lab, Netns, wait_for  # noqa: E402

T = Target(1, 2)
SECTOR = 512


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------- scapy worker (child process)


def scapy_worker(argv: list[str]) -> None:
    """In the client namespace: read ``requests`` x ``sectors`` sectors with plain scapy."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--mode", choices=("srp", "srp1"), required=True)
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--sectors", type=int, default=2)
    a = ap.parse_args(argv)
    from scapy.contrib.aoe import AOE, IssueATACommand
    from scapy.layers.l2 import Ether
    from scapy.sendrecv import srp, srp1

    src = Path(f"/sys/class/net/{a.iface}/address").read_text().strip()

    def pkt(i: int) -> Ether:
        lba = i * a.sectors
        ata = IssueATACommand(flags=0x40, sector_count=a.sectors, cmd_status=0x24,
                              lba0=lba & 0xFF, lba1=(lba >> 8) & 0xFF, lba2=(lba >> 16) & 0xFF)
        return Ether(dst=a.dst, src=src, type=0x88A2) / AOE(
            major=T.shelf, minor=T.slot, cmd=0, tag=0x1000 + i, i_ata_cmd=ata)

    t0 = time.perf_counter()
    got: set[int] = set()
    if a.mode == "srp1":
        for i in range(a.requests):  # srp1 matches any AoE frame: check the tag ourselves
            r = srp1(pkt(i), iface=a.iface, timeout=1, verbose=0)
            if r is not None and AOE in r and r[AOE].tag == 0x1000 + i:
                got.add(i)
    else:
        pkts = [pkt(i) for i in range(a.requests)]
        ans, _unans = srp(pkts, iface=a.iface, timeout=2, verbose=0)
        for _s, r in ans:  # the pairs are arbitrary (AOE.answers matches anything): use tags
            if AOE in r and int(r[AOE].flags) & 0x8:
                got.add(r[AOE].tag - 0x1000)
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "requests": a.requests, "answered": len(got),
                      "sectors": a.sectors}))


# ---------------------------------------------------------------- orchestration


def start_vblade(lab: Lab, ns: Netns, ifname: str, image: Path) -> int:
    # `ip netns exec` execs vblade in place: the Popen PID is vblade's
    return lab.popen(["vblade", "-r", str(T.shelf), str(T.slot), ifname, str(image)], ns=ns).pid


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_verify(c: Netns, cif: str, exp: ExpectedImage, window: int, vblades: list[int],
               cpu: list[tuple[float, float]]) -> float:
    """Seconds of one full verify; appends (client CPU s, busiest vblade CPU s) to ``cpu``."""
    with AoESocket(cif, netns=c.name) as sock:
        wait_for(lambda: len(io.query_config(sock, T, 0.2)) >= len(vblades), timeout=10,
                 what="vblade paths")
        paths = discover(sock, T, timeout=0.3)
        assert len(paths) == len(vblades), paths
        v0 = [proc_cpu(p) for p in vblades]
        c0 = self_cpu()
        res = verify(sock, T, exp, paths=paths, config=ReaderConfig(window=window))
        cpu.append((self_cpu() - c0, max(proc_cpu(p) - v for p, v in zip(vblades, v0,
                                                                          strict=True))))
        assert res.ok
        return res.seconds


def run_scapy(c: Netns, cif: str, dst: str, mode: str, n: int, sectors: int) -> dict[str, float]:
    out = c.run(sys.executable, str(Path(__file__).resolve()), "_scapy", "--iface", cif,
                "--dst", dst, "--mode", mode, "--requests", str(n), "--sectors", str(sectors),
                timeout=600)
    doc: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--srp-requests", type=int, default=4000)
    ap.add_argument("--srp1-requests", type=int, default=100)
    ap.add_argument("--skip-2path", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_aoe: needs root (network namespaces, raw sockets)")

    size = args.size_mib << 20
    res: dict[str, list[float]] = {}
    notes: dict[str, str] = {}
    cpu: dict[str, list[tuple[float, float]]] = {"verify": [], "verify-2path": []}
    with tempfile.TemporaryDirectory(prefix="bench-aoe-") as tmp, Lab() as lab:
        img = Path(tmp) / "rootfs.img"
        with open(img, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        img2 = Path(tmp) / "copy.img"
        img2.write_bytes(img.read_bytes())
        exp = ExpectedImage("rootfs", sha256_file(img), size, img, "bench")

        # local ceiling
        res["local"] = [size / timed(lambda: sha256_file(img)) for _ in range(args.runs)]

        # one path: a direct veth
        c, s1 = lab.netns("c"), lab.netns("s1")
        lab.veth(c, "c0", s1, "eth0")
        for ns, ifn in ((c, "c0"), (s1, "eth0")):
            ns.run("ip", "link", "set", ifn, "mtu", str(args.mtu))
        pids = [start_vblade(lab, s1, "eth0", img)]
        res["verify"] = [size / run_verify(c, "c0", exp, args.window, pids, cpu["verify"])
                         for _ in range(args.runs)]

        # plain scapy, bounded samples, extrapolated
        smac = s1.mac("eth0")
        sectors = max(1, min(255, (args.mtu - 22) // SECTOR))
        for mode, n in (("srp", args.srp_requests), ("srp1", args.srp1_requests)):
            rates = []
            for _ in range(args.runs if mode == "srp" else 1):
                d = run_scapy(c, "c0", smac, mode, n, sectors)
                rates.append(d["answered"] * d["sectors"] * SECTOR / d["seconds"])
                notes[f"scapy-{mode}"] = (f"{n} requests x {sectors} sectors, answered"
                                          f" {int(d['answered'])}/{n} (last run)")
            res[f"scapy-{mode}"] = rates

        # two paths behind a bridge
        if not args.skip_2path:
            sw, c2, s2, s3 = (lab.netns(n) for n in ("sw", "c2", "s2", "s3"))
            br = lab.bridge(sw)
            for ns, ifn in ((c2, "c0"), (s2, "eth0"), (s3, "eth0")):
                port = lab.port(sw, br, ns, ifn)
                sw.run("ip", "link", "set", port, "mtu", str(args.mtu))
                ns.run("ip", "link", "set", ifn, "mtu", str(args.mtu))
            pids = [start_vblade(lab, s2, "eth0", img), start_vblade(lab, s3, "eth0", img2)]
            res["verify-2path"] = [size / run_verify(c2, "c0", exp, args.window, pids,
                                                     cpu["verify-2path"])
                                   for _ in range(args.runs)]

    load = os.getloadavg()
    print(f"AoE verify bench: {args.size_mib} MiB export, MTU {args.mtu}, window {args.window},"
          f" {args.runs} runs, {os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f}")
    med = {k: statistics.median(v) / 1e6 for k, v in res.items()}
    for k, vals in res.items():
        runs = " ".join(f"{x / 1e6:.2f}" for x in vals)
        extra = f"  [{notes[k]}; extrapolated to {args.size_mib} MiB:" \
                f" {size / (med[k] * 1e6):.0f} s]" if k in notes else ""
        print(f"  {k:13s} median {med[k]:8.2f} MB/s   runs: {runs}{extra}")
        if cpu.get(k):
            cl = statistics.median(x[0] for x in cpu[k])
            vb = statistics.median(x[1] for x in cpu[k])
            print(f"  {'':13s} CPU per run: client {cl:.2f} s, vblade {vb:.2f} s -> with a free"
                  f" core each, CPU would allow ~{size / max(cl, vb, 1e-9) / 1e6:.0f} MB/s")
    v = med["verify"]
    print(f"  ratios: verify/scapy-srp {v / med['scapy-srp']:.0f}x,"
          f" verify/scapy-srp1 {v / med['scapy-srp1']:.0f}x,"
          f" verify/local {v / med['local']:.2f}"
          + (f", verify-2path/verify {med['verify-2path'] / v:.2f}"
             if "verify-2path" in med else ""))
    print(f"  target >= 50 MB/s: {'met' if v >= 50 else 'NOT met'} ({v:.1f} MB/s)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_scapy":
        scapy_worker(sys.argv[2:])
    else:
        main()

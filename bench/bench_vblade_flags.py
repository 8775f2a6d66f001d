#!/usr/bin/env python3
"""What vblade's durability flags cost for writes: none, ``-s`` (O_SYNC), ``-d`` (O_DIRECT),
``-d -s``, each a read-write vblade over a file on a real file system (``--dir``, not tmpfs:
O_SYNC on tmpfs is free), written over AoE from a test namespace one acknowledged ATA WRITE
(2 sectors, MTU 1500) at a time, like a guest's synchronous writes.

Run as root from the repository root::

    python bench/bench_vblade_flags.py [--dir /var/tmp] [--writes 1500] [--runs 3]

Prints the median per-write latency and rate of each mode.  What it means for durability: vblade
ignores ATA FLUSH, so only a write that reaches stable storage before vblade answers is durable:
``-s`` (O_SYNC: every write waits for the file's data and the device cache flush); ``-d`` alone
bypasses the page cache but not the device's volatile cache (not durable by itself); ``-d -s``
is durable and avoids double caching.  Everything runs in namespaces made here; vblade processes
are stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from homecloud.aoe.io import AoESocket  # noqa: E402
from homecloud.aoe.scan import scan  # noqa: E402
from homecloud.core.ids import Target  # noqa: E402
from tests.support.aoe_write import write_sectors  # noqa: E402
from tests.support.netns import Lab  # noqa: E402

T = Target(10, 0)
MODES = {"none": [], "-s": ["-s"], "-d": ["-d"], "-d -s": ["-d", "-s"]}


def one_run(lab: Lab, flags: list[str], image: Path, writes: int) -> float:
    c, s = lab.netns("c"), lab.netns("s")
    lab.veth(c, "c0", s, "eth0")
    proc = lab.popen(["vblade", *flags, "-m", c.mac("c0"), str(T.shelf), str(T.slot), "eth0",
                      str(image)], ns=s)
    try:
        with AoESocket("c0", netns=c.name) as sock:
            deadline = time.monotonic() + 10
            while not scan(sock, timeout=0.3):
                if time.monotonic() > deadline:
                    raise SystemExit("vblade did not answer")
            mac = s.mac("eth0")
            data = os.urandom(1024)
            t0 = time.perf_counter()
            for i in range(writes):
                write_sectors(sock, T, mac, (i * 2) % (image.stat().st_size // 512 - 2), data)
            return (time.perf_counter() - t0) / writes
    finally:
        lab.stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--writes", type=int, default=1500)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vblade-", dir=a.dir) as tmp:
        image = Path(tmp) / "vol.img"
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        print(f"vblade write flags: {a.writes} acknowledged 1 KiB writes per run, median of "
              f"{a.runs}, file on {a.dir}")
        for name, flags in MODES.items():
            lat = []
            for _ in range(a.runs):
                with Lab() as lab:
                    lat.append(one_run(lab, flags, image, a.writes))
            m = statistics.median(lat)
            print(f"  {name:6} {m * 1000:7.3f} ms/write  {1 / m:8.0f} writes/s  "
                  f"{1024 / m / 1e6:6.2f} MB/s")


if __name__ == "__main__":
    main()

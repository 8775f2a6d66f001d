#!/usr/bin/env python3
"""Virtual lab timings: ``hcboot lab up`` to every node ready, and ``hcboot lab add-node`` from
assignment to the new hnode's dom0 up.  Medians over a bounded number of runs.

Each run: a fresh lab directory, ``lab up`` (wall time until the command returns with every node
ready, plus each node's own boot seconds), ``lab add-node --role hnode`` (assignment to dom0 up,
as the lab measures it), ``lab down``.  Images: the store named by ``--images`` (e.g. hcbuild's),
else the stand-ins of tests/e2e/test_lab.py (Debian kernel + marker initramfs; Xen for hnode).

    python bench/bench_lab.py [--runs 3] [--images STORE] [--hnodes 2] [--snodes 2] [--no-add-node]

Issue 11's target: ``up_all_ready`` <= 150 s with cached images, 2 snodes + 2 hnodes.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_RUNS = 10


def hcboot(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homecloud", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def one_run(images: Path, lab: Path, snodes: int, hnodes: int,
            add_node: bool = True, start: str = "parallel") -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        r = hcboot("lab", "up", "--state-dir", str(lab), "--images", str(images), "--no-build",
                   "--snodes", str(snodes), "--hnodes", str(hnodes),
                   f"--{start}")
        out["up_all_ready"] = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"lab up failed:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
        doc = json.loads(hcboot("lab", "status", "--json", "--state-dir", str(lab)).stdout)
        for n in doc["nodes"]:
            out[f"boot_{n['role']}"] = max(out.get(f"boot_{n['role']}", 0.0),
                                           float(n["boot_seconds"] or 0))
        if not add_node:
            return out
        r = hcboot("lab", "add-node", "--role", "hnode", "--state-dir", str(lab))
        if r.returncode != 0:
            raise RuntimeError(f"lab add-node failed:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
        m = re.search(r"assignment to .*?: ([\d.]+) s", r.stdout)
        if m:
            out["add_assign_to_dom0"] = float(m.group(1))
    finally:
        hcboot("lab", "down", "--state-dir", str(lab))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--images", type=Path, default=None)
    ap.add_argument("--snodes", type=int, default=2)
    ap.add_argument("--hnodes", type=int, default=2)
    g = ap.add_mutually_exclusive_group()
    for mode, text in (("sequential", "once every snode exports (lab up's default)"),
                       ("staggered", "once every snode's system is up"),
                       ("parallel", "with the snodes (this bench's default)")):
        g.add_argument(f"--{mode}", dest="start", action="store_const", const=mode,
                       help=f"Start the hnodes {text}.")
    ap.add_argument("--no-add-node", action="store_true",
                    help="Measure lab up only (no lab add-node).")
    a = ap.parse_args()
    a.start = a.start or "parallel"
    runs = max(1, min(a.runs, MAX_RUNS))
    with tempfile.TemporaryDirectory(prefix="hc-bench-lab-") as td:
        images = a.images
        what = f"store {images}"
        if images is None:
            sys.path.insert(0, str(REPO))
            from tests.e2e.test_lab import publish_stand_ins

            images = publish_stand_ins(Path(td) / "images")
            what = "stand-in images (Debian kernel + marker initramfs; Xen for hnode)"
        print(f"lab bench: {runs} run(s), {a.snodes} snode(s) + {a.hnodes} hnode(s) "
              f"({a.start}), {what}")
        results: list[dict[str, float]] = []
        for i in range(runs):
            res = one_run(images, Path(td) / f"lab{i}", a.snodes, a.hnodes, not a.no_add_node,
                          a.start)
            results.append(res)
            print(f"  run {i + 1}: " + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(res.items())),
                  flush=True)
    keys = sorted({k for r in results for k in r})
    print("medians:")
    for k in keys:
        vals = [r[k] for r in results if k in r]
        print(f"  {k:22} {statistics.median(vals):7.1f} s  (min {min(vals):.1f}, "
              f"max {max(vals):.1f}, n={len(vals)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

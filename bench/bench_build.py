#!/usr/bin/env python3
"""hcbuild against plain disk-image-create, in one run, on this machine.

    python bench/bench_build.py [--runs N] [--workdir DIR] [--skip-bare] [--keep-workdir]

Measures, for the hnode role, N times (bare and cold take turns going first):
  bare      disk-image-create -t tar with the same elements and packages, empty DIB cache
  sync      the fsync of bare's tar afterwards: hcbuild's artifacts are on disk when it ends
            (publish fsyncs them), DIB leaves its output in the page cache
  cold      hcbuild with an empty cache (one DIB pass that leaves the base layer behind)
  noop      hcbuild again, nothing changed (target < 1 s)
  element   hcbuild after one role element changed (target <= 0.5x cold): it starts from
            the cached base layer
and prints the medians, the ratios of the medians and per run, and the artifact sizes (hnode
initrd target <= 8 MB).  Not a test: no asserts; numbers go to stdout (and --json FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builder import paths, pysrc  # noqa: E402
from builder.mirrors import resolve_mirrors  # noqa: E402
from builder.profile import load_profile  # noqa: E402
from homecloud.core.manifest import ImageStore  # noqa: E402

ROLE = "hnode"


def timed(cmd: list[str], env: dict[str, str], log: Path) -> float:
    t0 = time.monotonic()
    with open(log, "w") as f:
        r = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}; see {log}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--skip-bare", action="store_true")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="hc-bench-build-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if not data.exists():
        for name in ("elements", "profiles", "kernels"):
            shutil.copytree(paths.data_root() / name, data / name)
    env = {**os.environ, "HC_DATA_DIR": str(data)}
    res: dict[str, list[float]] = {"bare": [], "sync": [], "cold": [], "noop": [],
                                   "element": []}
    sizes: dict[str, int] = {}
    p = load_profile(ROLE, data / "profiles")
    from builder.kernel import load_kernel_spec

    ks = load_kernel_spec(p.kernel_spec())
    m = resolve_mirrors()
    for run in range(a.runs):
        rw = work / f"run{run}"
        if rw.exists():
            shutil.rmtree(rw)
        rw.mkdir()
        store, cache = rw / "images", rw / "cache"
        hc = [sys.executable, "-m", "builder.cli", "image", ROLE, "--out", str(store),
              "--cache", str(cache)]
        def bare(rw: Path = rw, run: int = run) -> None:
            bare_cache = rw / "bare-cache"
            bare_cache.mkdir()
            # the agents' Python sources, staged as hcbuild stages them (builder/pysrc.py):
            # the same inputs for both sides
            staged = pysrc.stage(rw / "py-element")
            benv = {**env, **m.dib_env(), "DIB_RELEASE": p.release,
                    "ELEMENTS_PATH": f"{data / 'elements'}:{staged}",
                    "DIB_IMAGE_CACHE": str(bare_cache)}
            cmd = ["disk-image-create", "-a", p.arch, "-t", "tar", "-o", str(rw / "bare"),
                   "-p", ",".join([ks.package, *p.packages]),
                   "debian-minimal", *p.base_elements, *p.elements, pysrc.STAGED]
            if run == 0:
                print("bare:", " ".join(cmd), flush=True)
            res["bare"].append(timed(cmd, benv, rw / "bare.log"))
            t0 = time.monotonic()
            fd = os.open(rw / "bare.tar", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            res["sync"].append(time.monotonic() - t0)
            (rw / "bare.tar").unlink(missing_ok=True)

        # the order alternates, so neither side always runs on a machine the other just used
        if not a.skip_bare and run % 2 == 0:
            bare()
        res["cold"].append(timed(hc, env, rw / "cold.log"))
        if not a.skip_bare and run % 2 == 1:
            bare()
        res["noop"].append(timed(hc, env, rw / "noop.log"))
        script = data / "elements" / "hc-xen-dom0" / "install.d" / "55-hc-xen-dom0-settings"
        original = script.read_text()
        script.write_text(original + f"# bench change {time.time()}\n")
        try:
            res["element"].append(timed(hc, env, rw / "element.log"))
        finally:
            script.write_text(original)
        line = "  ".join(f"{k} {v[-1]:6.2f} s" for k, v in res.items() if v)
        print(f"run {run + 1}/{a.runs}: {line}", flush=True)
        mf = ImageStore(store).manifest(ROLE)
        sizes = {n: art.size for n, art in (mf.artifacts.items() if mf else [])}
        if not a.keep_workdir:
            shutil.rmtree(rw, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in res.items() if v}
    print()
    for k, v in med.items():
        spread = f"{min(res[k]):.2f}-{max(res[k]):.2f}" if len(res[k]) > 1 else ""
        print(f"median {k:8} {v:7.2f} s  {spread}")
    if "bare" in med:
        per_run = " ".join(f"{c / b:.2f}x" for c, b in zip(res["cold"], res["bare"], strict=True))
        print(f"cold / bare      {med['cold'] / med['bare']:.2f}x   (target <= 1.05x; per run: "
              f"{per_run})")
        durable = [c / (b + y) for c, b, y in zip(res["cold"], res["bare"], res["sync"],
                                                  strict=True)]
        print(f"cold / (bare + fsync of its tar)  {statistics.median(durable):.2f}x   (per run: "
              f"{' '.join(f'{x:.2f}x' for x in durable)})")
    print(f"noop             {med['noop']:.2f} s   (target < 1 s)")
    print(f"element / cold   {med['element'] / med['cold']:.2f}x   (target <= 0.5x)")
    for n, sz in sorted(sizes.items()):
        print(f"size {n:8} {sz / 2**20:9.1f} MiB")
    print(f"hnode initrd     {sizes.get('initrd', 0) / 2**20:.2f} MiB (target <= 8 MiB)")
    if a.json:
        a.json.write_text(json.dumps({"seconds": res, "medians": med, "sizes": sizes}, indent=2))
    if not a.keep_workdir and a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"workdir: {work}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""hcbuild against plain disk-image-create, in one run, on this machine.

    python bench/bench_build.py [--workdir DIR] [--skip-bare] [--keep-workdir]

Measures, for the hnode role:
  cold      hcbuild with an empty cache (base layer + role layer + artifacts)
  bare      disk-image-create -t tar with the same elements and packages, empty DIB cache
  noop      hcbuild again, nothing changed (target < 1 s)
  element   hcbuild after one role element changed (target <= 0.5x cold)
and prints the ratios and the artifact sizes (hnode initrd target <= 8 MB).
Not a test: no asserts; numbers go to stdout (and --json FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builder import paths  # noqa: E402
from builder.manifest import ImageStore  # noqa: E402
from builder.mirrors import resolve_mirrors  # noqa: E402
from builder.profile import load_profile  # noqa: E402

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
    store, cache = work / "images", work / "cache"
    hc = [sys.executable, "-m", "builder.cli", "image", ROLE, "--out", str(store),
          "--cache", str(cache)]
    res: dict[str, float] = {}

    if not a.skip_bare:
        p = load_profile(ROLE, data / "profiles")
        from builder.kernel import load_kernel_spec

        ks = load_kernel_spec(p.kernel_spec())
        m = resolve_mirrors()
        bare_cache = work / "bare-cache"
        bare_cache.mkdir(exist_ok=True)
        benv = {**env, **m.dib_env(), "DIB_RELEASE": p.release,
                "ELEMENTS_PATH": str(data / "elements"), "DIB_IMAGE_CACHE": str(bare_cache)}
        cmd = ["disk-image-create", "-a", p.arch, "-t", "tar", "-o", str(work / "bare"),
               "-p", ",".join([ks.package, *p.packages]),
               "debian-minimal", *p.base_elements, *p.elements]
        print("bare:", " ".join(cmd), flush=True)
        res["bare"] = timed(cmd, benv, work / "bare.log")
        print(f"bare     {res['bare']:7.1f} s", flush=True)

    res["cold"] = timed(hc, env, work / "cold.log")
    print(f"cold     {res['cold']:7.1f} s", flush=True)
    res["noop"] = timed(hc, env, work / "noop.log")
    print(f"noop     {res['noop']:7.2f} s", flush=True)
    script = data / "elements" / "hc-xen-dom0" / "install.d" / "55-hc-xen-dom0-settings"
    script.write_text(script.read_text() + f"# bench change {time.time()}\n")
    res["element"] = timed(hc, env, work / "element.log")
    print(f"element  {res['element']:7.1f} s", flush=True)

    mf = ImageStore(store).manifest(ROLE)
    sizes = {n: art.size for n, art in (mf.artifacts.items() if mf else [])}
    print()
    if "bare" in res:
        print(f"cold / bare      {res['cold'] / res['bare']:.2f}x   (target <= 1.05x)")
    print(f"noop             {res['noop']:.2f} s   (target < 1 s)")
    print(f"element / cold   {res['element'] / res['cold']:.2f}x   (target <= 0.5x)")
    for n, s in sorted(sizes.items()):
        print(f"size {n:8} {s / 2**20:9.1f} MiB")
    print(f"hnode initrd     {sizes.get('initrd', 0) / 2**20:.2f} MiB (target <= 8 MiB)")
    if a.json:
        a.json.write_text(json.dumps({"seconds": res, "sizes": sizes}, indent=2))
    if not a.keep_workdir and a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"workdir: {work}")


if __name__ == "__main__":
    main()

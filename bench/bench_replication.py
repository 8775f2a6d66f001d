#!/usr/bin/env python3
"""Replicated volumes in the lab (issue 12): a DRBD-replicated volume next to a single-snode
volume of the same size, in the same run, seen from an hnode's dom0 through AoE (the path the
guests' disks take: blkback in dom0 reads and writes /dev/etherd/eS.L).

Run as root from the repository root, against the running lab (``hcboot lab up``, 2 snodes)::

    python3 bench/bench_replication.py [--runs 3] [--stall-runs 1] [--resync-mib 1024]

Each measurement, ``--runs`` times, medians printed with the ratio replicated/single:

* ``write``: 64 MiB of 1 MiB O_DIRECT writes (``dd oflag=direct``), MB/s;
* ``fsync``: 10 s of 4 KiB records, each written with O_DIRECT then ``fsync`` (the record
  writer of the e2e tests, tests/support/recwriter.py), the median and 99th percentile latency;
* ``stall`` (``--stall-runs``; 0 skips it): the record writer runs while the replicated
  volume's primary snode is killed (SIGKILL to its VM): the longest write+fsync, and whether
  any failed; the snode is started again and the run waits for its resync;
* ``resync``: the replica disconnected (``drbdadm disconnect`` on its console), ``--resync-mib``
  MiB written through the primary, reconnected: seconds until both sides are UpToDate again
  (``hcboot volumes --json``, polled every 2 s; the agents report within their 5 s poll).

Nothing is asserted; the numbers are the output (and a JSON line with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from homecloud.lab.context import LabContext, current_context  # noqa: E402
from homecloud.lab.demo import hcboot  # noqa: E402

RECWRITER = REPO / "tests" / "support" / "recwriter.py"
DRBDADM = "/usr/lib/drbd/drbdadm-84 -c /run/hc-storage/drbd/homecloud.conf"


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {text}", flush=True)


def quiet(_t: str) -> None:
    return None


def hc(lab: LabContext, *args: str) -> str:
    return hcboot(lab, *args, say=quiet)


def lab_cmd(lab: LabContext, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "homecloud", "lab", *args, "--state-dir",
                    lab.lab_dir], check=True, capture_output=True, text=True, timeout=300)


def dom0(lab: LabContext, ip: str, command: str, stdin: Path | None = None,
         timeout: float = 900) -> str:
    with (stdin.open("rb") if stdin else open("/dev/null", "rb")) as src:
        r = subprocess.run(lab.ssh_argv(ip, command), stdin=src, capture_output=True,
                           timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"ssh {ip} {command!r}: exit {r.returncode}: "
                         f"{r.stderr.decode(errors='replace')[-600:]}")
    return r.stdout.decode(errors="replace")


def volume(lab: LabContext, name: str) -> dict[str, Any]:
    doc = json.loads(hc(lab, "volumes", "--json"))
    return next(v for v in doc["volumes"] if v["name"] == name)


def in_step(v: dict[str, Any]) -> bool:
    return v["health"] == "ok" and all(
        (x.get("drbd") or {}).get("connection") == "Connected"
        and (x.get("drbd") or {}).get("peer_disk") == "UpToDate" for x in v["replicas"])


def wait(what: str, check: Any, timeout: float, every: float = 2.0) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - t0


def console(lab: LabContext, node: str, command: str) -> None:
    doc = json.loads((Path(lab.lab_dir) / "lab.json").read_text())
    rec = next(n for n in doc["nodes"] if n["name"] == node)
    # the connection stays open (and is read) for a few seconds: QEMU drops the keystrokes a
    # closed client still had queued, and an unread client holds the guest's output back
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(rec["serial_sock"])
        s.settimeout(0.5)
        s.sendall(b"\r" + command.encode() + b"\r")
        end = time.monotonic() + 4
        while time.monotonic() < end:
            try:
                s.recv(65536)
            except TimeoutError:
                continue


def dd_write(lab: LabContext, hn: str, target: str) -> float:
    out = dom0(lab, hn, f"dd if=/dev/zero of=/dev/etherd/{target} bs=1M count=64 "
                        "oflag=direct 2>&1 | tail -1")
    m = re.search(r"([\d.]+) s, ", out)
    if not m:
        raise SystemExit(f"dd said: {out!r}")
    return 64 * 1.048576 / float(m.group(1))


def records(lab: LabContext, hn: str, target: str, seconds: int) -> dict[str, Any]:
    out = dom0(lab, hn, f"python3 - write /dev/etherd/{target} {seconds}", stdin=RECWRITER)
    last = out.strip().splitlines()[-1]
    if not last.startswith("done "):
        raise SystemExit(f"record writer said: {out[-500:]!r}")
    doc: dict[str, Any] = json.loads(last[5:])
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stall-runs", type=int, default=1)
    ap.add_argument("--resync-mib", type=int, default=1024)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    lab = current_context()
    hn = next(n["address"] for n in json.loads(subprocess.run(
        [sys.executable, "-m", "homecloud", "lab", "status", "--json", "--state-dir",
         lab.lab_dir], capture_output=True, text=True, check=True).stdout)["nodes"]
              if n["role"] == "hnode")
    size = f"{max(a.resync_mib, 128)}M"
    for name, reps in (("bench-rep", "2"), ("bench-one", "1")):
        hc(lab, "volume", "create", name, "--size", size, "--replicas", reps)
    vols = {n: volume(lab, n) for n in ("bench-rep", "bench-one")}
    targets = {n: v["target"] for n, v in vols.items()}
    dom0(lab, hn, "echo 1 > /dev/etherd/discover; for t in "
         + " ".join(targets.values()) + "; do for i in $(seq 60); do "
         "[ -b /dev/etherd/$t ] && break; sleep 1; done; done")
    say(f"volumes {targets} on {hn}; replicated on "
        f"{', '.join(r['snode'] for r in vols['bench-rep']['replicas'])}")
    res: dict[str, dict[str, list[float]]] = {n: {"write_mb_s": [], "fsync_median_ms": [],
                                                  "fsync_p99_ms": []} for n in targets}
    try:
        for i in range(a.runs):
            for n, t in targets.items():
                mbs = dd_write(lab, hn, t)
                rec = records(lab, hn, t, 10)
                res[n]["write_mb_s"].append(mbs)
                res[n]["fsync_median_ms"].append(rec["median_ms"])
                res[n]["fsync_p99_ms"].append(rec["p99_ms"])
                say(f"run {i + 1} {n:9}: write {mbs:6.1f} MB/s, fsync median "
                    f"{rec['median_ms']} ms, p99 {rec['p99_ms']} ms")
        stalls: list[float] = []
        failed = 0
        for i in range(a.stall_runs):
            prim = volume(lab, "bench-rep")["replicas"][0]["snode"]
            proc = subprocess.Popen(lab.ssh_argv(hn, f"python3 - write /dev/etherd/"
                                                     f"{targets['bench-rep']} 60"),
                                    stdin=RECWRITER.open("rb"), stdout=subprocess.PIPE,
                                    text=True)
            time.sleep(15)
            lab_cmd(lab, "kill", prim)
            out, _ = proc.communicate(timeout=600)
            doc = json.loads(out.strip().splitlines()[-1][5:])
            stalls.append(doc["worst_stall_s"])
            failed += doc["errors"]
            say(f"stall run {i + 1}: {prim} killed: longest write+fsync "
                f"{doc['worst_stall_s']} s, {doc['errors']} failed of {doc['records']}")
            lab_cmd(lab, "start", prim)
            took = wait(f"{prim} back in step", lambda: in_step(volume(lab, "bench-rep")), 900)
            say(f"  {prim} started again and in step after {took:.0f} s")
        resyncs: list[float] = []
        for i in range(a.runs):
            v = volume(lab, "bench-rep")
            repl = v["replicas"][1]["snode"]
            minor = v["replicas"][1]["drbd"]["minor"]
            console(lab, repl, f"{DRBDADM} disconnect hc{minor}")
            wait("replica disconnected", lambda: not in_step(volume(lab, "bench-rep")), 60)
            dom0(lab, hn, f"dd if=/dev/urandom of=/dev/etherd/{targets['bench-rep']} bs=1M "
                          f"count={a.resync_mib} oflag=direct status=none")
            console(lab, repl, f"{DRBDADM} connect hc{minor}")
            took = wait("resync", lambda: in_step(volume(lab, "bench-rep")), 1800)
            resyncs.append(took)
            say(f"resync run {i + 1}: {a.resync_mib} MiB in {took:.0f} s")
    finally:
        for n in targets:
            hc(lab, "volume", "delete", n)
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in res.items()}
    print()
    print(f"{'':22}{'replicated':>12}{'single':>12}{'ratio':>8}")
    for k in ("write_mb_s", "fsync_median_ms", "fsync_p99_ms"):
        r, s = med["bench-rep"][k], med["bench-one"][k]
        print(f"{k:22}{r:12.2f}{s:12.2f}{(r / s if s else 0):8.2f}")
    if stalls:
        print(f"{'stall_s (primary killed)':26}{statistics.median(stalls):8.1f}  "
              f"(runs {stalls}, failed writes {failed})")
    if resyncs:
        print(f"{'resync_s':26}{statistics.median(resyncs):8.1f}  ({a.resync_mib} MiB; "
              f"runs {[round(x) for x in resyncs]})")
    if a.json:
        print(json.dumps({"medians": med, "stalls_s": stalls, "failed_writes": failed,
                          "resync_s": resyncs, "resync_mib": a.resync_mib}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Replicated volumes in the lab (issue 12): an instance on a DRBD-replicated volume next to
an instance on a single-snode volume, same template, same size, same hnode, in the same run,
measured inside the guests (their disks reach the snodes through blkback in dom0 and AoE).

Run as root from the repository root, against the running lab (``hcboot lab up``, 2 snodes,
the domu template imported: ``hcboot --lab template import domu``)::

    python3 bench/bench_replication.py [--runs 3] [--stall-runs 3] [--resync-mib 1024]
                                       [--on hnode1] [--json]

Two instances are created (``bench-rep`` with ``--replicas 2``, ``bench-one`` with
``--replicas 1``, 256 MiB each) and destroyed at the end.  Each measurement ``--runs`` times,
the two alternating, medians printed with the ratio replicated/single:

* ``write``: ``--write-mib`` (16) MiB of 1 MiB O_DIRECT writes to a file in the guest (``dd
  oflag=direct conv=fsync``), MB/s;
* ``fsync``: 10 s of 4 KiB records appended to a file in the guest, each with O_DIRECT then
  ``fsync`` (the record writer of the e2e tests, tests/support/recwriter.py): median and 99th
  percentile latency;
* ``stall`` (``--stall-runs``; 0 skips it): the record writer runs in ``bench-rep`` while its
  volume's primary snode is killed (SIGKILL to its VM): the longest write+fsync, and whether
  any failed or any acknowledged record is missing; the snode is started again and the run
  waits for its resync (also printed: how long from its start until in step);
* ``resync``: a replicated volume of ``--resync-mib`` MiB, its replica disconnected
  (``drbdadm disconnect`` on the replica's console), the whole volume rewritten on the
  primary (``dd`` to ``/dev/drbdN`` on its console), reconnected: seconds until both sides
  are UpToDate again (``hcboot volumes --json``,
  polled every 2 s; the agents report a changed DRBD state within their 5 s poll).

Nothing is asserted; the numbers are the output (and a JSON line with ``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
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
from homecloud.lab.demo import USER_DATA, hcboot, instance_doc  # noqa: E402
from tests.support.labchecks import console_run, console_type  # noqa: E402

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


def node_rec(lab: LabContext, node: str) -> dict[str, Any]:
    doc = json.loads((Path(lab.lab_dir) / "lab.json").read_text())
    return dict(next(n for n in doc["nodes"] if n["name"] == node))


def console(lab: LabContext, node: str, command: str) -> None:
    console_type(node_rec(lab, node), command, linger=4)


def ssh(lab: LabContext, ip: str, command: str, stdin: Path | None = None,
        timeout: float = 900) -> str:
    return dom0(lab, ip, command, stdin, timeout)


def dd_write(lab: LabContext, ip: str, mib: int) -> float:
    out = ssh(lab, ip, f"dd if=/dev/zero of=/root/bench.dd bs=1M count={mib} oflag=direct "
                       "conv=fsync 2>&1 | tail -1; rm -f /root/bench.dd")
    m = re.search(r"([\d.]+) s, ", out)
    if not m:
        raise SystemExit(f"dd said: {out!r}")
    return mib * 1.048576 / float(m.group(1))


def records(lab: LabContext, ip: str, path: str, seconds: int) -> dict[str, Any]:
    out = ssh(lab, ip, f"python3 - write {path} {seconds}", stdin=RECWRITER)
    last = out.strip().splitlines()[-1]
    if not last.startswith("done "):
        raise SystemExit(f"record writer said: {out[-500:]!r}")
    doc: dict[str, Any] = json.loads(last[5:])
    doc["acked"] = sum(1 for ln in out.splitlines() if ln.startswith("ack "))
    return doc


def intact(lab: LabContext, ip: str, path: str, n: int) -> int:
    out = ssh(lab, ip, f"python3 - check {path} {n}", stdin=RECWRITER)
    return int(json.loads(out.strip().splitlines()[-1][5:])["intact"])


def wait_ssh(lab: LabContext, ip: str, timeout: float = 900) -> None:
    # a new guest at an address an earlier (destroyed) one had: forget the old host key
    subprocess.run(["ssh-keygen", "-R", ip, "-f", lab.known_hosts], capture_output=True)
    wait(f"ssh root@{ip}", lambda: subprocess.run(
        lab.ssh_argv(ip, "true"), capture_output=True, stdin=subprocess.DEVNULL,
        timeout=60).returncode == 0, timeout, every=5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stall-runs", type=int, default=3)
    ap.add_argument("--resync-mib", type=int, default=1024)
    ap.add_argument("--write-mib", type=int, default=16,
                    help="MiB per dd run in the guests (each 1 MiB write is ~1000 AoE frames)")
    ap.add_argument("--on", default="hnode1", help="the hnode both instances run on")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    lab = current_context()
    ud = Path(lab.lab_dir) / "bench-user-data"
    ud.write_text(USER_DATA)
    names = {"bench-rep": "2", "bench-one": "1"}
    ips: dict[str, str] = {}
    res: dict[str, dict[str, list[float]]] = {n: {"write_mb_s": [], "fsync_median_ms": [],
                                                  "fsync_p99_ms": []} for n in names}
    stalls: list[float] = []
    failed = lost = 0
    back: list[float] = []
    resyncs: list[float] = []
    try:
        for n, reps in names.items():
            t0 = time.monotonic()
            hc(lab, "instance", "create", n, "--template", "domu", "--memory", "256",
               "--replicas", reps, "--on", a.on, "--ssh-key", lab.ssh_key + ".pub",
               "--user-data", str(ud))
            ips[n] = str(instance_doc(lab, n)["ip"])
            wait_ssh(lab, ips[n])
            say(f"{n} ({reps} replica{'s' if reps != '1' else ''}) up at {ips[n]} in "
                f"{time.monotonic() - t0:.0f} s")
        vol = str(instance_doc(lab, "bench-rep")["volume"])
        say(f"bench-rep's volume {vol} on "
            f"{', '.join(r['snode'] for r in volume(lab, vol)['replicas'])}")
        for i in range(a.runs):
            for n, ip in ips.items():
                mbs = dd_write(lab, ip, a.write_mib)
                rec = records(lab, ip, "/root/bench.rec", 10)
                ssh(lab, ip, "rm -f /root/bench.rec")
                res[n]["write_mb_s"].append(mbs)
                res[n]["fsync_median_ms"].append(rec["median_ms"])
                res[n]["fsync_p99_ms"].append(rec["p99_ms"])
                say(f"run {i + 1} {n:9}: write {mbs:6.1f} MB/s, fsync median "
                    f"{rec['median_ms']} ms, p99 {rec['p99_ms']} ms")
        for i in range(a.stall_runs):
            wait("bench-rep's volume in step", lambda: in_step(volume(lab, vol)), 900)
            prim = volume(lab, vol)["replicas"][0]["snode"]
            path = f"/root/stall{i}.rec"
            proc = subprocess.Popen(lab.ssh_argv(ips["bench-rep"], f"python3 - write {path} 60"),
                                    stdin=RECWRITER.open("rb"), stdout=subprocess.PIPE,
                                    text=True)
            time.sleep(15)
            lab_cmd(lab, "kill", prim)
            out, _ = proc.communicate(timeout=900)
            doc = json.loads(out.strip().splitlines()[-1][5:])
            acked = sum(1 for ln in out.splitlines() if ln.startswith("ack "))
            ok = intact(lab, ips["bench-rep"], path, acked)
            stalls.append(doc["worst_stall_s"])
            failed += doc["errors"]
            lost += acked - ok
            say(f"stall run {i + 1}: {prim} killed: longest write+fsync "
                f"{doc['worst_stall_s']} s, {doc['errors']} failed of {doc['records']}, "
                f"{acked - ok} of {acked} acknowledged records missing or damaged")
            lab_cmd(lab, "start", prim)
            took = wait(f"{prim} back in step", lambda: in_step(volume(lab, vol)), 900)
            back.append(took)
            say(f"  {prim} started again and in step after {took:.0f} s")
        if a.runs:
            hc(lab, "volume", "create", "bench-sync", "--size", f"{a.resync_mib}M",
               "--replicas", "2")
            wait("bench-sync in step", lambda: in_step(volume(lab, "bench-sync")), 300)
        for i in range(a.runs):
            v = volume(lab, "bench-sync")
            prim, repl = v["replicas"][0]["snode"], v["replicas"][1]["snode"]
            minor = v["replicas"][1]["drbd"]["minor"]
            console(lab, repl, f"{DRBDADM} disconnect hc{minor}")
            wait("replica disconnected", lambda: not in_step(volume(lab, "bench-sync")), 60)
            # the whole volume rewritten on the primary itself (through AoE a guest writes
            # ~1 KiB per frame: a GiB would take an hour in this lab), every block out of sync
            t0 = time.monotonic()
            console_run(node_rec(lab, prim), f"dd if=/dev/urandom of=/dev/drbd{minor} bs=1M "
                        f"count={a.resync_mib} oflag=direct status=none; echo HCDD-$?-END",
                        r"HCDD-(\d+)-END", 3600)
            say(f"  {a.resync_mib} MiB written on {prim} in {time.monotonic() - t0:.0f} s, "
                f"{repl} disconnected")
            console(lab, repl, f"{DRBDADM} connect hc{minor}")
            took = wait("resync", lambda: in_step(volume(lab, "bench-sync")), 1800)
            resyncs.append(took)
            say(f"resync run {i + 1}: {a.resync_mib} MiB in {took:.0f} s")
    finally:
        for n in ips:
            hc(lab, "instance", "destroy", n)
        if resyncs or a.runs:
            with contextlib.suppress(Exception):
                hc(lab, "volume", "delete", "bench-sync")
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in res.items() if d
           and all(d.values())}
    print()
    if len(med) == 2:
        print(f"{'inside the guest':22}{'replicated':>12}{'single':>12}{'ratio':>8}")
        for k in ("write_mb_s", "fsync_median_ms", "fsync_p99_ms"):
            r, s1 = med["bench-rep"][k], med["bench-one"][k]
            print(f"{k:22}{r:12.2f}{s1:12.2f}{(r / s1 if s1 else 0):8.2f}")
    if stalls:
        print(f"{'stall_s (primary killed)':26}{statistics.median(stalls):8.1f}  "
              f"(runs {stalls}, failed writes {failed}, acknowledged records lost {lost}; "
              f"back in step after {[round(x) for x in back]} s)")
    if resyncs:
        print(f"{'resync_s':26}{statistics.median(resyncs):8.1f}  ({a.resync_mib} MiB; "
              f"runs {[round(x) for x in resyncs]}; "
              f"{a.resync_mib / statistics.median(resyncs):.1f} MiB/s)")
    if a.json:
        print(json.dumps({"medians": med, "stalls_s": stalls, "failed_writes": failed,
                          "lost_records": lost, "back_in_step_s": back, "resync_s": resyncs,
                          "resync_mib": a.resync_mib}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

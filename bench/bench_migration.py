#!/usr/bin/env python3
"""Live migration in the lab: ``hcboot instance migrate`` next to a bare ``xl migrate`` of the
same guest between the same two hnodes, run by hand in the same run (the floor).

Run as root from the repository root, against the running lab (``hcboot lab up``, 2 hnodes)::

    python3 bench/bench_migration.py --instance web1 [--runs 4] [--busy-mib 16] [--loads idle,busy]

The instance must run and answer ping and SSH (user ``debian`` or root, the lab key).  Each
round, for an idle guest and then for a memory-busy one (a Python loop in the guest writing one
byte per page over ``--busy-mib`` MiB, endlessly):

* ``hcboot``: ``hcboot instance migrate NAME`` (prechecks, staging the target, ``xl migrate``
  over the hnodes' pinned SSH, the placement recorded once the target reports it);
* ``bare``: the seed image and xl config copied to the other hnode by hand (not timed), then
  ``xl migrate -s <the same SSH transport> NAME TARGET`` typed on the source's dom0 (through the
  lab's admin SSH; its ~0.6 s connection is inside the time), then
  ``hcboot instance migrate --cleanup NAME`` so the record follows (not timed).

While each migration runs the config node pings the guest every 100 ms (``ping -D``): the pause
is the longest gap between two replies, and the lost pings are counted.  Printed: per run the
total seconds, the pause, the lost pings and when the pause ended relative to ``xl migrate``
returning (hcboot: when its "xl migrate finished" step is printed, the agent's reply carried
back over SSH; bare: when the SSH command returns); then medians and the ratio hcboot/bare (the
issue's target: pause <= 1.1x the bare pause).  No result is asserted; the numbers are the output.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from homecloud.agents.hnode import MIGRATION_KEY, PEERS_KNOWN_HOSTS, RUN_DIR  # noqa: E402
from homecloud.lab.context import LabContext, current_context  # noqa: E402
from homecloud.lab.demo import Pinger, PingStats, hcboot, instance_doc  # noqa: E402

STATE = Path("/var/lib/hc/hnode")  # the hnode agent's state directory on a dom0
XL = "/usr/lib/xen-4.17/bin/xl"
DIRTIER = ("import mmap,time\n"
           "n={mib}<<20\n"
           "b=mmap.mmap(-1,n)\n"
           "v=0\n"
           "while True:\n"
           "    v=(v+1)&255\n"
           "    for i in range(0,n,4096): b[i]=v\n")


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {text}", flush=True)


def node_addresses(ctx: LabContext) -> dict[str, str]:
    r = subprocess.run([sys.executable, "-m", "homecloud", "lab", "status", "--json",
                        "--state-dir", ctx.lab_dir], capture_output=True, text=True,
                       check=True)
    return {n["node"]: n["address"] for n in json.loads(r.stdout)["nodes"]}


def node_sh(ctx: LabContext, addr: str, command: str, stdin: bytes | None = None,
            timeout: float = 600) -> bytes:
    r = subprocess.run(ctx.ssh_argv(addr, command), input=stdin, capture_output=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"ssh root@{addr} {command!r} -> {r.returncode}: "
                         f"{r.stderr.decode(errors='replace')[-600:]}")
    return r.stdout


def guest_sh(ctx: LabContext, ip: str, command: str) -> str:
    for user in ("root", "debian"):
        r = subprocess.run(ctx.ssh_argv(ip, command, user=user), capture_output=True,
                           text=True, timeout=120)
        if r.returncode == 0:
            return r.stdout
    raise SystemExit(f"ssh into the guest {ip} failed: {r.stderr[-400:]}")


def column_medians(rows: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """The median of each column of ``rows`` (one row per run)."""
    return tuple(statistics.median(col) for col in zip(*rows, strict=True))


def pinged(ctx: LabContext, ip: str,
           action: Callable[[], float]) -> tuple[float, PingStats, float]:
    """``action`` (which returns the Unix time ``xl migrate`` returned) while the config node
    pings ``ip``: the seconds it took, the ping statistics, and how long after ``xl migrate``
    returned the guest's first reply after the pause came (negative: before it returned)."""
    pinger = Pinger(ctx, ip)
    try:
        time.sleep(1)
        t0 = time.monotonic()
        returned = action()
        took = time.monotonic() - t0
        time.sleep(2)
    finally:
        stats = pinger.stop()
    return took, stats, (stats.gap_end - returned) if stats.gap_end else 0.0


def via_hcboot(ctx: LabContext, name: str, ip: str) -> tuple[float, PingStats, float]:
    returned = [0.0]

    def note(line: str) -> None:
        if "xl migrate finished" in line:  # MigrationService.migrate's step after xl migrate
            returned[0] = time.time()
            say(f"  hcboot: {line.split('  ', 1)[-1].strip()}")

    def action() -> float:
        hcboot(ctx, "instance", "migrate", name, say=note)
        return returned[0] or time.time()
    return pinged(ctx, ip, action)


def bare(ctx: LabContext, name: str, ip: str,
         addrs: dict[str, str]) -> tuple[float, PingStats, float]:
    src = str(instance_doc(ctx, name)["host"])
    dst = next(n for n in addrs if n.startswith("hnode") and n != src)
    for f in (f"{name}.cfg", f"{name}-seed.img"):  # staging by hand, not timed
        data = node_sh(ctx, addrs[src], f"cat {RUN_DIR / f}")
        node_sh(ctx, addrs[dst], f"mkdir -p {RUN_DIR} && cat > {RUN_DIR / f}", stdin=data)
    transport = shlex.join(["ssh", "-i", str(STATE / MIGRATION_KEY), "-l", "root",
                            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
                            "-o", f"UserKnownHostsFile={STATE / PEERS_KNOWN_HOSTS}",
                            "-o", "BatchMode=yes"])
    cmd = f"{XL} migrate -s {shlex.quote(transport)} {name} {addrs[dst]}"

    def action() -> float:
        node_sh(ctx, addrs[src], cmd)
        return time.time()
    out = pinged(ctx, ip, action)
    hcboot(ctx, "instance", "migrate", "--cleanup", name)  # the record follows (not timed)
    node_sh(ctx, addrs[src], f"rm -f {RUN_DIR / name}.cfg {RUN_DIR / name}-seed.img")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instance", required=True)
    ap.add_argument("--runs", type=int, default=4,
                    help="Runs per load (even: each way migrates equally often in each "
                         "direction).")
    ap.add_argument("--busy-mib", type=int, default=16)
    ap.add_argument("--loads", default="idle,busy",
                    help="Comma-separated: idle, busy (default both).")
    args = ap.parse_args()
    loads = [x for x in ("idle", "busy") if x in args.loads.split(",")]
    if not loads:
        ap.error(f"--loads {args.loads!r}: give idle, busy or both")
    ctx = current_context()
    addrs = node_addresses(ctx)
    name = args.instance
    doc = instance_doc(ctx, name)
    ip = str(doc["ip"])
    say(f"{name}: {doc['memory_mb']} MiB, on {doc['host']} at {ip}; {args.runs} runs each")
    rows: dict[tuple[str, str], list[tuple[float, PingStats, float]]] = {}
    dirtier = ""
    for load in loads:
        if load == "busy":
            script = DIRTIER.format(mib=args.busy_mib)
            dirtier = guest_sh(ctx, ip, f"nohup python3 -c {shlex.quote(script)} "
                                        ">/dev/null 2>&1 & echo $!").strip()
            say(f"{name}: dirtying {args.busy_mib} MiB endlessly (pid {dirtier} in the guest)")
        for run in range(1, args.runs + 1):
            # the order alternates, so that each way gets both directions between the hnodes
            # (with one order hcboot always went hnode1 -> hnode2 and bare the way back)
            for how in (("hcboot", "bare") if run % 2 else ("bare", "hcboot")):
                src = str(instance_doc(ctx, name)["host"])
                took, stats, after = (via_hcboot(ctx, name, ip) if how == "hcboot"
                                      else bare(ctx, name, ip, addrs))
                rows.setdefault((load, how), []).append((took, stats, after))
                say(f"{load:4} {how:6} run {run} from {src}: {took:6.1f} s total, pause "
                    f"{stats.longest_gap:5.2f} s, {stats.lost} of {stats.sent} pings lost, "
                    f"first reply {after:+5.2f} s after xl migrate returned")
        if dirtier:
            guest_sh(ctx, ip, f"kill {int(dirtier)}")
    print("\nmedians (hcboot vs bare xl migrate, same guest, same hnodes, same run)")
    print(f"{'load':5} {'how':7} {'total s':>8} {'pause s':>8} {'lost':>5} {'reply-xl s':>10}")
    for load in loads:
        med = {}
        for how in ("hcboot", "bare"):
            med[how] = column_medians([(t, s.longest_gap, s.lost, a)
                                       for t, s, a in rows[(load, how)]])
            print(f"{load:5} {how:7} {med[how][0]:8.1f} {med[how][1]:8.2f} {med[how][2]:5.0f} "
                  f"{med[how][3]:+10.2f}")
        print(f"{load:5} ratio   {med['hcboot'][0] / med['bare'][0]:8.2f} "
              f"{med['hcboot'][1] / max(med['bare'][1], 0.01):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

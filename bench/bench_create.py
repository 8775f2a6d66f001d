#!/usr/bin/env python3
"""Instance create -> pingable, in the lab: ``hcboot instance create`` next to the floor, a bare
``xl create`` of the same guest's config on the same hnode, in the same run.

Run as root from the repository root, against the running lab (``hcboot lab up``, the domu
template imported: ``hcboot --lab template import domu``)::

    python3 bench/bench_create.py [--runs 3] [--memory 256] [--on hnode1]

Each round:

* ``create``: ``hcboot instance create bcN --template domu`` (a thin clone on an snode exported
  over AoE, the seed, placement, the agent's ``xl create``) until the config node's ping is
  answered (the guest booted through pvgrub2 and took its address by DHCP);
* ``bare``: the same instance stopped (``hcboot instance stop``, not timed), its seed image and
  xl config put back by hand, and ``xl create`` typed on the hnode's dom0 (through the lab's
  admin SSH) until ping answers: no control plane, the same disk, seed and guest boot;
* ``start``: that domain destroyed by hand, ``hcboot instance start bcN --on HNODE`` until ping
  answers: the control plane again, and like ``bare`` not the guest's first boot;
* then ``hcboot instance destroy``.

``create`` is the guest's first boot (cloud-init's first-boot work: host keys, the seed's user
and key), ``bare`` and ``start`` are later boots of the same disk: the like-for-like ratio is
start/bare; create/bare adds what a first boot costs the guest.

Printed: per run the seconds to "returned" and to "pingable"; then medians and the ratios.
Under QEMU TCG the guest's own boot dominates all three.  No result is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_migration import XL, column_medians, node_addresses, node_sh, say  # noqa: E402
from homecloud.agents.hnode import RUN_DIR  # noqa: E402
from homecloud.lab.context import current_context  # noqa: E402
from homecloud.lab.demo import hcboot, instance_doc, wait_ping  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--on", default="hnode1")
    args = ap.parse_args()
    ctx = current_context()
    addrs = node_addresses(ctx)
    host = addrs[args.on]
    rows: dict[str, list[tuple[float, float]]] = {"create": [], "bare": [], "start": []}
    for run in range(1, args.runs + 1):
        name = f"bc{run}"
        t0 = time.monotonic()
        hcboot(ctx, "instance", "create", name, "--template", "domu", "--memory",
               str(args.memory), "--on", args.on)
        made = time.monotonic() - t0
        ip = str(instance_doc(ctx, name)["ip"])
        ping = wait_ping(ctx, ip, 1200) + made
        rows["create"].append((made, ping))
        say(f"create run {run}: instance create returned {made:6.1f} s, pingable {ping:6.1f} s")
        cfg = node_sh(ctx, host, f"cat {RUN_DIR / name}.cfg")
        seed = node_sh(ctx, host, f"cat {RUN_DIR / name}-seed.img")
        hcboot(ctx, "instance", "stop", name, "--force")
        node_sh(ctx, host, f"cat > {RUN_DIR / name}.cfg", stdin=cfg)
        node_sh(ctx, host, f"cat > {RUN_DIR / name}-seed.img", stdin=seed)
        time.sleep(5)  # the ARP entry of the stopped guest ages with the same pace each run
        t0 = time.monotonic()
        node_sh(ctx, host, f"{XL} create {RUN_DIR / name}.cfg")
        made = time.monotonic() - t0
        ping = wait_ping(ctx, ip, 1200) + made
        rows["bare"].append((made, ping))
        say(f"bare   run {run}: xl create returned {made:6.1f} s, pingable {ping:6.1f} s")
        node_sh(ctx, host, f"{XL} destroy {name}")
        time.sleep(5)
        t0 = time.monotonic()
        hcboot(ctx, "instance", "start", name, "--on", args.on)
        made = time.monotonic() - t0
        ping = wait_ping(ctx, ip, 1200) + made
        rows["start"].append((made, ping))
        say(f"start  run {run}: instance start returned {made:6.1f} s, pingable {ping:6.1f} s")
        hcboot(ctx, "instance", "destroy", name)
    print("\nmedians (hcboot instance create = first boot; bare xl create and hcboot instance "
          "start = later boots; same guest, same hnode)")
    print(f"{'how':12} {'returned s':>11} {'pingable s':>11}")
    med = {}
    for how, r in rows.items():
        med[how] = column_medians(r)
        print(f"{how:12} {med[how][0]:11.1f} {med[how][1]:11.1f}")
    for a, b in (("start", "bare"), ("create", "bare")):
        print(f"{a + '/' + b:12} {med[a][0] / med[b][0]:11.2f} {med[a][1] / med[b][1]:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

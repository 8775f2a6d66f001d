#!/usr/bin/env python3
"""Full PXE boot under QEMU TCG, hcboot vs dnsmasq: wall time from QEMU start to a marker line.

The same VM (virtio-net, QEMU's own iPXE ROM, 384 MB, ``-device sga`` so the BIOS/iPXE text is on
the serial console) boots the same artifacts (Debian kernel + the marker initramfs from
tests/support/artifacts.py, same kernel command line) from either

  * hcboot: ``hcboot serve --mode full``; the ROM's DHCP reply points at the per-node iPXE script
    over HTTP, which loads kernel + initrd over HTTP; or
  * dnsmasq 2.90, tuned as in FIELD-NOTES: DHCP + TFTP, ``--no-ping``, option 60 "PXEClient" in
    every offer, iPXE clients (``dhcp-userclass=set:ipxe,iPXE``) get ``boot.ipxe`` over TFTP, a
    script identical to hcboot's except that it loads kernel + initrd over TFTP.

Each server lives in its own namespace (bridge br0, 192.0.2.1/24, a tap for the VM) and stays up
for the whole benchmark; the VM runs alternate (ABBA order), ``--runs`` boots each, medians
reported.  Phases are read from the serial log as it grows (first time each line appears).

iPXE waits ~13 s for an IPv6 router unless one advertises (FIELD-NOTES).  ``--ra on`` (default):
hcboot answers router solicitations itself (bootserver/ra.py) and dnsmasq gets ``--enable-ra``
(``ra-only`` on a documentation prefix); ``--ra off``: neither (``hcboot serve --no-ipv6-ra``);
``--ra both`` measures both settings.

    python3 bench/bench_pxe.py [--runs 3] [--ra on|off|both] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    SERVER,
    DnsmasqServer,
    emit_json,
    machine_note,
    median,
    met,
    publish_role,
    require_root,
    server_ns,
    start_dnsmasq,
    start_hcboot_full,
)

from tests.support import artifacts
from tests.support.hcboot import Served
from tests.support.netns import Lab, Netns
from tests.support.qemu import Nic, QemuError, Vm, VmConfig, line_re

MARKER = "HC-BENCH-PXE-MARKER"
MAC = "52:54:00:be:9c:01"   # the same MAC on both (separate) links: identical kernel command line
ROLE = "benchpxe"
POOL = ("192.0.2.100", "192.0.2.150")
TARGET_RATIO = 0.9
SERVERS = ("hcboot", "dnsmasq")

# (phase name, regex on the serial log); each is the first time the line appears.
PHASES: list[tuple[str, str]] = [
    ("rom", r"iPXE \(http://ipxe\.org\)"),                          # SeaBIOS found the ROM
    ("ipxe_start", r"iPXE initialising devices"),     # then iPXE's fixed 2 s Ctrl-B prompt
    ("dhcp_start", r"Configuring \(net0"),
    ("net_configured", r"Configuring \(net0[^\n]*?ok"),               # DHCP + IPv6 configurators
    ("script", r"\.ipxe\.\.\.[^\n]*? ok"),
    ("kernel_loaded", r"/kernel\.\.\.[^\n]*? ok"),                  # progress % may come first
    ("initrd_loaded", r"/initrd\.\.\.[^\n]*? ok"),                  # = network phase done
    ("kernel_setup", r"Probing EDD"),                                # Linux real-mode setup
    ("linux_console", r"Linux version"),
    ("marker", line_re(MARKER)),  # the init's line, not the kernel command line echo
]


@dataclass
class Run:
    server: str
    ra: bool
    index: int
    total: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def watch_phases(vm: Vm, out: dict[str, float], stop: threading.Event) -> None:
    """Record when each phase line first shows up in the serial log (polled every 10 ms)."""
    pending = [(name, re.compile(rx, re.MULTILINE)) for name, rx in PHASES]
    while pending and not stop.is_set():
        text = vm.output()
        now = vm.elapsed()
        for item in list(pending):
            if item[1].search(text):
                out[item[0]] = now
                pending.remove(item)
        time.sleep(0.01)


def boot_once(server: str, ns: Netns, tap: str, workdir: Path, ra: bool, index: int,
              timeout: float) -> Run:
    run = Run(server, ra, index)
    cfg = VmConfig(memory_mb=384, nics=[Nic("virtio", tap=tap, mac=MAC)], netns=ns.name,
                   boot="n", sga=True, name=f"{server}-{'ra' if ra else 'nora'}-{index}")
    stop = threading.Event()
    with Vm(cfg, workdir=workdir) as vm:
        watcher = threading.Thread(target=watch_phases, args=(vm, run.phases, stop),
                                   daemon=True)
        vm.start()
        watcher.start()
        try:
            vm.wait_for(line_re(MARKER), timeout=timeout)
            run.total = vm.elapsed()
        except QemuError as exc:
            run.error = str(exc).splitlines()[0]
        finally:
            stop.set()
            watcher.join(2)
    run.phases.setdefault("marker", run.total or float("nan"))
    return run


def wait_for_script(ns: Netns) -> str:
    """hcboot's iPXE script for MAC, once its inventory watcher has seen the assignment."""
    deadline = time.monotonic() + 15
    while True:
        script = ns.run("curl", "-sf", "--max-time", "5",
                        f"http://{SERVER}/boot/{MAC}.ipxe").stdout
        if f"/{ROLE}/" in script or time.monotonic() > deadline:
            return script
        time.sleep(0.2)


def dnsmasq_script(hc_script: str) -> str:
    """hcboot's own iPXE script for MAC, with kernel + initrd from dnsmasq's TFTP root."""
    out = re.sub(rf"http://{re.escape(SERVER)}(?::\d+)?/images/[^/\s]+/[^/\s]+/",
                 f"tftp://{SERVER}/", hc_script)
    if "tftp://" not in out:
        raise RuntimeError(f"unexpected hcboot script:\n{hc_script}")
    return out


def phase_table(runs: list[Run]) -> list[str]:
    """One row per phase: median seconds since QEMU start for each server."""
    ok = {sv: [r for r in runs if r.server == sv and r.total is not None] for sv in SERVERS}
    lines = [f"    {'phase':16s}" + "".join(f"{sv:>10s}" for sv in SERVERS)]
    for name, _ in PHASES:
        cells = []
        for sv in SERVERS:
            vals = [r.phases[name] for r in ok[sv] if name in r.phases]
            cells.append(f"{median(vals):10.2f}" if vals else f"{'-':>10s}")
        lines.append(f"    {name:16s}" + "".join(cells))
    return lines


def summarize(runs: list[Run], ra: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"ra": ra}
    for server in SERVERS:
        rs = [r for r in runs if r.server == server]
        ok = [r.total for r in rs if r.total is not None]
        doc[server] = {
            "runs": [r.total for r in rs],
            "errors": [r.error for r in rs if r.error],
            "median_s": median(ok) if ok else None,
            "phases_median_s": {n: median([r.phases[n] for r in rs if r.total is not None
                                           and n in r.phases])
                                for n, _ in PHASES
                                if any(n in r.phases for r in rs if r.total is not None)},
        }
    h, d = doc["hcboot"]["median_s"], doc["dnsmasq"]["median_s"]
    doc["ratio_hcboot_over_dnsmasq"] = h / d if h and d else None
    # the part a boot server controls: QEMU start -> initrd loaded (DHCP, script, kernel, initrd)
    hn = doc["hcboot"]["phases_median_s"].get("initrd_loaded")
    dn = doc["dnsmasq"]["phases_median_s"].get("initrd_loaded")
    doc["network_phase_ratio"] = hn / dn if hn and dn else None
    doc["target_ratio"] = TARGET_RATIO
    doc["target_met"] = bool(h and d and h / d <= TARGET_RATIO)
    return doc


def run_setting(work: Path, kernel: Path, initrd: Path, cmdline: str, ra: bool,
                args: argparse.Namespace) -> dict[str, Any]:
    """Both servers up (each in its own namespace), ``args.runs`` alternating boots each."""
    tag = "ra" if ra else "nora"
    work = work / tag
    runs: list[Run] = []
    with Lab() as lab:
        images = work / "images"
        publish_role(images, ROLE, kernel, initrd, cmdline)
        hns = server_ns(lab, "hc")
        hc: Served = start_hcboot_full(lab, hns, work / "hcboot", images, POOL, ra=ra)
        hc.cli("assign", MAC, ROLE)
        script = wait_for_script(hns)
        dns = server_ns(lab, "dq")
        tftp = work / "tftp"
        tftp.mkdir()
        for name, src in (("kernel", kernel), ("initrd", initrd)):
            shutil.copyfile(src, tftp / name)
        (tftp / "boot.ipxe").write_text(dnsmasq_script(script))
        dq: DnsmasqServer = start_dnsmasq(lab, dns, work / "dnsmasq", tftp, POOL, ra=ra)
        taps = {"hcboot": (hns, lab.tap(hns, "br0")), "dnsmasq": (dns, lab.tap(dns, "br0"))}
        for i in range(args.runs):
            order = SERVERS if i % 2 == 0 else SERVERS[::-1]
            for server in order:
                ns, tap = taps[server]
                r = boot_once(server, ns, tap, work / "vm", ra, i, args.timeout)
                runs.append(r)
                if not args.json:
                    t = f"{r.total:6.2f} s" if r.total else f"FAILED ({r.error})"
                    print(f"  ipv6-ra={tag:4s} run {i + 1} {server:8s} {t}", flush=True)
        logs_ok = "iPXE script served" in hc.log_text() and "sent /" in dq.log_text()
    doc = summarize(runs, ra)
    doc["server_logs_as_expected"] = logs_ok
    if not args.json:
        h, d = doc["hcboot"]["median_s"], doc["dnsmasq"]["median_s"]
        ratio = doc["ratio_hcboot_over_dnsmasq"]
        print(f"ipv6-ra={tag}: median QEMU start -> marker over {args.runs} runs each: "
              f"hcboot {'n/a' if h is None else f'{h:.2f}'} s, "
              f"dnsmasq {'n/a' if d is None else f'{d:.2f}'} s, ratio hcboot/dnsmasq "
              f"{'n/a' if ratio is None else f'{ratio:.3f}'} (target <= {TARGET_RATIO}: "
              f"{met(doc['target_met'])})")
        nr = doc["network_phase_ratio"]
        print(f"  network phase (QEMU start -> initrd loaded) ratio hcboot/dnsmasq: "
              f"{'n/a' if nr is None else f'{nr:.3f}'}")
        print("  median phase times (s since QEMU start):")
        for line in phase_table(runs):
            print(line)
        if not logs_ok:
            print("  (note: expected lines missing from a server log)")
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="boots per server (default 3)")
    ap.add_argument("--ra", choices=("on", "off", "both"), default="on",
                    help="IPv6 router advertisements on the link: on = hcboot's own responder "
                    "and dnsmasq --enable-ra (default); off = neither (iPXE waits ~13 s)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per boot")
    ap.add_argument("--json", action="store_true", help="print one JSON document at the end")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (serial logs)")
    args = ap.parse_args()
    require_root()
    note = machine_note()
    if not args.json:
        print(f"bench_pxe: {args.runs} boots per server and setting, alternating; {note}",
              flush=True)
    kernel = artifacts.debian_kernel().vmlinuz
    initrd = artifacts.marker_initramfs(MARKER)
    cmdline = f"console=ttyS0,115200 panic=-1 hc.marker={MARKER}"
    work = Path(tempfile.mkdtemp(prefix="bench-pxe-"))
    settings = {"off": [False], "on": [True], "both": [True, False]}[args.ra]
    try:
        results = [run_setting(work, kernel, initrd, cmdline, ra, args) for ra in settings]
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        emit_json({"benchmark": "pxe", "machine": note, "runs_per_server": args.runs,
                   "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

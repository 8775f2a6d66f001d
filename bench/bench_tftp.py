#!/usr/bin/env python3
"""TFTP download throughput: bootserver.tftp.TftpServer vs dnsmasq's TFTP server.

Needs root: everything runs inside a throw-away network namespace (its loopback only), since
dnsmasq's TFTP port is fixed at 69.  Our server listens on 127.0.0.1:6969, dnsmasq
(``--port=0 --enable-tftp``) on 127.0.0.1:69; both are stopped by PID and the namespace is
deleted.  Clients are curl (``--tftp-blksize``).  Prints medians in MB/s (10^6 bytes/s) for one
client at blksize 512 and 1468, the aggregate of N parallel clients, and server CPU per MB; with
atftp installed also one atftp client asking for RFC 7440 windowsize 1, 8 and 16 (dnsmasq 2.90
declines windowsize, so its rows are lock-step).

    python bench/bench_tftp.py [--size-mib 20] [--rounds 5] [--parallel 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK = os.sysconf("SC_CLK_TCK")

SERVER_CODE = """
import logging, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from bootserver.tftp import TftpLimits, TftpServer
logging.basicConfig(level=logging.WARNING)
# every client is 127.0.0.1 here: lift the per-client cap
s = TftpServer(Path({root!r}), "127.0.0.1", 6969, limits=TftpLimits(max_per_client=1000))
s.start()
while s.alive:
    time.sleep(0.5)
"""


def cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    return 0.0


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parallel", type=int, default=20)
    ap.add_argument("--no-atftp", action="store_true",
                    help="skip the atftp rows (RFC 7440 windowsize 1/8/16, one client)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespace)", file=sys.stderr)
        return 2
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(dnsmasq).exists() or not shutil.which("curl"):
        print("needs dnsmasq and curl", file=sys.stderr)
        return 2

    ns = f"hcbench-{secrets.token_hex(3)}"
    tmp = Path(tempfile.mkdtemp(prefix="hc-bench-tftp-"))
    procs: list[subprocess.Popen[bytes]] = []
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        tmp.chmod(0o755)
        root = tmp / "root"
        root.mkdir(mode=0o755)
        data = root / "big.bin"
        data.write_bytes(os.urandom(args.size_mib << 20))
        data.chmod(0o644)
        size = data.stat().st_size

        def nsexec(*cmd: str) -> list[str]:
            return ["ip", "netns", "exec", ns, *cmd]

        ours = subprocess.Popen(nsexec(sys.executable, "-c", SERVER_CODE.format(
            repo=str(REPO), root=str(root))), start_new_session=True,
            stdout=subprocess.DEVNULL)
        procs.append(ours)
        dm = subprocess.Popen(nsexec(dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null",
                                     "--port=0", "--enable-tftp", f"--tftp-root={root}",
                                     "--listen-address=127.0.0.1", "--bind-interfaces",
                                     "--pid-file=", "--user=root", "--log-facility=-",
                                     "--tftp-no-fail"),
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        procs.append(dm)
        time.sleep(1.0)
        for p in procs:
            if p.poll() is not None:
                print(f"a server exited early: {p.args}", file=sys.stderr)
                return 1
        urls = {"homecloud": "tftp://127.0.0.1:6969/big.bin",
                "dnsmasq": "tftp://127.0.0.1/big.bin"}
        # `ip netns exec` execs its command: the Popen pids are the servers themselves
        pids = {"homecloud": ours.pid, "dnsmasq": dm.pid}

        def one(url: str, blksize: int) -> float:
            r = subprocess.run(nsexec("curl", "-s", "-f", "--tftp-blksize", str(blksize), "-o",
                                      "/dev/null", "-w", "%{speed_download}", url),
                               capture_output=True, text=True, check=True)
            return float(r.stdout) / 1e6

        ports = {"homecloud": "6969", "dnsmasq": "69"}

        def atftp(name: str, window: int) -> float:
            """One atftp client (it asks for RFC 7440 windowsize; dnsmasq declines it)."""
            t0 = time.monotonic()
            subprocess.run(nsexec("atftp", "--option", "blksize 1468", "--option",
                                  f"windowsize {window}", "-g", "-r", "big.bin", "-l",
                                  "/dev/null", "127.0.0.1", ports[name]),
                           check=True, capture_output=True)
            return size / (time.monotonic() - t0) / 1e6

        def many(url: str, n: int) -> float:
            t0 = time.monotonic()
            ps = [subprocess.Popen(nsexec("curl", "-s", "-f", "--tftp-blksize", "1468", "-o",
                                          "/dev/null", url)) for _ in range(n)]
            for p in ps:
                if p.wait() != 0:
                    raise RuntimeError(f"curl failed on {url}")
            return n * size / (time.monotonic() - t0) / 1e6

        for name in urls:  # warm up
            one(urls[name], 1468)
        results: dict[tuple[str, str], list[float]] = {}
        cpu: dict[str, float] = dict.fromkeys(urls, 0.0)
        moved: dict[str, float] = dict.fromkeys(urls, 0.0)
        tests = [("blksize 512, 1 client", lambda u: one(u, 512), 1),
                 ("blksize 1468, 1 client", lambda u: one(u, 1468), 1),
                 (f"blksize 1468, {args.parallel} clients (aggregate)",
                  lambda u: many(u, args.parallel), args.parallel)]
        if shutil.which("atftp") and not args.no_atftp:
            for w in (1, 8, 16):
                label = f"atftp blksize 1468 windowsize {w}, 1 client"
                tests.append((label, lambda u, w=w: atftp(
                    "homecloud" if u == urls["homecloud"] else "dnsmasq", w), 1))
        for i in range(args.rounds):
            for label, fn, n in tests:
                order = list(urls) if i % 2 == 0 else list(reversed(urls))
                for name in order:
                    c0 = cpu_seconds(pids[name])
                    results.setdefault((label, name), []).append(fn(urls[name]))
                    cpu[name] += cpu_seconds(pids[name]) - c0
                    moved[name] += n * size / 1e6
            print(f"round {i + 1} done", flush=True)
        print(f"\n{args.size_mib} MiB file, {args.rounds} rounds, curl in a namespace loopback")
        for label, _, _ in tests:
            med = {name: statistics.median(results[(label, name)]) for name in urls}
            print(f"  {label:44s} homecloud {med['homecloud']:6.1f} MB/s   dnsmasq "
                  f"{med['dnsmasq']:6.1f} MB/s   ratio {med['homecloud'] / med['dnsmasq']:.2f}x")
        for name in urls:
            print(f"  server CPU {name:9s} {cpu[name] / moved[name] * 1000:.1f} ms per MB")
        return 0
    finally:
        for p in procs:
            stop(p)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

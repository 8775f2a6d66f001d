#!/usr/bin/env python3
"""cProfile of bootserver.tftp's serving thread under N parallel curl TFTP clients.

Needs root: the server (127.0.0.1:6969) and the clients run inside a throw-away network
namespace (its loopback only), created here and deleted on exit; the server process is stopped
by its PID.  The server thread runs under cProfile; at the end the top functions by internal
time are printed, with wall time, aggregate MB/s and server CPU microseconds per DATA packet.

    python3 bench/profile_tftp.py [--clients 20] [--size-mib 8] [--blksize 1468] [--top 25]
        [--windowsize N]   (curl cannot ask for windowsize; N > 1 uses atftp if installed)
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SERVER_CODE = r"""
import cProfile, logging, pstats, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bootserver.tftp import TftpLimits, TftpServer
logging.basicConfig(level=logging.WARNING)
root, stopfile, out = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
# every client is 127.0.0.1 here: no per-client cap
s = TftpServer(root, "127.0.0.1", 6969, limits=TftpLimits(max_per_client=1000))
pr = cProfile.Profile()
orig = s._run
def profiled():
    pr.enable()
    try:
        orig()
    finally:
        pr.disable()
s._run = profiled
s.start()
print("READY", flush=True)
while not stopfile.exists():
    time.sleep(0.05)
s.stop()
pr.dump_stats(out)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--size-mib", type=int, default=8)
    ap.add_argument("--blksize", type=int, default=1468)
    ap.add_argument("--windowsize", type=int, default=1)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespace)")
    import pstats

    ns = f"hcprof-{secrets.token_hex(3)}"
    tmp = Path(tempfile.mkdtemp(prefix="hc-prof-tftp-"))
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        root = tmp / "root"
        root.mkdir()
        size = args.size_mib << 20
        (root / "f.bin").write_bytes(os.urandom(size))
        stopfile, stats = tmp / "stop", tmp / "prof.out"
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER_CODE,
                                 str(REPO), str(root), str(stopfile), str(stats)],
                                stdout=subprocess.PIPE, start_new_session=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"READY"
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.monotonic()
        if args.windowsize > 1:
            atftp = shutil.which("atftp")
            if atftp is None:
                sys.exit("--windowsize needs atftp (apt-get install atftp)")
            argvs = [["ip", "netns", "exec", ns, atftp, "--option", f"blksize {args.blksize}",
                      "--option", f"windowsize {args.windowsize}", "-g", "-r", "f.bin",
                      "-l", str(tmp / f"out{i}"), "127.0.0.1", "6969"]
                     for i in range(args.clients)]
        else:
            argvs = [["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "300",
                      "--tftp-blksize", str(args.blksize), "tftp://127.0.0.1:6969/f.bin",
                      "-o", str(tmp / f"out{i}")] for i in range(args.clients)]
        clients = [subprocess.Popen(a) for a in argvs]
        rcs = [c.wait() for c in clients]
        wall = time.monotonic() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        ok = sum(1 for i, rc in enumerate(rcs)
                 if rc == 0 and (tmp / f"out{i}").stat().st_size == size)
        stopfile.touch()
        proc.wait(30)
        blocks = args.clients * (size // args.blksize + 1)
        print(f"{args.clients} clients x {args.size_mib} MiB, blksize {args.blksize}, window "
              f"{args.windowsize}: {ok} ok, {wall:.2f} s, "
              f"{args.clients * size / wall / 1e6:.1f} MB/s aggregate, server CPU {cpu:.2f} s "
              f"= {cpu / blocks * 1e6:.1f} us per DATA packet (profiler overhead included)")
        pstats.Stats(str(stats)).sort_stats("tottime").print_stats(args.top)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

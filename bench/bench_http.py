#!/usr/bin/env python3
"""HTTP download throughput: bootserver.http.HttpServer vs nginx, one 100 MiB file on loopback.

Both servers run as child processes on 127.0.0.1 (ephemeral ports; nginx from a temporary
prefix/config, one worker, sendfile on) and are stopped by PID.  Each round downloads the file
once from each server with curl (order alternating), several rounds; prints the medians in
MB/s (10^6 bytes), the ratio, and server CPU seconds per GB served.

    python bench/bench_http.py [--size-mib 100] [--rounds 9]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
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
from bootserver.http import HttpServer
from tests.support.staticapp import StaticApp
logging.basicConfig(level=logging.WARNING)
s = HttpServer("127.0.0.1", {port}, StaticApp(Path({root!r})))
s.start()
print("READY", flush=True)
while s.alive:
    time.sleep(0.5)
"""

NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


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


def cpu_seconds(pid: int) -> float:
    """utime+stime of pid and its children processes (nginx workers)."""
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
    return total


def download(url: str) -> float:
    out = subprocess.run(["curl", "-s", "-f", "-o", "/dev/null", "-w", "%{speed_download}",
                          url], capture_output=True, text=True, check=True)
    return float(out.stdout) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    if not shutil.which("nginx") or not shutil.which("curl"):
        print("needs nginx and curl on PATH", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="hc-bench-http-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        tmp.chmod(0o755)
        root = tmp / "www"
        root.mkdir(mode=0o755)
        (tmp / "tmp").mkdir()
        data = root / "big.bin"
        with open(data, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        data.chmod(0o644)

        ours_port, nginx_port = free_port(), free_port()
        ours = subprocess.Popen(
            [sys.executable, "-c", SERVER_CODE.format(repo=str(REPO), port=ours_port,
                                                      root=str(root))],
            stdout=subprocess.DEVNULL, start_new_session=True)
        procs.append(ours)
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user="user root;" if os.geteuid() == 0 else "",
                                          prefix=tmp, port=nginx_port, root=root))
        nginx = subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(conf)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        procs.append(nginx)
        wait_port(ours_port, ours)
        wait_port(nginx_port, nginx)
        time.sleep(0.3)  # let nginx fork its worker

        servers = {"homecloud": (f"http://127.0.0.1:{ours_port}/big.bin", ours.pid),
                   "nginx": (f"http://127.0.0.1:{nginx_port}/big.bin", nginx.pid)}
        for url, _ in servers.values():  # warm the page cache and both servers
            download(url)
        speeds: dict[str, list[float]] = {k: [] for k in servers}
        cpu: dict[str, float] = dict.fromkeys(servers, 0.0)
        for i in range(args.rounds):
            order = list(servers) if i % 2 == 0 else list(reversed(servers))
            for name in order:
                url, pid = servers[name]
                c0 = cpu_seconds(pid)
                speeds[name].append(download(url))
                cpu[name] += cpu_seconds(pid) - c0
            print(f"round {i + 1}: " + "  ".join(f"{k} {v[-1]:7.0f} MB/s"
                                                 for k, v in speeds.items()), flush=True)
        gb = args.rounds * args.size_mib * (1 << 20) / 1e9
        med = {k: statistics.median(v) for k, v in speeds.items()}
        print(f"\n{args.size_mib} MiB file, {args.rounds} rounds, curl on loopback")
        for k in servers:
            print(f"  {k:9s} median {med[k]:7.0f} MB/s  (min {min(speeds[k]):.0f}, max "
                  f"{max(speeds[k]):.0f})  server CPU {cpu[k] / gb:.2f} s/GB")
        ratio = med["homecloud"] / med["nginx"]
        print(f"  ratio homecloud/nginx: {ratio:.2f}x (target >= 0.90x)")
        return 0
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

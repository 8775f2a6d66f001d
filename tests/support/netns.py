"""Throw-away network namespaces, veths, bridges and taps for tests.

Everything is created under unique names (prefix ``hct``) and removed by ``Lab.close()``; processes
started through ``Lab.popen`` are killed by PID.  Nothing here touches the machine's real
interfaces: addresses come from the documentation/test ranges the caller passes in.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {r.returncode}: {r.stderr.strip()}")
    return r


def uid(n: int = 5) -> str:
    return secrets.token_hex(8)[:n]


@dataclass
class Netns:
    name: str

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"[{self.name}] {' '.join(args)} -> {r.returncode}: "
                               f"{r.stderr.strip()}")
        return r

    def mac(self, ifname: str) -> str:
        return (
            self.run("cat", f"/sys/class/net/{ifname}/address").stdout.strip())


@dataclass
class Lab:
    """A set of namespaces and links; use as a context manager."""

    prefix: str = field(default_factory=lambda: "hct" + uid())
    namespaces: list[Netns] = field(default_factory=list)
    host_links: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def netns(self, tag: str) -> Netns:
        ns = Netns(f"{self.prefix}-{tag}")
        sh("ip", "netns", "add", ns.name)
        self.namespaces.append(ns)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def veth(self, a: Netns, a_if: str, b: Netns, b_if: str) -> None:
        """A veth pair with one end in each namespace (created in ``a`` so no host name clash)."""
        a.run("ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        a.run("ip", "link", "set", a_if, "up")
        b.run("ip", "link", "set", b_if, "up")

    def bridge(self, ns: Netns, name: str = "br0", addr: str | None = None) -> str:
        ns.run("ip", "link", "add", name, "type", "bridge", "forward_delay", "0", "stp_state", "0")
        ns.run("ip", "link", "set", name, "up")
        if addr:
            ns.run("ip", "addr", "add", addr, "dev", name)
        return name

    def port(self, bridge_ns: Netns, bridge: str, other: Netns, other_if: str) -> str:
        """Connect ``other`` to ``bridge`` with a veth; returns the bridge-side port name."""
        port = f"p{uid(6)}"
        self.veth(bridge_ns, port, other, other_if)
        bridge_ns.run("ip", "link", "set", port, "master", bridge)
        return port

    def tap(self, ns: Netns, bridge: str) -> str:
        """A tap device inside ``ns``, enslaved to ``bridge``, for ``qemu -netdev tap``.

        QEMU must itself run inside ``ns`` (``ns.cmd(...)``) to open it."""
        name = f"t{uid(6)}"
        ns.run("ip", "tuntap", "add", "dev", name, "mode", "tap")
        ns.run("ip", "link", "set", name, "master", bridge)
        ns.run("ip", "link", "set", name, "up")
        return name

    def addr(self, ns: Netns, ifname: str, cidr: str) -> None:
        ns.run("ip", "addr", "add", cidr, "dev", ifname)

    def popen(self, argv: Sequence[str], ns: Netns | None = None, log: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        cmd = ns.cmd(*argv) if ns else list(argv)
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, **(env or {})})
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 5) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout)

    def close(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            # killing leftover PIDs inside the namespace (by PID, from `ip netns pids`)
            r = sh("ip", "netns", "pids", ns.name, check=False)
            for pid in r.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns.name, check=False)
        self.namespaces.clear()


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    lb = Lab()
    try:
        yield lb
    finally:
        lb.close()


def wait_for(pred: object, timeout: float = 10.0, interval: float = 0.05, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(pred) and pred():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or pred}")

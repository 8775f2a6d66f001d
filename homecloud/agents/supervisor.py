"""The storage agent's vblade supervisor: one vblade per export, started by PID (pid files in
the agent's ``exports`` state directory), restarted with backoff when it exits, stopped by PID;
vblades left by an earlier run of the agent cleaned up by PID.  Standard library only."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from homecloud.agents.common import Backoff, Output
from homecloud.agents.protocol import Export
from homecloud.core.ids import Target


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Child:
    """One export's vblade, restarted with backoff when it exits."""

    def __init__(self, export: Export, argv: list[str], cap: float) -> None:
        self.export, self.argv = export, argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.backoff = Backoff(cap)
        self.restart_at: float | None = None


class Supervisor:
    def __init__(self, exports_dir: Path, out: Output, cap: float) -> None:
        self.dir, self.out, self.cap = exports_dir, out, cap
        self.children: dict[Target, Child] = {}

    def pidfile(self, t: Target) -> Path:
        return self.dir / f"{t}.pid"

    def running(self) -> dict[Target, Export]:
        return {t: c.export for t, c in self.children.items()}

    def _spawn(self, t: Target, c: Child) -> None:
        try:
            c.proc = subprocess.Popen(c.argv, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self.out.log(f"vblade {t}: cannot start {c.argv[0]}: {exc}")
            c.proc, c.restart_at = None, time.monotonic() + c.backoff.next()
            return
        c.started, c.restart_at = time.monotonic(), None
        self.pidfile(t).write_text(f"{c.proc.pid}\n")

    def start(self, e: Export, argv: list[str]) -> None:
        c = Child(e, argv, self.cap)
        self.children[e.target] = c
        self._spawn(e.target, c)
        pid = c.proc.pid if c.proc else "none"
        self.out.log(f"export {e.target}: {' '.join(argv)} (pid {pid})")

    def stop(self, t: Target) -> None:
        c = self.children.pop(t, None)
        if c is not None and c.proc is not None and c.proc.poll() is None:
            c.proc.terminate()
            try:
                c.proc.wait(5)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
        self.pidfile(t).unlink(missing_ok=True)
        self.out.log(f"export {t}: stopped")

    def stop_all(self) -> None:
        for t in list(self.children):
            self.stop(t)

    def tick(self) -> None:
        """Notice vblades that exited; restart those whose delay has passed."""
        now = time.monotonic()
        for t, c in self.children.items():
            if c.proc is not None:
                rc = c.proc.poll()
                if rc is None:
                    continue
                c.backoff.ran_for(now - c.started)
                delay = c.backoff.next()
                status = rc if rc >= 0 else 128 - rc
                sig = f" (signal {-rc})" if rc < 0 else ""
                self.out.log(f"vblade {t} (pid {c.proc.pid}) exited with status {status}{sig}:"
                             f" restart in {delay:g}s")
                c.proc, c.restart_at = None, now + delay
            if c.restart_at is not None and now >= c.restart_at:
                self._spawn(t, c)


def stale_cleanup(exports_dir: Path) -> None:
    """vblades left behind by an earlier run of the agent (same HC_RUN), by PID."""
    for f in exports_dir.iterdir():
        try:
            pid = int(f.read_text().split()[0])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            cmd = b""
        if cmd and b"vblade" in cmd and alive(pid):
            os.kill(pid, signal.SIGTERM)
        f.unlink(missing_ok=True)

"""Processes the lab started, stopped by PID only after checking they are still ours.

A PID recorded in lab.json may have been reused by an unrelated process after a crash or a
reboot, so before signalling it the lab checks that ``/proc/PID/cmdline`` still contains the
tokens it recorded (the lab directory and the machine name).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path


def cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid``; None if it is gone or a zombie (empty cmdline)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def is_ours(pid: int | None, tokens: Sequence[str]) -> bool:
    """True if ``pid`` is alive and its command line contains every token."""
    if not pid or pid <= 1:
        return False
    argv = cmdline(pid)
    if argv is None:
        return False
    joined = "\0".join(argv)
    return all(t in joined for t in tokens)


def alive(pid: int) -> bool:
    return cmdline(pid) is not None


def stop(pid: int | None, tokens: Sequence[str], timeout: float = 5.0) -> bool:
    """SIGTERM (then SIGKILL) ``pid`` and its process group if it is ours; True if signalled."""
    if pid is None or not is_ours(pid, tokens):
        return False
    try:
        group = os.getpgid(pid) == pid  # a session leader we started: signal its whole group
    except ProcessLookupError:
        return False

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not alive(pid):
            return True
        time.sleep(0.05)
    send(signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        _reap(pid)
        time.sleep(0.05)
    return True


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own child (no zombie left while we wait for it)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)

"""QEMU (TCG only) launcher for the e2e tests (NIC/disk devices shared with bootserver/lab/vm.py).

``VmConfig`` describes a machine, ``Vm`` builds its argv, starts it (optionally inside a network
namespace), follows the serial console through a log file and stops it by its process group.
The serial log stays on disk as the evidence of a failed test.  Never ``-enable-kvm``: nested KVM
hangs on this kind of host (FIELD-NOTES); everything runs under ``-accel tcg``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from homecloud.lab.vm import Disk, Nic, device_args

QEMU = os.environ.get("HC_QEMU", "qemu-system-x86_64")

# Lines that end a wait early: the initramfs' error line, a panic.
DEFAULT_FAIL = r"HC-ERROR:.*|Kernel panic.*"


class QemuError(Exception):
    """A VM did not do what was expected; carries the serial log tail."""

    def __init__(self, message: str, log_path: Path | None = None, tail: str = "") -> None:
        self.log_path = log_path
        self.tail = tail
        extra = f"\n--- serial log {log_path} (tail) ---\n{tail}" if log_path else ""
        super().__init__(message + extra)


@dataclass
class VmConfig:
    memory_mb: int = 512
    smp: int = 1
    cpu: str = "max"
    machine: str = "pc"
    kernel: Path | str | None = None
    initrd: Path | str | None = None      # a path, or multiboot "file args,file2" (see below)
    append: str | None = None
    nics: Sequence[Nic] = ()
    disks: Sequence[Disk] = ()
    boot: str | None = None               # "n" = PXE, "c" = disk
    sga: bool = False                     # SeaBIOS/iPXE text on the serial console
    serial: Literal["file", "socket"] = "file"
    netns: str | None = None              # run inside `ip netns exec NETNS`
    no_reboot: bool = True                # a reboot (or panic with panic=N) ends QEMU
    extra_args: Sequence[str] = ()
    name: str = "hcvm"


def line_re(text: str) -> str:
    """A regex matching ``text`` as a whole console line (hvc/serial may add several \\r)."""
    return rf"^{re.escape(text)}\r*$"


def multiboot_initrd(modules: Sequence[tuple[Path | str, str]]) -> str:
    """QEMU's multiboot ``-initrd`` value: "file args,file2 args"; literal commas doubled."""
    parts = []
    for path, args in modules:
        p = str(path)
        if "," in p or " " in p:
            raise ValueError(f"multiboot module path {p!r} must not contain ',' or ' '")
        a = args.replace(",", ",,")
        parts.append(f"{p} {a}".rstrip())
    return ",".join(parts)


def build_argv(cfg: VmConfig, serial_target: str) -> list[str]:
    """The qemu-system-x86_64 argv for ``cfg``; ``serial_target`` is a chardev spec."""
    argv = [
        QEMU, "-name", cfg.name, "-machine", cfg.machine, "-accel", "tcg", "-cpu", cfg.cpu,
        "-m", str(cfg.memory_mb), "-smp", str(cfg.smp),
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
        "-monitor", "none", "-chardev", serial_target, "-serial", "chardev:s0",
    ]
    if cfg.no_reboot:
        argv.append("-no-reboot")
    if cfg.sga:
        argv += ["-device", "sga"]
    if cfg.kernel is not None:
        argv += ["-kernel", str(cfg.kernel)]
    if cfg.initrd is not None:
        argv += ["-initrd", str(cfg.initrd)]
    if cfg.append is not None:
        if cfg.kernel is None:
            raise ValueError("append without kernel")
        argv += ["-append", cfg.append]
    argv += device_args(cfg.nics, cfg.disks)
    if cfg.boot:
        argv += ["-boot", cfg.boot]
    argv += list(cfg.extra_args)
    if cfg.netns:
        argv = ["ip", "netns", "exec", cfg.netns, *argv]
    return argv


@dataclass
class Vm:
    """One QEMU process.  Use as a context manager or call ``stop()``."""

    cfg: VmConfig
    workdir: Path
    log_path: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)
    _sock_path: Path | None = field(default=None, init=False)
    _sock: socket.socket | None = field(default=None, init=False)
    _pos: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.cfg.name}.serial.log"
        self._stderr_path = self.workdir / f"{self.cfg.name}.qemu.log"

    @property
    def argv(self) -> list[str]:
        if self.cfg.serial == "socket":
            self._sock_path = self.workdir / f"{self.cfg.name}.serial.sock"
            # QEMU itself logs everything to the file; the socket is only for typing (send()).
            target = (f"socket,id=s0,path={self._sock_path},server=on,wait=off,"
                      f"logfile={self.log_path},logappend=on")
        else:
            target = f"file,id=s0,path={self.log_path}"
        return build_argv(self.cfg, target)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> Vm:
        if self.proc is not None:
            raise QemuError("already started")
        argv = self.argv
        self.log_path.write_bytes(b"")
        (self.workdir / f"{self.cfg.name}.argv").write_text(shlex.join(argv) + "\n")
        err = open(self._stderr_path, "wb")  # noqa: SIM115 - handed to the child
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        err.close()
        return self

    def _connect_serial(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if self._sock_path is None:
            raise QemuError("send() needs serial='socket'")
        deadline = time.monotonic() + 10
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                s.connect(str(self._sock_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                    s.close()
                    raise QemuError("serial socket never appeared", self.log_path,
                                    self.qemu_stderr()) from None
                time.sleep(0.05)
        self._sock = s
        return s

    def send(self, text: str) -> None:
        """Type ``text`` on the serial console (serial="socket" only)."""
        self._connect_serial().sendall(text.encode())

    def output(self) -> str:
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def qemu_stderr(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 60.0,
                 fail: str | re.Pattern[str] | None = DEFAULT_FAIL) -> re.Match[str]:
        """Wait until ``pattern`` appears in the serial output after the previous match.

        Raises QemuError on timeout, when QEMU exits first, or when ``fail`` matches first."""
        rx = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        frx = re.compile(fail, re.MULTILINE) if isinstance(fail, str) else fail
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()
            m = rx.search(text, self._pos)
            if m:
                self._pos = m.end()
                return m
            if frx:
                f = frx.search(text, self._pos)
                if f:
                    raise QemuError(f"failure line before {rx.pattern!r}: {f.group(0)!r}",
                                    self.log_path, self.tail())
            if self.proc is not None and self.proc.poll() is not None:
                text = self.output()
                m = rx.search(text, self._pos)
                if m:
                    self._pos = m.end()
                    return m
                raise QemuError(
                    f"QEMU exited ({self.proc.returncode}) before {rx.pattern!r}; "
                    f"qemu stderr: {self.qemu_stderr().strip()[-500:]}",
                    self.log_path, self.tail())
            if time.monotonic() > deadline:
                raise QemuError(f"timed out after {timeout}s waiting for {rx.pattern!r}",
                                self.log_path, self.tail())
            time.sleep(0.05)

    def wait_exit(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            raise QemuError("not started")
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise QemuError(f"QEMU still running after {timeout}s", self.log_path,
                            self.tail()) from None

    def stop(self, timeout: float = 5.0) -> None:
        """Kill QEMU's process group (its own session) by PID; idempotent."""
        p = self.proc
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

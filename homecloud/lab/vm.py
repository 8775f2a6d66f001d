"""QEMU (TCG only) machines for the virtual lab.

The design follows the test launcher (tests/support/qemu.py: ``VmConfig`` -> argv -> a process
of its own session, stopped by PID), with what a lab that outlives the command needs:

- the serial console is a QEMU chardev *socket* (server, no wait) with ``logfile=``: QEMU itself
  writes everything to the log, whether or not someone is attached, and ``hcboot lab console``
  can attach to the socket at any time;
- a monitor socket (HMP) for ``system_reset`` / ``quit``;
- the process is detached (own session, stdio to a file): it keeps running after ``lab up``
  returns, and ``lab down`` stops it by its PID after checking ``/proc/PID/cmdline``.

Never ``-enable-kvm``: nested KVM hangs on this kind of host (FIELD-NOTES); always ``-accel tcg``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from homecloud.lab.errors import LabError

QEMU = os.environ.get("HC_QEMU", "qemu-system-x86_64")

NIC_MODELS = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e",
              "rtl8139": "rtl8139"}


@dataclass(frozen=True)
class Nic:
    model: str = "virtio"                 # virtio | e1000 | e1000e | rtl8139 | a QEMU device name
    tap: str | None = None                # tap ifname (QEMU must run in the tap's namespace)
    mac: str | None = None
    romfile: str | None = None            # None: QEMU's default iPXE ROM; "" disables it
    bootindex: int | None = None


@dataclass(frozen=True)
class Disk:
    path: Path
    #: ``virtio-scsi``: a virtio-scsi controller and a scsi-hd per disk (the SCSI layer times
    #: out a lost completion, aborts and retries; virtio-blk waits for it forever)
    iface: Literal["virtio", "ide", "scsi", "virtio-scsi"] = "virtio"
    format: str = "raw"
    readonly: bool = False
    snapshot: bool = False


#: TCG's "max" CPU: it has SVM + NPT, which an hnode's PVH guests need
CPU_MAX = "max"
#: "max" without the AVX family, for the lab's storage nodes.  TCG emulates AVX2 far slower
#: than the SSE code it replaces: OpenSSL's SHA-256 (Python's hashlib) hashed 64 MiB in 2.3 s on
#: a lab snode with AVX2 and in 0.9 s without (the storage agent checks every image it
#: downloads: the hnode root's 212 MB took 26 s from the config node, 16-20 s without AVX).
#: An hnode keeps "max": Xen already hides AVX from its dom0, and its guests' CPUID is set
#: apart (``hc.guest_cpuid``).
CPU_NO_AVX = "max,avx=off,avx2=off,fma=off,f16c=off,vaes=off"
#: the CPU of a lab node by role (others: CPU_MAX)
ROLE_CPU = {"snode": CPU_NO_AVX}


def role_cpu(role: str) -> str:
    return ROLE_CPU.get(role, CPU_MAX)


@dataclass
class VmSpec:
    name: str
    workdir: Path                          # serial log, sockets, argv and QEMU's own log go here
    memory_mb: int = 512
    smp: int = 1
    cpu: str = CPU_MAX
    machine: str = "pc"
    nics: Sequence[Nic] = ()
    disks: Sequence[Disk] = ()
    boot: str | None = None               # "n", "order=n,reboot-timeout=1000", ...
    kernel: Path | None = None
    initrd: str | None = None
    append: str | None = None
    sga: bool = True                      # SeaBIOS/iPXE text on the serial console
    no_reboot: bool = False               # lab machines reboot like real ones
    netns: str | None = None              # run inside `ip netns exec NETNS`
    extra_args: Sequence[str] = ()
    files: dict[str, Path] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        w = Path(self.workdir)
        self.files = {
            "serial_log": w / f"{self.name}.serial.log",
            "serial_sock": w / f"{self.name}.serial.sock",
            "monitor_sock": w / f"{self.name}.monitor.sock",
            "qemu_log": w / f"{self.name}.qemu.log",
            "argv": w / f"{self.name}.argv",
        }

    @property
    def serial_log(self) -> Path:
        return self.files["serial_log"]

    @property
    def serial_sock(self) -> Path:
        return self.files["serial_sock"]

    @property
    def monitor_sock(self) -> Path:
        return self.files["monitor_sock"]


def device_args(nics: Sequence[Nic], disks: Sequence[Disk]) -> list[str]:
    """QEMU arguments for NICs (tap or isolated user networking) and raw/qcow2 drives."""
    argv: list[str] = []
    for i, nic in enumerate(nics):
        nid = f"n{i}"
        if nic.tap:
            argv += ["-netdev", f"tap,id={nid},ifname={nic.tap},script=no,downscript=no"]
        else:
            argv += ["-netdev", f"user,id={nid},restrict=on"]
        dev = f"{NIC_MODELS.get(nic.model, nic.model)},netdev={nid}"
        if nic.mac:
            dev += f",mac={nic.mac}"
        if nic.romfile is not None:
            dev += f",romfile={nic.romfile}"
        if nic.bootindex is not None:
            dev += f",bootindex={nic.bootindex}"
        argv += ["-device", dev]
    if any(d.iface == "virtio-scsi" for d in disks):
        argv += ["-device", "virtio-scsi-pci,id=scsi0"]
    for i, d in enumerate(disks):
        opts = [f"file={d.path}", f"format={d.format}"]
        if d.iface == "virtio-scsi":
            opts += ["if=none", f"id=disk{i}"]
        else:
            opts += [f"if={d.iface}", f"index={i}"]
        if d.readonly:
            opts.append("readonly=on")
        if d.snapshot:
            opts.append("snapshot=on")
        argv += ["-drive", ",".join(opts)]
        if d.iface == "virtio-scsi":
            argv += ["-device", f"scsi-hd,drive=disk{i},bus=scsi0.0,scsi-id={i},lun=0"]
    return argv


def build_argv(spec: VmSpec) -> list[str]:
    """The full argv (``ip netns exec NS qemu-system-x86_64 ...`` when ``spec.netns``)."""
    for key in ("serial_log", "serial_sock", "monitor_sock"):
        if "," in str(spec.files[key]):
            raise LabError(f"{spec.files[key]}: QEMU paths must not contain ','")
    argv = [
        QEMU, "-name", spec.name, "-machine", spec.machine, "-accel", "tcg", "-cpu", spec.cpu,
        "-m", str(spec.memory_mb), "-smp", str(spec.smp),
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
        "-chardev", f"socket,id=s0,path={spec.serial_sock},server=on,wait=off,"
                    f"logfile={spec.serial_log},logappend=on",
        "-serial", "chardev:s0",
        "-chardev", f"socket,id=m0,path={spec.monitor_sock},server=on,wait=off",
        "-mon", "chardev=m0,mode=readline",
    ]
    if spec.no_reboot:
        argv.append("-no-reboot")
    if spec.sga:
        argv += ["-device", "sga"]
    if spec.kernel is not None:
        argv += ["-kernel", str(spec.kernel)]
    if spec.initrd is not None:
        argv += ["-initrd", spec.initrd]
    if spec.append is not None:
        if spec.kernel is None:
            raise LabError(f"{spec.name}: append without kernel")
        argv += ["-append", spec.append]
    argv += device_args(spec.nics, spec.disks)
    if spec.boot:
        argv += ["-boot", spec.boot]
    argv += list(spec.extra_args)
    if spec.netns:
        argv = ["ip", "netns", "exec", spec.netns, *argv]
    return argv


def sparse_disk(path: Path, size: int) -> Path:
    """A raw sparse file of ``size`` bytes (a fresh, empty disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def start(spec: VmSpec) -> subprocess.Popen[bytes]:
    """Start QEMU detached (its own session; survives the caller); returns the Popen."""
    Path(spec.workdir).mkdir(parents=True, exist_ok=True)
    for key in ("serial_sock", "monitor_sock"):
        with contextlib.suppress(FileNotFoundError):
            spec.files[key].unlink()
    argv = build_argv(spec)
    spec.files["argv"].write_text(shlex.join(argv) + "\n")
    with open(spec.files["qemu_log"], "ab") as err:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)


def wait_sockets(spec: VmSpec, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Wait until QEMU listens on its serial socket (it is then running the machine)."""
    deadline = time.monotonic() + timeout
    while not spec.serial_sock.exists():
        if proc.poll() is not None:
            raise LabError(f"{spec.name}: QEMU exited ({proc.returncode}): "
                           f"{qemu_log_tail(spec.files['qemu_log'])}")
        if time.monotonic() > deadline:
            raise LabError(f"{spec.name}: QEMU did not open {spec.serial_sock} in {timeout}s")
        time.sleep(0.05)


def qemu_log_tail(path: Path, chars: int = 600) -> str:
    try:
        return path.read_text(errors="replace").strip()[-chars:]
    except FileNotFoundError:
        return ""


def monitor(sock: Path, command: str, timeout: float = 5.0) -> str:
    """Run one HMP command on a VM's monitor socket; returns its output."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock))
        buf = b""
        while b"(qemu)" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        s.sendall(command.encode() + b"\n")
        out = b""
        deadline = time.monotonic() + timeout
        while b"(qemu)" not in out.split(command.encode(), 1)[-1]:
            if time.monotonic() > deadline:
                break
            try:
                chunk = s.recv(4096)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out.decode(errors="replace")
    except OSError as exc:
        raise LabError(f"monitor {sock}: {exc}") from None
    finally:
        s.close()

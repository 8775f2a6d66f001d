"""QEMU TCG boots of the boot chain: Debian kernel + small initramfs, Xen + dom0, and the
aoe-root initramfs switching into a root from a local disk or from a real vblade over a bridge.

Each VM prints a sentinel on its serial console; the serial log stays in tmp_path as evidence.
Boot times are printed (``pytest -s``), never asserted (timing belongs in bench/).
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.kernel import KernelTree
from tests.support import artifacts
from tests.support.netns import Lab, lab
from tests.support.qemu import Disk, Nic, Vm, VmConfig, line_re, multiboot_initrd

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86 not installed")

CONSOLE = "console=ttyS0,115200n8 panic=-1 quiet"


def _report(name: str, vm: Vm, what: str) -> None:
    print(f"\n[boot time] {name}: {what} after {vm.elapsed():.1f}s wall (log {vm.log_path})")


@pytest.fixture
def kernel() -> KernelTree:
    return artifacts.debian_kernel()


@pytest.fixture
def net_lab() -> Iterator[Lab]:
    with lab() as lb:
        yield lb


def test_kernel_marker_initramfs(kernel: KernelTree, tmp_path: Path) -> None:
    initrd = artifacts.marker_initramfs("built-in-marker")
    cfg = VmConfig(kernel=kernel.vmlinuz, initrd=initrd,
                   append=f"{CONSOLE} hc.marker=HC-E2E-MARKER-1")
    with Vm(cfg, tmp_path) as vm:
        vm.start()
        vm.wait_for(line_re("HC-E2E-MARKER-1"), timeout=120)
        _report("kernel+marker", vm, "marker")
        assert vm.wait_exit(30) == 0  # poweroff -f ends QEMU
        assert "hc: [" in vm.output()


def test_xen_dom0_marker_initramfs(kernel: KernelTree, tmp_path: Path) -> None:
    xen = artifacts.xen()
    spec = artifacts.xen_spec()
    initrd = multiboot_initrd([
        (kernel.vmlinuz, f"{spec.dom0_cmdline} panic=-1 hc.marker=HC-E2E-XEN-DOM0"),
        (artifacts.marker_initramfs(), ""),
    ])
    cfg = VmConfig(memory_mb=1024, kernel=xen.xen_elf, initrd=initrd, append=spec.cmdline)
    with Vm(cfg, tmp_path) as vm:
        vm.start()
        vm.wait_for(r"Xen version 4\.17", timeout=60)
        vm.wait_for(r"Linux version 6\.1", timeout=120)  # dom0 output reaches com1 via hvc0
        vm.wait_for(line_re("HC-E2E-XEN-DOM0"), timeout=120)
        _report("xen+dom0+marker", vm, "dom0 marker")
        vm.wait_exit(60)


def test_aoe_root_initramfs_local_disk(kernel: KernelTree, tmp_path: Path) -> None:
    img = tmp_path / "root.img"
    shutil.copyfile(artifacts.marker_root_image("HC-E2E-ROOT-DISK"), img)
    cfg = VmConfig(kernel=kernel.vmlinuz, initrd=artifacts.aoe_root_initramfs(),
                   append=f"{CONSOLE} hc.root=/dev/vda",
                   disks=[Disk(img, iface="virtio", readonly=True)])
    with Vm(cfg, tmp_path) as vm:
        vm.start()
        vm.wait_for(r"hc: .*root: overlay", timeout=120)
        vm.wait_for(r"hc: switch_root to /sbin/init", timeout=30)
        root = vm.wait_for(r"root: / is (.*)", timeout=30)
        assert "overlay" in root.group(1)
        vm.wait_for(r"root: writable", timeout=30)  # tmpfs upper over a read-only disk
        vm.wait_for(line_re("HC-E2E-ROOT-DISK"), timeout=30)
        _report("aoe-root initramfs, local virtio disk", vm, "root marker")
        vm.wait_exit(30)


def _aoe_setup(lb: Lab, tmp_path: Path, image: Path, shelf: int = 1, slot: int = 0) -> tuple[
        str, str]:
    """Bridge in namespace 'h' with a tap for QEMU; vblade on a veth end in namespace 's'."""
    h = lb.netns("h")
    br = lb.bridge(h, "br0")
    s = lb.netns("s")
    lb.port(h, br, s, "eth0")  # vblade on the far end of a veth, never on a bridge port
    tap = lb.tap(h, br)
    lb.popen(["vblade", "-r", str(shelf), str(slot), "eth0", str(image)], ns=s,
             log=tmp_path / "vblade.log")
    return h.name, tap


@pytest.mark.parametrize(("nic", "fs"), [("virtio", "ext4"), ("e1000", "ext4"), ("e1000e", "ext4"),
                                        ("rtl8139", "ext4"), ("virtio", "squashfs")])
def test_aoe_root_over_vblade(kernel: KernelTree, net_lab: Lab, tmp_path: Path,
                              nic: str, fs: str) -> None:
    """The root export found over AoE, mounted read-only (its file system told by its magic:
    no hc.rootfstype given) under a tmpfs overlay, a machine-id made from the MAC."""
    img = tmp_path / "export.img"
    shutil.copyfile(artifacts.marker_root_image("HC-E2E-ROOT-AOE") if fs == "ext4"
                    else artifacts.marker_root_squashfs("HC-E2E-ROOT-AOE"), img)
    ns, tap = _aoe_setup(net_lab, tmp_path, img)
    cfg = VmConfig(kernel=kernel.vmlinuz, initrd=artifacts.aoe_root_initramfs(),
                   append=f"{CONSOLE} hc.aoe=e1.0 hc.aoe_wait=30",
                   nics=[Nic(nic, tap=tap, mac="52:54:00:c0:00:01", romfile="")], netns=ns)
    with Vm(cfg, tmp_path) as vm:
        vm.start()
        vm.wait_for(r"hc: .*found /dev/etherd/e1\.0", timeout=120)
        _report(f"aoe-root ({nic}, {fs}) AoE device", vm, "found e1.0")
        vm.wait_for(rf"hc: .*mounted /dev/etherd/e1\.0 \({fs}, ro\)", timeout=60)
        root = vm.wait_for(r"root: / is (.*)", timeout=60)
        assert "overlay" in root.group(1)
        vm.wait_for(r"root: writable", timeout=30)
        # the shared image has no machine-id ("uninitialized"): the init makes one from the MAC
        mid = vm.wait_for(r"root: machine-id (\S*)", timeout=30).group(1)
        want = hashlib.md5(b"homecloud machine-id 52:54:00:c0:00:01\n").hexdigest()
        assert mid == want
        vm.wait_for(line_re("HC-E2E-ROOT-AOE"), timeout=30)
        _report(f"aoe-root ({nic}, {fs}) over vblade", vm, "root marker")
        vm.wait_exit(30)


def test_aoe_root_missing_export_reports_error(kernel: KernelTree, net_lab: Lab,
                                               tmp_path: Path) -> None:
    img = tmp_path / "export.img"
    shutil.copyfile(artifacts.marker_root_image("HC-E2E-ROOT-AOE"), img)
    ns, tap = _aoe_setup(net_lab, tmp_path, img)  # exports e1.0; we ask for e9.9
    cfg = VmConfig(kernel=kernel.vmlinuz, initrd=artifacts.aoe_root_initramfs(),
                   append=f"{CONSOLE} hc.aoe=e9.9 hc.aoe_wait=3",
                   nics=[Nic("virtio", tap=tap, romfile="")], netns=ns)
    with Vm(cfg, tmp_path) as vm:
        vm.start()
        vm.wait_for(r"HC-ERROR: AoE root e9\.9 not found after 3s", timeout=120, fail=None)
        _report("aoe-root missing export", vm, "HC-ERROR")
        vm.wait_exit(30)  # no hc.rescue=1: powers off


UDHCPD_CONF = """\
interface {iface}
start 192.0.2.100
end 192.0.2.120
lease_file {leases}
pidfile {pidfile}
option subnet 255.255.255.0
option router 192.0.2.1
option lease 600
"""


def _root_archives(tmp_path: Path, marker: str) -> dict[str, Path]:
    """The tiny marker root as squashfs and as cpio.gz, in a folder served over HTTP."""
    src = artifacts.busybox_root(tmp_path / "root", marker)
    www = tmp_path / "www"
    www.mkdir()
    subprocess.run(["mksquashfs", str(src), str(www / "root.squashfs"), "-noappend", "-quiet",
                    "-comp", "xz", "-all-root"], check=True, capture_output=True)
    listing = subprocess.run(["find", ".", "-mindepth", "1"], cwd=src, check=True,
                             capture_output=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=src,
                          input=listing, check=True, capture_output=True).stdout
    (www / "root.cpio.gz").write_bytes(gzip.compress(cpio))
    # no suffix: the init must detect "xz-compressed tar" from the content
    subprocess.run(["tar", "-C", str(src), "-cJf", str(www / "root-tar"), "."], check=True,
                   capture_output=True)
    return {"squashfs": www / "root.squashfs", "cpio.gz": www / "root.cpio.gz",
            "tar.xz": www / "root-tar"}


@pytest.mark.parametrize(("kind", "ip"), [("squashfs", "dhcp"), ("cpio.gz", "static"),
                                          ("tar.xz", "static")])
def test_ram_root_over_http(kernel: KernelTree, net_lab: Lab, tmp_path: Path, kind: str,
                            ip: str) -> None:
    archives = _root_archives(tmp_path, "HC-E2E-RAM-ROOT")
    image = archives[kind]
    h = net_lab.netns("h")
    br = net_lab.bridge(h, "br0", addr="192.0.2.1/24")
    tap = net_lab.tap(h, br)
    net_lab.popen(["python3", "-m", "http.server", "--bind", "192.0.2.1", "--directory",
                   str(image.parent), "8080"], ns=h, log=tmp_path / "http.log")
    if ip == "dhcp":
        conf = tmp_path / "udhcpd.conf"
        conf.write_text(UDHCPD_CONF.format(iface=br, leases=tmp_path / "leases",
                                           pidfile=tmp_path / "udhcpd.pid"))
        (tmp_path / "leases").write_bytes(b"")
        net_lab.popen(["busybox", "udhcpd", "-f", str(conf)], ns=h, log=tmp_path / "udhcpd.log")
        ipargs = ""
    else:
        ipargs = " hc.ip=192.0.2.50/24,192.0.2.1"
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    append = (f"{CONSOLE} hc.rootfs=http://192.0.2.1:8080/{image.name} "
              f"hc.rootfs_sha256={digest}{ipargs}")
    cfg = VmConfig(kernel=kernel.vmlinuz, initrd=artifacts.ram_root_initramfs(), append=append,
                   nics=[Nic("virtio", tap=tap, romfile="")], netns=h.name)
    with Vm(cfg, tmp_path) as vm:
        vm.start()
        vm.wait_for(r"hc: .*sha256 ok", timeout=120)
        root = vm.wait_for(r"root: / is (.*)", timeout=60)
        assert ("overlay" if kind == "squashfs" else "tmpfs") in root.group(1)
        vm.wait_for(r"root: writable", timeout=30)
        vm.wait_for(line_re("HC-E2E-RAM-ROOT"), timeout=30)
        _report(f"ram-root ({kind}, {ip})", vm, "root marker")
        vm.wait_exit(30)


def test_aoe_root_picks_bootif_interface(kernel: KernelTree, net_lab: Lab,
                                         tmp_path: Path) -> None:
    """Two NICs; the AoE target is behind the second: BOOTIF= (as pxelinux/iPXE pass it) must
    select it instead of the first ethernet interface."""
    img = tmp_path / "export.img"
    shutil.copyfile(artifacts.marker_root_image("HC-E2E-ROOT-AOE"), img)
    ns, tap = _aoe_setup(net_lab, tmp_path, img)
    h = next(n for n in net_lab.namespaces if n.name == ns)
    dead = net_lab.tap(h, net_lab.bridge(h, "br1"))  # nothing behind this one
    mac = "52:54:00:c0:00:02"
    cfg = VmConfig(kernel=kernel.vmlinuz, initrd=artifacts.aoe_root_initramfs(),
                   append=f"{CONSOLE} hc.aoe=e1.0 hc.aoe_wait=20 "
                          f"BOOTIF=01-{mac.replace(':', '-')}",
                   nics=[Nic("virtio", tap=dead, mac="52:54:00:c0:00:01", romfile=""),
                         Nic("virtio", tap=tap, mac=mac, romfile="")], netns=ns)
    with Vm(cfg, tmp_path) as vm:
        vm.start()
        vm.wait_for(r"hc: .*aoe on eth1 ", timeout=120)
        vm.wait_for(line_re("HC-E2E-ROOT-AOE"), timeout=60)
        _report("aoe-root, BOOTIF selects eth1", vm, "root marker")
        vm.wait_exit(30)


def test_xen_dom0_aoe_root_over_vblade(kernel: KernelTree, net_lab: Lab,
                                       tmp_path: Path) -> None:
    """The hnode chain without PXE: Xen -> dom0 kernel -> aoe-root initramfs -> AoE root."""
    img = tmp_path / "export.img"
    shutil.copyfile(artifacts.marker_root_image("HC-E2E-XEN-AOE"), img)
    ns, tap = _aoe_setup(net_lab, tmp_path, img)
    spec = artifacts.xen_spec()
    initrd = multiboot_initrd([
        (kernel.vmlinuz, f"{spec.dom0_cmdline} panic=-1 hc.aoe=e1.0 hc.aoe_wait=30"),
        (artifacts.aoe_root_initramfs(), ""),
    ])
    cfg = VmConfig(memory_mb=1024, kernel=artifacts.xen().xen_elf, initrd=initrd,
                   append=spec.cmdline, netns=ns,
                   nics=[Nic("e1000", tap=tap, mac="52:54:00:c0:00:03", romfile="")])
    with Vm(cfg, tmp_path) as vm:
        vm.start()
        vm.wait_for(r"hc: .*found /dev/etherd/e1\.0", timeout=180)
        root = vm.wait_for(r"root: / is (.*)", timeout=60)
        assert "overlay" in root.group(1)
        vm.wait_for(line_re("HC-E2E-XEN-AOE"), timeout=60)
        _report("xen+dom0 aoe-root (e1000) over vblade", vm, "root marker")
        vm.wait_exit(60)


def test_rescue_shell_on_error(kernel: KernelTree, tmp_path: Path) -> None:
    """hc.rescue=1: the HC-ERROR line, then a shell on the console; exiting it powers off."""
    cfg = VmConfig(kernel=kernel.vmlinuz, initrd=artifacts.aoe_root_initramfs(),
                   append=f"{CONSOLE} hc.root=/dev/nonexistent hc.root_wait=1 hc.rescue=1",
                   serial="socket")
    with Vm(cfg, tmp_path) as vm:
        vm.start()
        vm.wait_for(r"HC-ERROR: root /dev/nonexistent not found after 1s", timeout=120,
                    fail=None)
        vm.wait_for(r"hc: rescue shell", timeout=30)
        vm.send("echo TYPED-$((6*7))\n")
        vm.wait_for(r"^TYPED-42", timeout=30)
        vm.send("exit\n")
        vm.wait_exit(30)

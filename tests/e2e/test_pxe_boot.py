"""A QEMU (TCG) VM with its stock iPXE ROM, on a tap in a test namespace, PXE-boots from
`hcboot serve` alone and runs the kernel + initrd of the role assigned to its MAC.

The artifacts are a Debian kernel and a small marker initramfs made by the test fixtures
(tests/support/artifacts.py), published into a temporary image store in hcbuild's format."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from homecloud.core.manifest import BootInfo
from tests.support import artifacts
from tests.support.hcboot import Served, start_hcboot
from tests.support.images import publish
from tests.support.netns import Lab
from tests.support.qemu import Nic, Vm, VmConfig, line_re

SERVER = "192.0.2.1"
MARKER = "HC-PXE-MARKER-OK"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("pxe")
    kernel = artifacts.debian_kernel()
    initrd = artifacts.marker_initramfs(MARKER)
    images = tmp / "images"
    files: dict[str, Path | bytes] = {"kernel": kernel.vmlinuz, "initrd": initrd}
    cmdline = f"console=ttyS0,115200 panic=-1 hc.marker={MARKER}"
    publish(images, "pxetest", files, BootInfo(kind="linux", loader="ipxe", cmdline=cmdline))
    publish(images, "pxelegacy", files, BootInfo(kind="linux", loader="pxelinux",
                                                 cmdline=cmdline))
    with Lab() as lab:
        ns = lab.netns("srv")
        lab.bridge(ns, "br0", f"{SERVER}/24")
        srv = start_hcboot(lab, ns, "br0", SERVER, tmp / "state", images,
                           "--range", "192.0.2.100-192.0.2.150")
        yield srv


def _vm(served: Served, tmp: Path, mac: str, **kw: object) -> Vm:
    tap = served.lab.tap(served.ns, "br0")
    opts: dict[str, object] = {"boot": "n", "memory_mb": 384, **kw}
    cfg = VmConfig(nics=[Nic("virtio", tap=tap, mac=mac)],
                   netns=served.ns.name, name=f"pxe-{mac[-2:]}", **opts)  # type: ignore[arg-type]
    return Vm(cfg, workdir=tmp)


def test_ipxe_rom_boots_assigned_role_over_http(served: Served, tmp_path: Path) -> None:
    mac = "52:54:00:e2:e0:01"
    served.cli("assign", mac, "pxetest", "--hostname", "pxe1")
    with _vm(served, tmp_path, mac) as vm:
        vm.start()
        vm.wait_for(line_re(MARKER), timeout=240)
    log = served.log_text()
    assert f"{mac}" in log
    # kernel and initrd came over HTTP (the fast path), the script was per node
    assert f"{mac}: iPXE script served" in log
    # HTTP lines name the MAC too (client IP mapped through the DHCP lease)
    assert f"{mac}: HTTP " in log and "/kernel -> 200" in log


def test_pxelinux_path_boots_assigned_role(served: Served, tmp_path: Path) -> None:
    mac = "52:54:00:e2:e0:02"
    served.cli("assign", mac, "pxelegacy")
    with _vm(served, tmp_path, mac) as vm:
        vm.start()
        vm.wait_for(line_re(MARKER), timeout=300)
    assert f"{mac}: pxelinux config served" in served.log_text()


def test_unassigned_machine_is_listed_then_boots_once_assigned(served: Served,
                                                              tmp_path: Path) -> None:
    mac = "52:54:00:e2:e0:03"
    # no role: it gets an address but no boot file; SeaBIOS retries the boot after 1 s
    with _vm(served, tmp_path, mac, no_reboot=False,
             boot="order=n,reboot-timeout=1000") as vm:
        vm.start()
        deadline = time.monotonic() + 180
        while mac not in served.unassigned():
            assert time.monotonic() < deadline, vm.tail()
            time.sleep(1)
        served.cli("assign", mac, "pxetest")  # while the server runs: no restart
        vm.wait_for(line_re(MARKER), timeout=240)
    assert mac not in served.unassigned()


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@pytest.mark.parametrize("nic_rom", ["ovmf-pxe", "ipxe-rom"])
def test_uefi_boots_assigned_role(served: Served, tmp_path: Path, nic_rom: str) -> None:
    """UEFI (OVMF).  ovmf-pxe: the NIC has no option ROM, so the firmware's own PXE client asks
    with option 93 = 7, gets ipxe.efi over TFTP, and that iPXE asks again as iPXE for the
    per-node script over HTTP.  ipxe-rom: QEMU's EFI iPXE ROM is the boot option and asks as
    iPXE (arch 7) at once.  The kernel boots through its EFI stub either way."""
    assert OVMF_CODE.is_file(), "ovmf is installed by .ci/run"
    vars_copy = tmp_path / "OVMF_VARS.fd"
    vars_copy.write_bytes(OVMF_VARS.read_bytes())
    mac = "52:54:00:e2:e0:04" if nic_rom == "ovmf-pxe" else "52:54:00:e2:e0:05"
    served.cli("assign", mac, "pxetest", "--hostname", f"uefi-{nic_rom}")
    pflash = [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
    ]
    tap = served.lab.tap(served.ns, "br0")
    nic = Nic("virtio", tap=tap, mac=mac, romfile="" if nic_rom == "ovmf-pxe" else None)
    cfg = VmConfig(memory_mb=512, nics=[nic], netns=served.ns.name, name=f"uefi-{mac[-2:]}",
                   extra_args=pflash)
    with Vm(cfg, workdir=tmp_path) as vm:
        vm.start()
        vm.wait_for(line_re(MARKER), timeout=480)
        assert "EFI stub" in vm.output()
    log = served.log_text()
    if nic_rom == "ovmf-pxe":
        assert f"{mac}: TFTP" in log and "RRQ ipxe.efi" in log, log[-3000:]
    assert f"{mac}: iPXE script served" in log
    assert f"{mac}: HTTP " in log and "/kernel -> 200" in log

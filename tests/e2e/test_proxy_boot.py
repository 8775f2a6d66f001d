"""ProxyDHCP with a real firmware: dnsmasq is the network's DHCP server (addresses only: no DNS,
no TFTP, no PXE options) and the real ``hcboot serve --mode proxy`` on another host of the same
segment gives the boot file.  A QEMU (TCG) VM PXE-boots the role assigned to its MAC.

Topology: namespace ``srv`` holds the bridge br0 (192.0.2.1/24: hcboot, ProxyDHCP on 67 and
4011, TFTP, HTTP) and the VM's tap; namespace ``dhcp`` (192.0.2.2 on a veth port of br0) runs
dnsmasq with the pool 192.0.2.100-150.

* ipxe-rom: SeaBIOS with QEMU's iPXE NIC ROM.  iPXE takes its address from dnsmasq's offer and
  the boot file (the per-node script URL) from hcboot's ProxyDHCP offer / port-4011 answer.
* ovmf-pxe: UEFI (OVMF) with no NIC ROM: the firmware's own PXE client takes the address from
  dnsmasq and ipxe.efi from hcboot (ProxyDHCP + TFTP); that iPXE asks both servers again and
  fetches the per-node script, kernel and initrd over HTTP.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from homecloud.core.manifest import BootInfo
from tests.support import artifacts
from tests.support.hcboot import Served, start_hcboot
from tests.support.images import publish
from tests.support.netns import Lab, Netns, wait_for
from tests.support.qemu import Nic, Vm, VmConfig, line_re

SERVER = "192.0.2.1"
DHCP_SERVER = "192.0.2.2"
POOL = ("192.0.2.100", "192.0.2.150")
MARKER = "HC-PROXY-MARKER-OK"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@dataclass
class ProxyWorld:
    served: Served
    dhcp_ns: Netns
    dnsmasq_log: Path
    leases: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyWorld]:
    assert shutil.which("dnsmasq"), "dnsmasq-base is installed by .ci/run"
    tmp = tmp_path_factory.mktemp("proxy")
    kernel = artifacts.debian_kernel()
    initrd = artifacts.marker_initramfs(MARKER)
    images = tmp / "images"
    cmdline = f"console=ttyS0,115200 panic=-1 hc.marker={MARKER}"
    publish(images, "pxetest", {"kernel": kernel.vmlinuz, "initrd": initrd},
            BootInfo(kind="linux", loader="ipxe", cmdline=cmdline))
    with Lab() as lab:
        ns = lab.netns("srv")
        lab.bridge(ns, "br0", f"{SERVER}/24")
        dhcp = lab.netns("dhcp")
        lab.port(ns, "br0", dhcp, "eth0")
        lab.addr(dhcp, "eth0", f"{DHCP_SERVER}/24")
        dlog, leases = tmp / "dnsmasq.log", tmp / "dnsmasq.leases"
        # DHCP only: --port=0 turns DNS off; no --enable-tftp, no --dhcp-boot, no --pxe-service
        dq = lab.popen(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                        "--user=root", "--group=root", f"--pid-file={tmp / 'dnsmasq.pid'}",
                        "--interface=eth0", "--bind-interfaces", "--log-facility=-",
                        "--log-dhcp", f"--dhcp-range={POOL[0]},{POOL[1]},255.255.255.0,1h",
                        f"--dhcp-leasefile={leases}", "--dhcp-authoritative"],
                       ns=dhcp, log=dlog)
        wait_for(lambda: "DHCP, IP range" in dlog.read_text(errors="replace")
                 or dq.poll() is not None, 15, what="dnsmasq up")
        assert dq.poll() is None, dlog.read_text()
        # the real CLI; proxy is its default mode, passed explicitly here
        srv = start_hcboot(lab, ns, "br0", SERVER, tmp / "state", images, mode="proxy")
        yield ProxyWorld(srv, dhcp, dlog, leases)


def _acked(w: ProxyWorld, mac: str) -> str | None:
    """The address dnsmasq ACKed to ``mac`` (its log), or None."""
    m = re.findall(rf"DHCPACK\(eth0\) (\S+) {re.escape(mac)}", w.dnsmasq_log.read_text(
        errors="replace"))
    return m[-1] if m else None


@pytest.mark.parametrize("firmware", ["ipxe-rom", "ovmf-pxe"])
def test_proxy_mode_boot_beside_dnsmasq(world: ProxyWorld, tmp_path: Path,
                                        firmware: str) -> None:
    mac = "52:54:00:e2:f0:01" if firmware == "ipxe-rom" else "52:54:00:e2:f0:02"
    world.served.cli("assign", mac, "pxetest", "--hostname", f"proxy-{firmware}")
    tap = world.served.lab.tap(world.served.ns, "br0")
    extra: list[str] = []
    if firmware == "ovmf-pxe":
        assert OVMF_CODE.is_file(), "ovmf is installed by .ci/run"
        vars_copy = tmp_path / "OVMF_VARS.fd"
        vars_copy.write_bytes(OVMF_VARS.read_bytes())
        extra = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    nic = Nic("virtio", tap=tap, mac=mac, romfile="" if firmware == "ovmf-pxe" else None)
    cfg = VmConfig(memory_mb=512, nics=[nic], netns=world.served.ns.name,
                   name=f"proxy-{mac[-2:]}", boot="n" if firmware == "ipxe-rom" else None,
                   extra_args=extra)
    with Vm(cfg, workdir=tmp_path) as vm:
        vm.start()
        vm.wait_for(line_re(MARKER), timeout=480 if firmware == "ovmf-pxe" else 300)
    log = world.served.log_text()
    # the address came from dnsmasq, the boot file from hcboot's ProxyDHCP
    ip = _acked(world, mac)
    assert ip is not None and ip.startswith("192.0.2.1"), world.dnsmasq_log.read_text()[-3000:]
    assert re.search(rf"dhcp: DISCOVER from {mac} .*-> OFFER boot ", log), log[-3000:]
    leases = world.served.state / "leases.jsonl"
    assert not leases.exists() or mac not in leases.read_text()  # hcboot leased nothing
    if firmware == "ovmf-pxe":
        assert "RRQ ipxe.efi" in log, log[-3000:]
    assert f"{mac}: iPXE script served to {ip}" in log, log[-3000:]
    assert re.search(rf"HTTP {re.escape(ip)}: GET /images/pxetest/\S+/kernel -> 200", log)
    # dnsmasq gave the address and no boot file (DHCP only)
    dl = world.dnsmasq_log.read_text(errors="replace")
    assert "DHCPACK" in dl and "TFTP root" not in dl, dl[-3000:]
    assert not re.search(r"sent size: *\d+ option: *(43|60|66|67) ", dl), dl[-3000:]

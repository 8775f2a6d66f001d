"""hnode root on AoE with multipath through the aoe driver, booted under QEMU TCG.

The root is a tiny busybox ext4 image (tests/support/artifacts.py) whose init prints a marker and
then loops: drop the page cache, read a 4 MiB blob from the read-only AoE root and check its
sha256, write a copy and a progress line to the tmpfs overlay, print ``progress N ok``.  Any
failed read, wrong checksum or kernel I/O error fails the test.

(a) ``-kernel``/``-initrd`` (Debian kernel + the aoe-root initramfs, hc.aoe=e1.0 aoe_deadsecs=5):
    two real vblade processes, each on the far end of its own veth in its own namespace (s1, s2:
    stand-ins for two storage nodes), export the same shelf.slot from two copies of the image.
    One vblade is killed (by PID) while the VM reads and writes; the aoe driver's multipath
    moves to the other path after about aoe_deadsecs with no I/O error.
(b) the same through ``hcboot serve``: the VM PXE-boots with QEMU's iPXE ROM, gets the kernel,
    the aoe-root initramfs and ``hc.aoe=`` from the inventory's export over HTTP; the two
    exports are served by the real storage agent (homecloud.agents.storage) running in two
    namespaces as two snodes, which download the image from hcboot and run vblade with the
    hnode's MAC as allow-list.  One agent is stopped (by PID) while the VM works.
(b') Xen: the same PXE path with a ``kind: xen`` manifest (Xen + dom0 kernel + aoe-root
    initramfs as multiboot modules); dom0 reaches the marker on the AoE root.

Serial logs stay in the test's tmp_path; boot times are printed (``pytest -s``), not asserted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.kernel import KernelTree
from homecloud.agents.storage import READY_PREFIX
from homecloud.core.ids import Target
from homecloud.core.manifest import BootInfo
from homecloud.core.model import ImageExport
from tests.support import artifacts
from tests.support.agents import ROOT, STORAGE_LAUNCHER, agent_env, storage_agent_argv
from tests.support.builds import ensure_built_all
from tests.support.hcboot import Served, start_hcboot
from tests.support.images import publish
from tests.support.netns import Lab, Netns
from tests.support.qemu import Disk, Nic, Vm, VmConfig, line_re

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or shutil.which("vblade") is None,
    reason="qemu-system-x86 and vblade needed")

CONSOLE = "console=ttyS0,115200n8 panic=-1 quiet"
MARKER = "HC-AOE-ROOT-MULTIPATH-OK"
BLOB_MIB = 4
# anything the kernel or the root's loop prints when I/O goes wrong
IO_FAIL = (r"HC-ERROR:.*|Kernel panic.*|HC-IO-FAIL.*|HC-IO-MISMATCH.*|.*I/O error.*"
           r"|EXT4-fs error.*|.*Remounting filesystem read-only.*")
SERVER = "192.0.2.1"

ROOT_INIT = """#!/bin/busybox sh
# AoE multipath test root: marker, then read (from AoE) / write (overlay) forever
/bin/busybox --install -s /bin
export PATH=/bin
echo "root: / is $(grep ' / ' /proc/mounts)"
echo "root: lower $(grep ' /run/hc/lower ' /proc/mounts)"
echo "{marker}"
want=$(cat /data/blob.sha256)
i=0
while :; do
    i=$((i + 1))
    sync
    echo 3 > /proc/sys/vm/drop_caches
    got=$(sha256sum /data/blob | cut -d' ' -f1) || echo "HC-IO-FAIL read $i"
    [ "$got" = "$want" ] || echo "HC-IO-MISMATCH $i got $got want $want"
    cp /data/blob /var/blob.copy || echo "HC-IO-FAIL write $i"
    echo "$i $(cut -d' ' -f1 /proc/uptime)" >> /var/progress || echo "HC-IO-FAIL write $i"
    echo "progress $i ok $(cut -d' ' -f1 /proc/uptime)"
done
"""


def multipath_root_image(dest_dir: Path) -> Path:
    """ext4 image: busybox root, /sbin/init = ROOT_INIT, /data/blob (+ its sha256)."""
    src = artifacts.busybox_root(dest_dir / "root", MARKER)
    (src / "sbin" / "init").write_text(ROOT_INIT.format(marker=MARKER))
    (src / "var").mkdir(exist_ok=True)
    data = src / "data"
    data.mkdir()
    blob = os.urandom(BLOB_MIB << 20)
    (data / "blob").write_bytes(blob)
    (data / "blob.sha256").write_text(hashlib.sha256(blob).hexdigest() + "\n")
    return artifacts.ext4_image(src, dest_dir / "root.ext4", size_mb=32)


@pytest.fixture(scope="module")
def kernel() -> KernelTree:
    return artifacts.debian_kernel()


@pytest.fixture(scope="module")
def root_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return multipath_root_image(tmp_path_factory.mktemp("aoeroot"))


def _rx_packets(ns: Netns, ifname: str = "eth0") -> int:
    return int(ns.run("cat", f"/sys/class/net/{ifname}/statistics/rx_packets").stdout)


def _progress(vm: Vm) -> int:
    found = re.findall(r"^progress (\d+) ok", vm.output(), re.M)
    return int(found[-1]) if found else 0


def _wait_progress(vm: Vm, n: int, timeout: float) -> float:
    """Wait for ``progress n ok`` (failing on any I/O error line); returns the time taken."""
    t0 = time.monotonic()
    vm.wait_for(rf"^progress {n} ok", timeout=timeout, fail=IO_FAIL)
    return time.monotonic() - t0


def _kill_one_path_and_keep_going(vm: Vm, stop: object, label: str) -> None:
    """The VM is past the marker: let it work, stop one storage path, check it goes on."""
    before = _progress(vm)
    _wait_progress(vm, before + 2, timeout=120)
    n = _progress(vm)
    t_kill = time.monotonic()
    stop()  # type: ignore[operator]
    # the iteration in flight may stall for ~aoe_deadsecs, then it and later ones complete
    _wait_progress(vm, n + 1, timeout=120)
    stall = time.monotonic() - t_kill
    _wait_progress(vm, n + 4, timeout=180)
    out = vm.output()
    assert not re.search(IO_FAIL, out, re.M), re.search(IO_FAIL, out, re.M)
    print(f"\n[aoe multipath] {label}: one path stopped at progress {n}; next iteration done "
          f"{stall:.1f}s later, {_progress(vm)} iterations, no I/O error (log {vm.log_path})")


# ---------------------------------------------------------------- (a) -kernel/-initrd


@dataclass
class TwoPaths:
    lab: Lab
    h: Netns
    s1: Netns
    s2: Netns
    tap: str


@pytest.fixture
def two_paths(tmp_path: Path, root_image: Path) -> Iterator[TwoPaths]:
    with Lab() as lab:
        h = lab.netns("h")
        lab.bridge(h, "br0")
        s1, s2 = lab.netns("s1"), lab.netns("s2")
        lab.port(h, "br0", s1, "eth0")      # vblade on the far end of a veth, never on a port
        lab.port(h, "br0", s2, "eth0")
        tap = lab.tap(h, "br0")
        yield TwoPaths(lab, h, s1, s2, tap)


def test_aoe_root_multipath_survives_a_dead_path(kernel: KernelTree, two_paths: TwoPaths,
                                                 root_image: Path, tmp_path: Path) -> None:
    lab = two_paths.lab
    procs = {}
    for ns in (two_paths.s1, two_paths.s2):
        copy = tmp_path / f"{ns.name}.img"          # each "snode" has its own copy
        shutil.copyfile(root_image, copy)
        procs[ns.name] = lab.popen(["vblade", "-r", "1", "0", "eth0", str(copy)], ns=ns,
                                   log=tmp_path / f"vblade-{ns.name}.log")
    mac = "52:54:00:a0:e1:01"
    cfg = VmConfig(memory_mb=512, kernel=kernel.vmlinuz, initrd=artifacts.aoe_root_initramfs(),
                   append=f"{CONSOLE} hc.aoe=e1.0 hc.aoe_wait=30 aoe_deadsecs=5",
                   nics=[Nic("virtio", tap=two_paths.tap, mac=mac, romfile="")],
                   netns=two_paths.h.name, name="hnode-mp")
    with Vm(cfg, tmp_path) as vm:
        vm.start()
        vm.wait_for(r"hc: .*deadsecs 5", timeout=120)
        vm.wait_for(r"hc: .*found /dev/etherd/e1\.0", timeout=120)
        t_dev = vm.elapsed()
        root = vm.wait_for(r"root: / is (.*)", timeout=60)
        assert "overlay" in root.group(1)
        vm.wait_for(line_re(MARKER), timeout=60)
        t_marker = vm.elapsed()
        print(f"\n[boot time] -kernel aoe-root multipath: /dev/etherd/e1.0 after {t_dev:.1f}s, "
              f"marker after {t_marker:.1f}s wall")
        _wait_progress(vm, 3, timeout=120)
        # both paths carried reads (the driver spreads them over the targets' MACs)
        rx = {ns.name: _rx_packets(ns) for ns in (two_paths.s1, two_paths.s2)}
        assert all(n > 200 for n in rx.values()), rx
        _kill_one_path_and_keep_going(
            vm, lambda: lab.stop(procs[two_paths.s1.name]), "-kernel, vblade killed")
        rx_after = _rx_packets(two_paths.s2)
        assert rx_after > rx[two_paths.s2.name] + 200  # the survivor serves the reads
        vm.stop()


# ---------------------------------------------------------------- (b) PXE via hcboot serve


@dataclass
class Cloud:
    lab: Lab
    srv: Served
    snodes: list[Netns]
    agents: dict[str, subprocess.Popen[bytes]]
    tmp: Path


HNODE_MAC = "52:54:00:a0:e1:11"
XEN_MAC = "52:54:00:a0:e1:12"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, kernel: KernelTree,
          root_image: Path) -> Iterator[Cloud]:
    """hcboot serve on br0; two snodes (namespaces running the real agent, disks = plain
    directories, HC_DISKS=none) export the hnode images to the assigned hnodes."""
    tmp = tmp_path_factory.mktemp("cloud")
    images = tmp / "images"
    initrd = artifacts.aoe_root_initramfs()
    publish(images, "hnode", {"kernel": kernel.vmlinuz, "initrd": initrd, "rootfs": root_image},
            BootInfo(kind="linux", loader="ipxe", root="aoe",
                     cmdline=f"{CONSOLE} aoe_deadsecs=5 hc.aoe_wait=60"))
    spec = artifacts.xen_spec()
    publish(images, "hnodexen", {"xen": artifacts.xen().xen_elf, "kernel": kernel.vmlinuz,
                                 "initrd": initrd, "rootfs": root_image},
            BootInfo(kind="xen", loader="ipxe", root="aoe",
                     cmdline=f"{spec.dom0_cmdline} panic=-1 aoe_deadsecs=5 hc.aoe_wait=60",
                     xen_cmdline=spec.cmdline))
    with Lab() as lab:
        ns = lab.netns("srv")
        lab.bridge(ns, "br0", f"{SERVER}/24")
        srv = start_hcboot(lab, ns, "br0", SERVER, tmp / "state", images,
                           "--range", "192.0.2.100-192.0.2.150")
        srv.set_exports(
            ImageExport(Target(1, 0), role="hnode", consumers=("hnode",)),
            ImageExport(Target(1, 1), role="hnodexen", consumers=("hnodexen",)))
        snodes: list[Netns] = []
        agents: dict[str, subprocess.Popen[bytes]] = {}
        for i in (1, 2):
            sn = lab.netns(f"sn{i}")
            lab.port(ns, "br0", sn, "eth0")
            lab.addr(sn, "eth0", f"192.0.2.{10 + i}/24")
            mac = sn.mac("eth0")
            srv.cli("assign", mac, "snode", "--hostname", f"sn{i}")
            cmdline = tmp / f"cmdline-sn{i}"
            cmdline.write_text(f"BOOTIF=01-{mac.replace(':', '-')} hc.mac={mac} "
                               f"hc.server=http://{SERVER}\n")
            store = tmp / f"store-sn{i}"
            store.mkdir()
            agents[sn.name] = lab.popen(
                storage_agent_argv(), ns=sn, log=tmp / f"agent-sn{i}.log",
                env={**agent_env(), "HC_CMDLINE": str(cmdline), "HC_DISKS": "none",
                     "HC_STORE": str(store), "HC_RUN": str(tmp / f"run-sn{i}"), "HC_POLL": "1",
                     "HC_CONSOLE": "none"})
            snodes.append(sn)
        yield Cloud(lab, srv, snodes, agents, tmp)


def _agent_log(cloud: Cloud, i: int) -> str:
    return (cloud.tmp / f"agent-sn{i}.log").read_text(errors="replace")


def _wait_ready(cloud: Cloud, target: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(re.search(rf"^{re.escape(READY_PREFIX)}\S*{re.escape(target)}", _agent_log(cloud, i),
                         re.M) for i in (1, 2)):
            return
        time.sleep(0.2)
    raise AssertionError(f"agents never exported {target}:\n" + "\n".join(
        _agent_log(cloud, i) for i in (1, 2)))


def _pxe_vm(cloud: Cloud, tmp: Path, mac: str, name: str, memory_mb: int) -> Vm:
    tap = cloud.lab.tap(cloud.lab.namespaces[0], "br0")
    cfg = VmConfig(memory_mb=memory_mb, nics=[Nic("virtio", tap=tap, mac=mac)], boot="n",
                   netns=cloud.lab.namespaces[0].name, name=name)
    return Vm(cfg, workdir=tmp)


def test_pxe_hnode_boots_from_agent_exports_and_survives_a_dead_snode(
        cloud: Cloud, tmp_path: Path) -> None:
    cloud.srv.cli("assign", HNODE_MAC, "hnode", "--hostname", "hn1")
    _wait_ready(cloud, "e1.0")        # the assignment made the hnode a consumer: -m HNODE_MAC
    script = cloud.srv.cli("render", HNODE_MAC, "--server-ip", SERVER)
    assert "hc.aoe=e1.0" in script and "aoe_deadsecs=5" in script
    with _pxe_vm(cloud, tmp_path, HNODE_MAC, "hnode-pxe", 512) as vm:
        vm.start()
        vm.wait_for(r"hc: .*found /dev/etherd/e1\.0", timeout=240)
        t_dev = vm.elapsed()
        vm.wait_for(line_re(MARKER), timeout=120)
        t_marker = vm.elapsed()
        print(f"\n[boot time] PXE (iPXE ROM, hcboot HTTP) aoe-root multipath: e1.0 after "
              f"{t_dev:.1f}s, marker after {t_marker:.1f}s wall")
        _wait_progress(vm, 3, timeout=120)
        rx = {sn.name: _rx_packets(sn) for sn in cloud.snodes}
        assert all(n > 200 for n in rx.values()), rx   # reads went to both snodes
        sn1 = cloud.snodes[0]
        _kill_one_path_and_keep_going(
            vm, lambda: cloud.lab.stop(cloud.agents[sn1.name], timeout=15),
            "PXE, storage agent sn1 stopped")
        assert "export e1.0: stopped" in _agent_log(cloud, 1)
        vm.stop()
    log = cloud.srv.log_text()
    assert f"{HNODE_MAC}: iPXE script served" in log


def test_pxe_xen_dom0_boots_from_the_aoe_root(cloud: Cloud, tmp_path: Path) -> None:
    cloud.srv.cli("assign", XEN_MAC, "hnodexen", "--hostname", "hx1")
    deadline = time.monotonic() + 120      # sn1's agent may be stopped by the test before
    while not re.search(rf"^{re.escape(READY_PREFIX)}\S*e1\.1", _agent_log(cloud, 2), re.M):
        assert time.monotonic() < deadline, _agent_log(cloud, 2)
        time.sleep(0.2)
    script = cloud.srv.cli("render", XEN_MAC, "--server-ip", SERVER)
    assert "hc.aoe=e1.1" in script and "smap=0" in script
    with _pxe_vm(cloud, tmp_path, XEN_MAC, "hnode-xen", 1536) as vm:
        vm.start()
        vm.wait_for(r"Xen version 4\.17", timeout=180)
        t_xen = vm.elapsed()
        vm.wait_for(r"hc: .*found /dev/etherd/e1\.1", timeout=300)
        t_dev = vm.elapsed()
        vm.wait_for(line_re(MARKER), timeout=180)
        t_marker = vm.elapsed()
        _wait_progress(vm, 2, timeout=180)
        print(f"\n[boot time] PXE Xen dom0 aoe-root: Xen after {t_xen:.1f}s, e1.1 after "
              f"{t_dev:.1f}s, marker after {t_marker:.1f}s wall")
        vm.stop()


# ---------------------------------------------------------------- (c) snode VMs -> hnode VM

SNODE_INIT = """#!/bin/busybox sh
# snode test root (in RAM): run the storage agent as the snode image's systemd unit would
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/usr/local/sbin
echo "snode: root up; md: $(grep -c raid1 /proc/mdstat 2>/dev/null) raid1 personality lines"
/usr/local/sbin/hc-storage-agent &
while :; do wait; sleep 1; done
"""


def _copy_with_libs(binary: str, root: Path) -> None:
    """``binary`` (a path on this Debian host) and the shared libraries ldd lists for it."""
    src = Path(shutil.which(binary) or binary)
    files = [src]
    out = subprocess.run(["ldd", str(src)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            files.append(Path(m.group(1)))
    for f in files:
        dst = root / str(f).lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)   # follows symlinks: the real file under the name used


HOST_PYTHON = "/usr/bin/python3.11"   # Debian's, the interpreter the snode image has


def _copy_python_for_the_agent(root: Path) -> None:
    """The host's Debian python3 with the standard-library modules the storage agent imports
    (asked from that interpreter), and the agent's package where the image has it."""
    import importlib.util

    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import homecloud.agents.storage, "
             "encodings.idna; print('\\n'.join(sorted(m.__file__ for m in "
             "list(sys.modules.values()) if getattr(m, '__file__', None))))")
    files = subprocess.run([HOST_PYTHON, "-I", "-c", probe, str(ROOT)], capture_output=True,
                           text=True, check=True).stdout.split()
    _copy_with_libs(HOST_PYTHON, root)
    (root / "usr" / "bin" / "python3").symlink_to("python3.11")
    for f in (Path(x) for x in files):
        if not str(f).startswith("/usr/lib/python3"):
            continue                                     # homecloud itself: below
        if f.suffix == ".so":
            _copy_with_libs(str(f), root)   # its libraries (libssl for _ssl, ...)
        for src in (f, Path(importlib.util.cache_from_source(str(f)))):
            if src.is_file():
                dst = root / str(src).lstrip("/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    lib = root / "usr" / "local" / "lib" / "homecloud" / "homecloud"
    for sub in ("core", "agents"):
        shutil.copytree(ROOT / "homecloud" / sub, lib / sub,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "homecloud" / "__init__.py", lib / "__init__.py")


def snode_root_tar(dest: Path) -> Path:
    """A RAM root for a storage node: busybox, python3 and the agent, vblade, mdadm,
    mkfs.ext4 (tar)."""
    import tarfile

    root = artifacts.busybox_root(dest / "snode-root", "unused")
    (root / "sbin" / "init").write_text(SNODE_INIT)
    agent = root / "usr" / "local" / "sbin" / "hc-storage-agent"
    agent.parent.mkdir(parents=True)
    shutil.copy2(STORAGE_LAUNCHER, agent)
    _copy_python_for_the_agent(root)
    for b in ("vblade", "mdadm", "mkfs.ext4"):
        _copy_with_libs(b, root)
    if Path("/etc/mke2fs.conf").is_file():
        shutil.copy2("/etc/mke2fs.conf", root / "etc" / "mke2fs.conf")
    for d in ("srv", "var", "mnt"):
        (root / d).mkdir(exist_ok=True)
    # uncompressed: the ram-root init runs `tar -xf` on the download and Debian's static
    # busybox tar does not detect gzip by itself (a .tar.gz root fails: "invalid tar magic")
    out = dest / "snode-root.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(root, arcname=".")
    return out


def test_snode_vms_export_the_hnode_root_to_an_hnode_vm(kernel: KernelTree, root_image: Path,
                                                         tmp_path: Path) -> None:
    """Three VMs on one bridge: two snodes PXE-boot the ram-root initramfs + a RAM root that
    runs the agent (two empty virtio disks each: md RAID1), download the hnode image from
    hcboot and export it; an hnode VM PXE-boots onto that AoE root (multipath over both
    snodes) and keeps working when one snode VM is switched off."""
    from builder.initramfs import build_initramfs

    modules = (*artifacts.kernel_spec().modules_for("ram-root"), "virtio_blk", "raid1")
    sn_initrd = build_initramfs(tmp_path / "snode-initrd.img", mode="ram-root", kernel=kernel,
                                modules=modules).path
    images = tmp_path / "images"
    publish(images, "snode", {"kernel": kernel.vmlinuz, "initrd": sn_initrd,
                              "rootfs": snode_root_tar(tmp_path)},
            BootInfo(kind="linux", loader="ipxe", root="ram", cmdline=CONSOLE))
    publish(images, "hnode", {"kernel": kernel.vmlinuz, "initrd": artifacts.aoe_root_initramfs(),
                              "rootfs": root_image},
            BootInfo(kind="linux", loader="ipxe", root="aoe",
                     cmdline=f"{CONSOLE} aoe_deadsecs=5 hc.aoe_wait=60"))
    with Lab() as lab:
        ns = lab.netns("srv")
        lab.bridge(ns, "br0", f"{SERVER}/24")
        srv = start_hcboot(lab, ns, "br0", SERVER, tmp_path / "state", images,
                           "--range", "192.0.2.100-192.0.2.150")
        srv.set_exports(ImageExport(Target(1, 0), role="hnode", consumers=("hnode",)))
        vms: list[Vm] = []
        try:
            for i in (1, 2):
                mac = f"52:54:00:5b:00:0{i}"
                srv.cli("assign", mac, "snode", "--hostname", f"sn{i}")
                disks = []
                for d in (1, 2):
                    p = tmp_path / f"sn{i}-disk{d}.img"
                    with open(p, "wb") as f:
                        f.truncate(128 << 20)
                    disks.append(Disk(p))
                cfg = VmConfig(memory_mb=384, nics=[Nic("virtio", tap=lab.tap(ns, "br0"),
                                                        mac=mac)],
                               disks=disks, boot="n", netns=ns.name, name=f"snode{i}")
                vm = Vm(cfg, workdir=tmp_path)
                vm.start()
                vms.append(vm)
            for vm in vms:
                vm.wait_for(r"hc-storage: exports ready none", timeout=400)
                out = vm.output()
                assert "storage: creating RAID1" in out and "new store on /dev/md" in out, \
                    vm.tail(60)
                print(f"\n[boot time] snode VM {vm.cfg.name}: PXE, RAM root, RAID1, agent "
                      f"ready after {vm.elapsed():.1f}s wall")
            srv.cli("assign", HNODE_MAC, "hnode", "--hostname", "hn1")
            for vm in vms:
                vm.wait_for(r"hc-storage: exports ready e1\.0", timeout=240)
            tap = lab.tap(ns, "br0")
            hcfg = VmConfig(memory_mb=512, nics=[Nic("virtio", tap=tap, mac=HNODE_MAC)],
                            boot="n", netns=ns.name, name="hnode")
            hn = Vm(hcfg, workdir=tmp_path)
            vms.append(hn)
            hn.start()
            hn.wait_for(r"hc: .*found /dev/etherd/e1\.0", timeout=300)
            hn.wait_for(line_re(MARKER), timeout=180)
            print(f"\n[boot time] hnode VM from snode VMs: marker after {hn.elapsed():.1f}s wall")
            _wait_progress(hn, 3, timeout=180)
            _kill_one_path_and_keep_going(hn, vms[0].stop, "snode VM sn1 switched off")
            reports = srv.cli("nodes")
            assert "exports-ready" in reports, reports
            # sn1 boots again on the same disks: the array and the image are reused
            from dataclasses import replace as dc_replace

            again = Vm(dc_replace(vms[0].cfg, name="snode1-again"), workdir=tmp_path)
            vms.append(again)
            again.start()
            again.wait_for(r"hc-storage: exports ready e1\.0", timeout=400)
            out = again.output()
            assert "storage: assembling" in out and "reusing /dev/md" in out, again.tail(60)
            assert "sha256 ok (not downloaded)" in out and "downloading" not in out
            assert "mkfs" not in out
            print(f"\n[boot time] snode VM sn1 rebooted: array and image reused, exports ready "
                  f"after {again.elapsed():.1f}s wall")
            n = _progress(hn)
            _wait_progress(hn, n + 2, timeout=120)  # the hnode never noticed
        finally:
            for vm in vms:
                vm.stop()


# ---------------------------------------------------------------- (c') the real snode image


@pytest.fixture(scope="module")
def real_snode_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding hcbuild's snode image: ``HC_TEST_SNODE_STORE``, else the session's
    ``hcbuild image --all`` (tests/support/builds.py; already built by the integration tier)."""
    env = os.environ.get("HC_TEST_SNODE_STORE")
    store = Path(env) if env else ensure_built_all(tmp_path_factory)[0]
    manifest = store / "snode" / "current" / "manifest.json"
    assert manifest.is_file(), f"{store}: no snode build"
    assert "hc-aoe-target" in manifest.read_text(), f"{manifest}: snode without hc-aoe-target"
    return store


def test_real_snode_image_exports_the_hnode_root(kernel: KernelTree, root_image: Path,
                                                 tmp_path: Path, real_snode_store: Path) -> None:
    """The snode image built by hcbuild (Debian + systemd in RAM, hc-aoe-target's unit) boots
    over PXE, builds its RAID1, downloads the hnode image, and an hnode VM boots from it."""
    import json

    real = real_snode_store
    cur = real / "snode" / "current"
    doc = json.loads((cur / "manifest.json").read_text())
    images = tmp_path / "images"
    publish(images, "snode", {"kernel": cur / "kernel", "initrd": cur / "initrd"},
            BootInfo(kind="linux", loader="ipxe", root="ram", cmdline=doc["boot"]["cmdline"]))
    publish(images, "hnode", {"kernel": kernel.vmlinuz, "initrd": artifacts.aoe_root_initramfs(),
                              "rootfs": root_image},
            BootInfo(kind="linux", loader="ipxe", root="aoe",
                     cmdline=f"{CONSOLE} aoe_deadsecs=5 hc.aoe_wait=60"))
    with Lab() as lab:
        ns = lab.netns("srv")
        lab.bridge(ns, "br0", f"{SERVER}/24")
        srv = start_hcboot(lab, ns, "br0", SERVER, tmp_path / "state", images,
                           "--range", "192.0.2.100-192.0.2.150")
        srv.set_exports(ImageExport(Target(1, 0), role="hnode", consumers=("hnode",)))
        mac = "52:54:00:5c:00:01"
        srv.cli("assign", mac, "snode", "--hostname", "snreal")
        srv.cli("assign", HNODE_MAC, "hnode", "--hostname", "hn1")
        disks = []
        for d in (1, 2):
            p = tmp_path / f"disk{d}.img"
            with open(p, "wb") as f:
                f.truncate(256 << 20)
            disks.append(Disk(p))
        vms: list[Vm] = []
        try:
            sn = Vm(VmConfig(memory_mb=3072, nics=[Nic("virtio", tap=lab.tap(ns, "br0"),
                                                       mac=mac)],
                             disks=disks, boot="n", netns=ns.name, name="snode-real"),
                    workdir=tmp_path)
            vms.append(sn)
            sn.start()
            sn.wait_for(r"Run /init as init process", timeout=900)
            t_init = sn.elapsed()
            sn.wait_for(r"Started \S*hc-storage-agent", timeout=900)
            t_agent = sn.elapsed()
            sn.wait_for(r"hc-storage: store /dev/md\S+ \(new\) at /srv/hc", timeout=900)
            sn.wait_for(r"hc-storage: exports ready e1\.0", timeout=300)
            print(f"\n[boot time] real snode image (PXE, systemd in RAM, RAID1, download): "
                  f"exports ready after {sn.elapsed():.1f}s wall (/init at {t_init:.1f}s, "
                  f"agent unit started at {t_agent:.1f}s: {sn.elapsed() - t_agent:.1f}s to "
                  "exports ready)")
            hn = Vm(VmConfig(memory_mb=512, nics=[Nic("virtio", tap=lab.tap(ns, "br0"),
                                                      mac=HNODE_MAC)],
                             boot="n", netns=ns.name, name="hnode"), workdir=tmp_path)
            vms.append(hn)
            hn.start()
            hn.wait_for(line_re(MARKER), timeout=300)
            _wait_progress(hn, 2, timeout=180)
            print(f"[boot time] hnode from the real snode: marker after {hn.elapsed():.1f}s")
            assert "exports-ready" in srv.cli("nodes")
            # power-cycle the snode on the same disks: the array (assembled by udev/mdadm or
            # by the agent) and its file system are reused, nothing is formatted again.  The
            # hnode goes first: with one snode its only path would die (I/O errors after
            # aoe_deadsecs, as expected without a second snode).
            hn.stop()
            sn.stop()
            from dataclasses import replace as dc_replace

            again = Vm(dc_replace(sn.cfg, name="snode-real-again"), workdir=tmp_path)
            vms.append(again)
            again.start()
            again.wait_for(r"hc-storage: store /dev/md\S+ \(reused\) at /srv/hc", timeout=900)
            again.wait_for(r"hc-storage: exports ready e1\.0", timeout=300)
            print(f"[boot time] real snode image rebooted: store reused, exports ready after "
                  f"{again.elapsed():.1f}s wall")
        finally:
            for vm in vms:
                vm.stop()

"""QEMU arguments of the lab's VMs (no QEMU runs here: the e2e tier boots them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from homecloud.lab.vm import Disk, Nic, device_args

pytestmark = pytest.mark.unit


def test_virtio_scsi_disks_hang_off_one_controller() -> None:
    argv = device_args([], [Disk(Path("/l/a.img"), iface="virtio-scsi"),
                            Disk(Path("/l/b.img"), iface="virtio-scsi", readonly=True)])
    assert argv == [
        "-device", "virtio-scsi-pci,id=scsi0",
        "-drive", "file=/l/a.img,format=raw,if=none,id=disk0",
        "-device", "scsi-hd,drive=disk0,bus=scsi0.0,scsi-id=0,lun=0",
        "-drive", "file=/l/b.img,format=raw,if=none,id=disk1,readonly=on",
        "-device", "scsi-hd,drive=disk1,bus=scsi0.0,scsi-id=1,lun=0",
    ]


def test_virtio_blk_disks_and_nics() -> None:
    argv = device_args([Nic("virtio", tap="tap0", mac="52:54:00:00:00:01")],
                       [Disk(Path("/l/a.img"), snapshot=True)])
    assert "virtio-scsi-pci,id=scsi0" not in argv
    assert argv[-2:] == ["-drive", "file=/l/a.img,format=raw,if=virtio,index=0,snapshot=on"]
    assert "tap,id=n0,ifname=tap0,script=no,downscript=no" in argv


def test_storage_nodes_get_max_without_avx_and_hnodes_max() -> None:
    from homecloud.lab.vm import VmSpec, build_argv, role_cpu

    # TCG runs OpenSSL's AVX2 SHA-256 2.5x slower than without (vm.CPU_NO_AVX); an hnode
    # needs max's SVM + NPT for PVH guests
    snode = build_argv(VmSpec(name="s", workdir=Path("/l"), cpu=role_cpu("snode")))
    hnode = build_argv(VmSpec(name="h", workdir=Path("/l"), cpu=role_cpu("hnode")))
    cpu = snode[snode.index("-cpu") + 1].split(",")
    assert cpu[0] == "max" and {"avx=off", "avx2=off"} <= set(cpu[1:])
    assert hnode[hnode.index("-cpu") + 1] == "max"
    assert role_cpu("domu") == "max"

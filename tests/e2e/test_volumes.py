"""Volumes and templates on a real storage node: the snode image built by hcbuild (Debian +
systemd in RAM, lvm2, the storage agent) PXE-boots under QEMU TCG with two empty disks, makes
RAID1 + volume group ``hc`` (store LV + thin pool), and the control side
(homecloud.control.volumes, the code behind ``hcboot template``/``hcboot volume``) drives it
through the real ``hcboot serve`` (plans, reports):

- ``template import``: the snode downloads a published build into a read-only thin LV;
- ``volume create`` from the template (a thin snapshot, grown past the template's size), served
  read-write at e10.0 to the hnode stand-in (namespace ``c``, its MAC in the allow-list): the
  test reads it over AoE (the template's bytes, zeros past them), writes sectors through AoE
  (ATA WRITE, acknowledged), reads them back; a second clone still has the template's bytes
  (copy-on-write);
- the snode is killed (QEMU stopped: no clean shutdown) and booted again on the same disks:
  the pool is found again (``reused``), the volume is served again with the written sectors;
- ``volume delete``: the export is gone from an AoE scan and the LV from the snode's report;
  ``template remove`` is refused while a clone exists, naming it; a copy of the written volume
  (``--from volume:web``) has its bytes; once the volumes are deleted the template goes too.
An image export (e1.0, the store LV's file system) is served and verified beside the volumes,
before and after the reboot (not downloaded again).

Everything runs inside namespaces made here; every process is stopped by PID.  Times are
printed (``pytest -s``), not asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from homecloud.aoe import frames as F
from homecloud.aoe.io import AoESocket, ata_request
from homecloud.aoe.scan import ScanTarget, scan
from homecloud.control.contracts import Origin
from homecloud.control.reports import read_reports
from homecloud.control.volumes import Volumes
from homecloud.core.ids import Target
from homecloud.core.manifest import BootInfo
from homecloud.core.model import ImageExport
from homecloud.inventory.yamlfile import YamlFileStore
from tests.e2e.test_aoe_root import real_snode_store  # noqa: F401 (fixture)
from tests.support.aoe_write import write_sectors
from tests.support.hcboot import Served, hcboot_argv, start_hcboot
from tests.support.images import publish
from tests.support.netns import Lab, Netns
from tests.support.qemu import Disk, Nic, Vm, VmConfig

SERVER = "192.0.2.1"
SNODE_MAC = "52:54:00:5c:01:01"
TEMPLATE_MIB = 16
VOLUME_MIB = 32
BOOT = 900   # TCG on a busy 2-core box

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86 needed")


def _scan(c: Netns) -> dict[str, ScanTarget]:
    with AoESocket("c0", netns=c.name) as sock:
        return {str(t.target): t for t in scan(sock, timeout=0.5)}


def _read(c: Netns, target: Target, lba: int, sectors: int = 2) -> bytes:
    with AoESocket("c0", netns=c.name) as sock:
        return ata_request(sock, target, SNODE_MAC, command=F.ATA_READ_SECTORS_EXT, lba=lba,
                           sectors=sectors, timeout=1.0)


def _verify_image(srv: Served, c: Netns) -> None:
    """``hcboot aoe verify``: every byte of e1.0 is the published hnode rootfs."""
    out = srv.cli("aoe", "verify", "-i", "c0", "--netns", c.name, "--target", "e1.0",
                  "--role", "hnode", "--images", str(srv.images), "--json")
    doc = json.loads(out)
    assert doc["ok"], doc


def _wait_scan(c: Netns, target: str, present: bool, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = _scan(c)
        if (target in found) == present:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{target} {'not ' if present else ''}in the scan: {found}")
        time.sleep(1)


def test_template_clone_write_reboot_delete(tmp_path: Path, real_snode_store: Path) -> None:  # noqa: F811
    cur = real_snode_store / "snode" / "current"
    doc = json.loads((cur / "manifest.json").read_text())
    assert any(p.startswith("lvm2=") for p in doc.get("packages", [])), \
        f"{cur}: snode build without lvm2 (rebuild it: hcbuild image snode)"
    images = tmp_path / "images"
    publish(images, "snode", {"kernel": cur / "kernel", "initrd": cur / "initrd"},
            BootInfo(kind="linux", loader="ipxe", root="ram", cmdline=doc["boot"]["cmdline"]))
    tpl_bytes = os.urandom(TEMPLATE_MIB << 20)
    publish(images, "hnode", {"rootfs": os.urandom(8 << 20), "kernel": b"not a kernel"},
            BootInfo(kind="linux", root="aoe"))
    publish(images, "domu", {"rootfs": tpl_bytes, "kernel": b"not a kernel"},
            BootInfo(kind="linux"), build_id="b1")
    steps: list[str] = []

    def progress(s: str) -> None:
        steps.append(s)
        print(f"  {time.strftime('%H:%M:%S')} {s}")

    with Lab() as lab:
        ns, c = lab.netns("srv"), lab.netns("c")
        lab.bridge(ns, "br0", f"{SERVER}/24")
        lab.port(ns, "br0", c, "c0")
        state = tmp_path / "state"
        srv = start_hcboot(lab, ns, "br0", SERVER, state, images,
                           "--range", "192.0.2.100-192.0.2.150")
        srv.cli("assign", SNODE_MAC, "snode", "--hostname", "sn1")
        srv.cli("assign", c.mac("c0"), "hnode", "--hostname", "hn1")
        srv.set_exports(ImageExport(Target(1, 0), role="hnode", consumers=("hnode",)))
        api = Volumes(YamlFileStore(state), state, images, poll=1)
        disks = []
        for d in (1, 2):
            p = tmp_path / f"disk{d}.img"
            with open(p, "wb") as f:
                f.truncate(512 << 20)
            disks.append(Disk(p))
        cfg = VmConfig(memory_mb=2048, nics=[Nic("virtio", tap=lab.tap(ns, "br0"),
                                                  mac=SNODE_MAC)],
                       disks=disks, boot="n", netns=ns.name, name="snode-vol")
        vms: list[Vm] = []
        try:
            sn = Vm(cfg, workdir=tmp_path)
            vms.append(sn)
            sn.start()
            sn.wait_for(r"hc-storage: store /dev/md\S+ \(new\) at /srv/hc", timeout=BOOT)
            # a new store: the image exports first, then the thin pool (no hnode waits on it)
            sn.wait_for(r"hc-storage: exports ready e1\.0", timeout=300)
            sn.wait_for(r"hc-storage: volume pool hc/pool", timeout=120)
            print(f"\n[volumes] snode up with a new pool after {sn.elapsed():.1f}s wall")
            _verify_image(srv, c)

            t0 = time.monotonic()
            t = api.import_template("domu", None, progress, timeout=600)
            print(f"[volumes] template import ({TEMPLATE_MIB} MiB): "
                  f"{time.monotonic() - t0:.1f}s")
            assert (t.name, t.snodes, t.size) == ("domu-b1", ("sn1",), TEMPLATE_MIB << 20)

            t0 = time.monotonic()
            web = api.create("web", VOLUME_MIB << 20, Origin("template", t.name), progress,
                             timeout=300)
            print(f"[volumes] clone created and served: {time.monotonic() - t0:.1f}s")
            assert web.target == Target(10, 0)
            found = _wait_scan(c, "e10.0", True)
            st = found["e10.0"]
            assert st.macs == [SNODE_MAC]
            assert st.size_bytes == VOLUME_MIB << 20
            # the template's bytes, then zeros where the volume grew past it
            for lba in (0, 1000, (TEMPLATE_MIB << 11) - 2):
                assert _read(c, web.target, lba) == tpl_bytes[lba * 512:(lba + 2) * 512], lba
            assert _read(c, web.target, TEMPLATE_MIB << 11) == bytes(1024)

            data = os.urandom(1024)
            with AoESocket("c0", netns=c.name) as sock:
                write_sectors(sock, web.target, SNODE_MAC, 100, data)
                write_sectors(sock, web.target, SNODE_MAC, (TEMPLATE_MIB << 11) + 8, data)
            assert _read(c, web.target, 100) == data
            other = api.create("web2", 0, Origin("template", t.name), progress, timeout=300)
            assert other.target == Target(10, 1)
            _wait_scan(c, "e10.1", True)
            assert _read(c, other.target, 100) == tpl_bytes[100 * 512:102 * 512]   # CoW

            # power cut: QEMU stopped (no shutdown), booted again on the same disks
            sn.stop()
            again = Vm(replace(cfg, name="snode-vol-again"), workdir=tmp_path)
            vms.append(again)
            again.start()
            again.wait_for(r"hc-storage: store /dev/md\S+ \(reused\) at /srv/hc", timeout=BOOT)
            again.wait_for(r"hc-storage: volume pool hc/pool", timeout=60)
            again.wait_for(r"hc-storage: exports ready e1\.0,e10\.0,e10\.1", timeout=300)
            print(f"[volumes] snode rebooted, pool found again, volumes served after "
                  f"{again.elapsed():.1f}s wall")
            _wait_scan(c, "e10.0", True)
            assert _read(c, web.target, 100) == data
            assert _read(c, web.target, (TEMPLATE_MIB << 11) + 8) == data
            assert _read(c, other.target, 100) == tpl_bytes[100 * 512:102 * 512]
            assert "pool: removing" not in again.output()
            assert "template domu-b1: downloading" not in again.output()
            assert "downloading" not in again.output()   # the image export's file is kept too
            _verify_image(srv, c)

            t0 = time.monotonic()
            api.delete("web2", progress, timeout=300)
            print(f"[volumes] volume deleted: {time.monotonic() - t0:.1f}s")
            found = _wait_scan(c, "e10.1", False)
            assert "e10.0" in found
            pool = read_reports(state)[SNODE_MAC]["storage"]["volumes"]
            assert sorted((v["name"], v["kind"], v["origin"]) for v in pool) == [
                ("domu-b1", "template", ""), ("web", "volume", "template:domu-b1")]
            out = srv.cli("volume", "list", "--json")
            assert [v["name"] for v in json.loads(out)] == ["web"]
            out = srv.cli("template", "list", "--json")
            assert [(t["name"], t["snodes"], t["clones"]) for t in json.loads(out)] == [
                ("domu-b1", ["sn1"], ["web"])]
            r = subprocess.run(hcboot_argv(state, images, "template", "remove", "domu-b1"),
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 1
            assert "template domu-b1 is the origin of volume(s) web: delete them first" in \
                r.stderr, r.stderr

            t0 = time.monotonic()
            cp = api.create("web-copy", 0, Origin("volume", "web"), progress, timeout=300)
            print(f"[volumes] copy of a volume created and served: {time.monotonic() - t0:.1f}s")
            # e10.1 is free again: web2's deletion was confirmed
            assert (cp.target, cp.size) == (Target(10, 1), VOLUME_MIB << 20)
            _wait_scan(c, "e10.1", True)
            assert _read(c, cp.target, 100) == data
            assert _read(c, cp.target, 1000) == tpl_bytes[1000 * 512:1002 * 512]
            api.delete("web", progress, timeout=300)
            assert _read(c, cp.target, 100) == data       # the copy does not need its source
            api.delete("web-copy", progress, timeout=300)
            api.remove_template("domu-b1", progress, timeout=300)
            pool = read_reports(state)[SNODE_MAC]["storage"]["volumes"]
            assert pool == []
            assert sorted(_wait_scan(c, "e10.0", False)) == ["e1.0"]
            inv = YamlFileStore(state).snapshot().inventory
            assert (inv.templates, inv.deletions) == ((), ())
        finally:
            for vm in vms:
                vm.stop()

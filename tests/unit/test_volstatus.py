"""``hcboot volumes`` and ``hcboot verify`` (homecloud.control.volstatus): what the storage nodes
report next to what the inventory says.  The storage nodes are the pool doubles of
test_control_volumes (FakeSnode: the real reconciler over LVs kept in memory, real reports in
the real reports.json; LVM itself only runs inside QEMU here)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from homecloud.agents import volumes as V
from homecloud.agents.protocol import ExportStatus, make_report, report_doc
from homecloud.cli import main
from homecloud.control.contracts import Origin
from homecloud.control.reports import read_reports
from homecloud.control.volstatus import strays, verify_volumes, volume_status
from homecloud.core.ids import Target
from homecloud.core.manifest import BootInfo
from homecloud.core.model import Instance
from homecloud.inventory.protocol import update
from tests.support.images import publish
from tests.unit.test_control_volumes import IP_NODES, NODES, FakeSnode, World

pytestmark = pytest.mark.unit


@pytest.fixture()
def world(tmp_path: Path) -> World:
    w = World(tmp_path, [FakeSnode(NODES[0]), FakeSnode(NODES[1])])
    publish(w.images, "domu", {"rootfs": b"r" * 4096, "kernel": b"k"}, BootInfo(), build_id="b1")
    w.settle()
    w.api.import_template("domu", "b1", w.steps.append)
    w.api.create("web", 1 << 20, Origin("template", "domu-b1"), w.steps.append)
    w.api.create("scratch", 8 << 20, Origin("empty"), w.steps.append)
    web = Instance(name="web", template="domu-b1", memory_mb=384, vcpus=1, disk_size=1 << 20,
                   mac="0a:48:43:00:00:05", ip="203.0.113.14",
                   uuid="5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5", volume="web", state="stopped")
    update(w.store, lambda inv: inv.with_instance(web))
    return w


def run(w: World, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["--state-dir", str(w.state), "--images", str(w.images),
                                  *args], catch_exceptions=False)
    return r.exit_code, r.output


def test_volumes_as_reported_with_their_instance_and_replicas(world: World) -> None:
    st = {v.name: v for v in volume_status(world.inv(), read_reports(world.state),
                                            time.time())}
    web, scratch = st["web"], st["scratch"]
    assert (web.target, web.instance, web.origin, web.health) == ("e10.0", "web",
                                                                  "template:domu-b1", "ok")
    assert [(r.snode, r.present, r.export) for r in web.replicas] == [("sn1", True, "served")]
    assert (scratch.instance, scratch.health, scratch.replicas[0].snode) == ("", "ok", "sn2")
    assert verify_volumes(world.inv(), read_reports(world.state), time.time()) == []
    code, out = run(world, "verify")
    assert code == 0 and "verify: ok (2 volume(s), 1 template(s)" in out
    code, out = run(world, "volumes", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["strays"] == []
    assert doc["volumes"][0]["replicas"][0]["snode"] == "sn1"
    assert doc["volumes"][0]["instance"] == "web"
    code, out = run(world, "volumes")
    assert out.splitlines()[0].split()[:5] == ["web", "e10.0", "1.0M", "ok", "instance"]
    assert out.splitlines()[1].strip().startswith("sn1: served (")


def _report(w: World, node: int, exports: tuple[ExportStatus, ...],
            lvs: list[V.LV]) -> None:
    mac = NODES[node].nics[0].mac
    w.reports.put(mac, report_doc(make_report(
        mac, "exports-error" if any(e.state == "failed" for e in exports) else "exports-ready",
        "", {"volume_pool": True}, exports=exports, volumes=V.pool_entries(lvs))))


def test_verify_names_a_failed_export_a_missing_template_and_a_stray(world: World) -> None:
    # sn1: web's export failed and web is gone from its pool; sn2: scratch served, its
    # template gone, and a volume "old" nobody asked for
    _report(world, 0, (ExportStatus(Target(10, 0), "failed", "volume web: thin pool full"),),
            [V.LV("t-domu-b1", 4096)])
    _report(world, 1, (ExportStatus(Target(10, 1), "served"),),
            [V.LV("v-scratch", 8 << 20), V.LV("v-old", 4096)])
    reports = read_reports(world.state)
    problems = verify_volumes(world.inv(), reports, time.time())
    assert problems == [
        "volume web on sn1: export e10.0 failed: volume web: thin pool full",
        "template domu-b1: not in the pool of sn2",
        "volume old on sn2: held by its pool (4096 bytes) but not in the inventory (left "
        "over; nothing deletes it unasked)"]
    assert [(s.snode, s.name, s.deleting) for s in strays(world.inv(), reports)] == [
        ("sn2", "old", False)]
    st = {v.name: v for v in volume_status(world.inv(), reports, time.time())}
    assert (st["web"].health, st["scratch"].health) == ("failed", "ok")
    assert st["web"].replicas[0].present is False
    code, out = run(world, "verify")
    assert code == 1
    assert out.splitlines()[-1] == "verify: 3 problem(s) in 2 volume(s) and 1 template(s)"
    code, out = run(world, "verify", "--json")
    assert code == 1 and json.loads(out) == {"ok": False, "problems": problems}
    code, out = run(world, "volumes")
    assert "not in the inventory: volume old on sn2 (4.0K)" in out
    assert "    sn1: failed, not in its pool (0s ago): volume web: thin pool full" in out
    assert "    ! volume web on sn1: export e10.0 failed: volume web: thin pool full" in out


def test_a_silent_or_stale_storage_node_is_said(world: World) -> None:
    later = time.time() + 3600
    st = {v.name: v for v in volume_status(world.inv(), read_reports(world.state), later)}
    assert st["web"].health == "degraded"
    assert st["web"].problems[-1].startswith("volume web on sn1: its storage agent last "
                                             "reported 36")
    (world.state.parent / "other").mkdir()
    empty = World(world.state.parent / "other", [FakeSnode(NODES[0]), FakeSnode(NODES[1])])
    update(empty.store, lambda inv: inv.with_exports((*inv.exports, world.inv().volume("web"))))
    st2 = volume_status(empty.inv(), read_reports(empty.state), time.time())
    assert st2[0].health == "unknown"
    assert st2[0].problems == ("volume web on sn1: no report from its storage agent",)


def test_a_replicated_volume_shows_both_sides_and_what_drbd_says(tmp_path: Path) -> None:
    w = World(tmp_path, [FakeSnode(IP_NODES[0]), FakeSnode(IP_NODES[1])], IP_NODES)
    w.settle()
    w.api.create("db", 1 << 20, Origin("empty"), w.steps.append, replicas=2)

    def side(node: int, state: str, cs: str, ro: str, ds: str, **more: object) -> None:
        mac = IP_NODES[node].nics[0].mac
        r, pr = ro.split("/")
        d, pd = ds.split("/")
        entry = {"name": "db", "kind": "volume", "size": 1 << 20, "origin": "",
                 "drbd": {"minor": 0, "connection": cs, "role": r, "peer_role": pr, "disk": d,
                          "peer_disk": pd, "out_of_sync_kib": 0, **more}}
        w.reports.put(mac, {"version": 1, "node": mac, "state": "exports-ready", "detail": "",
                            "facts": {"volume_pool": True},
                            "exports": [{"target": "e10.0", "state": state, "detail": ""}],
                            "volumes": [entry]})

    def status() -> tuple[str, tuple[str, ...]]:
        v = volume_status(w.inv(), read_reports(w.state), time.time())[0]
        return v.health, v.problems

    side(0, "served", "Connected", "Primary/Secondary", "UpToDate/UpToDate")
    side(1, "replica", "Connected", "Secondary/Primary", "UpToDate/UpToDate")
    assert status() == ("ok", ())
    code, out = run(w, "volumes")
    assert "    sn1: served (0s ago) drbd0 Connected Primary/Secondary UpToDate/UpToDate" in out
    assert "    sn2: replica (0s ago) drbd0 Connected Secondary/Primary UpToDate/UpToDate" in out
    # the replica's snode died: the primary writes on alone, counting what to resync
    side(0, "served", "WFConnection", "Primary/Unknown", "UpToDate/DUnknown",
         out_of_sync_kib=2048)
    assert status() == ("degraded", (
        "volume db on sn1: DRBD WFConnection: not replicating (its peer is away; 2048 KiB to "
        "resync when it is back)",))
    side(0, "served", "SyncSource", "Primary/Secondary", "UpToDate/Inconsistent",
         synced_percent=41.5)
    assert status()[1] == ("volume db on sn1: DRBD SyncSource: resync at 41.5%",)
    side(1, "replica", "StandAlone", "Secondary/Unknown", "UpToDate/DUnknown")
    assert status()[1][-1].startswith("volume db on sn2: DRBD StandAlone (disk UpToDate): "
                                      "split brain or a refused peer")
    code, out = run(w, "verify")
    assert code == 1 and "split brain" in out

"""The control side of volumes and templates (homecloud.control.volumes) against the real
inventory store, the real plan builder (control/exports.py), the real reports file and the
storage agent's real pool reconciler.  Only LVM itself is simulated (a list of LVs in memory):
the host has no device-mapper; tests/e2e/test_volumes.py runs the real thing in QEMU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from homecloud.agents import protocol as P
from homecloud.agents import volumes as V
from homecloud.agents.protocol import (
    ExportStatus,
    PoolEntry,
    make_report,
    report_doc,
)
from homecloud.control.contracts import Origin
from homecloud.control.exports import plan_for
from homecloud.control.reports import Reports, read_reports
from homecloud.control.volumes import VolumeError, Volumes, free_target, pick_snode
from homecloud.core.errors import InventoryError, NotFound
from homecloud.core.ids import Target
from homecloud.core.manifest import BootInfo, ImageStore
from homecloud.core.model import (
    ImageExport,
    Inventory,
    Nic,
    Node,
    PoolDeletion,
    TemplateImage,
    VolumeExport,
)
from homecloud.inventory.schema import parse_inventory, to_yaml
from homecloud.inventory.yamlfile import YamlFileStore
from tests.support.images import publish

pytestmark = pytest.mark.unit

SN1, SN2 = "52:54:00:5a:00:01", "52:54:00:5a:00:02"
HN1, HN2 = "52:54:00:4b:00:01", "52:54:00:4b:00:02"
NODES = (Node("sn1", "snode", (Nic(SN1),)), Node("sn2", "snode", (Nic(SN2),)),
         Node("hn1", "hnode", (Nic(HN1),)), Node("hn2", "hnode", (Nic(HN2),)))
BASE = "http://198.51.100.1"


class FakeSnode:
    """One storage node's agent as far as the pool goes: reads its plan, runs the pool
    reconciler over LVs kept in memory, posts its report (LVM simulated: no device-mapper)."""

    def __init__(self, node: Node, pool: bool = True, fail: str = "") -> None:
        self.node, self.pool, self.fail = node, pool, fail
        self.lvs: dict[str, V.LV] = {}
        self.log: list[Any] = []
        self.mute = False     # its reports stop arriving (a lost POST, a hung agent)

    def step(self, inv: Inventory, images: Path, reports: Reports) -> None:
        if self.mute:
            return
        plan = plan_for(self.node.mac, inv, ImageStore(images), BASE)
        assert plan is not None
        errors: dict[str, str] = {}
        if self.pool:
            for a in V.reconcile(plan, list(self.lvs.values())):
                self.log.append(a)
                if isinstance(a, V.Fill):
                    if self.fail:
                        errors[a.template.name] = f"template {a.template.name}: {self.fail}"
                        continue
                    self.lvs[f"t-{a.template.name}"] = V.LV(f"t-{a.template.name}",
                                                            a.template.size)
                elif isinstance(a, V.Snapshot):
                    if a.origin_lv not in self.lvs:   # as the agent: its origin failed
                        errors[a.name] = (f"volume {a.name}: its origin template "
                                          f"{a.origin_lv[2:]} could not be made (see its error)")
                        continue
                    size = max(a.size, self.lvs[a.origin_lv].size)
                    self.lvs[f"v-{a.name}"] = V.LV(f"v-{a.name}", size, a.origin_lv)
                elif isinstance(a, V.Create):
                    self.lvs[f"v-{a.name}"] = V.LV(f"v-{a.name}", a.size)
                elif isinstance(a, V.Remove):
                    del self.lvs[a.lv]
                elif isinstance(a, V.Wait):
                    errors[a.name] = f"volume {a.name}: {a.why}"
        statuses = tuple(ExportStatus(e.target, "failed", errors[e.name])
                         if getattr(e, "name", "") in errors else
                         ExportStatus(e.target, "replica") if isinstance(e, P.VolumeExport)
                         and e.drbd is not None and not e.drbd.primary else
                         ExportStatus(e.target, "served")
                         for e in plan.exports)
        entries: tuple[PoolEntry, ...] = V.pool_entries(self.lvs.values())
        links = {e.name: e.drbd for e in plan.exports
                 if isinstance(e, P.VolumeExport) and e.drbd is not None}
        entries = tuple(replace(x, drbd=P.DrbdState(
            links[x.name].minor, "Connected", *(("Primary", "Secondary")
                                                if links[x.name].primary else
                                                ("Secondary", "Primary")),
            "UpToDate", "UpToDate")) if x.name in links else x for x in entries)
        facts = {"volume_pool": self.pool}
        state = "exports-error" if errors else "exports-ready"
        detail = " ".join(f"{m};" for m in errors.values())
        r = make_report(self.node.mac, state, detail, facts, exports=statuses, volumes=entries)
        reports.put(self.node.mac, report_doc(r))


class World:
    def __init__(self, tmp: Path, snodes: list[FakeSnode],
                 nodes: tuple[Node, ...] = NODES) -> None:
        self.state, self.images = tmp / "state", tmp / "images"
        self.state.mkdir()
        self.images.mkdir()
        self.store = YamlFileStore(self.state, ("snode", "hnode", "domu"))
        self.store.compare_and_set("", Inventory(nodes, None, (
            ImageExport(Target(1, 0), "ro", ("hnode",), None, role="hnode"),)))
        self.snodes = snodes
        self.reports = Reports(self.state)
        self.now = 1000.0
        self.steps: list[str] = []
        self.api = Volumes(self.store, self.state, self.images, poll=1, clock=self.clock,
                           sleep=self.sleep)

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        for sn in self.snodes:
            sn.step(self.store.snapshot().inventory, self.images, self.reports)

    def settle(self) -> None:
        self.sleep(0)

    def inv(self) -> Inventory:
        return self.store.snapshot().inventory


@pytest.fixture()
def world(tmp_path: Path) -> World:
    w = World(tmp_path, [FakeSnode(NODES[0]), FakeSnode(NODES[1])])
    publish(w.images, "domu", {"rootfs": b"r" * 4096, "kernel": b"k"}, BootInfo(), build_id="b1")
    w.settle()   # the snodes' first reports: both have a pool
    return w


def test_import_clone_copy_delete_and_remove_a_template(world: World) -> None:
    api, steps = world.api, world.steps
    t = api.import_template("domu", None, steps.append)
    assert (t.name, t.size, t.snodes, t.clones) == ("domu-b1", 4096, ("sn1", "sn2"), ())
    assert steps[0].startswith("template domu-b1: 4096 bytes, sha256 ")
    plan = plan_for(SN1, world.inv(), ImageStore(world.images), BASE)
    assert plan is not None and plan.templates[0].url == f"{BASE}/images/domu/b1/rootfs"

    web = api.create("web", 1 << 20, Origin("template", "domu-b1"), steps.append)
    assert (web.target, web.mode, web.consumers, web.snodes) == (Target(10, 0), "rw",
                                                                 ("hnode",), ("sn1",))
    assert steps[-1] == "volume web: e10.0 served by sn1 (rw, to every hnode)"
    plan = plan_for(SN1, world.inv(), ImageStore(world.images), BASE)
    assert plan is not None
    pv = plan.exports[-1]
    assert (pv.allow, pv.origin_kind, pv.origin) == ((HN1, HN2), "template", "domu-b1")
    # the next empty volume goes to the other storage node (fewest volumes), next slot
    s = api.create("scratch", 8 << 20, Origin("empty"), steps.append)
    assert (s.target, s.snodes) == (Target(10, 1), ("sn2",))
    # a copy lives in its source's pool, at least as big as its source
    c = api.create("web-copy", 0, Origin("volume", "web"), steps.append)
    assert (c.snodes, c.size) == (("sn1",), 1 << 20)
    assert [v.name for v in api.volumes()] == ["web", "scratch", "web-copy"]
    assert api.templates()[0].clones == ("web",)

    with pytest.raises(VolumeError, match=r"template domu-b1 is the origin of volume\(s\) web:"
                                          " delete them first"):
        api.remove_template("domu-b1", steps.append)
    api.delete("web", steps.append)
    assert steps[-2:] == ["volume web: export stopped, deletion asked of sn1",
                          "volume web: deleted on sn1"]
    assert "v-web" not in world.snodes[0].lvs and "v-web-copy" in world.snodes[0].lvs
    assert world.inv().deletions == ()   # dropped once sn1 reported it gone
    api.remove_template("domu-b1", steps.append)
    assert all("t-domu-b1" not in sn.lvs for sn in world.snodes)
    assert world.inv().templates == () and world.inv().deletions == ()
    # the freed slot is used again
    assert api.create("again", 1, Origin("empty"), steps.append).target == Target(10, 0)


def test_refusals_name_what_is_at_fault(world: World) -> None:
    api, say = world.api, world.steps.append
    with pytest.raises(NotFound, match="template nope does not exist"):
        api.create("a", 1, Origin("template", "nope"), say)
    with pytest.raises(NotFound, match=r"volume nope \(the origin\) does not exist"):
        api.create("a", 1, Origin("volume", "nope"), say)
    with pytest.raises(VolumeError, match="volume name 'bad name' is not valid"):
        api.create("bad name", 1, Origin("empty"), say)
    with pytest.raises(VolumeError, match="an empty volume needs a size"):
        api.create("a", 0, Origin("empty"), say)
    api.create("a", 1, Origin("empty"), say)
    with pytest.raises(VolumeError, match=r"volume a already exists \(e10.0 on sn1\)"):
        api.create("a", 1, Origin("empty"), say)
    with pytest.raises(NotFound, match="volume b does not exist"):
        api.delete("b", say)
    with pytest.raises(NotFound, match="no published build x of role domu"):
        api.import_template("domu", "x", say)
    with pytest.raises(NotFound, match="template domu-b1 does not exist"):
        api.remove_template("domu-b1", say)
    with pytest.raises(NotFound, match="no template nope"):
        api.resolve_template("nope")


def test_a_volume_the_snode_cannot_make_fails_with_the_snodes_words(tmp_path: Path) -> None:
    w = World(tmp_path, [FakeSnode(NODES[0], fail="sha256 mismatch for http://x: got 00")])
    publish(w.images, "domu", {"rootfs": b"r" * 4096, "kernel": b"k"}, BootInfo(), build_id="b1")
    w.settle()
    with pytest.raises(VolumeError, match="template domu-b1: sn1 failed: template domu-b1: "
                                          "sha256 mismatch"):
        w.api.import_template("domu", "b1", w.steps.append, timeout=5)
    with pytest.raises(VolumeError, match=r"volume web: sn1 cannot serve e10\.0: volume web: its"
                                          " origin template domu-b1 could not be made"):
        w.api.create("web", 1, Origin("template", "domu-b1"), w.steps.append, timeout=5)


def test_a_template_wait_says_whom_it_waits_on_and_their_last_report(world: World) -> None:
    """A storage node whose reports stop arriving: the wait says so every minute and its
    timeout names the node with its last report (CI once waited 30 silent minutes)."""
    world.snodes[0].mute = True
    with pytest.raises(VolumeError, match=r"template domu-b1: not on sn1 \(its last report "
                                          r"\d+s ago: exports-ready\) within 150s"):
        world.api.import_template("domu", "b1", world.steps.append, timeout=150)
    waits = [x for x in world.steps if "waiting on" in x]
    assert len(waits) == 2 and waits[0].startswith("template domu-b1: waiting on sn1 (its last")
    assert "template domu-b1: present on sn2" in world.steps


def test_no_pool_anywhere_is_refused_naming_each_snode(tmp_path: Path) -> None:
    w = World(tmp_path, [FakeSnode(NODES[0], pool=False)])
    w.settle()
    with pytest.raises(VolumeError, match="no storage node has a volume pool: sn1: it reports"
                                          " no volume pool; sn2: no report from its storage"):
        w.api.create("a", 1, Origin("empty"), w.steps.append)


def test_a_silent_snode_times_out_naming_it_and_the_deletion_stays_asked(
        tmp_path: Path) -> None:
    w = World(tmp_path, [FakeSnode(NODES[0])])
    w.settle()
    w.api.create("a", 1, Origin("empty"), w.steps.append)
    w.snodes.clear()   # sn1 goes quiet
    with pytest.raises(VolumeError, match=r"volume a: sn1 did not confirm|a: sn1 did not"):
        w.api.delete("a", w.steps.append, timeout=3)
    assert [(d.kind, d.name, d.snodes) for d in w.inv().deletions] == [("volume", "a",
                                                                         ("sn1",))]
    with pytest.raises(VolumeError, match="volume a is still being deleted on sn1"):
        w.api.create("a", 1, Origin("empty"), w.steps.append)
    # e10.0 stays taken until sn1 confirms the deletion: b gets the next slot
    with pytest.raises(VolumeError, match=r"volume b: sn1 did not serve e10\.1 within 2s"):
        w.api.create("b", 1, Origin("empty"), w.steps.append, timeout=2)


def test_slot_allocation_skips_every_used_target_and_says_when_full() -> None:
    used = tuple(VolumeExport(Target(10, s), "rw", name=f"v{s}", size=1) for s in range(3))
    inv = Inventory(NODES, None, (*used, ImageExport(Target(10, 4), role="hnode")))
    assert free_target(inv) == Target(10, 3)
    full = Inventory(NODES, None, tuple(VolumeExport(Target(10, s), "rw", name=f"v{s}", size=1)
                                        for s in range(255)))
    assert free_target(full, range(10, 12)) == Target(11, 0)
    with pytest.raises(VolumeError, match=r"no free AoE shelf.slot left .*shelves 10..10"):
        free_target(full, range(10, 11))


def test_placement_prefers_the_snode_that_has_the_template_then_the_emptiest() -> None:
    def rep(pool: bool, templates: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"storage": {"time": 1, "facts": {"volume_pool": pool},
                            "volumes": [{"name": t, "kind": "template", "size": 1}
                                        for t in templates]}}
    inv = Inventory(NODES, None, (VolumeExport(Target(10, 0), "rw", (), ("sn1",), "x", 1),))
    reports = {SN1: rep(True, ("t1",)), SN2: rep(True)}
    assert pick_snode(inv, reports, Origin("template", "t1")).name == "sn1"
    assert pick_snode(inv, reports, Origin("template", "t2")).name == "sn2"
    assert pick_snode(inv, reports, Origin("empty")).name == "sn2"
    assert pick_snode(inv, {SN1: rep(True), SN2: rep(False)}, Origin("empty")).name == "sn1"
    assert pick_snode(inv, reports, Origin("volume", "x")).name == "sn1"


def test_the_storage_report_survives_other_agents_reports(tmp_path: Path) -> None:
    r = Reports(tmp_path)
    doc = report_doc(make_report(SN1, "exports-ready", "e10.0", {"volume_pool": True},
                                 volumes=(PoolEntry("a", "volume", 1),)))
    r.put(SN1, doc)
    r.put(SN1, report_doc(make_report(SN1, "ready", "up")))
    s = read_reports(tmp_path)[SN1]["storage"]
    assert s["volumes"] == [{"name": "a", "kind": "volume", "size": 1, "origin": ""}]
    assert read_reports(tmp_path)[SN1]["state"] == "ready"


def test_plan_deletions_only_for_their_snodes_and_never_of_wanted_ones(tmp_path: Path) -> None:
    inv = Inventory(NODES, None, (VolumeExport(Target(10, 0), "rw", ("hnode",), ("sn1",), "a",
                                               1),),
                    (TemplateImage("t1", "domu", "b1", "rootfs", 10, "ab" * 32),),
                    (PoolDeletion("volume", "old", ("sn1",)), PoolDeletion("volume", "a",
                                                                          ("sn1", "sn2")),
                     PoolDeletion("template", "t0", ("sn2",))))
    p1 = plan_for(SN1, inv, ImageStore(tmp_path), BASE)
    p2 = plan_for(SN2, inv, ImageStore(tmp_path), BASE)
    assert p1 is not None and p2 is not None
    assert [(d.kind, d.name) for d in p1.delete] == [("volume", "old")]
    assert [(d.kind, d.name) for d in p2.delete] == [("volume", "a"), ("template", "t0")]
    assert [t.name for t in p1.templates] == [t.name for t in p2.templates] == ["t1"]
    assert [e.target for e in p1.exports] == [Target(10, 0)] and p2.exports == ()


def test_inventory_yaml_round_trips_volumes_templates_and_deletions(tmp_path: Path) -> None:
    inv = Inventory(NODES, None,
                    (VolumeExport(Target(10, 0), "rw", ("hnode",), ("sn1",), "web", 1 << 30,
                                  "template", "domu-b1"),
                     VolumeExport(Target(10, 1), "rw", ("hnode",), ("sn1",), "e", 4096)),
                    (TemplateImage("domu-b1", "domu", "b1", "rootfs", 4096, "ab" * 32),),
                    (PoolDeletion("volume", "old", ("sn1",), 12.5, Target(10, 7)),
                     PoolDeletion("template", "t0", ("sn1", "sn2"), 13.0)))
    text = to_yaml(inv)
    back = parse_inventory(text, roles=("snode", "hnode", "domu"))
    assert back == replace(inv, nodes=tuple(sorted(NODES, key=lambda n: n.name)))
    doc = yaml.safe_load(text)
    assert doc["exports"][0]["volume"] == {"name": "web", "size": 1 << 30,
                                           "origin": "template:domu-b1"}
    assert "origin" not in doc["exports"][1]["volume"]


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["exports"][0]["volume"].update(origin="snap:x"),
     "exports[0] (e10.0): origin 'snap:x' is not template:NAME or volume:NAME"),
    (lambda d: d["exports"][0]["volume"].update(colour=1),
     "volume must be {name, size, origin?, drbd_minor?, outdated?, keep?}"),
    (lambda d: d["exports"][0]["volume"].update(drbd_minor=0),
     "exports[0] (e10.0): a replicated volume (drbd_minor) needs exactly two snodes: "
     "[primary, replica]"),
    (lambda d: d["exports"][0].update(snodes=["sn1", "sn2"]) or
     d["exports"][0]["volume"].update(drbd_minor=-1),
     "exports[0] (e10.0): drbd_minor -1 must be an integer in 0..57735"),
    (lambda d: d["templates"]["domu-b1"].update(sha256="x"),
     "templates.domu-b1: sha256 'x' is not 64 hex digits"),
    (lambda d: d["templates"]["domu-b1"].pop("file"), "templates.domu-b1: missing key 'file'"),
    (lambda d: d["templates"]["domu-b1"].update(size="big"), "size 'big' is not a number"),
    (lambda d: d["templates"]["domu-b1"].update(extra=1), "unknown key 'extra'"),
    (lambda d: d["templates"].update({"-x": d["templates"]["domu-b1"]}),
     "templates.-x: name '-x' is not a volume/template name"),
    (lambda d: d["deletions"][0].update(kind="export"), "deletions[0]: kind 'export' not one"),
    (lambda d: d["deletions"][0].update(snodes="sn1"), "deletions[0]: snodes must be a list"),
    (lambda d: d.update(deletions={}), "deletions: must be a list"),
    (lambda d: d["deletions"][0].update(target="e1"), "deletions[0]: not an AoE target"),
])
def test_bad_volume_entries_in_the_inventory_name_the_entry(edit: Any, needle: str) -> None:
    inv = Inventory(NODES, None,
                    (VolumeExport(Target(10, 0), "rw", ("hnode",), ("sn1",), "web", 1),),
                    (TemplateImage("domu-b1", "domu", "b1", "rootfs", 4096, "ab" * 32),),
                    (PoolDeletion("volume", "old", ("sn1",)),))
    doc = yaml.safe_load(to_yaml(inv))
    edit(doc)
    with pytest.raises(InventoryError) as ei:
        parse_inventory(yaml.safe_dump(doc), roles=("snode", "hnode", "domu"))
    assert needle in str(ei.value)


IP_NODES = (Node("sn1", "snode", (Nic(SN1, ip="198.51.100.11"),)),
            Node("sn2", "snode", (Nic(SN2, ip="198.51.100.12"),)), *NODES[2:])


def test_a_replicated_volume_lives_on_two_snodes_with_one_primary(tmp_path: Path) -> None:
    w = World(tmp_path, [FakeSnode(IP_NODES[0]), FakeSnode(IP_NODES[1])], IP_NODES)
    publish(w.images, "domu", {"rootfs": b"r" * 4096, "kernel": b"k"}, BootInfo(), build_id="b1")
    w.settle()
    w.api.import_template("domu", "b1", w.steps.append)
    assert w.api.default_replicas() == (2, "replicated: 2 snodes have a volume pool")
    db = w.api.create("db", 1 << 20, Origin("template", "domu-b1"), w.steps.append, replicas=2)
    assert (db.snodes, db.drbd_minor, db.target) == (("sn1", "sn2"), 0, Target(10, 0))
    assert w.steps[-3].startswith("volume db: e10.0 on sn1 replicated to sn2 (DRBD minor 0)")
    assert w.steps[-1] == ("volume db: replica on sn2 (Connected, Secondary/Primary, "
                           "UpToDate/UpToDate)")
    p1 = plan_for(SN1, w.inv(), ImageStore(w.images), BASE)
    p2 = plan_for(SN2, w.inv(), ImageStore(w.images), BASE)
    assert p1 is not None and p2 is not None
    l1, l2 = p1.exports[-1].drbd, p2.exports[-1].drbd   # type: ignore[union-attr]
    assert l1 is not None and l2 is not None
    assert (l1.minor, l1.port, l1.primary, l1.identical) == (0, 7800, True, True)
    assert (l2.primary, l2.hosts) == (False, l1.hosts)
    assert [h.address for h in l1.hosts] == ["198.51.100.11", "198.51.100.12"]
    # the next one: the next minor, the primary on the snode with fewer volumes
    e2 = w.api.create("e2", 1 << 20, Origin("empty"), w.steps.append, replicas=2)
    assert (e2.snodes, e2.drbd_minor) == (("sn2", "sn1"), 1)
    # the inventory keeps it across a reload
    assert YamlFileStore(w.state).snapshot().inventory.volume("db") == db
    # a person resolves a (here pretended) split brain in favour of sn2: it becomes the
    # primary, sn1 the outdated replica; the choice is cleared once both are connected
    w.api.resolve("db", "sn2", w.steps.append)
    assert w.steps[-2] == ("volume db: keeping sn2's data; sn1 discards its writes since the "
                           "split and resyncs from it")
    assert w.steps[-1].startswith("volume db: sn2 and sn1 connected again")
    got = w.inv().volume("db")
    assert got is not None and (got.snodes, got.keep, got.outdated) == (("sn2", "sn1"), None,
                                                                        "sn1")
    with pytest.raises(VolumeError, match="hn1 is not one of its snodes"):
        w.api.resolve("db", "hn1", w.steps.append)
    with pytest.raises(NotFound, match="volume e2x does not exist"):
        w.api.resolve("e2x", "sn1", w.steps.append)
    w.api.delete("db", w.steps.append)
    assert sorted(w.steps[-2:]) == ["volume db: deleted on sn1", "volume db: deleted on sn2"]
    assert "v-db" not in w.snodes[0].lvs and "v-db" not in w.snodes[1].lvs
    assert w.api.create("db2", 1, Origin("empty"), w.steps.append, replicas=2).drbd_minor == 0


def test_replication_refusals_name_what_is_missing(tmp_path: Path) -> None:
    w = World(tmp_path, [FakeSnode(IP_NODES[0]), FakeSnode(IP_NODES[1], pool=False)], IP_NODES)
    w.settle()
    assert w.api.default_replicas() == (1, "not replicated: only sn1 has a volume pool")
    with pytest.raises(VolumeError, match="no storage node besides sn1 has a volume pool for "
                                          "the replica: sn2: it reports no volume pool"):
        w.api.create("a", 1, Origin("empty"), w.steps.append, replicas=2)
    with pytest.raises(VolumeError, match="a copy of a volume cannot be replicated yet"):
        w.api.create("a", 1, Origin("volume", "x"), w.steps.append, replicas=2)
    with pytest.raises(VolumeError, match="3 replicas: 1"):
        w.api.create("a", 1, Origin("empty"), w.steps.append, replicas=3)
    # an snode without a fixed address: the volume waits in the plan, saying why
    (tmp_path / "w2").mkdir()
    w2 = World(tmp_path / "w2", [FakeSnode(NODES[0]), FakeSnode(NODES[1])])
    inv = w2.inv().with_exports((*w2.inv().exports, VolumeExport(
        Target(10, 0), "rw", ("hnode",), ("sn1", "sn2"), name="db", size=1, drbd_minor=0)))
    plan = plan_for(SN1, inv, ImageStore(w2.images), BASE)
    assert plan is not None and plan.pending[-1].reason == (
        "volume db: snode sn1 has no fixed address for the replication link (give its NIC an "
        "ip in the inventory)")

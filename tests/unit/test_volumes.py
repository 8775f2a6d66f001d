"""The storage node's volume pool, without LVM (the host has no device-mapper): the pure
reconciler (plan + the LVs seen -> lvm actions in order), the ``lvs`` reader, the plan's and the
report's volume/template parts, and the store's choice of an LVM disk."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from homecloud.agents import disks as D
from homecloud.agents import volumes as V
from homecloud.agents.common import AgentError
from homecloud.agents.poolproto import DrbdHost, DrbdLink, DrbdState
from homecloud.agents.protocol import (
    Deletion,
    Plan,
    PoolEntry,
    ProtocolError,
    TemplateSpec,
    VolumeExport,
    make_report,
    parse_plan,
    parse_report,
    plan_json,
    report_json,
)
from homecloud.core.ids import Target

pytestmark = pytest.mark.unit

SN = "52:54:00:5a:00:01"
HN = "52:54:00:4b:00:01"
SHA = "ab" * 32
TPL = TemplateSpec("domu-b1", "domu", "b1", 64 << 20, SHA, "http://192.0.2.1/images/domu/b1/rootfs")


def vol(name: str, slot: int, size: int = 128 << 20, kind: str = "empty",
        origin: str = "") -> VolumeExport:
    return VolumeExport(Target(2, slot), "rw", (HN,), name, size, kind, origin)


def plan(*exports: VolumeExport, templates: tuple[TemplateSpec, ...] = (),
         delete: tuple[Deletion, ...] = ()) -> Plan:
    return Plan(node=SN, exports=exports, templates=templates, delete=delete)


# ------------------------------------------------------------------------- the reconciler


def test_an_empty_pool_gets_the_template_first_then_its_clones_in_dependency_order() -> None:
    p = plan(vol("copy", 3, kind="volume", origin="web"),
             vol("web", 1, size=1 << 30, kind="template", origin="domu-b1"),
             vol("scratch", 2), templates=(TPL,))
    assert V.reconcile(p, []) == [
        V.Fill(TPL),
        V.Create("scratch", 128 << 20),
        V.Snapshot("web", "t-domu-b1", 1 << 30),
        V.Snapshot("copy", "v-web", 128 << 20),
    ]


def test_a_pool_that_has_everything_needs_nothing_and_smaller_volumes_grow() -> None:
    p = plan(vol("web", 1, size=1 << 30, kind="template", origin="domu-b1"), templates=(TPL,))
    have = [V.LV("t-domu-b1", 64 << 20, "", "Vwi-a-tz--"),
            V.LV("web", 0), V.LV("v-web", 1 << 30, "t-domu-b1")]
    assert V.reconcile(p, have) == []
    smaller = [have[0], V.LV("v-web", 64 << 20, "t-domu-b1")]
    assert V.reconcile(p, smaller) == [V.Grow("v-web", 1 << 30)]
    bigger = [have[0], V.LV("v-web", 2 << 30, "t-domu-b1")]
    assert V.reconcile(p, bigger) == []   # never shrunk


def test_nothing_is_deleted_because_it_is_missing_from_the_plan() -> None:
    have = [V.LV("t-domu-b1", 64 << 20), V.LV("v-web", 1 << 30, "t-domu-b1"),
            V.LV(V.STORE_LV, 1 << 30), V.LV(V.THIN_POOL, 4 << 30)]
    assert V.reconcile(plan(), have) == []


def test_deletions_volumes_before_templates_only_when_named() -> None:
    have = [V.LV("t-domu-b1", 64 << 20), V.LV("v-web", 1 << 30, "t-domu-b1"),
            V.LV("v-other", 1 << 30)]
    p = plan(delete=(Deletion("template", "domu-b1"), Deletion("volume", "web"),
                     Deletion("volume", "never-there")))
    assert V.reconcile(p, have) == [
        V.Remove("v-web", "volume web deleted by the plan"),
        V.Remove("t-domu-b1", "template domu-b1 deleted by the plan"),
    ]


def test_a_template_with_clones_is_not_deleted_and_the_clones_are_named() -> None:
    have = [V.LV("t-domu-b1", 64 << 20), V.LV("v-web", 1 << 30, "t-domu-b1"),
            V.LV("v-db", 1 << 30, "t-domu-b1")]
    acts = V.reconcile(plan(delete=(Deletion("template", "domu-b1"),)), have)
    assert acts == [V.Refuse(Deletion("template", "domu-b1"),
                             "template domu-b1 still has clones: db, web")]


def test_a_deletion_of_a_volume_the_plan_still_exports_is_refused() -> None:
    have = [V.LV("v-web", 1 << 30)]
    p = Plan(node=SN, exports=(vol("web", 1, size=1 << 30),),
             delete=(Deletion("volume", "web"),))
    acts = V.reconcile(p, have)
    assert acts == [V.Refuse(Deletion("volume", "web"),
                             "volume web is also exported by the plan")]


def test_a_clone_whose_origin_is_missing_waits_and_says_why() -> None:
    p = plan(vol("web", 1, kind="template", origin="domu-b9"),
             vol("a", 2, kind="volume", origin="b"), vol("b", 3, kind="volume", origin="a"))
    acts = V.reconcile(p, [])
    assert acts == [
        V.Wait("a", "its origin volume b is not in this storage node's pool"),
        V.Wait("b", "its origin volume a is not in this storage node's pool"),
        V.Wait("web", "its origin template domu-b9 is not in this storage node's pool"),
    ]


def test_a_leftover_partial_template_is_removed_and_filled_again() -> None:
    have = [V.LV("t-domu-b1.part", 64 << 20)]
    assert V.reconcile(plan(templates=(TPL,)), have) == [
        V.Remove("t-domu-b1.part", "left over from an interrupted template download"),
        V.Fill(TPL),
    ]


def test_a_volume_exported_at_two_targets_is_made_once_at_its_biggest_size() -> None:
    p = plan(vol("web", 1, size=1 << 20), vol("web", 2, size=3 << 20))
    assert V.reconcile(p, []) == [V.Create("web", 3 << 20)]


# ---------------------------------------------------------------------------- lvs output


LVS = """\
  pool|4290772992||twi-aotz--
  store|3435973632||-wi-ao----
  t-domu-b1|67108864||Vri-a-tz--
  v-web|1073741824|t-domu-b1|Vwi-aotz--
  v-copy|1073741824.00|v-web|Vwi-a-tz--
  t-domu-b2.part|67108864||Vwi-a-tz--
"""


def test_lvs_output_is_read_and_the_report_lists_volumes_and_templates() -> None:
    lvs = V.parse_lvs(LVS)
    assert [lv.kind for lv in lvs] == ["other", "other", "template", "volume", "volume",
                                       "partial"]
    assert V.pool_entries(lvs) == (
        PoolEntry("domu-b1", "template", 67108864, ""),
        PoolEntry("copy", "volume", 1073741824, "volume:web"),
        PoolEntry("web", "volume", 1073741824, "template:domu-b1"),
    )


@pytest.mark.parametrize("bad, msg", [
    ("  a|b|c\n", "lvs output line 1: 'a|b|c': expected 4 fields"),
    ("\n  v-x|lots||-wi\n", "lvs output line 2: size 'lots' is not bytes"),
])
def test_lvs_output_that_does_not_parse_names_the_line(bad: str, msg: str) -> None:
    with pytest.raises(AgentError, match="^" + msg.replace("|", r"\|").replace("(", r"\(")):
        V.parse_lvs(bad)


def test_every_action_names_its_volume_or_template() -> None:
    assert [V.subject(a) for a in (V.Fill(TPL), V.Create("a", 1), V.Snapshot("b", "t-x", 1),
                                   V.Grow("v-c", 1), V.Remove("t-d", ""), V.Wait("e", ""),
                                   V.Refuse(Deletion("template", "f"), ""))] == \
        ["domu-b1", "a", "b", "c", "d", "e", "f"]


# ---------------------------------------------------------------------- plan and report


LINK = DrbdLink(3, 7803, True, True, (DrbdHost("sn1", "192.0.2.10"),
                                      DrbdHost("sn2", "192.0.2.11")))


def _plan_doc() -> dict[str, Any]:
    p = plan(vol("web", 1, kind="template", origin="domu-b1"), vol("scratch", 2),
             replace(vol("db", 3), drbd=LINK),
             templates=(TPL,), delete=(Deletion("volume", "old"),))
    doc: dict[str, Any] = json.loads(plan_json(p))
    return doc


def test_plan_templates_delete_and_origins_round_trip() -> None:
    doc = _plan_doc()
    assert doc["exports"][0]["origin"] == {"kind": "template", "name": "domu-b1"}
    assert "origin" not in doc["exports"][1]   # empty: the version-1 form, as before
    assert doc["delete"] == [{"kind": "volume", "name": "old"}]
    p = parse_plan(json.dumps(doc))
    assert p.templates == (TPL,)
    assert p.exports[0] == vol("web", 1, kind="template", origin="domu-b1")
    assert p.exports[2] == replace(vol("db", 3), drbd=LINK)
    assert "drbd" not in doc["exports"][0]   # one copy: no drbd key, as before
    assert parse_plan(plan_json(p)) == p


@pytest.mark.parametrize("edit, msg", [
    (lambda d: d["exports"][0]["origin"].update(kind="snap"),
     "plan.exports[0].origin.kind: 'snap' is not one of template, volume, empty"),
    (lambda d: d["exports"][0]["origin"].update(name="-x"),
     "plan.exports[0].origin.name: '-x' is not a name"),
    (lambda d: d["exports"][0]["origin"].pop("name"), "plan.exports[0].origin.name: missing"),
    (lambda d: d["exports"][0].update(origin={"kind": "volume", "name": "web"}),
     "plan.exports[0].origin.name: volume web cannot be its own origin"),
    (lambda d: d["exports"][0].update(origin={"kind": "empty", "name": "x"}),
     "plan.exports[0].origin.name: an empty volume has no origin name"),
    (lambda d: d["exports"][0]["origin"].update(extra=1),
     "plan.exports[0].origin.extra: unknown key"),
    (lambda d: d["templates"][0].update(sha256="xyz"), "plan.templates[0].sha256: not 64 hex"),
    (lambda d: d["templates"][0].update(url="ftp://x"), "plan.templates[0].url: not an http"),
    (lambda d: d["templates"][0].update(size=0), "plan.templates[0].size: 0 out of range"),
    (lambda d: d["templates"][0].pop("role"), "plan.templates[0].role: missing"),
    (lambda d: d["templates"].append(dict(d["templates"][0])),
     "plan.templates[1].name: domu-b1 already in templates[0]"),
    (lambda d: d.update(templates={}), "plan.templates: must be a list, got object"),
    (lambda d: d["delete"][0].update(kind="export"),
     "plan.delete[0].kind: 'export' is not one of volume, template"),
    (lambda d: d["delete"][0].update(name="web"),
     "plan.delete[0].name: volume web is both deleted and wanted (exports[0])"),
    (lambda d: d["delete"].append({"kind": "template", "name": "domu-b1"}),
     "plan.delete[1].name: template domu-b1 is both deleted and wanted (templates[0])"),
    (lambda d: d["delete"][0].update(why="x"), "plan.delete[0].why: unknown key"),
    (lambda d: d["exports"][2]["drbd"].update(minor=1 << 16),
     "plan.exports[2].drbd.minor: 65536 out of range"),
    (lambda d: d["exports"][2]["drbd"].update(port=80),
     "plan.exports[2].drbd.port: 80 out of range"),
    (lambda d: d["exports"][2]["drbd"].update(primary="yes"),
     "plan.exports[2].drbd.primary: must be true or false"),
    (lambda d: d["exports"][2]["drbd"]["hosts"].pop(),
     "plan.exports[2].drbd.hosts: exactly two snodes, got 1"),
    (lambda d: d["exports"][2]["drbd"]["hosts"][1].update(host="Bad_Name"),
     "plan.exports[2].drbd.hosts[1].host: 'Bad_Name' is not a host name"),
    (lambda d: d["exports"][2]["drbd"]["hosts"][1].update(address="127.0.0.1"),
     "plan.exports[2].drbd.hosts[1].address: 127.0.0.1 cannot be a replication peer"),
    (lambda d: d["exports"][2]["drbd"]["hosts"][1].update(address="sn2"),
     "plan.exports[2].drbd.hosts[1].address: 'sn2' is not an IPv4 address"),
    (lambda d: d["exports"][2]["drbd"]["hosts"][1].update(host="sn1"),
     "plan.exports[2].drbd.hosts: the two replicas must be two snodes"),
    (lambda d: d["exports"][2]["drbd"].update(fencing=True),
     "plan.exports[2].drbd.fencing: unknown key"),
])
def test_bad_volume_parts_of_a_plan_name_the_field(edit: Any, msg: str) -> None:
    doc = _plan_doc()
    edit(doc)
    with pytest.raises(ProtocolError) as ei:
        parse_plan(json.dumps(doc))
    assert str(ei.value).startswith(msg), str(ei.value)


def test_report_pool_entries_round_trip_and_bad_ones_name_the_field() -> None:
    entries = (PoolEntry("domu-b1", "template", 64 << 20),
               PoolEntry("web", "volume", 1 << 30, "template:domu-b1",
                         DrbdState(3, "SyncSource", "Primary", "Secondary", "UpToDate",
                                   "Inconsistent", 524288, 37.5)))
    r = make_report(SN, "exports-ready", "e2.1", volumes=entries)
    back = parse_report(report_json(r))
    assert back.volumes == entries
    for edit, msg in [
        (lambda v: v.update(kind="disk"), "report.volumes[1].kind: 'disk' is not one of"),
        (lambda v: v.update(origin="snap:x"),
         "report.volumes[1].origin: 'snap:x' is not template:NAME or volume:NAME"),
        (lambda v: v.update(size=-1), "report.volumes[1].size: -1 out of range"),
        (lambda v: v.pop("name"), "report.volumes[1].name: missing"),
        (lambda v: v["drbd"].update(role="<b>"), "report.volumes[1].drbd.role: '<b>' is not"),
        (lambda v: v["drbd"].update(synced_percent=101),
         "report.volumes[1].drbd.synced_percent: must be a number in 0..100"),
        (lambda v: v["drbd"].update(out_of_sync_kib=-1),
         "report.volumes[1].drbd.out_of_sync_kib: -1 out of range"),
    ]:
        doc = json.loads(report_json(r))
        edit(doc["volumes"][1])
        with pytest.raises(ProtocolError) as ei:
            parse_report(json.dumps(doc))
        assert str(ei.value).startswith(msg), str(ei.value)


# ------------------------------------------------------------------ the store and LVM


def test_a_disk_with_an_lvm_label_is_reused_never_initialised(tmp_path: Path) -> None:
    a, b = "/dev/vdb", "/dev/vdc"
    L = "hc-store"
    assert D.choose([D.Disk(a, lvm_pv=True, in_use=True), D.Disk(b, empty=True)], L, True) == \
        D.Choice("reuse", dev=a)
    head = bytearray(D.HEAD_BYTES)
    head[512:520] = b"LABELONE"
    head[536:544] = b"LVM2 001"
    f = tmp_path / "pv"
    f.write_bytes(bytes(head))
    got = D.look(str(f))
    assert got.lvm_pv and not got.empty
    head[536:544] = b"LVM1 001"
    f.write_bytes(bytes(head))
    assert not D.look(str(f)).lvm_pv


def test_lvm_is_used_only_when_asked_or_possible(tmp_path: Path) -> None:
    misc = tmp_path / "misc"
    misc.write_text(" 58 loop-control\n236 device-mapper\n")
    assert D.have_device_mapper(str(misc))
    misc.write_text(" 58 loop-control\n")
    assert not D.have_device_mapper(str(misc))
    assert D.lvm_wanted("no") == (False, "HC_LVM=no")


def test_a_template_download_says_how_far_it_is_every_busy_every_seconds(tmp_path: Path) -> None:
    """The bytes go through ``download`` (a real file:// URL); the pool turns them into a line
    for its log and for the config node every BUSY_EVERY seconds, not per chunk."""
    from homecloud.agents.files import download

    src, dest = tmp_path / "rootfs", tmp_path / "dev"
    src.write_bytes(b"x" * (3 << 20))
    dest.write_bytes(b"")
    now = [0.0]
    logged: list[str] = []
    told: list[str] = []
    pool = V.Pool(log=logged.append, busy=told.append, clock=lambda: now[0])
    tpl = TemplateSpec("domu-b1", "domu", "b1", 3 << 20, SHA, src.as_uri())
    progress = pool._download_progress(tpl)

    def tick(n: int) -> None:
        now[0] += V.BUSY_EVERY / 2     # each 1 MiB chunk takes half the interval
        progress(n)

    _, n = download(src.as_uri(), dest, 60, into_device=True, progress=tick)
    assert n == 3 << 20 and dest.read_bytes() == src.read_bytes()
    assert told == ["template domu-b1: downloading, 66% of 3145728 bytes"]
    assert logged == ["pool: " + told[0]]


@pytest.mark.parametrize("size", [(3 << 20) + 100, 4095, 0, 5 << 20])
def test_a_download_writes_every_byte_direct_or_through_the_cache(tmp_path: Path,
                                                                  size: int) -> None:
    """Into a device (O_DIRECT where the file system allows it, the unaligned tail through
    the cache) and into a new file (flushed every SYNC_EVERY bytes): the same bytes, hash
    and size, whatever the alignment of the end."""
    import hashlib
    import os

    from homecloud.agents import files as F

    data = os.urandom(size)
    src = tmp_path / "src"
    src.write_bytes(data)
    dev = tmp_path / "dev"
    dev.write_bytes(b"\xff" * (size + 8192))      # a "device": written in place, not cut
    got, n = F.download(src.as_uri(), dev, 60, into_device=True)
    assert (got, n) == (hashlib.sha256(data).hexdigest(), size)
    assert dev.read_bytes()[:size] == data and dev.read_bytes()[size:] == b"\xff" * 8192
    new = tmp_path / "new"
    got2, n2 = F.download(src.as_uri(), new, 60)
    assert (got2, n2, new.read_bytes()) == (got, size, data)

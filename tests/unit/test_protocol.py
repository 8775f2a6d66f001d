"""The agents' wire protocol (homecloud.agents.protocol): plan and report documents round-trip,
and the strict reader names the field at fault."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homecloud.agents.protocol import (
    VERSION,
    ExportStatus,
    ImageExport,
    Pending,
    Plan,
    ProtocolError,
    Report,
    VolumeExport,
    make_report,
    parse_plan,
    parse_report,
    plan_doc,
    plan_json,
    report_json,
)
from homecloud.core.ids import Target

SN = "52:54:00:5a:00:01"
HN = "52:54:00:4b:00:01"
SHA = "0123456789abcdef" * 4

PLAN = Plan(
    node=SN, hostname="sn1", poll=7,
    exports=(
        ImageExport(Target(1, 0), "ro", (HN,), "hnode", "20261204T053021Z-aa9bdb350a50",
                    16 << 20, SHA, "http://192.0.2.1/images/hnode/b/rootfs"),
        VolumeExport(Target(1, 1), "rw", (), "scratch", 8 << 20),
    ),
    pending=(Pending(Target(3, 0), "no published image for role hnodexen"),),
)


def _doc() -> dict[str, Any]:
    return copy.deepcopy(plan_doc(PLAN))


def _err(doc: object) -> str:
    with pytest.raises(ProtocolError) as ei:
        parse_plan(json.dumps(doc))
    return str(ei.value)


def test_plan_round_trips() -> None:
    text = plan_json(PLAN)
    doc = json.loads(text)
    assert doc["version"] == VERSION == 1
    assert doc["exports"][0] == {
        "kind": "image", "target": "e1.0", "mode": "ro", "allow": [HN], "role": "hnode",
        "build": "20261204T053021Z-aa9bdb350a50", "size": 16 << 20, "sha256": SHA,
        "url": "http://192.0.2.1/images/hnode/b/rootfs"}
    assert doc["exports"][1] == {"kind": "volume", "target": "e1.1", "mode": "rw", "allow": [],
                                 "name": "scratch", "size": 8 << 20}
    assert parse_plan(text) == PLAN
    assert parse_plan(text.encode()) == PLAN


def test_plan_reader_normalizes_macs_and_defaults() -> None:
    doc = {"version": 1, "node": "52-54-00-5A-00-01", "exports": [
        {"kind": "volume", "target": "1.2", "mode": "rw", "allow": ["5254.004b.0001", HN],
         "name": "v", "size": 512}]}
    p = parse_plan(json.dumps(doc))
    assert p.node == SN and p.poll == 5 and p.hostname is None and p.pending == ()
    assert p.exports[0] == VolumeExport(Target(1, 2), "rw", (HN,), "v", 512)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["exports"][0].update(sha256="abc"), "plan.exports[0].sha256: not 64 hex digits"),
    (lambda d: d["exports"][0].update(sha256=SHA.upper()),
     "plan.exports[0].sha256: not 64 hex digits"),
    (lambda d: d["exports"][1].update(colour="red"), "plan.exports[1].colour: unknown key"),
    (lambda d: d.update(extra=1), "plan.extra: unknown key"),
    (lambda d: d.update(version=2), "plan.version: unsupported version 2"),
    (lambda d: d.pop("version"), "plan.version: missing"),
    (lambda d: d.update(node="nope"), "plan.node: not a MAC address: 'nope'"),
    (lambda d: d["exports"][0].update(allow=[HN, "zz"]), "plan.exports[0].allow[1]: not a MAC"),
    (lambda d: d["exports"][0].update(target="e1"), "plan.exports[0].target: not an AoE target"),
    (lambda d: d["exports"][0].update(target="e65535.0"), "plan.exports[0].target: AoE target"),
    (lambda d: d["exports"][0].update(mode="wo"), "plan.exports[0].mode: 'wo' is not one of"),
    (lambda d: d["exports"][0].update(kind="drbd"), "plan.exports[0].kind: 'drbd' is not one of"),
    (lambda d: d["exports"][0].update(size=True), "plan.exports[0].size: must be an integer"),
    (lambda d: d["exports"][0].update(size=0), "plan.exports[0].size: 0 out of range"),
    (lambda d: d["exports"][0].update(url="ftp://x/y"), "plan.exports[0].url: not an http"),
    (lambda d: d["exports"][0].pop("role"), "plan.exports[0].role: missing"),
    (lambda d: d["exports"][1].update(name="../etc"), "plan.exports[1].name: '../etc' is not"),
    (lambda d: d["exports"][1].update(sha256=SHA), "plan.exports[1].sha256: unknown key"),
    (lambda d: d["exports"][1].update(target="e1.0"),
     "plan.exports[1].target: e1.0 already exported by exports[0]"),
    (lambda d: d.update(poll=0), "plan.poll: 0 out of range"),
    (lambda d: d.update(exports={}), "plan.exports: must be a list, got object"),
    (lambda d: d["pending"][0].update(why="x"), "plan.pending[0].why: unknown key"),
])
def test_plan_reader_names_the_field(change: Any, message: str) -> None:
    doc = _doc()
    change(doc)
    assert message in _err(doc)


def test_plan_reader_refuses_what_is_not_a_plan() -> None:
    with pytest.raises(ProtocolError, match=r"^plan: not valid JSON"):
        parse_plan("# homecloud plan 1 52:54:00:5a:00:01\n")
    with pytest.raises(ProtocolError, match=r"^plan: must be an object, got list"):
        parse_plan("[]")
    e = _err({**_doc(), "exports": [{"kind": "image"}]})
    assert e == "plan.exports[0].target: missing"


def test_report_round_trips_and_is_checked() -> None:
    r = make_report("52-54-00-5A-00-01", "exports-ready", "e1.0 e1.1",
                    {"xen_version": "4.17", "free_memory_mb": 3012, "load": 0.5, "dom0": True},
                    (ExportStatus(Target(1, 0), "served"),
                     ExportStatus(Target(1, 1), "failed", "sha256 mismatch")))
    assert r.node == SN
    assert parse_report(report_json(r)) == r
    assert json.loads(report_json(r))["version"] == 1
    minimal = parse_report(json.dumps({"version": 1, "node": SN, "state": "ready"}))
    assert minimal == Report(SN, "ready")


@pytest.mark.parametrize(("doc", "message"), [
    ({"state": "dom0-up"}, "report.version: missing"),
    ({"version": 1, "node": SN, "state": "up"}, "report.state: 'up' is not one of"),
    ({"version": 1, "node": SN, "state": "ready", "facts": {"Bad-Name": 1}},
     "report.facts.Bad-Name: fact names are lower_case_words"),
    ({"version": 1, "node": SN, "state": "ready", "facts": {"domains": ["a"]}},
     "report.facts.domains: must be a string, number or boolean, got list"),
    ({"version": 1, "node": SN, "state": "ready", "exports": [{"target": "e1.0",
                                                               "state": "gone"}]},
     "report.exports[0].state: 'gone' is not one of"),
    ({"version": 1, "node": SN, "state": "ready", "detail": 5},
     "report.detail: must be a string, got integer"),
    ({"version": 1, "node": SN, "state": "ready", "extra": None}, "report.extra: unknown key"),
])
def test_report_reader_names_the_field(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        parse_report(json.dumps(doc))
    assert message in str(ei.value)


def test_states_cover_what_the_lab_shows() -> None:
    from homecloud.agents.protocol import STATES
    from homecloud.lab.progress import REPORTED

    assert set(REPORTED) <= set(STATES)


_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
_macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
_targets = st.builds(Target, st.integers(0, 0xFFFE), st.integers(0, 0xFE))
_allow = st.lists(_macs, max_size=3).map(lambda xs: tuple(sorted(set(xs))))
_exports = st.one_of(
    st.builds(ImageExport, _targets, st.sampled_from(["ro", "rw"]), _allow, _names, _names,
              st.integers(1, 1 << 40), st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
              _names.map(lambda n: f"http://192.0.2.1/images/{n}")),
    st.builds(VolumeExport, _targets, st.sampled_from(["ro", "rw"]), _allow, _names,
              st.integers(1, 1 << 40)),
)


@given(node=_macs, exports=st.lists(_exports, max_size=4, unique_by=lambda e: e.target),
       poll=st.integers(1, 3600))
def test_any_plan_round_trips(node: str, exports: list[Any], poll: int) -> None:
    p = Plan(node=node, exports=tuple(exports), poll=poll)
    assert parse_plan(plan_json(p)) == p

"""The agents' wire protocol: the plan the config node serves to a storage node
(``GET /plan/<mac>.json``) and the report every node agent posts (``POST /report/<mac>``).

One format each, JSON, versioned, with one strict reader (:func:`parse_plan`,
:func:`parse_report`) and one writer (:func:`plan_json`, :func:`report_json`).  The reader refuses
unknown keys and names the field at fault: ``plan.exports[2].sha256: not 64 hex digits``.

Plan (version 1)::

    {
      "version": 1,
      "node": "52:54:00:5a:00:01",            # the storage node the plan is for
      "hostname": "sn1",                      # or null
      "poll": 5,                              # seconds between polls of the plan
      "exports": [
        {"kind": "image", "target": "e1.0", "mode": "ro", "allow": ["52:54:00:4b:00:01"],
         "role": "hnode", "build": "20261204T...", "size": 16777216,
         "sha256": "<64 hex>", "url": "http://192.0.2.1/images/hnode/<build>/rootfs"},
        {"kind": "volume", "target": "e1.1", "mode": "rw", "allow": [],
         "name": "scratch", "size": 8388608,
         "origin": {"kind": "template", "name": "domu-20261204T101500Z"},   # optional
         "drbd": {"minor": 3, "port": 7803, "primary": true, "identical": true,  # optional
                  "hosts": [{"host": "sn1", "address": "192.0.2.10"},
                            {"host": "sn2", "address": "192.0.2.11"}]}}
      ],
      "pending": [{"target": "e3.0", "reason": "no published image for role hnodexen"}],
      "templates": [                          # optional: read-only thin LVs to keep
        {"name": "domu-20261204T101500Z", "role": "domu", "build": "20261204T101500Z",
         "size": 1073741824, "sha256": "<64 hex>", "url": "http://192.0.2.1/images/domu/..."}
      ],
      "delete": [{"kind": "volume", "name": "old1"}]    # optional: destroyed volumes/templates
    }

A volume's ``origin`` says where its bytes come from when the storage node creates it: a
copy-on-write snapshot of a template (``template``), of another volume (``volume``), or zeros
(``empty``, the default).  Volumes and templates are deleted ONLY when named in ``delete``: one
missing from a plan is left alone (a half-written inventory must not wipe disks).

``allow`` lists the consumer MACs (vblade ``-m``); an empty list means no consumer is assigned
yet, and the export must not be served (vblade without ``-m`` serves everyone).  ``pending``
names the exports the config node cannot describe yet (no image published), for the agent's log.
An export's ``kind`` selects its type (:class:`ImageExport` | :class:`VolumeExport`).

A volume with ``drbd`` is replicated by DRBD 8.4 between the two ``hosts`` (protocol C): both
snodes keep it and bring the resource up; only the ``primary`` exports it (vblade over
``/dev/drbdMINOR``), the other reports the export as ``replica``.  ``identical``: both sides
start from the same bytes (clones of one template, or zeros), so no full initial sync is run.

Report (version 1)::

    {
      "version": 1,
      "node": "52:54:00:5a:00:01",
      "state": "exports-ready",               # one of STATES
      "detail": "e1.0 e1.1",
      "facts": {"xen_version": "4.17", "free_memory_mb": 3012},   # str | int | float | bool
      "exports": [{"target": "e1.0", "state": "served", "detail": ""}],
      "volumes": [{"name": "web1", "kind": "volume", "size": 4294967296,   # optional
                   "origin": "template:domu-20261204T101500Z",
                   "drbd": {"minor": 3, "connection": "Connected",            # optional
                            "role": "Primary", "peer_role": "Secondary",
                            "disk": "UpToDate", "peer_disk": "UpToDate",
                            "out_of_sync_kib": 0}}]                 # + synced_percent
    }

``volumes`` lists the volumes and templates present in the storage node's pool (``origin``:
``template:NAME``, ``volume:NAME`` or ``""``).

Standard library only: this module ships into the node images.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias, cast

from homecloud.agents.docread import (
    Obj,
    ProtocolError,
    first_places,
    jtype,
    load_json,
    read_name,
    read_sha,
    read_url,
)
from homecloud.agents.poolproto import (
    MAX_POOL_ENTRIES,
    ORIGIN_KINDS,
    POOL_KINDS,
    Deletion,
    DrbdHost,
    DrbdLink,
    DrbdState,
    Mode,
    PoolEntry,
    TemplateSpec,
    VolumeExport,
    deletion_doc,
    pool_entry_doc,
    read_pool_entries,
    read_pool_plan,
    read_volume_export,
    template_doc,
    volume_export_fields,
)
from homecloud.core.ids import BadMac, Target, normalize_mac

#: the names other modules import from here (the volume part lives in poolproto)
__all__ = [
    "DEFAULT_POLL", "EXPORT_STATES", "MAX_DETAIL", "MAX_POOL_ENTRIES", "MODES", "ORIGIN_KINDS",
    "POOL_KINDS", "STATES", "VERSION", "Deletion", "DrbdHost", "DrbdLink", "DrbdState",
    "Export", "ExportState", "ExportStatus",
    "Fact", "ImageExport", "Mode", "Pending", "Plan", "PoolEntry", "ProtocolError", "Report",
    "State", "TemplateSpec", "VolumeExport", "export_doc", "make_report", "parse_plan",
    "parse_report", "plan_doc", "plan_from_doc", "plan_json", "report_doc", "report_from_doc",
    "report_json",
]

VERSION = 1
MODES = ("ro", "rw")
#: every state a node agent reports (bootserver/lab/progress.py shows them)
STATES = ("booting", "ready", "exports-ready", "exports-error", "storage-error", "dom0-up",
          "failed", "leaving")
#: the state of one export in a storage node's report
EXPORT_STATES = ("served", "unassigned", "failed", "replica")
DEFAULT_POLL = 5
MAX_DETAIL = 4096
_FACT_RE = re.compile(r"[a-z][a-z0-9_]*")

State: TypeAlias = Literal["booting", "ready", "exports-ready", "exports-error", "storage-error",
                           "dom0-up", "failed", "leaving"]
ExportState: TypeAlias = Literal["served", "unassigned", "failed", "replica"]
Fact: TypeAlias = "str | int | float | bool"


# ---------------------------------------------------------------------------------- types


@dataclass(frozen=True)
class ImageExport:
    """A read-mostly image the storage node downloads (checked by sha256) and serves."""

    target: Target
    mode: Mode
    allow: tuple[str, ...]
    role: str
    build: str
    size: int
    sha256: str
    url: str
    kind: ClassVar[str] = "image"

    @property
    def source(self) -> str:
        return self.url


Export: TypeAlias = "ImageExport | VolumeExport"


@dataclass(frozen=True)
class Pending:
    """An export the config node knows but cannot describe yet, and why."""

    target: Target
    reason: str


@dataclass(frozen=True)
class Plan:
    node: str
    exports: tuple[Export, ...] = ()
    poll: int = DEFAULT_POLL
    hostname: str | None = None
    pending: tuple[Pending, ...] = ()
    templates: tuple[TemplateSpec, ...] = ()
    delete: tuple[Deletion, ...] = ()

    def export(self, target: Target) -> Export | None:
        return next((e for e in self.exports if e.target == target), None)


@dataclass(frozen=True)
class ExportStatus:
    target: Target
    state: ExportState
    detail: str = ""


@dataclass(frozen=True)
class Report:
    node: str
    state: State
    detail: str = ""
    facts: Mapping[str, Fact] = field(default_factory=dict)
    exports: tuple[ExportStatus, ...] = ()
    volumes: tuple[PoolEntry, ...] = ()


# ----------------------------------------------------------------------------- the reader


def _version(o: Obj) -> None:
    v = o.integer("version", lo=0)
    if v != VERSION:
        raise ProtocolError(o.at("version"), f"unsupported version {v} (this reads {VERSION})")


def _mac_list(o: Obj, key: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, v in enumerate(o.items(key)):
        where = f"{o.at(key)}[{i}]"
        try:
            out.append(normalize_mac(v))
        except BadMac as exc:
            raise ProtocolError(where, str(exc)) from None
    return tuple(sorted(set(out)))


def _export(value: object, where: str) -> Export:
    o = Obj(value, where)
    kind = o.choice("kind", ("image", "volume"))
    target = o.target("target")
    mode = o.choice("mode", MODES)
    allow = _mac_list(o, "allow")
    size = o.integer("size", lo=1)
    exp: Export
    if kind == "image":
        sha = read_sha(o, "sha256")
        url = read_url(o, "url")
        exp = ImageExport(target=target, mode=mode, allow=allow, role=read_name(o, "role"),
                          build=read_name(o, "build"), size=size, sha256=sha, url=url)
    else:
        exp = read_volume_export(o, target, mode, allow, size)
    o.done()
    return exp


def plan_from_doc(doc: object, where: str = "plan") -> Plan:
    o = Obj(doc, where)
    _version(o)
    node = o.mac("node")
    hostname = o.text("hostname", required=False, nullable=True, max_len=253)
    poll = o.integer("poll", required=False, default=DEFAULT_POLL, lo=1, hi=3600)
    exports = tuple(_export(e, f"{o.at('exports')}[{i}]")
                    for i, e in enumerate(o.items("exports")))
    first_places([e.target for e in exports], o.at("exports"), "target",
                 lambda t, j: f"{t} already exported by exports[{j}]")
    pending: list[Pending] = []
    for i, p in enumerate(o.items("pending", required=False)):
        po = Obj(p, f"{o.at('pending')}[{i}]")
        pending.append(Pending(po.target("target"), po.text("reason")))
        po.done()
    templates, delete = read_pool_plan(o, exports)
    o.done()
    return Plan(node=node, exports=exports, poll=poll, hostname=hostname,
                pending=tuple(pending), templates=templates, delete=delete)


def parse_plan(text: str | bytes) -> Plan:
    """The plan in ``text``; :class:`ProtocolError` naming the field at fault."""
    return plan_from_doc(load_json(text, "plan"))


def report_from_doc(doc: object, where: str = "report") -> Report:
    o = Obj(doc, where)
    _version(o)
    node = o.mac("node")
    state = o.choice("state", STATES)
    detail = o.text("detail", required=False, max_len=MAX_DETAIL)
    facts: dict[str, Fact] = {}
    raw = o.raw("facts", required=False)
    if raw is not None:
        fo = Obj(raw, o.at("facts"))
        for k, v in fo.d.items():
            if not _FACT_RE.fullmatch(k) or len(k) > 64:
                raise ProtocolError(fo.at(k), "fact names are lower_case_words")
            if isinstance(v, str):
                if len(v) > MAX_DETAIL:
                    raise ProtocolError(fo.at(k), f"longer than {MAX_DETAIL} characters")
            elif not isinstance(v, (bool, int, float)):
                raise ProtocolError(fo.at(k), "must be a string, number or boolean, got "
                                              f"{jtype(v)}")
            facts[k] = v
    statuses: list[ExportStatus] = []
    for i, s in enumerate(o.items("exports", required=False)):
        so = Obj(s, f"{o.at('exports')}[{i}]")
        statuses.append(ExportStatus(so.target("target"), so.choice("state", EXPORT_STATES),
                                     so.text("detail", required=False, max_len=MAX_DETAIL)))
        so.done()
    volumes = read_pool_entries(o)
    o.done()
    return Report(node=node, state=state, detail=detail, facts=facts, exports=tuple(statuses),
                  volumes=volumes)


def parse_report(text: str | bytes) -> Report:
    """The report in ``text``; :class:`ProtocolError` naming the field at fault."""
    return report_from_doc(load_json(text, "report"))


# ----------------------------------------------------------------------------- the writer


def export_doc(e: Export) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": e.kind, "target": str(e.target), "mode": e.mode,
                           "allow": list(e.allow)}
    if isinstance(e, ImageExport):
        doc.update(role=e.role, build=e.build, size=e.size, sha256=e.sha256, url=e.url)
    else:
        doc.update(volume_export_fields(e))
    return doc


def plan_doc(plan: Plan) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": VERSION, "node": plan.node, "hostname": plan.hostname,
                           "poll": plan.poll, "exports": [export_doc(e) for e in plan.exports]}
    if plan.pending:
        doc["pending"] = [{"target": str(p.target), "reason": p.reason} for p in plan.pending]
    if plan.templates:
        doc["templates"] = [template_doc(t) for t in plan.templates]
    if plan.delete:
        doc["delete"] = [deletion_doc(d) for d in plan.delete]
    return doc


def plan_json(plan: Plan) -> str:
    return json.dumps(plan_doc(plan), indent=1) + "\n"


def report_doc(report: Report) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": VERSION, "node": report.node, "state": report.state,
                           "detail": report.detail, "facts": dict(report.facts)}
    if report.exports:
        doc["exports"] = [{"target": str(s.target), "state": s.state, "detail": s.detail}
                          for s in report.exports]
    if report.volumes:
        doc["volumes"] = [pool_entry_doc(v) for v in report.volumes]
    return doc


def report_json(report: Report) -> str:
    return json.dumps(report_doc(report), sort_keys=True) + "\n"


def make_report(node: str, state: str, detail: str = "",
                facts: Mapping[str, Fact] | None = None,
                exports: tuple[ExportStatus, ...] = (),
                volumes: tuple[PoolEntry, ...] = ()) -> Report:
    """A checked report (the same rules as the reader: a writer cannot send what the config
    node would refuse)."""
    r = Report(node=normalize_mac(node), state=cast(State, state), detail=detail,
               facts=dict(facts or {}), exports=exports, volumes=volumes)
    return report_from_doc(report_doc(r))

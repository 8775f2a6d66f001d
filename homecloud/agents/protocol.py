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
         "origin": {"kind": "template", "name": "domu-20261204T101500Z"}}   # optional
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
An export's ``kind`` selects its type (:class:`ImageExport` | :class:`VolumeExport`); later kinds
(DRBD replicas) are new members of the union.

Report (version 1)::

    {
      "version": 1,
      "node": "52:54:00:5a:00:01",
      "state": "exports-ready",               # one of STATES
      "detail": "e1.0 e1.1",
      "facts": {"xen_version": "4.17", "free_memory_mb": 3012},   # str | int | float | bool
      "exports": [{"target": "e1.0", "state": "served", "detail": ""}],
      "volumes": [{"name": "web1", "kind": "volume", "size": 4294967296,   # optional
                   "origin": "template:domu-20261204T101500Z"}]
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

from homecloud.core.errors import HomecloudError
from homecloud.core.ids import BadMac, BadTarget, Target, normalize_mac

VERSION = 1
MODES = ("ro", "rw")
#: every state a node agent reports (bootserver/lab/progress.py shows them)
STATES = ("booting", "ready", "exports-ready", "exports-error", "storage-error", "dom0-up",
          "failed")
#: the state of one export in a storage node's report
EXPORT_STATES = ("served", "unassigned", "failed")
#: where a new volume's bytes come from; what a pool entry is; what a plan may delete
ORIGIN_KINDS = ("template", "volume", "empty")
POOL_KINDS = ("volume", "template")
MAX_POOL_ENTRIES = 4096
DEFAULT_POLL = 5
MAX_DETAIL = 4096
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FACT_RE = re.compile(r"[a-z][a-z0-9_]*")

Mode: TypeAlias = Literal["ro", "rw"]
State: TypeAlias = Literal["booting", "ready", "exports-ready", "exports-error", "storage-error",
                           "dom0-up", "failed"]
ExportState: TypeAlias = Literal["served", "unassigned", "failed"]
Fact: TypeAlias = "str | int | float | bool"


class ProtocolError(HomecloudError, ValueError):
    """A plan or report that is not valid; ``field`` is the path of the value at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


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


@dataclass(frozen=True)
class VolumeExport:
    """A volume on the storage node (a thin LV in its pool; a sparse file on a store without
    one), created from ``origin_kind``/``origin`` and grown, never shrunk, to ``size``."""

    target: Target
    mode: Mode
    allow: tuple[str, ...]
    name: str
    size: int
    origin_kind: str = "empty"   # one of ORIGIN_KINDS
    origin: str = ""             # the template's or volume's name ("" for empty)
    kind: ClassVar[str] = "volume"

    @property
    def source(self) -> str:
        return self.name


Export: TypeAlias = "ImageExport | VolumeExport"


@dataclass(frozen=True)
class Pending:
    """An export the config node knows but cannot describe yet, and why."""

    target: Target
    reason: str


@dataclass(frozen=True)
class TemplateSpec:
    """A read-only base volume filled from a build's rootfs (downloaded, sha256-checked)."""

    name: str
    role: str
    build: str
    size: int
    sha256: str
    url: str


@dataclass(frozen=True)
class Deletion:
    """A volume or template the control service destroyed: the storage node deletes it."""

    kind: str   # one of POOL_KINDS
    name: str


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
class PoolEntry:
    """A volume or template present in a storage node's pool (its report)."""

    name: str
    kind: str   # one of POOL_KINDS
    size: int
    origin: str = ""   # "template:NAME" | "volume:NAME" | ""


@dataclass(frozen=True)
class Report:
    node: str
    state: State
    detail: str = ""
    facts: Mapping[str, Fact] = field(default_factory=dict)
    exports: tuple[ExportStatus, ...] = ()
    volumes: tuple[PoolEntry, ...] = ()


# ----------------------------------------------------------------------------- the reader


class _Obj:
    """One JSON object being read: typed getters that name the field, and a check that no key
    is left unread."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise ProtocolError(where, f"must be an object, got {_jtype(value)}")
        self.d: dict[str, Any] = value
        self.where = where
        self.seen: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.where}.{key}"

    def raw(self, key: str, required: bool = True) -> object:
        self.seen.add(key)
        if key not in self.d:
            if required:
                raise ProtocolError(self.at(key), "missing")
            return None
        return self.d[key]

    def text(self, key: str, *, required: bool = True, default: str = "",
            nullable: bool = False, max_len: int = 1024) -> Any:
        v = self.raw(key, required)
        if v is None and (nullable or not required):
            return None if nullable else default
        if not isinstance(v, str):
            raise ProtocolError(self.at(key), f"must be a string, got {_jtype(v)}")
        if len(v) > max_len:
            raise ProtocolError(self.at(key), f"longer than {max_len} characters")
        return v

    def integer(self, key: str, *, required: bool = True, default: int = 0, lo: int = 0,
            hi: int | None = None) -> int:
        v = self.raw(key, required)
        if v is None and not required:
            return default
        if not isinstance(v, int) or isinstance(v, bool):
            raise ProtocolError(self.at(key), f"must be an integer, got {_jtype(v)}")
        if v < lo or (hi is not None and v > hi):
            raise ProtocolError(self.at(key), f"{v} out of range ({lo}..{hi if hi else ''})")
        return v

    def choice(self, key: str, choices: tuple[str, ...]) -> Any:
        v = self.text(key)
        if v not in choices:
            raise ProtocolError(self.at(key), f"{v!r} is not one of {', '.join(choices)}")
        return v

    def items(self, key: str, *, required: bool = True) -> list[Any]:
        v = self.raw(key, required)
        if v is None and not required:
            return []
        if not isinstance(v, list):
            raise ProtocolError(self.at(key), f"must be a list, got {_jtype(v)}")
        return v

    def mac(self, key: str) -> str:
        v = self.text(key)
        try:
            return normalize_mac(v)
        except BadMac as exc:
            raise ProtocolError(self.at(key), str(exc)) from None

    def target(self, key: str) -> Target:
        v = self.text(key)
        try:
            return Target.parse(v)
        except BadTarget as exc:
            raise ProtocolError(self.at(key), str(exc)) from None

    def done(self) -> None:
        extra = sorted(set(self.d) - self.seen)
        if extra:
            raise ProtocolError(self.at(extra[0]), "unknown key")


def _jtype(v: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(v), type(v).__name__)


def _load(text: str | bytes, what: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(what, f"not valid JSON: {exc}") from None


def _version(o: _Obj) -> None:
    v = o.integer("version", lo=0)
    if v != VERSION:
        raise ProtocolError(o.at("version"), f"unsupported version {v} (this reads {VERSION})")


def _mac_list(o: _Obj, key: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, v in enumerate(o.items(key)):
        where = f"{o.at(key)}[{i}]"
        try:
            out.append(normalize_mac(v))
        except BadMac as exc:
            raise ProtocolError(where, str(exc)) from None
    return tuple(sorted(set(out)))


def _name(o: _Obj, key: str) -> str:
    v: str = o.text(key, max_len=128)
    if not _NAME_RE.fullmatch(v):
        raise ProtocolError(o.at(key), f"{v!r} is not a name (letters, digits, . _ -; not"
                                       " starting with . _ -)")
    return v


def _export(value: object, where: str) -> Export:
    o = _Obj(value, where)
    kind = o.choice("kind", ("image", "volume"))
    target = o.target("target")
    mode = o.choice("mode", MODES)
    allow = _mac_list(o, "allow")
    size = o.integer("size", lo=1)
    exp: Export
    if kind == "image":
        sha = o.text("sha256")
        if not _SHA_RE.fullmatch(sha):
            raise ProtocolError(o.at("sha256"), "not 64 hex digits")
        url = o.text("url", max_len=4096)
        if not re.match(r"^(https?|file)://\S+$", url):
            raise ProtocolError(o.at("url"), f"not an http(s) or file URL: {url!r}")
        exp = ImageExport(target=target, mode=mode, allow=allow, role=_name(o, "role"),
                          build=_name(o, "build"), size=size, sha256=sha, url=url)
    else:
        name = _name(o, "name")
        okind, oname = "empty", ""
        raw = o.raw("origin", required=False)
        if raw is not None:
            oo = _Obj(raw, o.at("origin"))
            okind = oo.choice("kind", ORIGIN_KINDS)
            if okind != "empty":
                oname = _name(oo, "name")
                if okind == "volume" and oname == name:
                    raise ProtocolError(oo.at("name"), f"volume {name} cannot be its own origin")
            elif oo.text("name", required=False):
                raise ProtocolError(oo.at("name"), "an empty volume has no origin name")
            oo.done()
        exp = VolumeExport(target=target, mode=mode, allow=allow, name=name, size=size,
                           origin_kind=okind, origin=oname)
    o.done()
    return exp


def _sha(o: _Obj, key: str) -> str:
    sha: str = o.text(key)
    if not _SHA_RE.fullmatch(sha):
        raise ProtocolError(o.at(key), "not 64 hex digits")
    return sha


def _url(o: _Obj, key: str) -> str:
    url: str = o.text(key, max_len=4096)
    if not re.match(r"^(https?|file)://\S+$", url):
        raise ProtocolError(o.at(key), f"not an http(s) or file URL: {url!r}")
    return url


def _template(value: object, where: str) -> TemplateSpec:
    o = _Obj(value, where)
    t = TemplateSpec(name=_name(o, "name"), role=_name(o, "role"), build=_name(o, "build"),
                     size=o.integer("size", lo=1), sha256=_sha(o, "sha256"), url=_url(o, "url"))
    o.done()
    return t


def _deletion(value: object, where: str) -> Deletion:
    o = _Obj(value, where)
    d = Deletion(kind=o.choice("kind", POOL_KINDS), name=_name(o, "name"))
    o.done()
    return d


def _pool_entry(value: object, where: str) -> PoolEntry:
    o = _Obj(value, where)
    name, kind = _name(o, "name"), o.choice("kind", POOL_KINDS)
    size = o.integer("size", lo=0)
    origin: str = o.text("origin", required=False, max_len=256)
    if origin:
        k, _, n = origin.partition(":")
        if k not in ("template", "volume") or not _NAME_RE.fullmatch(n):
            raise ProtocolError(o.at("origin"), f"{origin!r} is not template:NAME or"
                                                " volume:NAME")
    o.done()
    return PoolEntry(name, kind, size, origin)


def plan_from_doc(doc: object, where: str = "plan") -> Plan:
    o = _Obj(doc, where)
    _version(o)
    node = o.mac("node")
    hostname = o.text("hostname", required=False, nullable=True, max_len=253)
    poll = o.integer("poll", required=False, default=DEFAULT_POLL, lo=1, hi=3600)
    exports = tuple(_export(e, f"{o.at('exports')}[{i}]")
                    for i, e in enumerate(o.items("exports")))
    seen: dict[Target, int] = {}
    for i, e in enumerate(exports):
        if e.target in seen:
            raise ProtocolError(f"{o.at('exports')}[{i}].target",
                                f"{e.target} already exported by exports[{seen[e.target]}]")
        seen[e.target] = i
    pending: list[Pending] = []
    for i, p in enumerate(o.items("pending", required=False)):
        po = _Obj(p, f"{o.at('pending')}[{i}]")
        pending.append(Pending(po.target("target"), po.text("reason")))
        po.done()
    templates = tuple(_template(t, f"{o.at('templates')}[{i}]")
                      for i, t in enumerate(o.items("templates", required=False)))
    tnames: dict[str, int] = {}
    for i, t in enumerate(templates):
        if t.name in tnames:
            raise ProtocolError(f"{o.at('templates')}[{i}].name",
                                f"{t.name} already in templates[{tnames[t.name]}]")
        tnames[t.name] = i
    vnames = {e.name: i for i, e in enumerate(exports) if isinstance(e, VolumeExport)}
    delete = tuple(_deletion(d, f"{o.at('delete')}[{i}]")
                   for i, d in enumerate(o.items("delete", required=False)))
    for i, d in enumerate(delete):
        keep = tnames if d.kind == "template" else vnames
        if d.name in keep:
            other = "templates" if d.kind == "template" else "exports"
            raise ProtocolError(f"{o.at('delete')}[{i}].name", f"{d.kind} {d.name} is both "
                                f"deleted and wanted ({other}[{keep[d.name]}])")
    o.done()
    return Plan(node=node, exports=exports, poll=poll, hostname=hostname,
                pending=tuple(pending), templates=templates, delete=delete)


def parse_plan(text: str | bytes) -> Plan:
    """The plan in ``text``; :class:`ProtocolError` naming the field at fault."""
    return plan_from_doc(_load(text, "plan"))


def report_from_doc(doc: object, where: str = "report") -> Report:
    o = _Obj(doc, where)
    _version(o)
    node = o.mac("node")
    state = o.choice("state", STATES)
    detail = o.text("detail", required=False, max_len=MAX_DETAIL)
    facts: dict[str, Fact] = {}
    raw = o.raw("facts", required=False)
    if raw is not None:
        fo = _Obj(raw, o.at("facts"))
        for k, v in fo.d.items():
            if not _FACT_RE.fullmatch(k) or len(k) > 64:
                raise ProtocolError(fo.at(k), "fact names are lower_case_words")
            if isinstance(v, str):
                if len(v) > MAX_DETAIL:
                    raise ProtocolError(fo.at(k), f"longer than {MAX_DETAIL} characters")
            elif not isinstance(v, (bool, int, float)):
                raise ProtocolError(fo.at(k), "must be a string, number or boolean, got "
                                              f"{_jtype(v)}")
            facts[k] = v
    statuses: list[ExportStatus] = []
    for i, s in enumerate(o.items("exports", required=False)):
        so = _Obj(s, f"{o.at('exports')}[{i}]")
        statuses.append(ExportStatus(so.target("target"), so.choice("state", EXPORT_STATES),
                                     so.text("detail", required=False, max_len=MAX_DETAIL)))
        so.done()
    vols = o.items("volumes", required=False)
    if len(vols) > MAX_POOL_ENTRIES:
        raise ProtocolError(o.at("volumes"), f"more than {MAX_POOL_ENTRIES} entries")
    volumes = tuple(_pool_entry(v, f"{o.at('volumes')}[{i}]") for i, v in enumerate(vols))
    o.done()
    return Report(node=node, state=state, detail=detail, facts=facts, exports=tuple(statuses),
                  volumes=volumes)


def parse_report(text: str | bytes) -> Report:
    """The report in ``text``; :class:`ProtocolError` naming the field at fault."""
    return report_from_doc(_load(text, "report"))


# ----------------------------------------------------------------------------- the writer


def export_doc(e: Export) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": e.kind, "target": str(e.target), "mode": e.mode,
                           "allow": list(e.allow)}
    if isinstance(e, ImageExport):
        doc.update(role=e.role, build=e.build, size=e.size, sha256=e.sha256, url=e.url)
    else:
        doc.update(name=e.name, size=e.size)
        if e.origin_kind != "empty":
            doc["origin"] = {"kind": e.origin_kind, "name": e.origin}
    return doc


def plan_doc(plan: Plan) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": VERSION, "node": plan.node, "hostname": plan.hostname,
                           "poll": plan.poll, "exports": [export_doc(e) for e in plan.exports]}
    if plan.pending:
        doc["pending"] = [{"target": str(p.target), "reason": p.reason} for p in plan.pending]
    if plan.templates:
        doc["templates"] = [{"name": t.name, "role": t.role, "build": t.build, "size": t.size,
                             "sha256": t.sha256, "url": t.url} for t in plan.templates]
    if plan.delete:
        doc["delete"] = [{"kind": d.kind, "name": d.name} for d in plan.delete]
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
        doc["volumes"] = [{"name": v.name, "kind": v.kind, "size": v.size, "origin": v.origin}
                          for v in report.volumes]
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

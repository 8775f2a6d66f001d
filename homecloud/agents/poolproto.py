"""The volume part of the agents' wire protocol (homecloud.agents.protocol): a plan's volume
exports, templates and deletions, a report's pool entries; their types, readers and writers.
The document formats are described in homecloud.agents.protocol.  Standard library only: this
module ships into the node images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeAlias

from homecloud.agents.docread import (
    NAME_RE,
    Obj,
    ProtocolError,
    first_places,
    read_name,
    read_sha,
    read_url,
)
from homecloud.core.ids import Target

#: where a new volume's bytes come from; what a pool entry is; what a plan may delete
ORIGIN_KINDS = ("template", "volume", "empty")
POOL_KINDS = ("volume", "template")
MAX_POOL_ENTRIES = 4096

Mode: TypeAlias = Literal["ro", "rw"]


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
class PoolEntry:
    """A volume or template present in a storage node's pool (its report)."""

    name: str
    kind: str   # one of POOL_KINDS
    size: int
    origin: str = ""   # "template:NAME" | "volume:NAME" | ""


# ----------------------------------------------------------------------------- the reader


def read_volume_export(o: Obj, target: Target, mode: Mode, allow: tuple[str, ...],
                       size: int) -> VolumeExport:
    """The volume fields of export ``o`` (its common fields already read)."""
    name = read_name(o, "name")
    okind, oname = "empty", ""
    raw = o.raw("origin", required=False)
    if raw is not None:
        oo = Obj(raw, o.at("origin"))
        okind = oo.choice("kind", ORIGIN_KINDS)
        if okind != "empty":
            oname = read_name(oo, "name")
            if okind == "volume" and oname == name:
                raise ProtocolError(oo.at("name"), f"volume {name} cannot be its own origin")
        elif oo.text("name", required=False):
            raise ProtocolError(oo.at("name"), "an empty volume has no origin name")
        oo.done()
    return VolumeExport(target=target, mode=mode, allow=allow, name=name, size=size,
                        origin_kind=okind, origin=oname)


def read_template(value: object, where: str) -> TemplateSpec:
    o = Obj(value, where)
    t = TemplateSpec(name=read_name(o, "name"), role=read_name(o, "role"),
                     build=read_name(o, "build"), size=o.integer("size", lo=1),
                     sha256=read_sha(o, "sha256"), url=read_url(o, "url"))
    o.done()
    return t


def read_deletion(value: object, where: str) -> Deletion:
    o = Obj(value, where)
    d = Deletion(kind=o.choice("kind", POOL_KINDS), name=read_name(o, "name"))
    o.done()
    return d


def read_pool_entry(value: object, where: str) -> PoolEntry:
    o = Obj(value, where)
    name, kind = read_name(o, "name"), o.choice("kind", POOL_KINDS)
    size = o.integer("size", lo=0)
    origin: str = o.text("origin", required=False, max_len=256)
    if origin:
        k, _, n = origin.partition(":")
        if k not in ("template", "volume") or not NAME_RE.fullmatch(n):
            raise ProtocolError(o.at("origin"), f"{origin!r} is not template:NAME or"
                                                " volume:NAME")
    o.done()
    return PoolEntry(name, kind, size, origin)


def read_pool_plan(o: Obj, exports: Sequence[object]
                   ) -> tuple[tuple[TemplateSpec, ...], tuple[Deletion, ...]]:
    """A plan's ``templates`` and ``delete`` (``exports``: the plan's exports, read): no
    template twice, nothing both deleted and wanted."""
    templates = tuple(read_template(t, f"{o.at('templates')}[{i}]")
                      for i, t in enumerate(o.items("templates", required=False)))
    tnames = first_places([t.name for t in templates], o.at("templates"), "name",
                          lambda n, j: f"{n} already in templates[{j}]")
    vnames = {e.name: i for i, e in enumerate(exports) if isinstance(e, VolumeExport)}
    delete = tuple(read_deletion(d, f"{o.at('delete')}[{i}]")
                   for i, d in enumerate(o.items("delete", required=False)))
    for i, d in enumerate(delete):
        keep = tnames if d.kind == "template" else vnames
        if d.name in keep:
            other = "templates" if d.kind == "template" else "exports"
            raise ProtocolError(f"{o.at('delete')}[{i}].name", f"{d.kind} {d.name} is both "
                                f"deleted and wanted ({other}[{keep[d.name]}])")
    return templates, delete


def read_pool_entries(o: Obj) -> tuple[PoolEntry, ...]:
    """A report's ``volumes``: at most :data:`MAX_POOL_ENTRIES`."""
    vols = o.items("volumes", required=False)
    if len(vols) > MAX_POOL_ENTRIES:
        raise ProtocolError(o.at("volumes"), f"more than {MAX_POOL_ENTRIES} entries")
    return tuple(read_pool_entry(v, f"{o.at('volumes')}[{i}]") for i, v in enumerate(vols))


# ----------------------------------------------------------------------------- the writer


def volume_export_fields(e: VolumeExport) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": e.name, "size": e.size}
    if e.origin_kind != "empty":
        doc["origin"] = {"kind": e.origin_kind, "name": e.origin}
    return doc


def template_doc(t: TemplateSpec) -> dict[str, Any]:
    return {"name": t.name, "role": t.role, "build": t.build, "size": t.size,
            "sha256": t.sha256, "url": t.url}


def deletion_doc(d: Deletion) -> dict[str, Any]:
    return {"kind": d.kind, "name": d.name}


def pool_entry_doc(v: PoolEntry) -> dict[str, Any]:
    return {"name": v.name, "kind": v.kind, "size": v.size, "origin": v.origin}

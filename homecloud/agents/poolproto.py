"""The volume part of the agents' wire protocol (homecloud.agents.protocol): a plan's volume
exports, templates and deletions, a report's pool entries; their types, readers and writers.
The document formats are described in homecloud.agents.protocol.  Standard library only: this
module ships into the node images."""

from __future__ import annotations

import ipaddress
import re
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


#: the DRBD states a report may carry (DRBD 8.4's words, ``/proc/drbd``)
DRBD_TOKEN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
DRBD_GI_RE = re.compile(r"^[0-9A-Fa-f]{1,16}(?::[0-9A-Fa-f]{1,16}){3}(?::[01]){0,8}$")
DRBD_HOST_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DRBD_MINORS = range(0, 1 << 16)


@dataclass(frozen=True)
class DrbdHost:
    host: str      # the snode's host name (drbdadm picks its ``on`` section by it)
    address: str   # its IPv4 address on the storage network: the replication link


@dataclass(frozen=True)
class DrbdLink:
    """How this storage node replicates a volume with its peer (DRBD 8.4, protocol C)."""

    minor: int                          # /dev/drbdMINOR on both snodes
    port: int                           # the replication link's TCP port on both
    primary: bool                       # this snode is the primary: it exports the volume
    identical: bool                     # both sides start from the same bytes: no full sync
    hosts: tuple[DrbdHost, DrbdHost]    # the two snodes (this one among them)
    #: after a split brain, the side a person named to keep ("keep": reconnect) and the other
    #: ("discard": its writes since the split are thrown away, it resyncs from the kept side)
    resolve: str = ""


@dataclass(frozen=True)
class DrbdState:
    """A replicated volume's DRBD state on the reporting snode (from ``/proc/drbd``)."""

    minor: int
    connection: str       # Connected, WFConnection, StandAlone, SyncSource, ...
    role: str             # Primary | Secondary | Unknown
    peer_role: str
    disk: str             # UpToDate, Inconsistent, Outdated, Diskless, ...
    peer_disk: str
    out_of_sync_kib: int = 0
    synced_percent: float | None = None
    #: the data generation identifiers (``drbdadm get-gi``: CURRENT:BITMAP:HISTORY1:HISTORY2
    #: and flags), reported while StandAlone: what a person compares before naming the side
    #: to keep
    gi: str = ""


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
    drbd: DrbdLink | None = None  # replicated with a peer snode (issue 12); None: one copy
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
    drbd: DrbdState | None = None   # a replicated volume's state here


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
    raw = o.raw("drbd", required=False)
    drbd = read_drbd_link(Obj(raw, o.at("drbd"))) if raw is not None else None
    return VolumeExport(target=target, mode=mode, allow=allow, name=name, size=size,
                        origin_kind=okind, origin=oname, drbd=drbd)


def read_drbd_link(o: Obj) -> DrbdLink:
    minor = o.integer("minor", lo=DRBD_MINORS.start, hi=DRBD_MINORS.stop - 1)
    port = o.integer("port", lo=1024, hi=65535)
    primary, identical = o.raw("primary"), o.raw("identical", required=False)
    if not isinstance(primary, bool):
        raise ProtocolError(o.at("primary"), "must be true or false")
    if identical is not None and not isinstance(identical, bool):
        raise ProtocolError(o.at("identical"), "must be true or false")
    hosts = o.items("hosts")
    if len(hosts) != 2:
        raise ProtocolError(o.at("hosts"), f"exactly two snodes, got {len(hosts)}")
    out: list[DrbdHost] = []
    for i, h in enumerate(hosts):
        ho = Obj(h, f"{o.at('hosts')}[{i}]")
        host = ho.text("host", max_len=63)
        if not DRBD_HOST_RE.fullmatch(host):
            raise ProtocolError(ho.at("host"), f"{host!r} is not a host name")
        addr = ho.text("address", max_len=15)
        try:
            ip = ipaddress.IPv4Address(addr)
        except ValueError:
            raise ProtocolError(ho.at("address"), f"{addr!r} is not an IPv4 address") from None
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
            raise ProtocolError(ho.at("address"), f"{addr} cannot be a replication peer")
        ho.done()
        out.append(DrbdHost(host, addr))
    if out[0].host == out[1].host or out[0].address == out[1].address:
        raise ProtocolError(o.at("hosts"), "the two replicas must be two snodes")
    resolve = o.raw("resolve", required=False)
    if resolve is not None and resolve not in ("keep", "discard"):
        raise ProtocolError(o.at("resolve"), f"{resolve!r}: keep or discard")
    o.done()
    return DrbdLink(minor, port, primary, bool(identical), (out[0], out[1]), resolve or "")


def read_drbd_state(o: Obj) -> DrbdState:
    def token(key: str) -> str:
        v = o.text(key, max_len=32)
        if not DRBD_TOKEN_RE.fullmatch(v):
            raise ProtocolError(o.at(key), f"{v!r} is not a DRBD state word")
        return v

    st = DrbdState(minor=o.integer("minor", lo=DRBD_MINORS.start, hi=DRBD_MINORS.stop - 1),
                   connection=token("connection"), role=token("role"),
                   peer_role=token("peer_role"), disk=token("disk"),
                   peer_disk=token("peer_disk"),
                   out_of_sync_kib=o.integer("out_of_sync_kib", required=False, lo=0,
                                             hi=1 << 62))
    pct = o.raw("synced_percent", required=False)
    if pct is not None:
        if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct <= 100:
            raise ProtocolError(o.at("synced_percent"), "must be a number in 0..100")
        st = DrbdState(**{**st.__dict__, "synced_percent": float(pct)})
    gi = o.raw("gi", required=False)
    if gi is not None:
        if not isinstance(gi, str) or len(gi) > 200 or not DRBD_GI_RE.fullmatch(gi):
            raise ProtocolError(o.at("gi"), "must be DRBD generation identifiers "
                                "(HEX:HEX:HEX:HEX[:flag...])")
        st = DrbdState(**{**st.__dict__, "gi": gi})
    o.done()
    return st


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
    raw = o.raw("drbd", required=False)
    drbd = read_drbd_state(Obj(raw, o.at("drbd"))) if raw is not None else None
    o.done()
    return PoolEntry(name, kind, size, origin, drbd)


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
    if e.drbd is not None:
        d = e.drbd
        doc["drbd"] = {"minor": d.minor, "port": d.port, "primary": d.primary,
                       "identical": d.identical,
                       "hosts": [{"host": h.host, "address": h.address} for h in d.hosts]}
        if d.resolve:
            doc["drbd"]["resolve"] = d.resolve
    return doc


def template_doc(t: TemplateSpec) -> dict[str, Any]:
    return {"name": t.name, "role": t.role, "build": t.build, "size": t.size,
            "sha256": t.sha256, "url": t.url}


def deletion_doc(d: Deletion) -> dict[str, Any]:
    return {"kind": d.kind, "name": d.name}


def pool_entry_doc(v: PoolEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": v.name, "kind": v.kind, "size": v.size, "origin": v.origin}
    if v.drbd is not None:
        doc["drbd"] = drbd_state_doc(v.drbd)
    return doc


def drbd_state_doc(d: DrbdState) -> dict[str, Any]:
    doc: dict[str, Any] = {"minor": d.minor, "connection": d.connection, "role": d.role,
                           "peer_role": d.peer_role, "disk": d.disk, "peer_disk": d.peer_disk,
                           "out_of_sync_kib": d.out_of_sync_kib}
    if d.synced_percent is not None:
        doc["synced_percent"] = d.synced_percent
    if d.gi:
        doc["gi"] = d.gi
    return doc

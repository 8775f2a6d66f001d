"""What the storage really holds, next to what the inventory says: ``hcboot volumes`` (every
volume with its replicas, the state of each, and the instance that uses it) and the volume
section of ``hcboot verify`` (degraded or failed volumes, templates missing on a storage
node, and volumes or templates an snode holds that the inventory does not know).

Pure functions over an inventory and the storage agents' last reports (``reports.json``, the
``storage`` key of each snode); nothing here talks to a node.  A volume has one replica, or
two kept in step by DRBD (``hcboot volume create --replicas 2``): the first exports it
(``served``), the second reports ``replica``; both report DRBD's connection and disk states."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homecloud.agents.drbd_gi import GiError, parse_gi, relation
from homecloud.control.volumes import no_pool_reason, pool_names, storage_nodes, storage_report
from homecloud.core.model import Inventory, Node, VolumeExport

#: a storage agent's report older than this is called stale (it re-sends every 300 s)
STALE_AFTER = 900.0


@dataclass(frozen=True)
class ReplicaState:
    """One storage node's side of a volume, as its agent last reported it."""

    snode: str
    present: bool      # its pool lists the volume
    export: str        # served | replica | failed | unassigned | absent | unknown | down
    detail: str = ""   # the agent's words for a failed export
    report_age: float | None = None   # seconds since its last report; None: never reported
    #: a replicated volume's DRBD state there (``/proc/drbd``'s words: connection, role,
    #: peer_role, disk, peer_disk, out_of_sync_kib, synced_percent); None: not replicated
    drbd: dict[str, Any] | None = None


@dataclass(frozen=True)
class VolumeStatus:
    name: str
    target: str
    size: int
    origin: str        # "template:NAME" | "volume:NAME" | ""
    instance: str      # the instance whose root volume it is ("" if none)
    replicas: tuple[ReplicaState, ...]
    health: str        # ok | degraded | failed | unknown
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stray:
    """A volume or template a storage node holds that the inventory does not name."""

    snode: str
    kind: str          # volume | template
    name: str
    size: int
    deleting: bool     # a deletion of it is pending (it goes once the snode carries it out)


def _age(report: dict[str, Any] | None, now: float) -> float | None:
    if report is None:
        return None
    try:
        return max(0.0, now - float(report.get("time") or 0))
    except (TypeError, ValueError):
        return None


def _export_state(report: dict[str, Any] | None, target: str) -> tuple[str, str]:
    if report is None:
        return "unknown", "no report from its storage agent"
    for x in report.get("exports") or []:
        if isinstance(x, dict) and x.get("target") == target:
            return str(x.get("state") or "unknown"), str(x.get("detail") or "")
    return "absent", ""


def _keepers(inv: Inventory, e: VolumeExport) -> list[Node]:
    snodes = storage_nodes(inv)
    if e.snodes is None:
        return snodes
    out = []
    for key in e.snodes:           # in the inventory's order: a replicated volume's primary first
        n = next((n for n in snodes if n.name == key or any(c.mac == key for c in n.nics)), None)
        if n is not None and n not in out:
            out.append(n)
    return out


def volume_status(inv: Inventory, reports: dict[str, Any], now: float) -> list[VolumeStatus]:
    """Every volume of the inventory, in its order, with each replica's reported state."""
    users = {i.volume: i.name for i in inv.instances if i.volume}
    out: list[VolumeStatus] = []
    for e in inv.exports:
        if not isinstance(e, VolumeExport):
            continue
        reps: list[ReplicaState] = []
        problems: list[str] = []
        keepers = _keepers(inv, e)
        if not keepers:
            problems.append(f"volume {e.name}: none of its storage nodes "
                            f"({', '.join(e.snodes or ())}) is in the inventory")
        for i, n in enumerate(keepers):
            r = storage_report(reports, n)
            state, detail = _export_state(r, str(e.target))
            if r is not None and r.get("state") == "leaving":
                state, detail = "down", str(r.get("detail") or "")
            present = e.name in pool_names(r, "volume") or (
                r is not None and no_pool_reason(r) != "" and state == "served")
            age = _age(r, now)
            drbd = _drbd_of(r, e.name) if e.replicated else None
            reps.append(ReplicaState(n.name, present, state, detail, age, drbd))
            where = f"volume {e.name} on {n.name}"
            want = "replica" if e.replicated and i > 0 else "served"
            if r is None:
                problems.append(f"{where}: no report from its storage agent")
            elif r.get("state") == "leaving":
                problems.append(f"{where}: its storage node shut down cleanly "
                                f"{'' if age is None else f'{age:.0f}s '}ago (exports stopped, "
                                "DRBD handed over); back when it boots again")
            elif state == "failed":
                problems.append(f"{where}: export {e.target} failed: {detail or '?'}")
            elif state != want:
                problems.append(f"{where}: export {e.target} is {state} (wanted: {want})")
            elif not present:
                problems.append(f"{where}: {state} but not listed in its pool")
            if e.replicated and r is not None and state == want:
                problems += _drbd_problems(where, drbd)
            if age is not None and age > STALE_AFTER:
                problems.append(f"{where}: its storage agent last reported {age:.0f}s ago")
            if e.outdated is not None and e.outdated in (n.name, *(c.mac for c in n.nics)):
                problems.append(f"{where}: outdated: it missed writes the other side "
                                "acknowledged (fenced or replaced by the config node); never "
                                "made primary until it has resynced")
        if e.replicated and len(reps) == 2:
            problems += _split_brain(e, reps)
        serving = sum(1 for x in reps if x.export == "served")
        if not reps or all(x.export == "unknown" for x in reps):
            health = "unknown"
        elif serving == 0:
            health = "failed"
        elif problems:
            health = "degraded"
        else:
            health = "ok"
        origin = "" if e.origin_kind == "empty" else f"{e.origin_kind}:{e.origin}"
        out.append(VolumeStatus(e.name, str(e.target), e.size, origin, users.get(e.name, ""),
                                tuple(reps), health, tuple(problems)))
    return out


def _drbd_of(report: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    for v in (report or {}).get("volumes") or []:
        if isinstance(v, dict) and v.get("kind") == "volume" and v.get("name") == name:
            d = v.get("drbd")
            return d if isinstance(d, dict) else None
    return None


def _drbd_problems(where: str, d: dict[str, Any] | None) -> list[str]:
    """What is wrong with one side of a replicated volume (its DRBD state as reported)."""
    if d is None:
        return [f"{where}: no DRBD state reported"]
    cs, ds, pds = d.get("connection"), d.get("disk"), d.get("peer_disk")
    if cs == "StandAlone":
        return [f"{where}: DRBD StandAlone (disk {ds}): split brain or a refused peer; "
                "nothing is resolved without a person naming the side to keep"]
    if cs in ("SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT"):
        pct = d.get("synced_percent")
        return [f"{where}: DRBD {cs}: resync at {pct if pct is not None else '?'}%"]
    out: list[str] = []
    if cs != "Connected":
        out.append(f"{where}: DRBD {cs}: not replicating (its peer is away; "
                   f"{d.get('out_of_sync_kib', 0)} KiB to resync when it is back)")
    elif ds != "UpToDate" or pds != "UpToDate":
        out.append(f"{where}: DRBD disks {ds}/{pds}")
    return out


def _split_brain(e: VolumeExport, reps: list[ReplicaState]) -> list[str]:
    """Both sides StandAlone: each side's generation identifiers, how they relate, and the
    command that resolves it (never automatic: a person names the side to keep)."""
    ds = [r.drbd or {} for r in reps]
    if not all(d.get("connection") == "StandAlone" for d in ds):
        return []
    gis = [str(d.get("gi") or "") for d in ds]
    how = "their identifiers were not reported"
    if all(gis):
        try:
            how = relation(parse_gi(gis[0]), parse_gi(gis[1]))
        except GiError as exc:
            how = str(exc)
    sides = "; ".join(f"{r.snode}: {d.get('role')}, disk {d.get('disk')}, generation "
                      f"{g or '?'}" for r, d, g in zip(reps, ds, gis, strict=True))
    if e.keep is not None:
        return [f"volume {e.name}: split brain being resolved in favour of {e.keep} ({sides})"]
    return [f"volume {e.name}: split brain? both sides StandAlone ({sides}); {reps[0].snode} "
            f"against {reps[1].snode}: {how}.  Nothing is thrown away until a person names "
            f"the side to keep: hcboot volume resolve {e.name} --keep SNODE"]


def strays(inv: Inventory, reports: dict[str, Any]) -> list[Stray]:
    """What the snodes' pools hold that the inventory does not name (by snode, then name)."""
    volumes = {e.name for e in inv.exports if isinstance(e, VolumeExport)}
    templates = {t.name for t in inv.templates}
    deleting = {(d.kind, d.name) for d in inv.deletions}
    out: list[Stray] = []
    for n in storage_nodes(inv):
        r = storage_report(reports, n)
        for v in (r or {}).get("volumes") or []:
            if not isinstance(v, dict):
                continue
            kind, name = str(v.get("kind") or ""), str(v.get("name") or "")
            known = volumes if kind == "volume" else templates if kind == "template" else None
            if known is None or name in known:
                continue
            size = v.get("size")
            out.append(Stray(n.name, kind, name, size if isinstance(size, int) else 0,
                             (kind, name) in deleting))
    return sorted(out, key=lambda s: (s.snode, s.kind, s.name))


def template_problems(inv: Inventory, reports: dict[str, Any]) -> list[str]:
    """Templates of the inventory missing from a storage node that has a volume pool."""
    out: list[str] = []
    for t in inv.templates:
        for n in storage_nodes(inv):
            r = storage_report(reports, n)
            if r is None or no_pool_reason(r):
                continue
            if t.name not in pool_names(r, "template"):
                out.append(f"template {t.name}: not in the pool of {n.name}")
    return out


def verify_volumes(inv: Inventory, reports: dict[str, Any], now: float) -> list[str]:
    """Every problem of the storage, one line each (empty: all is as the inventory says)."""
    lines = [p for v in volume_status(inv, reports, now) for p in v.problems]
    lines += template_problems(inv, reports)
    for s in strays(inv, reports):
        if not s.deleting:
            lines.append(f"{s.kind} {s.name} on {s.snode}: held by its pool ({s.size} bytes) "
                         "but not in the inventory (left over; nothing deletes it unasked)")
    return lines


def status_doc(v: VolumeStatus) -> dict[str, Any]:
    return {"name": v.name, "target": v.target, "size": v.size, "origin": v.origin,
            "instance": v.instance, "health": v.health, "problems": list(v.problems),
            "replicas": [{"snode": r.snode, "present": r.present, "export": r.export,
                          "detail": r.detail, "report_age": r.report_age, "drbd": r.drbd}
                         for r in v.replicas]}


def stray_doc(s: Stray) -> dict[str, Any]:
    return {"snode": s.snode, "kind": s.kind, "name": s.name, "size": s.size,
            "deleting": s.deleting}

"""AoE export plans: which storage node serves what, at which shelf.slot, to whom.

The inventory's ``exports`` say what is exported; this module resolves them against the assigned
nodes and the image store into one plan per storage node (with the inventory's templates, on
every storage node, and the pool deletions addressed to it) (a ``homecloud.agents.protocol`` plan
document, served to it over HTTP at ``/plan/<mac>.json``; ``hcboot exports`` shows them all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homecloud.agents import protocol as P
from homecloud.core.manifest import ImageStore, ManifestError
from homecloud.core.model import (
    DRBD_PORT_BASE,
    STORAGE_ROLE,
    Export,
    ImageExport,
    Inventory,
    Node,
    TemplateImage,
    VolumeExport,
)


@dataclass(frozen=True)
class PlannedExport:
    export: Export
    allow: tuple[str, ...]  # MACs allowed to use it (vblade -m); empty = no consumer yet
    snode_macs: tuple[str, ...]
    source: dict[str, Any]  # image: url/sha256/size/build_id; volume: name/size
    problem: str | None = None  # why it cannot be served now (no image yet, ...)

    def to_doc(self) -> dict[str, Any]:
        e = self.export
        return {
            "target": str(e.target), "shelf": e.shelf, "slot": e.slot, "mode": e.mode,
            "allow": list(self.allow), "snodes": list(self.snode_macs),
            "source": self.source, "problem": self.problem,
        }


def storage_nodes(inv: Inventory, role: str = STORAGE_ROLE) -> list[Node]:
    return [n for n in inv.nodes if n.role == role]


def plan_all(inv: Inventory, store: ImageStore, http_base: str) -> list[PlannedExport]:
    snodes = storage_nodes(inv)
    out: list[PlannedExport] = []
    for exp in inv.exports:
        problem: str | None = None
        source: dict[str, Any]
        if isinstance(exp, ImageExport):
            source = {"kind": "image", "role": exp.role, "artifact": exp.artifact}
            try:
                m = store.manifest(exp.role, exp.build)
            except ManifestError as exc:
                m, problem = None, str(exc)
            if m is None:
                problem = problem or f"no published image for role {exp.role}"
            elif exp.artifact not in m.artifacts:
                problem = f"image {exp.role}/{m.build_id} has no {exp.artifact}"
            else:
                art = m.artifacts[exp.artifact]
                source.update(build_id=m.build_id, file=art.file, sha256=art.sha256,
                              size=art.size,
                              url=f"{http_base}/images/{exp.role}/{m.build_id}/{art.file}")
        else:
            source = {"kind": "volume", "name": exp.name, "size": exp.size}
            if isinstance(exp, VolumeExport) and exp.origin_kind != "empty":
                source["origin"] = f"{exp.origin_kind}:{exp.origin}"
        out.append(PlannedExport(exp, inv.consumer_macs(exp),
                                 tuple(n.mac for n in snodes if inv.serves(exp, n)), source,
                                 problem))
    return out


def drbd_link(inv: Inventory, e: VolumeExport, node: Node) -> tuple[P.DrbdLink | None, str]:
    """``node``'s side of replicated volume ``e``: its DRBD link, or None and why not (an
    snode of the pair gone from the inventory, or without a fixed address for the link)."""
    assert e.drbd_minor is not None
    pair = [inv.lookup(s) for s in e.snodes or ()]
    hosts: list[P.DrbdHost] = []
    for key, n in zip(e.snodes or (), pair, strict=True):
        if n is None:
            return None, f"volume {e.name}: its replica snode {key} is not in the inventory"
        if not n.ip:
            return None, (f"volume {e.name}: snode {n.name} has no fixed address for the "
                          "replication link (give its NIC an ip in the inventory)")
        hosts.append(P.DrbdHost(n.hostname, n.ip))
    if len(hosts) != 2:
        return None, f"volume {e.name}: a replicated volume needs two snodes"
    identical = e.origin_kind in ("template", "empty")
    resolve = ""
    if e.keep is not None:
        kept = inv.lookup(e.keep)
        resolve = "keep" if kept is node else "discard"
    return P.DrbdLink(e.drbd_minor, DRBD_PORT_BASE + e.drbd_minor,
                      primary=pair[0] is node, identical=identical,
                      hosts=(hosts[0], hosts[1]), resolve=resolve), ""


def plan_for(mac: str, inv: Inventory, store: ImageStore, http_base: str,
             poll: int = P.DEFAULT_POLL) -> P.Plan | None:
    """The plan of one storage node (homecloud.agents.protocol), or None if ``mac`` is not a
    storage node.  Exports that cannot be served yet (no image published) are ``pending``."""
    node = inv.node(mac)
    if node is None or node.role != STORAGE_ROLE:
        return None
    exports: list[P.Export] = []
    pending: list[P.Pending] = []
    for p in plan_all(inv, store, http_base):
        if mac not in p.snode_macs:
            continue
        e, src = p.export, p.source
        mode: P.Mode = "rw" if e.mode == "rw" else "ro"
        if p.problem:
            pending.append(P.Pending(e.target, p.problem))
        elif src["kind"] == "image":
            exports.append(P.ImageExport(target=e.target, mode=mode, allow=p.allow,
                                         role=src["role"], build=src["build_id"],
                                         size=src["size"], sha256=src["sha256"], url=src["url"]))
        else:
            okind, oname = "empty", ""
            link: P.DrbdLink | None = None
            if isinstance(e, VolumeExport):
                okind, oname = e.origin_kind, e.origin
                if e.drbd_minor is not None:
                    link, why = drbd_link(inv, e, node)
                    if link is None:
                        pending.append(P.Pending(e.target, why))
                        continue
            exports.append(P.VolumeExport(target=e.target, mode=mode, allow=p.allow,
                                          name=src["name"], size=src["size"],
                                          origin_kind=okind, origin=oname, drbd=link))
    # a deletion never contradicts the plan (the agent would refuse it anyway)
    wanted = {("template", t.name) for t in inv.templates} | {
        ("volume", e.name) for e in exports if isinstance(e, P.VolumeExport)}
    delete = tuple(P.Deletion(d.kind, d.name) for d in inv.deletions
                   if node.name in d.snodes and (d.kind, d.name) not in wanted)
    return P.Plan(node=mac, exports=tuple(exports), poll=poll, hostname=node.name,
                  pending=tuple(pending),
                  templates=tuple(template_spec(t, http_base) for t in inv.templates),
                  delete=delete)


def template_spec(t: TemplateImage, http_base: str) -> P.TemplateSpec:
    """What a storage node needs to fill template ``t``: the artifact's URL, size, sha256."""
    return P.TemplateSpec(name=t.name, role=t.role, build=t.build, size=t.size,
                          sha256=t.sha256,
                          url=f"{http_base}/images/{t.role}/{t.build}/{t.file}")

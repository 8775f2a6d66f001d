"""AoE export plans: which storage node serves what, at which shelf.slot, to whom.

The inventory's ``exports`` say what is exported; this module resolves them against the assigned
nodes and the image store into one plan per storage node (a ``homecloud.agents.protocol`` plan
document, served to it over HTTP at ``/plan/<mac>.json``; ``hcboot exports`` shows them all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bootserver.inventory import Export, Inventory, Node
from builder.manifest import ImageStore, ManifestError
from homecloud.agents.protocol import (
    DEFAULT_POLL,
    ImageExport,
    Mode,
    Pending,
    Plan,
    VolumeExport,
)
from homecloud.agents.protocol import Export as PlanExport
from homecloud.core.ids import Target

STORAGE_ROLE = "snode"


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
            "target": e.target, "shelf": e.shelf, "slot": e.slot, "mode": e.mode,
            "allow": list(self.allow), "snodes": list(self.snode_macs),
            "source": self.source, "problem": self.problem,
        }


def storage_nodes(inv: Inventory, role: str = STORAGE_ROLE) -> list[Node]:
    return [n for n in inv.nodes if n.role == role]


def _consumers(inv: Inventory, exp: Export) -> tuple[str, ...]:
    macs: set[str] = set()
    for c in exp.consumers:
        if ":" in c:
            macs.add(c)
        else:
            macs.update(n.mac for n in inv.nodes if n.role == c)
    return tuple(sorted(macs))


def _serves(exp: Export, node: Node) -> bool:
    return exp.snodes is None or node.mac in exp.snodes or (
        node.hostname is not None and node.hostname in exp.snodes)


def plan_all(inv: Inventory, store: ImageStore, http_base: str) -> list[PlannedExport]:
    snodes = storage_nodes(inv)
    out: list[PlannedExport] = []
    for exp in inv.exports:
        problem: str | None = None
        source: dict[str, Any]
        if exp.image_role:
            source = {"kind": "image", "role": exp.image_role, "artifact": exp.image_artifact}
            try:
                m = store.manifest(exp.image_role, exp.image_build)
            except ManifestError as exc:
                m, problem = None, str(exc)
            if m is None:
                problem = problem or f"no published image for role {exp.image_role}"
            elif exp.image_artifact not in m.artifacts:
                problem = f"image {exp.image_role}/{m.build_id} has no {exp.image_artifact}"
            else:
                art = m.artifacts[exp.image_artifact]
                source.update(build_id=m.build_id, file=art.file, sha256=art.sha256,
                              size=art.size,
                              url=f"{http_base}/images/{exp.image_role}/{m.build_id}/{art.file}")
        else:
            source = {"kind": "volume", "name": exp.volume_name, "size": exp.volume_size}
        out.append(PlannedExport(exp, _consumers(inv, exp),
                                 tuple(n.mac for n in snodes if _serves(exp, n)), source,
                                 problem))
    return out


def plan_for(mac: str, inv: Inventory, store: ImageStore, http_base: str,
             poll: int = DEFAULT_POLL) -> Plan | None:
    """The plan of one storage node (homecloud.agents.protocol), or None if ``mac`` is not a
    storage node.  Exports that cannot be served yet (no image published) are ``pending``."""
    node = inv.node(mac)
    if node is None or node.role != STORAGE_ROLE:
        return None
    exports: list[PlanExport] = []
    pending: list[Pending] = []
    for p in plan_all(inv, store, http_base):
        if mac not in p.snode_macs:
            continue
        e, src = p.export, p.source
        target = Target(e.shelf, e.slot)
        mode: Mode = "rw" if e.mode == "rw" else "ro"
        if p.problem:
            pending.append(Pending(target, p.problem))
        elif src["kind"] == "image":
            exports.append(ImageExport(target=target, mode=mode, allow=p.allow,
                                       role=src["role"], build=src["build_id"],
                                       size=src["size"], sha256=src["sha256"], url=src["url"]))
        else:
            exports.append(VolumeExport(target=target, mode=mode, allow=p.allow,
                                        name=src["name"], size=src["size"]))
    return Plan(node=mac, exports=tuple(exports), poll=poll, hostname=node.hostname,
                pending=tuple(pending))

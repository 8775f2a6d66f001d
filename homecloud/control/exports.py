"""AoE export plans: which storage node serves what, at which shelf.slot, to whom.

The inventory's ``exports`` say what is exported; this module resolves them against the assigned
nodes and the image store into one plan per storage node (served to it as JSON over HTTP at
``/plan/<mac>.json``, and shown by ``hcboot exports``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from homecloud.core.manifest import ImageStore, ManifestError
from homecloud.core.model import STORAGE_ROLE, Export, ImageExport, Inventory, Node


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
        out.append(PlannedExport(exp, inv.consumer_macs(exp),
                                 tuple(n.mac for n in snodes if inv.serves(exp, n)), source,
                                 problem))
    return out


def plan_for(mac: str, inv: Inventory, store: ImageStore, http_base: str) -> dict[str, Any] | None:
    """The plan of one storage node, or None if ``mac`` is not a storage node."""
    node = inv.node(mac)
    if node is None or node.role != STORAGE_ROLE:
        return None
    exports = [p.to_doc() for p in plan_all(inv, store, http_base) if mac in p.snode_macs]
    return {"format": 1, "snode": mac, "hostname": node.name, "generated": time.time(),
            "exports": exports}


def plan_text(plan: dict[str, Any]) -> str:
    """The same plan as whitespace-separated lines, for a busybox shell agent::

        # homecloud plan 1 <snode-mac>
        <target> <shelf> <slot> <ro|rw> <image|volume> <size> <sha256|-> <url|name> <allow|->

    ``allow`` is a comma-separated MAC list; ``-`` means no consumer is assigned yet (the agent
    must not export it: vblade without -m would serve everyone).  Exports with a problem (no
    image published yet) are left out, with a comment line saying why.
    """
    lines = [f"# homecloud plan 1 {plan['snode']}"]
    for e in plan["exports"]:
        src = e["source"]
        if e.get("problem"):
            lines.append(f"# {e['target']} not served: {e['problem']}")
            continue
        allow = ",".join(e["allow"]) or "-"
        if src["kind"] == "image":
            lines.append(f"{e['target']} {e['shelf']} {e['slot']} {e['mode']} image "
                         f"{src['size']} {src['sha256']} {src['url']} {allow}")
        else:
            lines.append(f"{e['target']} {e['shelf']} {e['slot']} {e['mode']} volume "
                         f"{src['size']} - {src['name']} {allow}")
    return "\n".join(lines) + "\n"

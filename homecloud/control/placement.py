"""Placement: which hnode runs an instance.

A pure function of what the hnodes reported (``HostDriver.facts``, gathered by the caller):
a host qualifies when it answered (up), is not drained, has the instance bridge, sees the
instance's volume (when that is known) and has enough free memory; among those the one with the
most free memory wins (spread by free memory; ties by name).  When nothing qualifies the
refusal names, per host, what is short.
"""

from __future__ import annotations

from dataclasses import dataclass

from homecloud.control.contracts import HostFacts
from homecloud.control.lifecycle import InstanceError
from homecloud.core.model import Node


class PlacementError(InstanceError):
    """No hnode qualifies; the message says why for each."""


@dataclass(frozen=True)
class Candidate:
    node: Node
    facts: HostFacts | None  # None: the host did not answer
    drained: bool = False
    error: str = ""  # why it did not answer


@dataclass(frozen=True)
class Need:
    memory_mb: int
    bridge: str
    volume: str = ""  # the AoE target (eS.L) the host must see; "" = not checked
    overhead_mb: int = 0  # what Xen needs per domain on top of its memory
    xen_version: str = ""  # a migration's target must run the source's Xen; "" = any


def shortfalls(c: Candidate, need: Need) -> list[str]:
    """What ``c`` lacks for ``need`` (empty: it qualifies)."""
    if c.facts is None:
        return [f"down ({c.error or 'no answer'})"]
    out: list[str] = []
    if c.drained:
        out.append("drained")
    if need.xen_version and c.facts.xen_version != need.xen_version:
        out.append(f"Xen {c.facts.xen_version or '?'}, not the source's {need.xen_version}")
    if need.bridge not in c.facts.bridges:
        out.append(f"no bridge {need.bridge} (has: {', '.join(c.facts.bridges) or 'none'})")
    if need.volume and need.volume not in c.facts.aoe_targets:
        out.append(f"does not see volume {need.volume}")
    want = need.memory_mb + need.overhead_mb
    if c.facts.free_memory_mb < want:
        out.append(f"free memory {c.facts.free_memory_mb} MiB < {want} MiB needed")
    return out


def place(candidates: list[Candidate], need: Need, on: str | None = None,
          what: str = "the instance") -> Candidate:
    """The host to run ``what`` on: ``on`` if given (and it qualifies), else the qualifying host
    with the most free memory."""
    if on is not None:
        chosen = [c for c in candidates if c.node.name == on]
        if not chosen:
            known = ", ".join(c.node.name for c in candidates) or "none"
            raise PlacementError(f"cannot place {what} on {on}: not an hnode "
                                 f"(hnodes: {known})")
        short = shortfalls(chosen[0], need)
        if short:
            raise PlacementError(f"cannot place {what} on {on}: {'; '.join(short)}")
        return chosen[0]
    if not candidates:
        raise PlacementError(f"cannot place {what}: no hnode in the inventory "
                             "(hcboot assign MAC hnode)")
    fit = [c for c in candidates if not shortfalls(c, need)]
    if not fit:
        why = "; ".join(f"{c.node.name}: {', '.join(shortfalls(c, need))}"
                        for c in sorted(candidates, key=lambda c: c.node.name))
        raise PlacementError(f"cannot place {what} ({need.memory_mb} MiB): no hnode fits: "
                             f"{why}")
    return min(fit, key=lambda c: (-(c.facts.free_memory_mb if c.facts else 0), c.node.name))

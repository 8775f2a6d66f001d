"""Which snode exports a replicated volume (issue 12, groundwork): the config node's decision.

One primary exports each volume (docs/replication.md); when it is lost, its peer is promoted
and exports the same shelf.slot, so the hnodes' aoe driver carries on with the new path.  The
snodes do not promote themselves: a lost DRBD connection alone says nothing about whether the
primary still serves hnodes (the replication link may be what broke).  The config node decides
from what it sees of both sides:

- ``reachable``: the snode reports to the config node and answers on the storage network;
- its DRBD status for the resource (role, connection, disk states);
- ``stale``: a side known to have missed writes.  While the primary reports itself Primary and
  not Connected, every write it acknowledges is on its disk only; the config node records the
  peer as stale from then until both report Connected and UpToDate again.  DRBD's own view
  cannot tell: a secondary cut off from its primary still calls its disk UpToDate.

The rules (:func:`decide`), in order: a volume with two primaries, or split brain on both
sides, is reported and nothing is decided; a reachable primary stays; otherwise the peer is
promoted only if it is reachable, its disk UpToDate, and not stale; when nothing qualifies the
answer says which side is missing what.  Standard library only, pure: the caller acts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from homecloud.agents.drbd import DrbdStatus

Action = Literal["keep", "promote", "wait", "refuse"]


@dataclass(frozen=True)
class Side:
    snode: str
    reachable: bool
    status: DrbdStatus | None  # None: the resource is not configured there (or no report)
    stale: bool = False


@dataclass(frozen=True)
class Decision:
    volume: str
    action: Action  # keep: it has its primary; promote: make ``primary`` primary and export;
    #               wait: nothing to do yet (no side can serve); refuse: a person decides
    primary: str | None
    why: str


def _split_brain(st: DrbdStatus | None) -> bool:
    return st is not None and st.connection == "StandAlone" and st.disk not in ("", "Diskless")


def decide(volume: str, sides: Sequence[Side], current: str | None = None) -> Decision:
    """Which snode should export ``volume`` now (``current``: the one that did)."""
    if len(sides) != 2 or sides[0].snode == sides[1].snode:
        return Decision(volume, "refuse", None,
                        f"volume {volume}: needs two replicas on two snodes, has "
                        f"{', '.join(s.snode for s in sides) or 'none'}")
    primaries = [s for s in sides if s.reachable and s.status and s.status.role == "Primary"]
    if len(primaries) == 2:
        return Decision(volume, "refuse", None,
                        f"volume {volume}: primary on both {sides[0].snode} and "
                        f"{sides[1].snode}: two writers; nothing decided until one side is "
                        "named to keep")
    if all(_split_brain(s.status) for s in sides if s.reachable) and \
            sum(s.reachable for s in sides) == 2:
        return Decision(volume, "refuse", None,
                        f"volume {volume}: split brain (both sides StandAlone with their "
                        "disks); resolve it by naming the side to keep")
    if primaries:
        return Decision(volume, "keep", primaries[0].snode,
                        f"volume {volume}: {primaries[0].snode} is primary and reachable")
    ordered = sorted(sides, key=lambda s: (s.snode != current, s.snode))
    missing: list[str] = []
    for s in ordered:
        st = s.status
        if not s.reachable:
            missing.append(f"{s.snode} unreachable")
        elif st is None or not st.configured:
            missing.append(f"{s.snode} has no device for it")
        elif st.disk != "UpToDate":
            missing.append(f"{s.snode}'s disk is {st.disk or 'unknown'}")
        elif s.stale:
            missing.append(f"{s.snode} missed writes while cut off from the primary")
        elif _split_brain(st):
            missing.append(f"{s.snode} is StandAlone (split brain?)")
        else:
            return Decision(volume, "promote", s.snode,
                            f"volume {volume}: no reachable primary; {s.snode} has UpToDate "
                            "data" + (f" ({'; '.join(missing)})" if missing else ""))
    unsafe = any(s.reachable and s.status and s.status.configured for s in sides)
    return Decision(volume, "refuse" if unsafe else "wait", None,
                    f"volume {volume}: no side can be primary: {'; '.join(missing)}"
                    + ("; promoting a side with older data loses acknowledged writes: bring "
                       "the other snode back, or name the side to keep" if unsafe else ""))

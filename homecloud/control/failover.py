"""Replicated volumes on the config node (issue 12): the arbiter between their two snodes.

Two decisions are the config node's, because only it sees both snodes (docs/replication.md):

``fence()``: a primary lost its DRBD peer.  Its I/O is frozen (``fencing
resource-and-stonith``) while its helper (homecloud.agents.drbdhelper) asks here.  If the
inventory names the asking snode the volume's primary, its peer is recorded ``outdated`` (it
misses every write from now on) and the primary may go on; otherwise (the peer was promoted
meanwhile) it is refused and stays frozen, so no write is ever acknowledged by two diverged
primaries.  The record is in the inventory before the answer leaves: a promotion decided later
reads it.

``failovers()``: a primary is gone.  When the volume's primary has not fetched its plan for
``dead_after`` seconds, and its replica reports that it lost its DRBD connection, holds
UpToDate data and is not outdated, the replica becomes the primary (the volume's snodes are
swapped) and the former primary outdated; the replica's next plan says so, it promotes (its
own fence-peer call is then granted: it is the primary of the inventory) and exports the same
shelf.slot, which the hnodes' aoe driver takes as a new path to the same target.  A replica
still Connected is never promoted (its primary is alive, whatever the config node sees).

Also ``failovers()``: once both sides report Connected UpToDate/UpToDate again (the resync is
done), the ``outdated`` mark is cleared.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from homecloud.agents.drbd import DrbdStatus
from homecloud.control.promotion import Side, decide
from homecloud.control.volumes import CONNECTED
from homecloud.core.model import Inventory, Node, VolumeExport

#: seconds without a plan fetch after which an snode counts as gone (agents poll every 5 s)
DEAD_AFTER = 12.0


class FenceRefused(Exception):
    """The asking snode may not go on as the volume's primary (why in the text)."""


@dataclass(frozen=True)
class Change:
    volume: str
    what: str          # "promoted" | "cleared"
    text: str


def replicated(inv: Inventory, minor: int) -> VolumeExport | None:
    return next((e for e in inv.exports if isinstance(e, VolumeExport)
                 and e.drbd_minor == minor), None)


def _side_names(inv: Inventory, e: VolumeExport) -> tuple[Node | None, Node | None]:
    s = e.snodes or ()
    return (inv.lookup(s[0]) if s else None, inv.lookup(s[1]) if len(s) > 1 else None)


def fence(inv: Inventory, asker: Node, minor: int) -> tuple[Inventory, str]:
    """``asker`` (an snode) lost the DRBD peer of resource ``minor`` while primary: the
    inventory with the peer outdated and the answer's text, or FenceRefused."""
    e = replicated(inv, minor)
    if e is None:
        raise FenceRefused(f"no replicated volume has DRBD minor {minor}")
    prim, rep = _side_names(inv, e)
    # by name, never by identity: ``asker`` may come from an earlier load of the inventory
    # than ``inv`` (two resources' helpers asking at once: the first answer rewrote it)
    names = {n.name for n in (prim, rep) if n is not None}
    if asker.name not in names:
        raise FenceRefused(f"volume {e.name} (minor {minor}) is kept by "
                           f"{' and '.join(e.snodes or ())}, not {asker.name}")
    if prim is None or rep is None or asker.name != prim.name:
        raise FenceRefused(f"volume {e.name}: {prim.name if prim else '?'} is its primary now, "
                           f"not {asker.name}: {asker.name} must not acknowledge writes")
    key = (e.snodes or ())[1]
    if e.outdated == key:
        return inv, f"volume {e.name}: {rep.name} was already outdated; {prim.name} goes on"
    if e.outdated is not None:
        # the primary itself is marked outdated: it missed writes and must not serve
        raise FenceRefused(f"volume {e.name}: {asker.name}'s copy is outdated (it missed "
                           "writes): it must not go on alone")
    new = replace(e, outdated=key)
    inv = inv.with_exports(tuple(new if x is e else x for x in inv.exports))
    return inv, (f"volume {e.name}: {rep.name} outdated (it misses writes from now on); "
                 f"{prim.name} goes on alone")


def status_of(report: Mapping[str, Any] | None, volume: str) -> DrbdStatus | None:
    """The DRBD state a storage agent last reported for ``volume`` (None: none)."""
    storage = (report or {}).get("storage")
    vols = storage.get("volumes") if isinstance(storage, dict) else None
    for v in vols or []:
        if isinstance(v, dict) and v.get("name") == volume and isinstance(v.get("drbd"), dict):
            d = v["drbd"]
            try:
                return DrbdStatus(int(d.get("minor", -1)), str(d.get("connection", "")),
                                  str(d.get("role", "")), str(d.get("peer_role", "")),
                                  str(d.get("disk", "")), str(d.get("peer_disk", "")))
            except (TypeError, ValueError):
                return None
    return None


def failovers(inv: Inventory, reports: Mapping[str, Mapping[str, Any]],
              reachable: Callable[[Node], bool]) -> tuple[Inventory, list[Change]]:
    """The inventory after this round's promotions and cleared marks, and what changed."""
    changes: list[Change] = []
    exports = list(inv.exports)
    for i, e in enumerate(exports):
        if not isinstance(e, VolumeExport) or e.drbd_minor is None or len(e.snodes or ()) != 2:
            continue
        prim, rep = _side_names(inv, e)
        if prim is None or rep is None:
            continue
        sp, sr = status_of(reports.get(prim.mac), e.name), status_of(reports.get(rep.mac), e.name)
        keys = e.snodes or ()
        if e.keep is not None:
            # a person resolved a split brain: done once both sides are connected again
            if sp is not None and sr is not None and sp.connection in CONNECTED and \
                    sr.connection in CONNECTED:
                exports[i] = replace(e, keep=None)
                changes.append(Change(e.name, "cleared",
                                      f"volume {e.name}: split brain resolved, {e.keep}'s "
                                      "data kept; both sides connected"))
            continue
        if e.outdated is not None and sp is not None and sr is not None and \
                reachable(prim) and reachable(rep) and \
                all(s.connection == "Connected" and s.disk == "UpToDate"
                    and s.peer_disk == "UpToDate" for s in (sp, sr)):
            exports[i] = replace(e, outdated=None)
            changes.append(Change(e.name, "cleared",
                                  f"volume {e.name}: {e.outdated} is in step again (both "
                                  "sides Connected UpToDate/UpToDate)"))
            continue
        if reachable(prim):
            continue
        if sr is None or sr.connection in CONNECTED:
            continue      # the replica still sees its primary (or says nothing): no failover
        d = decide(e.name, [Side(prim.name, False, sp, e.outdated == keys[0]),
                            Side(rep.name, reachable(rep), sr, e.outdated == keys[1])],
                   current=prim.name)
        if d.action != "promote" or d.primary != rep.name:
            continue
        exports[i] = replace(e, snodes=(keys[1], keys[0]), outdated=keys[0])
        changes.append(Change(e.name, "promoted",
                              f"volume {e.name}: {prim.name} gone (no plan fetched for "
                              f"{DEAD_AFTER:g}s or more, or it said it is shutting down) and "
                              f"{rep.name} {sr.connection} with "
                              f"UpToDate data: {rep.name} is its primary now and exports "
                              f"{e.target}; {prim.name} outdated until it has resynced"))
    if not changes:
        return inv, []
    return inv.with_exports(tuple(exports)), changes


class Liveness:
    """When each snode last fetched its plan (in this process: a restarted config node
    gives every snode ``dead_after`` seconds before calling it gone)."""

    def __init__(self, dead_after: float = DEAD_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dead_after, self.clock = dead_after, clock
        self.started = clock()
        self.seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def saw(self, mac: str) -> None:
        with self._lock:
            self.seen[mac] = self.clock()

    def left(self, mac: str) -> None:
        """The snode of ``mac`` said it is shutting down (its last report, state ``leaving``):
        gone from now on, until it fetches a plan again."""
        with self._lock:
            self.seen[mac] = self.clock() - self.dead_after - 1.0

    def age(self, node: Node) -> float:
        """Seconds since ``node`` (any of its NICs) last fetched its plan."""
        with self._lock:
            last = max((self.seen.get(n.mac, self.started) for n in node.nics),
                       default=self.started)
        return self.clock() - last

    def reachable(self, node: Node) -> bool:
        return self.age(node) < self.dead_after

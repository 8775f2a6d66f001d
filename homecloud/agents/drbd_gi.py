"""DRBD 8.4 data generation identifiers (issue 12): read them and say how two replicas relate.

Each side of a resource keeps, in its metadata, a current UUID, a bitmap UUID and two history
UUIDs, plus flags (``drbdadm-84 get-gi RES`` / ``drbdmeta ... get-gi`` print them as
``CURRENT:BITMAP:HISTORY1:HISTORY2:f1:f2:...``).  Comparing both sides' identifiers is how DRBD
decides, when they connect, who is the sync source or that they diverged (split brain).  The
storage agent reports each side's identifiers; the config node puts both sides next to each
other in ``hcboot volumes`` and in the split-brain report, so that the person who resolves it
sees what each side holds before naming the side to keep.

``relation()`` follows the order of DRBD 8.4's ``drbd_uuid_compare`` (drbd_receiver.c) for the
cases a report needs: both just created, equal current UUIDs, one side's bitmap UUID equal to
the other's current (a bitmap-based resync), a current UUID found in the other side's history
(a full resync), equal non-zero bitmap UUIDs or equal history (split brain: both wrote since
they parted), and nothing in common (unrelated data).  The lowest bit of a UUID is DRBD's
"was primary" flag and is ignored, as DRBD does.  DRBD itself decides at connect time; this is
for reporting, never for choosing a side.

Standard library only: this module ships into the node images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from homecloud.core.errors import HomecloudError

JUST_CREATED = 0x4      # UUID_JUST_CREATED: the current UUID of fresh metadata
FLAG_NAMES = ("consistent", "was_up_to_date", "primary", "connected", "full_sync_pending",
              "peer_out_of_date", "crashed_primary")
_HEX = re.compile(r"^[0-9A-Fa-f]{16}$")


class GiError(HomecloudError, ValueError):
    """A generation-identifier text that cannot be read; names the text and the field."""


@dataclass(frozen=True)
class GenerationIds:
    current: int
    bitmap: int
    history: tuple[int, int]
    flags: dict[str, bool]

    def text(self) -> str:
        """As drbdadm prints them (the four UUIDs), for reports."""
        return ":".join(f"{u:016X}" for u in (self.current, self.bitmap, *self.history))


def parse_gi(text: str, what: str = "get-gi") -> GenerationIds:
    """One ``get-gi`` line: four 16-digit hex UUIDs, then 0/1 flags (DRBD 8.4 prints seven)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    parts = line.split(":")
    if len(parts) < 5:
        raise GiError(f"{what}: {line!r}: expected CURRENT:BITMAP:HISTORY1:HISTORY2:FLAGS...")
    uuids = []
    names = ("current", "bitmap", "history1", "history2")
    for i, (name, p) in enumerate(zip(names, parts[:4], strict=True)):
        if not _HEX.match(p):
            raise GiError(f"{what}: {line!r}: field {i + 1} ({name}) {p!r} is not 16 hex digits")
        uuids.append(int(p, 16))
    flags: dict[str, bool] = {}
    for i, p in enumerate(parts[4:]):
        if p not in ("0", "1"):
            raise GiError(f"{what}: {line!r}: flag {i + 1} {p!r} is not 0 or 1")
        if i < len(FLAG_NAMES):
            flags[FLAG_NAMES[i]] = p == "1"
    return GenerationIds(uuids[0], uuids[1], (uuids[2], uuids[3]), flags)


# relation() results: whose data is newer, and whether a resync can be bitmap-based
IDENTICAL = "identical"
BOTH_NEW = "both-new"                   # fresh metadata on both sides: nothing written yet
LOCAL_AHEAD = "local-ahead"             # this side is the sync source (bitmap resync)
PEER_AHEAD = "peer-ahead"               # the peer is the sync source (bitmap resync)
LOCAL_AHEAD_FULL = "local-ahead-full"   # ... a full resync (no common bitmap)
PEER_AHEAD_FULL = "peer-ahead-full"
SPLIT_BRAIN = "split-brain"             # both wrote since they parted: a person decides
UNRELATED = "unrelated"                 # no generation in common: not replicas of one volume


def relation(local: GenerationIds, peer: GenerationIds) -> str:
    """How ``local``'s data relates to ``peer``'s (see the module doc for the rules)."""
    def u(x: int) -> int:
        return x & ~1

    mine, theirs = u(local.current), u(peer.current)
    my_bitmap, their_bitmap = u(local.bitmap), u(peer.bitmap)
    my_history, their_history = ({u(h) for h in g.history} - {0} for g in (local, peer))
    if mine == JUST_CREATED and theirs == JUST_CREATED:
        return BOTH_NEW
    if mine == JUST_CREATED:
        return PEER_AHEAD_FULL
    if theirs == JUST_CREATED:
        return LOCAL_AHEAD_FULL
    if mine == theirs:
        return IDENTICAL
    if their_bitmap and mine == their_bitmap:
        return PEER_AHEAD
    if my_bitmap and theirs == my_bitmap:
        return LOCAL_AHEAD
    if mine in their_history:
        return PEER_AHEAD_FULL
    if theirs in my_history:
        return LOCAL_AHEAD_FULL
    if (my_bitmap and my_bitmap == their_bitmap) or my_history & their_history:
        return SPLIT_BRAIN
    return UNRELATED

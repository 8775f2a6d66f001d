"""DRBD generation identifiers: the get-gi reader and how two replicas relate (issue 12's
split-brain report shows both sides' identifiers and this relation)."""

from __future__ import annotations

import pytest

from homecloud.agents import drbd_gi as gi
from homecloud.agents.drbd_gi import GenerationIds, GiError, parse_gi, relation

FRESH = "0000000000000004:0000000000000000:0000000000000000:0000000000000000:0:0:0:0:0:0:0"


def g(current: int, bitmap: int = 0, h1: int = 0, h2: int = 0) -> GenerationIds:
    return GenerationIds(current, bitmap, (h1, h2), {})


def test_parse_real_drbdmeta_output() -> None:
    # as `drbdmeta ... get-gi` printed it on fresh metadata (tests/integration/test_drbd_gi.py)
    fresh = parse_gi(FRESH + "\n")
    assert (fresh.current, fresh.bitmap, fresh.history) == (4, 0, (0, 0))
    assert fresh.flags == dict.fromkeys(gi.FLAG_NAMES, False)
    x = parse_gi("0A1B2C3D4E5F6071:1122334455667788:0000000000000000:0000000000000000:"
                 "1:1:0:0:0:0:0")
    assert x.current == 0x0A1B2C3D4E5F6071 and x.bitmap == 0x1122334455667788
    assert x.flags["consistent"] and x.flags["was_up_to_date"] and not x.flags["primary"]
    assert x.text() == "0A1B2C3D4E5F6071:1122334455667788:0000000000000000:0000000000000000"


@pytest.mark.parametrize(("text", "needle"), [
    ("", "expected CURRENT:BITMAP"),
    ("0000000000000004:0", "expected CURRENT:BITMAP"),
    ("000000000000004:0000000000000000:0000000000000000:0000000000000000:0", "field 1 (current)"),
    ("0000000000000004:000000000000000G:0000000000000000:0000000000000000:0", "field 2 (bitmap)"),
    ("0000000000000004:0000000000000000:0000000000000000:0000000000000000:2", "flag 1 '2'"),
])
def test_parse_errors_name_the_field(text: str, needle: str) -> None:
    with pytest.raises(GiError, match="snode1 v-web1") as ei:
        parse_gi(text, what="snode1 v-web1")
    assert needle in str(ei.value)


A, B, C, D = 0x1111111111111110, 0x2222222222222220, 0x3333333333333330, 0x4444444444444440


@pytest.mark.parametrize(("local", "peer", "want"), [
    (g(4), g(4), gi.BOTH_NEW),
    (g(4), g(A), gi.PEER_AHEAD_FULL),
    (g(A), g(4), gi.LOCAL_AHEAD_FULL),
    (g(A, B), g(A | 1, C), gi.IDENTICAL),          # bit 0 (was primary) is not compared
    # the peer wrote while this side was away: its bitmap UUID is this side's current
    (g(A), g(B, A), gi.PEER_AHEAD),
    (g(B, A), g(A), gi.LOCAL_AHEAD),
    (g(A), g(C, B, A), gi.PEER_AHEAD_FULL),        # this side's data is in the peer's history
    (g(C, B, A), g(A), gi.LOCAL_AHEAD_FULL),
    # both wrote since they parted at A: each moved A into its bitmap UUID
    (g(B, A), g(C, A), gi.SPLIT_BRAIN),
    (g(B, 0, D), g(C, 0, D), gi.SPLIT_BRAIN),      # bitmaps gone, a history in common
    (g(A), g(B), gi.UNRELATED),
])
def test_relation(local: GenerationIds, peer: GenerationIds, want: str) -> None:
    assert relation(local, peer) == want
    mirror = {gi.PEER_AHEAD: gi.LOCAL_AHEAD, gi.LOCAL_AHEAD: gi.PEER_AHEAD,
              gi.PEER_AHEAD_FULL: gi.LOCAL_AHEAD_FULL, gi.LOCAL_AHEAD_FULL: gi.PEER_AHEAD_FULL}
    assert relation(peer, local) == mirror.get(want, want)

"""The config node as the arbiter of replicated volumes (issue 12): fence-peer answers,
promotion of the replica when the primary is gone, the outdated mark; through the real HTTP
routes (control/http.py) and the real inventory code, and the snode's fence-peer helper
(agents/drbdhelper.py) against that route.  DRBD itself runs in the lab
(tests/e2e/test_instances.py); here its states are what the agents would report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from homecloud.agents import drbdhelper
from homecloud.control.failover import FenceRefused, Liveness, failovers, fence
from homecloud.control.http import ControlApp
from homecloud.control.reports import Reports
from homecloud.core.ids import Target
from homecloud.core.manifest import ImageStore
from homecloud.core.model import Inventory, Nic, Node, VolumeExport
from homecloud.inventory.protocol import update
from homecloud.inventory.schema import parse_inventory, to_yaml
from tests.support.memstore import MemoryStore

pytestmark = pytest.mark.unit

SN1, SN2, HN1 = "52:54:00:5a:00:01", "52:54:00:5a:00:02", "52:54:00:4b:00:01"
IP = {SN1: "198.51.100.11", SN2: "198.51.100.12", HN1: "198.51.100.21"}
NODES = (Node("sn1", "snode", (Nic(SN1, ip=IP[SN1]),)),
         Node("sn2", "snode", (Nic(SN2, ip=IP[SN2]),)),
         Node("hn1", "hnode", (Nic(HN1, ip=IP[HN1]),)))
VOL = VolumeExport(Target(10, 0), "rw", ("hnode",), ("sn1", "sn2"), name="db", size=1 << 30,
                   drbd_minor=0)


def inv(e: VolumeExport = VOL) -> Inventory:
    return Inventory(nodes=NODES, exports=(e,))


def drbd_report(conn: str, role: str, peer_role: str, disk: str, peer_disk: str,
                volume: str = "db") -> dict[str, Any]:
    return {"storage": {"volumes": [{"name": volume, "drbd": {
        "minor": 0, "connection": conn, "role": role, "peer_role": peer_role, "disk": disk,
        "peer_disk": peer_disk}}]}}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------ fence (pure)
def test_the_primary_that_lost_its_peer_goes_on_and_the_peer_is_outdated() -> None:
    i = inv()
    new, text = fence(i, i.lookup("sn1"), 0)  # type: ignore[arg-type]
    assert new.volume("db").outdated == "sn2"  # type: ignore[union-attr]
    assert "sn2 outdated" in text
    again, text2 = fence(new, new.lookup("sn1"), 0)  # type: ignore[arg-type]
    assert again is new and "already outdated" in text2


def test_a_replica_or_a_stranger_is_refused_so_two_primaries_never_both_acknowledge() -> None:
    i = inv()
    with pytest.raises(FenceRefused, match="sn1 is its primary now, not sn2"):
        fence(i, i.lookup("sn2"), 0)  # type: ignore[arg-type]
    with pytest.raises(FenceRefused, match="no replicated volume has DRBD minor 7"):
        fence(i, i.lookup("sn1"), 7)  # type: ignore[arg-type]
    with pytest.raises(FenceRefused, match="not hn1"):
        fence(i, i.lookup("hn1"), 0)  # type: ignore[arg-type]
    # a primary whose own copy is marked outdated must not go on alone
    j = inv(VolumeExport(**{**VOL.__dict__, "outdated": "sn1"}))
    with pytest.raises(FenceRefused, match="sn1's copy is outdated"):
        fence(j, j.lookup("sn1"), 0)  # type: ignore[arg-type]


def test_two_resources_fenced_at_once_are_both_granted_to_their_primary() -> None:
    """An snode that is primary of two volumes loses its peer: both resources' helpers ask at
    the same moment.  The route looked the asker up before the first answer rewrote the
    inventory, so the second decision sees a freshly loaded inventory whose Node objects are
    not the asker's: it must still be granted (the CI found it refused: 'sn1 is its primary
    now, not sn1', and the guest got EIO after the primary stayed frozen)."""
    two = Inventory(nodes=NODES, exports=(VOL, VolumeExport(
        Target(10, 1), "rw", ("hnode",), ("sn1", "sn2"), name="web", size=1 << 30,
        drbd_minor=1)))
    asker = two.lookup("sn1")
    assert isinstance(asker, Node)
    first, _ = fence(two, asker, 0)
    reloaded = parse_inventory(to_yaml(first), "inv")      # what update() hands the second
    assert reloaded.lookup("sn1") is not asker
    second, text = fence(reloaded, asker, 1)
    assert "sn2 outdated" in text
    assert second.volume("web").outdated == "sn2"          # type: ignore[union-attr]
    assert second.volume("db").outdated == "sn2"           # type: ignore[union-attr]
    # and a stale asker that is the replica is still refused
    with pytest.raises(FenceRefused, match="sn1 is its primary now, not sn2"):
        fence(reloaded, two.lookup("sn2"), 1)  # type: ignore[arg-type]


# ------------------------------------------------------------------ failovers (pure)
def reports(p: dict[str, Any] | None, r: dict[str, Any] | None) -> dict[str, Any]:
    out = {}
    if p is not None:
        out[SN1] = p
    if r is not None:
        out[SN2] = r
    return out


ALIVE_BOTH = reports(drbd_report("Connected", "Primary", "Secondary", "UpToDate", "UpToDate"),
                     drbd_report("Connected", "Secondary", "Primary", "UpToDate", "UpToDate"))
LOST = drbd_report("WFConnection", "Secondary", "Unknown", "UpToDate", "DUnknown")


def test_a_dead_primary_is_replaced_by_its_up_to_date_replica() -> None:
    rep = reports(None, LOST)
    new, ch = failovers(inv(), rep, lambda n: n.name != "sn1")
    e = new.volume("db")
    assert e is not None and e.snodes == ("sn2", "sn1") and e.outdated == "sn1"
    assert e.target == VOL.target                         # the same shelf.slot
    assert [c.what for c in ch] == ["promoted"] and "sn2 is its primary now" in ch[0].text
    # round trip through the inventory file format
    assert parse_inventory(to_yaml(new), "inv").volume("db") == e


@pytest.mark.parametrize("why,rep,alive", [
    ("the primary fetches its plan", reports(None, LOST), {"sn1", "sn2"}),
    ("the replica still Connected", ALIVE_BOTH, {"sn2"}),
    ("the replica says nothing", reports(None, None), {"sn2"}),
    ("the replica is outdated", reports(None, LOST), {"sn2"}),
    ("the replica's disk is Inconsistent",
     reports(None, drbd_report("WFConnection", "Secondary", "Unknown", "Inconsistent",
                               "DUnknown")), {"sn2"}),
    ("the replica is gone too", reports(None, LOST), set()),
])
def test_no_promotion_when_it_could_lose_writes_or_make_two_primaries(
        why: str, rep: dict[str, Any], alive: set[str]) -> None:
    e = VolumeExport(**{**VOL.__dict__, "outdated": "sn2"}) if "outdated" in why else VOL
    new, ch = failovers(inv(e), rep, lambda n: n.name in alive)
    assert ch == [] and new.volume("db") == e, why


def test_the_outdated_mark_clears_once_both_sides_are_in_step() -> None:
    e = VolumeExport(**{**VOL.__dict__, "outdated": "sn2"})
    syncing = reports(drbd_report("SyncSource", "Primary", "Secondary", "UpToDate",
                                  "Inconsistent"),
                      drbd_report("SyncTarget", "Secondary", "Primary", "Inconsistent",
                                  "UpToDate"))
    assert failovers(inv(e), syncing, lambda n: True)[1] == []
    new, ch = failovers(inv(e), ALIVE_BOTH, lambda n: True)
    assert new.volume("db").outdated is None and ch[0].what == "cleared"  # type: ignore[union-attr]


def test_liveness_counts_from_the_last_plan_fetch_and_from_its_own_start() -> None:
    clock = Clock()
    live = Liveness(dead_after=12, clock=clock)
    sn1, sn2 = NODES[0], NODES[1]
    clock.t += 11
    assert live.reachable(sn1)             # a fresh config node gives every snode time
    live.saw(SN2)
    clock.t += 2
    assert not live.reachable(sn1) and live.reachable(sn2)
    assert live.age(sn2) == pytest.approx(2)


# ------------------------------------------------------------------ the HTTP route
def _app(tmp: Path, e: VolumeExport = VOL) -> tuple[ControlApp, MemoryStore, Clock]:
    store = MemoryStore()
    update(store, lambda _i: inv(e))
    macs = {ip: mac for mac, ip in IP.items()}
    app = ControlApp(store, ImageStore(tmp / "images"), tmp / "state", lambda: "http://x",
                     mac_of=macs.get, is_admin=lambda ip, h: ip == "127.0.0.1")
    clock = Clock()
    app.liveness = Liveness(clock=clock)
    (tmp / "state").mkdir(exist_ok=True)
    return app, store, clock


def _fence(app: ControlApp, mac: str, body: bytes, ip: str | None = None) -> tuple[int, str]:
    r = app.handle("POST", f"/fence/{mac}", ip or IP[mac], {}, body)
    assert r is not None
    return r.status, bytes(r.body).decode()


def test_fence_route_outdates_the_peer_for_the_primary_and_refuses_others(
        tmp_path: Path) -> None:
    app, store, _ = _app(tmp_path)
    status, body = _fence(app, SN2, b'{"minor": 0}')
    assert status == 409 and "sn1 is its primary now" in body
    assert store.snapshot().inventory.volume("db").outdated is None  # type: ignore[union-attr]
    status, body = _fence(app, SN1, b'{"minor": 0}')
    assert status == 200 and json.loads(body)["verdict"] == "outdated"
    assert store.snapshot().inventory.volume("db").outdated == "sn2"  # type: ignore[union-attr]
    # another machine speaking for sn1 is refused before anything is looked at
    status, body = _fence(app, SN1, b'{"minor": 0}', ip=IP[HN1])
    assert status == 403 and "198.51.100.21 is 52:54:00:4b:00:01" in body
    for bad, why in ((b"{", "bad fence request"), (b'{"minor": -1}', "not a DRBD minor"),
                     (b'{"minor": true}', "not a DRBD minor"), (b"[]", "bad fence request")):
        status, body = _fence(app, SN1, bad)
        assert status == 400 and why in body, bad
    status, body = _fence(app, HN1, b'{"minor": 0}')
    assert status == 403 and "not a storage node" in body


def test_plan_fetches_drive_the_failover(tmp_path: Path) -> None:
    app, store, clock = _app(tmp_path)
    Reports(tmp_path / "state").put(SN2, {"state": "exports-ready", "volumes": LOST["storage"][
        "volumes"]})
    plan = app.handle("GET", f"/plan/{SN2}.json", IP[SN2], {}, b"")
    assert plan is not None and plan.status == 200
    assert json.loads(bytes(plan.body))["exports"][0]["drbd"]["primary"] is False
    app.handle("GET", f"/plan/{SN1}.json", IP[SN1], {}, b"")
    clock.t += 13                                        # sn1 silent since
    plan = app.handle("GET", f"/plan/{SN2}.json", IP[SN2], {}, b"")
    assert plan is not None
    doc = json.loads(bytes(plan.body))
    assert doc["exports"][0]["drbd"]["primary"] is True and doc["exports"][0]["target"] == "e10.0"
    e = store.snapshot().inventory.volume("db")
    assert e is not None and e.snodes == ("sn2", "sn1") and e.outdated == "sn1"
    # now sn2's fence-peer (it promotes with its peer unknown) is granted
    status, body = _fence(app, SN2, b'{"minor": 0}')
    assert status == 200 and "sn1 was already outdated" in body


def test_a_clean_shutdown_report_promotes_the_replica_at_its_next_fetch(tmp_path: Path) -> None:
    """sn1 says it is leaving (its agent's last report on poweroff): sn2 is promoted at its
    very next plan fetch, not DEAD_AFTER seconds later, and `hcboot volumes` says sn1 went
    down cleanly; sn1 fetching a plan again counts as alive again."""
    app, store, clock = _app(tmp_path)
    app.handle("GET", f"/plan/{SN1}.json", IP[SN1], {}, b"")
    Reports(tmp_path / "state").put(SN2, {"state": "exports-ready", "volumes": LOST["storage"][
        "volumes"]})
    leaving = {"version": 1, "node": SN1, "state": "leaving", "detail": "shutting down",
               "facts": {}}
    r = app.handle("POST", f"/report/{SN1}", IP[SN1], {}, json.dumps(leaving).encode())
    assert r is not None and r.status == 200
    clock.t += 1                                          # well inside DEAD_AFTER
    plan = app.handle("GET", f"/plan/{SN2}.json", IP[SN2], {}, b"")
    assert plan is not None
    assert json.loads(bytes(plan.body))["exports"][0]["drbd"]["primary"] is True
    e = store.snapshot().inventory.volume("db")
    assert e is not None and e.snodes == ("sn2", "sn1") and e.outdated == "sn1"
    from homecloud.control.reports import read_reports
    from homecloud.control.volstatus import volume_status
    st = volume_status(store.snapshot().inventory, read_reports(tmp_path / "state"), 2e9)[0]
    assert [x.export for x in st.replicas] == ["absent", "down"]
    assert any("sn1: its storage node shut down cleanly" in p for p in st.problems), st
    # a leaving report is refused from another machine like every report
    r = app.handle("POST", f"/report/{SN2}", IP[SN1], {}, json.dumps(
        {**leaving, "node": SN2}).encode())
    assert r is not None and r.status == 403
    app.handle("GET", f"/plan/{SN1}.json", IP[SN1], {}, b"")
    assert app.liveness.reachable(NODES[0])


# ------------------------------------------------------------------ the snode's helper
def test_helper_exit_codes_follow_the_config_nodes_answer(tmp_path: Path) -> None:
    app, _, _ = _app(tmp_path)
    (tmp_path / "run" / "drbd").mkdir(parents=True)
    (tmp_path / "run" / "drbd" / "fence.json").write_text(
        json.dumps({"server": "http://198.51.100.1", "mac": SN1}))
    env = {"HC_RUN": str(tmp_path / "run"), "DRBD_PEER_ADDRESS": IP[SN2]}
    lines: list[str] = []

    def post_as(ip: str) -> drbdhelper.Post:
        def post(url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
            assert url == f"http://198.51.100.1/fence/{SN1}"
            r = app.handle("POST", url.split("198.51.100.1", 1)[1], ip, {}, body)
            assert r is not None
            return r.status, bytes(r.body)
        return post

    assert drbdhelper.fence("hc0", env, post_as(IP[SN1]), log=lines.append) == 4
    assert drbdhelper.fence("hc0", env, post_as(IP[HN1]), log=lines.append) == 1
    assert "refused (403)" in lines[-1]
    assert drbdhelper.fence("r0", env, post_as(IP[SN1]), log=lines.append) == 1
    # the config node away: asked again every second until the deadline; writes wait
    clock = Clock()
    calls: list[int] = []

    def down(url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        calls.append(1)
        raise ConnectionRefusedError(111, "Connection refused")

    def sleep(s: float) -> None:
        clock.t += s
    assert drbdhelper.fence("hc0", env, down, sleep=sleep, clock=clock, log=lines.append,
                            retry_for=10) == 1
    assert len(calls) == 11 and "no answer from the config node for 10s" in lines[-1]
    assert drbdhelper.main(["split-brain", "hc0"], env) == 0


# ------------------------------------------------------------------ split brain
GI1 = "8B5D1A3A59F130F6:50C384DFE23B2CCE:8B5C1A3A59F130F7:0000000000000000:1:1:0:1:0:0:0"
GI2 = "F052FA307D08A06F:50C384DFE23B2CCE:8B5C1A3A59F130F7:0000000000000000:1:1:1:1:0:0:0"


def test_split_brain_is_shown_with_both_generations_and_resolved_only_by_a_person(
        tmp_path: Path) -> None:
    from homecloud.control.exports import drbd_link
    from homecloud.control.volstatus import volume_status
    sb = {mac: {"storage": {"time": 0, "exports": [{"target": "e10.0", "state": st}],
                            "volumes": [{"name": "db", "kind": "volume", "drbd": {
                                "minor": 0, "connection": "StandAlone", "role": "Primary",
                                "peer_role": "Unknown", "disk": "UpToDate",
                                "peer_disk": "DUnknown", "gi": gi}}]}}
          for mac, st, gi in ((SN1, "served", GI1), (SN2, "replica", GI2))}
    i = inv()
    v = volume_status(i, sb, 0)[0]
    msg = next(p for p in v.problems if "both sides StandAlone" in p)
    assert GI1 in msg and GI2 in msg and "split-brain" in msg
    assert "hcboot volume resolve db --keep SNODE" in msg
    # nothing decided by itself: no promotion, no mark cleared
    assert failovers(i, sb, lambda n: n.name == "sn2") == (i, [])
    # a person keeps sn2: the plans say keep / discard, sn2 becomes the primary
    from dataclasses import replace
    j = inv(replace(VOL, snodes=("sn2", "sn1"), keep="sn2", outdated="sn1"))
    l1 = drbd_link(j, j.volume("db"), j.lookup("sn1"))[0]  # type: ignore[arg-type]
    l2 = drbd_link(j, j.volume("db"), j.lookup("sn2"))[0]  # type: ignore[arg-type]
    assert l1 is not None and l2 is not None
    assert (l1.resolve, l1.primary, l2.resolve, l2.primary) == ("discard", False, "keep", True)
    assert "being resolved in favour of sn2" in " ".join(volume_status(j, sb, 0)[0].problems)
    assert parse_inventory(to_yaml(j), "inv").volume("db") == j.volume("db")
    # once both are connected (resyncing), the choice is cleared; outdated stays until in step
    syncing = reports(drbd_report("SyncTarget", "Secondary", "Primary", "Inconsistent",
                                  "UpToDate"),
                      drbd_report("SyncSource", "Primary", "Secondary", "UpToDate",
                                  "Inconsistent"))
    new, ch = failovers(j, syncing, lambda n: True)
    e = new.volume("db")
    assert e is not None and e.keep is None and e.outdated == "sn1" and ch[0].what == "cleared"

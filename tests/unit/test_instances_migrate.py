"""Live migration, its prechecks, ``migrate --cleanup`` and ``node drain`` of the instance
service, against the in-memory HostDriver/VolumeApi doubles (tests/support/instdoubles.py: the
real ones need Xen and LVM inside QEMU)."""

from __future__ import annotations

import pytest

from homecloud.control.instances import InstanceService
from homecloud.control.lifecycle import InstanceError
from homecloud.control.placement import PlacementError
from homecloud.core.model import Nic, Node
from homecloud.inventory.protocol import update
from tests.support.instdoubles import DOMU, FakeHost, FakeHosts, FakeVolumes, lab_inventory
from tests.support.memstore import MemoryBacking, MemoryStore


class World:
    def __init__(self, hnodes: int = 2) -> None:
        self.store = MemoryStore(MemoryBacking(), ("hnode", "snode", "domu"))
        update(self.store, lambda _inv: lab_inventory(hnodes))
        self.volumes = FakeVolumes(DOMU)
        self.h = {f"hnode{i}": FakeHost(f"hnode{i}", 2048) for i in range(1, hnodes + 1)}
        self.hosts = FakeHosts(*self.h.values(), volumes=self.volumes)
        self.svc = InstanceService(self.store, self.hosts, self.volumes)
        self.steps: list[str] = []

    def step(self, msg: str) -> None:
        self.steps.append(msg)

    def run(self, name: str, on: str, mb: int = 256) -> None:
        self.svc.create(name, "domu", mb, on=on)


@pytest.fixture
def w() -> World:
    return World()


def test_migrate_records_placement_after_the_target_reports(w: World) -> None:
    w.run("web1", "hnode1")
    res = w.svc.migrate("web1", progress=w.step)
    assert (res.source, res.target) == ("hnode1", "hnode2")
    inst = w.svc.get("web1")
    assert (inst.state, inst.host) == ("running", "hnode2")
    assert "web1" in w.h["hnode2"].domains and "web1" not in w.h["hnode1"].domains
    assert "web1" in w.h["hnode1"].cleaned  # seed and xl config removed from the source
    assert any(s.startswith("prechecks passed: web1 hnode1 -> hnode2") for s in w.steps)
    w.svc.migrate("web1", to="hnode1")  # and back
    assert w.svc.get("web1").host == "hnode1"


def _refused(w: World, match: str, to: str | None = "hnode2") -> None:
    calls = [c for c in w.hosts.calls if c[0] == "migrate"]
    with pytest.raises(InstanceError, match=match):
        w.svc.migrate("web1", to=to)
    assert [c for c in w.hosts.calls if c[0] == "migrate"] == calls  # xl migrate never ran
    inst = w.svc.get("web1")
    assert (inst.state, inst.host, inst.last_error) == ("running", "hnode1", "")


def test_precheck_target_down(w: World) -> None:
    w.run("web1", "hnode1")
    w.h["hnode2"].up = False
    _refused(w, "cannot migrate: cannot place instance web1 on hnode2: down "
                r"\(hnode2: ssh root@198.51.100.22: connection timed out\)")


def test_precheck_target_drained(w: World) -> None:
    w.run("web1", "hnode1")
    update(w.store, lambda inv: inv.with_drained(("hnode2",)))
    _refused(w, "on hnode2: drained")
    _refused(w, "no hnode fits: hnode2: drained", to=None)


def test_precheck_xen_version(w: World) -> None:
    w.run("web1", "hnode1")
    w.h["hnode2"].xen = "4.18.0"
    _refused(w, "on hnode2: Xen 4.18.0, not the source's 4.17.3")


def test_precheck_memory(w: World) -> None:
    w.run("web1", "hnode1", 1024)
    w.run("big", "hnode2", 1536)
    _refused(w, "on hnode2: free memory 512 MiB < 1024 MiB needed")


def test_precheck_volume_visible(w: World) -> None:
    w.run("web1", "hnode1")
    target = str(w.volumes.exports[w.svc.get("web1").volume].target)
    w.h["hnode2"].blind.add(target)
    _refused(w, f"on hnode2: does not see volume {target}")


def test_precheck_bridge(w: World) -> None:
    w.run("web1", "hnode1")
    w.h["hnode2"].bridges = ("xenbr0",)
    _refused(w, r"on hnode2: no bridge xenbr1 \(has: xenbr0\)")


def test_precheck_same_host_unknown_host_and_not_running(w: World) -> None:
    w.run("web1", "hnode1")
    _refused(w, "already runs on hnode1", to="hnode1")
    _refused(w, "on hnode9: not an hnode", to="hnode9")
    _refused(w, "on sn1: not an hnode", to="sn1")
    del w.h["hnode1"].domains["web1"]  # it crashed, the record does not know yet
    _refused(w, "not running on hnode1.*--cleanup web1")


def test_precheck_single_hnode_refuses_clearly() -> None:
    w = World(hnodes=1)
    w.run("web1", "hnode1")
    with pytest.raises(PlacementError, match=r"no hnode in the inventory"):
        w.svc.migrate("web1")


def test_migrate_refused_by_the_stream_keeps_the_source_and_says_cleanup(w: World) -> None:
    w.run("web1", "hnode1")
    w.hosts.fail["migrate"] = "refused"
    with pytest.raises(InstanceError, match=r"migrate failed: hnode1: xl migrate web1 hnode2: "
                       r"ssh: Host key verification failed.*state now error"):
        w.svc.migrate("web1")
    inst = w.svc.get("web1")
    assert (inst.state, inst.host) == ("error", "hnode1")  # placement not moved
    assert "Host key verification failed" in inst.last_error
    repaired = w.svc.cleanup("web1")
    assert (repaired.state, repaired.host, repaired.last_error) == ("running", "hnode1", "")


def test_migrate_target_not_reporting_is_an_error(w: World) -> None:
    w.run("web1", "hnode1")
    w.hosts.fail["migrate"] = "vanished"
    with pytest.raises(InstanceError, match=r"hnode2 does not list web1 running"):
        w.svc.migrate("web1")
    assert w.svc.get("web1").host == "hnode1"  # placement recorded only after the report


def test_migrate_target_paused_is_not_running(w: World) -> None:
    w.run("web1", "hnode1")
    w.hosts.fail["migrate"] = "paused"
    with pytest.raises(InstanceError, match=r"hnode2 does not list web1 running "
                       r"\(xl list there: web1 \(--p---\)\)"):
        w.svc.migrate("web1")
    inst = w.svc.get("web1")
    assert (inst.state, inst.host) == ("error", "hnode1")
    assert w.svc.cleanup("web1").host == "hnode2"  # it is there: cleanup records it


def test_cleanup_halfway_both_leftovers(w: World) -> None:
    w.run("web1", "hnode1")
    w.hosts.fail["migrate"] = "halfway"
    with pytest.raises(InstanceError):
        w.svc.migrate("web1")
    assert set(w.h["hnode1"].domains) == {"web1--migratedaway"}
    assert set(w.h["hnode2"].domains) == {"web1--incoming"}
    inst = w.svc.cleanup("web1", progress=w.step)
    assert inst.state == "stopped"
    assert "removed web1--migratedaway on hnode1, web1--incoming on hnode2" in inst.last_error
    assert w.h["hnode1"].domains == {} and w.h["hnode2"].domains == {}
    assert w.svc.start("web1").state == "running"  # the disk is intact: it starts again


def test_cleanup_target_runs_it_source_left_a_copy(w: World) -> None:
    w.run("web1", "hnode1")
    w.hosts.fail["migrate"] = "renamed"
    with pytest.raises(InstanceError):
        w.svc.migrate("web1")
    inst = w.svc.cleanup("web1", progress=w.step)
    assert (inst.state, inst.host, inst.last_error) == ("running", "hnode2", "")
    assert "web1--migratedaway" not in w.h["hnode1"].domains  # never resumed: destroyed
    assert "web1" in w.h["hnode2"].domains
    assert "web1" in w.h["hnode1"].cleaned
    assert any("recorded: web1 runs on hnode2; removed web1--migratedaway on hnode1" in s
               for s in w.steps)


def test_cleanup_record_stale_after_an_interrupted_migrate(w: World) -> None:
    w.run("web1", "hnode1")
    # as if hcboot died after xl migrate succeeded but before recording
    w.svc.begin("web1", "migrate")
    w.h["hnode2"].domains["web1"] = w.h["hnode1"].domains.pop("web1")
    w.h["hnode2"].specs["web1"] = w.h["hnode1"].specs.pop("web1")
    inst = w.svc.cleanup("web1")
    assert (inst.state, inst.host) == ("running", "hnode2")


def test_cleanup_runs_nowhere_is_stopped(w: World) -> None:
    w.run("web1", "hnode1")
    del w.h["hnode1"].domains["web1"]
    inst = w.svc.cleanup("web1")
    assert (inst.state, inst.host, inst.last_error) == ("stopped", "hnode1", "")


def test_cleanup_does_not_guess_while_a_host_is_silent(w: World) -> None:
    w.run("web1", "hnode1")
    w.h["hnode1"].up = False
    with pytest.raises(InstanceError, match=r"hnode1 .*did not answer: it may run there"):
        w.svc.cleanup("web1")
    assert w.svc.get("web1").state == "error"
    w.h["hnode1"].up = True
    assert w.svc.cleanup("web1").state == "running"


def test_cleanup_refuses_two_writers(w: World) -> None:
    w.run("web1", "hnode1")
    spec = w.h["hnode1"].specs["web1"]
    w.hosts._add(w.h["hnode2"], "web1", spec)
    with pytest.raises(InstanceError, match=r"runs on hnode1 and hnode2: two writers"):
        w.svc.cleanup("web1")
    assert w.svc.get("web1").state == "error"
    assert "web1" in w.h["hnode1"].domains and "web1" in w.h["hnode2"].domains  # untouched


def test_drain_empties_the_host_and_placement_skips_it() -> None:
    w = World(hnodes=3)
    w.run("a1", "hnode1")
    w.run("a2", "hnode1")
    w.run("b1", "hnode2")
    w.svc.create("c1", "domu", 256, start=False)
    w.svc.stop("b1")
    res = w.svc.drain("hnode1", progress=w.step)
    assert sorted(r.source for r in res) == ["hnode1", "hnode1"]
    assert w.h["hnode1"].domains == {}
    assert {w.svc.get(n).host for n in ("a1", "a2")} <= {"hnode2", "hnode3"}
    assert w.svc.drained() == ("hnode1",)
    with pytest.raises(PlacementError, match=r"on hnode1: drained"):
        w.svc.start("c1", on="hnode1")
    assert w.svc.start("c1").host != "hnode1"
    w.svc.undrain("hnode1")
    assert w.svc.drained() == ()
    w.svc.stop("c1")
    w.svc.start("c1", on="hnode1")


def test_drain_reports_what_it_could_not_move() -> None:
    w = World(hnodes=2)
    w.run("a1", "hnode1", 1536)
    w.run("b1", "hnode2", 1024)
    w.run("a2", "hnode1", 256)
    with pytest.raises(InstanceError, match=r"hnode1 is drained but still has 1 instance\(s\): "
                       "a1 .*free memory"):
        w.svc.drain("hnode1")
    assert w.svc.get("a2").host == "hnode2"
    assert w.svc.get("a1").host == "hnode1" and w.svc.get("a1").state == "running"
    assert w.svc.drained() == ("hnode1",)


def test_drain_refuses_what_is_not_an_hnode(w: World) -> None:
    with pytest.raises(InstanceError, match=r"sn1: snode, not an hnode"):
        w.svc.drain("sn1")
    with pytest.raises(InstanceError, match=r"nope: no node"):
        w.svc.undrain("nope")
    update(w.store, lambda inv: inv.with_node(Node("hnode7", "hnode",
                                                   (Nic("52:54:00:00:10:77"),))))
    w.svc.drain("hnode7")  # an hnode with nothing on it (its facts are not even needed)
    assert w.svc.drained() == ("hnode7",)


def test_migrate_stages_the_target_first(w: World) -> None:
    """The seed image is a file in each dom0: xl migrate-receive on the target opens the disks
    the source's config names, so the target is prepared before the stream starts."""
    w.run("web1", "hnode1")
    w.hosts.calls.clear()
    w.svc.migrate("web1")
    assert [c[:2] for c in w.hosts.calls if c[0] in ("prepare", "migrate")] == \
        [("prepare", "hnode2"), ("migrate", "hnode1")]
    assert "web1" in w.h["hnode2"].staged


def test_failed_staging_leaves_the_instance_where_it_runs(w: World) -> None:
    w.run("web1", "hnode1")
    w.hosts.fail["prepare"] = "x"
    with pytest.raises(InstanceError, match=r"AoE target .* not seen"):
        w.svc.migrate("web1")
    assert not [c for c in w.hosts.calls if c[0] == "migrate"]
    assert "web1" in w.h["hnode1"].domains
    assert w.svc.get("web1").state == "error"  # explained by show; --cleanup repairs it
    assert w.svc.cleanup("web1").state == "running"


def test_refused_stream_unstages_the_target(w: World) -> None:
    w.run("web1", "hnode1")
    w.hosts.fail["migrate"] = "refused"
    with pytest.raises(InstanceError, match="Host key verification failed"):
        w.svc.migrate("web1")
    assert "web1" not in w.h["hnode2"].staged  # no domain there: its seed and config removed
    assert "web1" in w.h["hnode1"].domains


def test_a_guest_that_did_not_suspend_in_time_is_migrated_again(w: World) -> None:
    w.run("web1", "hnode1")
    w.svc.retry_pause_s = 0
    w.hosts.fail["migrate"] = "no-suspend"  # once: the second xl migrate succeeds
    res = w.svc.migrate("web1", progress=w.step)
    assert (res.source, res.target) == ("hnode1", "hnode2")
    assert (w.svc.get("web1").state, w.svc.get("web1").host) == ("running", "hnode2")
    assert set(w.h["hnode2"].domains) == {"web1"}  # the half-built incoming copy destroyed
    assert ("destroy", "hnode2", "web1--incoming") in w.hosts.calls
    assert [c[0] for c in w.hosts.calls].count("migrate") == 2
    assert any("did not suspend in time and still runs on hnode1; attempt 2 of 3" in s
               for s in w.steps)


def test_a_guest_that_never_suspends_stops_after_three_attempts(w: World) -> None:
    w.run("web1", "hnode1")
    w.svc.retry_pause_s = 0
    w.hosts.fail["migrate"] = "no-suspend"
    w.hosts.fail_again = True
    with pytest.raises(InstanceError, match=r"failed to suspend at sender.*state now error"):
        w.svc.migrate("web1", progress=w.step)
    assert [c[0] for c in w.hosts.calls].count("migrate") == 3
    assert (w.svc.get("web1").state, w.svc.get("web1").host) == ("error", "hnode1")
    # the guest runs on where it was; cleanup records it, the target keeps no leftover
    assert w.svc.cleanup("web1").state == "running"
    assert "web1--incoming" not in w.h["hnode2"].domains


@pytest.mark.parametrize("mode", ["halfway", "suspended-late", "refused"])
def test_other_stream_failures_are_not_retried(w: World, mode: str) -> None:
    # halfway / suspended-late: the source's copy no longer runs, so running xl migrate again
    # would be wrong; refused: not a guest that was slow to suspend
    w.run("web1", "hnode1")
    w.svc.retry_pause_s = 0
    w.hosts.fail["migrate"] = mode
    with pytest.raises(InstanceError):
        w.svc.migrate("web1")
    assert [c[0] for c in w.hosts.calls].count("migrate") == 1

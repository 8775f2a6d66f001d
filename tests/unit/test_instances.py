"""The instance lifecycle (homecloud/control/instances.py) against in-memory doubles of the
HostDriver and VolumeApi (tests/support/instdoubles.py: the real ones need Xen and LVM, which
only run inside QEMU here) and a real inventory store (the YAML file, and the in-memory one)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from homecloud.control.allocate import AllocationError, InstanceNetwork
from homecloud.control.contracts import Origin
from homecloud.control.instances import InstanceService, describe
from homecloud.control.instbase import Settings
from homecloud.control.lifecycle import InstanceError, StateError
from homecloud.control.placement import PlacementError
from homecloud.core.model import INSTANCE_MAC_PREFIX
from homecloud.inventory.protocol import InventoryStore, update
from homecloud.inventory.yamlfile import YamlFileStore
from tests.support.instdoubles import (
    DOMU,
    DOMU_OLD,
    FakeHost,
    FakeHosts,
    FakeVolumes,
    lab_inventory,
)
from tests.support.memstore import MemoryBacking, MemoryStore

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhomecloudtestkey test@config"
ROLES = ("hnode", "snode", "domu")


class World:
    def __init__(self, store: InventoryStore, settings: Settings | None = None) -> None:
        self.store = store
        update(store, lambda _inv: lab_inventory())
        self.volumes = FakeVolumes(DOMU_OLD, DOMU)
        self.h1, self.h2 = FakeHost("hnode1", 2048), FakeHost("hnode2", 4096)
        self.hosts = FakeHosts(self.h1, self.h2, volumes=self.volumes)
        self.svc = InstanceService(store, self.hosts, self.volumes, settings)
        self.steps: list[str] = []

    def step(self, msg: str) -> None:
        self.steps.append(msg)


@pytest.fixture(params=["yaml", "memory"])
def w(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    store: InventoryStore = (YamlFileStore(tmp_path, ROLES) if request.param == "yaml"
                             else MemoryStore(MemoryBacking(), ROLES))
    yield World(store)
    store.close()


def test_create_allocates_places_and_starts(w: World) -> None:
    inst = w.svc.create("web1", "domu", 384, ssh_keys=[KEY], progress=w.step)
    assert inst.state == "running"
    assert inst.host == "hnode2"  # the most free memory
    assert inst.mac == f"{INSTANCE_MAC_PREFIX}:00:00:01"
    assert inst.ip == "203.0.113.10"
    assert inst.template == DOMU.name  # a role resolves to its newest template
    assert w.volumes.origins[inst.volume] == Origin("template", DOMU.name)
    assert inst.disk_size == DOMU.size
    spec = w.h2.specs["web1"]
    assert (spec.mac, spec.bridge, str(spec.disk), spec.uuid) == (
        inst.mac, "xenbr1", str(w.volumes.exports[inst.volume].target), inst.uuid)
    assert f"instance-id: {inst.uuid}" in spec.seed["meta-data"]
    assert KEY in spec.seed["user-data"]
    assert any("placed web1 on hnode2" in s for s in w.steps)
    # the record is in the store, readable by another handle
    assert w.store.snapshot().inventory.instance_by_mac(inst.mac) == inst


def test_create_on_and_template_by_name(w: World) -> None:
    inst = w.svc.create("web1", DOMU_OLD.name, 256, on="hnode1", disk_size=4 << 30)
    assert (inst.host, inst.template, inst.disk_size) == ("hnode1", DOMU_OLD.name, 4 << 30)


@pytest.mark.parametrize("name,why", [
    ("Web1", "not valid"), ("a", "not valid"), ("web_1", "not valid"), ("web1-", "not valid"),
    ("x" * 33, "not valid"), ("hnode1", "node hnode1"), ("sn1", "node sn1"),
])
def test_create_refuses_bad_names(w: World, name: str, why: str) -> None:
    with pytest.raises(InstanceError, match=why):
        w.svc.create(name, "domu")
    assert w.svc.instances() == []
    assert w.volumes.exports == {}


def test_create_refusals(w: World) -> None:
    w.svc.create("web1", "domu", 256)
    with pytest.raises(InstanceError, match=r"web1 already exists"):
        w.svc.create("web1", "domu")
    with pytest.raises(InstanceError, match=r"no template 'centos'.*domu-2026"):
        w.svc.create("web2", "centos")
    with pytest.raises(InstanceError, match=r"smaller than template"):
        w.svc.create("web2", "domu", disk_size=1 << 20)
    with pytest.raises(InstanceError, match=r"not an SSH public key"):
        w.svc.create("web2", "domu", ssh_keys=["garbage"])
    with pytest.raises(InstanceError, match=r"sn1: snode, not an hnode"):
        w.svc.create("web2", "domu", on="sn1")
    assert [i.name for i in w.svc.instances()] == ["web1"]


def test_create_volume_failure_is_recorded(w: World) -> None:
    w.volumes.fail["create"] = "x"
    with pytest.raises(InstanceError, match=r"create failed: sn1: volume .*lvcreate failed"):
        w.svc.create("web1", "domu")
    inst = w.svc.get("web1")
    assert inst.state == "error"
    assert "lvcreate failed" in inst.last_error
    assert "lvcreate" in describe(inst)["last_error"]
    w.svc.destroy("web1")  # destroy gets out of it, with nothing to delete
    assert w.svc.instances() == []


def test_nothing_fits_names_what_is_short(w: World) -> None:
    w.h2.up = False
    with pytest.raises(PlacementError) as e:
        w.svc.create("big", "domu", 3000)
    msg = str(e.value)
    assert "hnode1: free memory 2048 MiB < 3000 MiB needed" in msg
    assert "hnode2: down (hnode2: ssh root@198.51.100.22: connection timed out)" in msg
    assert w.svc.instances() == [] and w.volumes.exports == {}  # refused before making any
    w.svc.create("big", "domu", 3000, start=False)  # the volume alone needs no host
    with pytest.raises(PlacementError, match="hnode1: free memory 2048 MiB < 3000 MiB"):
        w.svc.start("big")
    inst = w.svc.get("big")  # a refused start changes nothing: it can be retried
    assert (inst.state, inst.last_error) == ("stopped", "")


def test_start_failure_then_stop_force_then_start(w: World) -> None:
    w.svc.create("web1", "domu", 256, start=False)
    w.hosts.fail["start"] = "x"
    with pytest.raises(InstanceError, match=r"start failed: hnode2: xl create"):
        w.svc.start("web1")
    inst = w.svc.get("web1")
    assert (inst.state, inst.host) == ("error", "hnode2")
    assert "Domain could not be created" in inst.last_error
    inst = w.svc.start("web1", on="hnode1")  # start is allowed from error
    assert (inst.state, inst.host, inst.last_error) == ("running", "hnode1", "")


def test_start_refused_while_a_host_still_has_the_domain(w: World) -> None:
    w.svc.create("web1", "domu", 256)
    w.svc.set_state("web1", "error", error="test: lost track")
    with pytest.raises(InstanceError, match=r"hnode2 still has domain web1.*--cleanup"):
        w.svc.start("web1")


def test_stop_start_reboot_console(w: World) -> None:
    w.svc.create("web1", "domu", 256)
    assert w.svc.reboot("web1").state == "running"
    assert w.svc.console("web1") == 0
    inst = w.svc.stop("web1", progress=w.step)
    assert (inst.state, inst.host) == ("stopped", "hnode2")  # host: where it last ran
    assert "web1" not in w.h2.domains and "web1" in w.h2.cleaned
    with pytest.raises(InstanceError, match=r"no console while stopped"):
        w.svc.console("web1")
    assert w.svc.start("web1", on="hnode1").host == "hnode1"
    assert w.svc.stop("web1", force=True).state == "stopped"
    assert ("destroy", "hnode1", "web1") in w.hosts.calls


def test_clean_stop_timeout_keeps_it_running(w: World) -> None:
    w.svc.create("web1", "domu", 256)
    w.hosts.fail["shutdown"] = "x"
    with pytest.raises(InstanceError, match=r"still running after 120 s.*state now running"):
        w.svc.stop("web1")
    inst = w.svc.get("web1")
    assert inst.state == "running" and "xl shutdown" in inst.last_error
    assert w.svc.stop("web1", force=True).last_error == ""


@pytest.mark.parametrize("state,action", [
    ("stopped", "stop"), ("stopped", "reboot"), ("stopped", "migrate"),
    ("running", "start"), ("migrating", "start"), ("migrating", "stop"),
    ("destroying", "start"), ("creating", "start"), ("error", "reboot"),
])
def test_state_machine_refuses(w: World, state: str, action: str) -> None:
    w.svc.create("web1", "domu", 256, start=False)
    w.svc.set_state("web1", state, host="hnode1")
    calls = list(w.hosts.calls)
    with pytest.raises(InstanceError, match=f"cannot {action} while {state}"):
        getattr(w.svc, action)("web1")
    assert w.hosts.calls == calls  # refused before touching any host
    assert w.svc.get("web1").state == state


def test_copy_refuses_a_running_source_and_copies_a_stopped_one(w: World) -> None:
    src = w.svc.create("web1", "domu", 300, ssh_keys=[KEY], user_data="#!/bin/sh\ntrue\n")
    with pytest.raises(StateError, match=r"cannot copy while running"):
        w.svc.copy("web1", "web2")
    w.svc.stop("web1")
    new = w.svc.copy("web1", "web2", on="hnode1")
    assert new.state == "running" and new.host == "hnode1"
    assert w.volumes.origins[new.volume] == Origin("volume", src.volume)
    assert (new.memory_mb, new.ssh_keys, new.user_data, new.disk_size) == (
        300, src.ssh_keys, src.user_data, src.disk_size)
    assert new.mac != src.mac and new.ip != src.ip and new.uuid != src.uuid
    assert new.volume != src.volume
    with pytest.raises(InstanceError, match=r"web2 already exists"):
        w.svc.copy("web1", "web2")


def test_destroy_frees_everything_and_allocation_reuses_it(w: World) -> None:
    a = w.svc.create("web1", "domu", 256)
    b = w.svc.create("web2", "domu", 256)
    assert (a.mac[-2:], b.mac[-2:], a.ip, b.ip) == ("01", "02", "203.0.113.10", "203.0.113.11")
    w.svc.destroy("web1", progress=w.step)
    assert a.volume not in w.volumes.exports
    assert "web1" not in w.h1.domains and "web1" not in w.h2.domains
    assert w.store.snapshot().inventory.instance_by_mac(a.mac) is None
    assert any("are free" in s for s in w.steps)
    c = w.svc.create("web3", "domu", 256)
    assert (c.mac, c.ip) == (a.mac, a.ip)  # the lowest free is reused


def test_destroy_refused_while_its_host_does_not_answer(w: World) -> None:
    inst = w.svc.create("web1", "domu", 256)
    w.h2.up = False
    with pytest.raises(InstanceError, match=r"hnode2 did not answer.*may still run there"):
        w.svc.destroy("web1")
    assert w.svc.get("web1").state == "error"
    assert inst.volume in w.volumes.exports  # the disk under a live domain is kept
    w.h2.up = True
    w.svc.destroy("web1")
    assert w.svc.instances() == []


def test_address_and_mac_exhaustion(tmp_path: Path) -> None:
    net = InstanceNetwork("203.0.113.0/29", "203.0.113.1", first=2)  # .2 .. .6: 5 addresses
    w = World(MemoryStore(MemoryBacking(), ROLES), Settings(network=net))
    for i in range(5):
        w.svc.create(f"vm{i}", "domu", 64, start=False)
    with pytest.raises(AllocationError, match=r"no free address left on the instance network "
                       r"203.0.113.0/29: all 5"):
        w.svc.create("vm5", "domu", 64, start=False)
    w2 = World(MemoryStore(MemoryBacking(), ROLES), Settings(mac_pool_size=3))
    w2.svc.create("a1", "domu", 64, start=False)
    w2.svc.create("a2", "domu", 64, start=False)
    with pytest.raises(AllocationError, match=r"no free instance MAC left"):
        w2.svc.create("a3", "domu", 64, start=False)
    assert [i.name for i in w2.svc.instances()] == ["a1", "a2"]  # nothing half-made


def test_allocation_skips_addresses_nodes_use(w: World) -> None:
    from dataclasses import replace

    from homecloud.core.model import Nic

    def give_ip(inv):  # type: ignore[no-untyped-def]
        node = inv.named("hnode1")
        nics = (node.nics[0], Nic(node.nics[1].mac, "instance", "203.0.113.10"))
        return inv.with_node(replace(node, nics=nics))

    update(w.store, give_ip)
    assert w.svc.create("web1", "domu", 64, start=False).ip == "203.0.113.11"


def test_concurrent_creates_never_share_a_mac_or_address(tmp_path: Path) -> None:
    backing = MemoryBacking()
    w = World(MemoryStore(backing, ROLES))
    # each thread its own store handle (as separate hcboot processes), one backing
    svcs = [InstanceService(MemoryStore(backing, ROLES), w.hosts, w.volumes) for _ in range(8)]
    errors: list[BaseException] = []
    lock = threading.Lock()

    def make(i: int) -> None:
        try:
            svcs[i].create(f"vm{i}", "domu", 64, start=False)
        except BaseException as exc:  # pragma: no cover - reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    insts = w.svc.instances()
    assert len(insts) == 8
    assert len({i.mac for i in insts}) == 8 and len({i.ip for i in insts}) == 8


def test_concurrent_creates_through_the_yaml_file(tmp_path: Path) -> None:
    w = World(YamlFileStore(tmp_path, ROLES))
    svcs = [InstanceService(YamlFileStore(tmp_path, ROLES), w.hosts, w.volumes)
            for _ in range(6)]
    threads = [threading.Thread(target=svcs[i].create, args=(f"vm{i}", "domu", 64),
                                kwargs={"start": False}) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    insts = YamlFileStore(tmp_path, ROLES).snapshot().inventory.instances
    assert len(insts) == 6
    assert len({i.mac for i in insts}) == 6 and len({i.ip for i in insts}) == 6


def test_two_actions_cannot_begin_at_once(w: World) -> None:
    w.svc.create("web1", "domu", 256)
    w.svc.begin("web1", "reboot")  # as if another hcboot were rebooting it
    with pytest.raises(StateError, match=r"cannot stop while rebooting.*--cleanup"):
        w.svc.stop("web1")


def test_start_does_not_need_the_volume_discovered_yet(w: World) -> None:
    inst = w.svc.create("web1", "domu", 256, start=False)
    target = str(w.volumes.exports[inst.volume].target)
    w.h1.blind.add(target)
    w.h2.blind.add(target)  # no host has run aoe-discover since the volume appeared
    assert w.svc.start("web1").state == "running"  # the driver's start attaches it


def _create_in_child(state: str, names: list[str]) -> None:
    svc = InstanceService(YamlFileStore(Path(state), ROLES), FakeHosts(), FakeVolumes(DOMU))
    for n in names:
        svc.create(n, "domu", 64, start=False)


def test_concurrent_creates_from_separate_processes(tmp_path: Path) -> None:
    import multiprocessing

    World(YamlFileStore(tmp_path, ROLES))  # the lab inventory
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_create_in_child,
                         args=(str(tmp_path), [f"p{i}x{j}" for j in range(3)]))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    insts = YamlFileStore(tmp_path, ROLES).snapshot().inventory.instances
    assert len(insts) == 12
    assert len({i.mac for i in insts}) == 12 and len({i.ip for i in insts}) == 12
    assert {i.state for i in insts} == {"stopped"}

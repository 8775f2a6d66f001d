"""Instances and drained hnodes in the inventory's YAML form (homecloud/inventory/schema.py):
round trip through the file store, ``Inventory.instance_by_mac``, and the strict reader's
errors naming the entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from homecloud.core.errors import InventoryError
from homecloud.core.model import Instance, Inventory, Nic, Node
from homecloud.inventory.protocol import update
from homecloud.inventory.schema import parse_inventory, to_yaml
from homecloud.inventory.yamlfile import YamlFileStore

ROLES = ("hnode", "snode", "domu")
UUID = "5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5"


def web(name: str = "web1", mac: str = "0a:48:43:00:00:01", ip: str = "203.0.113.10",
        **kw: object) -> Instance:
    base: dict[str, object] = dict(name=name, template="domu-20261204T101500Z", memory_mb=384,
                                   vcpus=2, disk_size=4 << 30, mac=mac, ip=ip, uuid=UUID,
                                   volume=f"{name}-5f0c1d2e", host="hnode1", state="running",
                                   ssh_keys=("ssh-ed25519 AAAA admin@config",),
                                   user_data="#!/bin/sh\necho hi\n")
    base.update(kw)
    return Instance(**base)  # type: ignore[arg-type]


def inventory() -> Inventory:
    h1 = Node("hnode1", "hnode", (Nic("52:54:00:00:10:01", ip="198.51.100.21"),
                                  Nic("52:54:00:00:11:01", "instance")))
    return Inventory((h1,)).with_instance(web()).with_instance(
        web("db1", "0a:48:43:00:00:02", "203.0.113.11", state="error",
            last_error="start: hnode1: xl create failed", host=None, user_data="",
            ssh_keys=())).with_drained(("hnode1",))


def test_round_trip_through_the_file_store(tmp_path: Path) -> None:
    store = YamlFileStore(tmp_path, ROLES)
    update(store, lambda _inv: inventory())
    again = YamlFileStore(tmp_path, ROLES).snapshot().inventory
    assert again == inventory()
    assert again.instance_by_mac("0a:48:43:00:00:02") == inventory().instance("db1")
    assert again.instance_by_mac("0A-48-43-00-00-02") == inventory().instance("db1")
    assert again.instance_by_mac("52:54:00:00:10:01") is None
    assert again.instance_by_mac("not a mac") is None
    assert again.drained == ("hnode1",)
    text = (tmp_path / "inventory.yaml").read_text()
    assert "instances:\n  db1:" in text and "drained:\n- hnode1" in text


def test_no_instances_writes_the_old_form() -> None:
    text = to_yaml(Inventory((Node("hnode1", "hnode", (Nic("52:54:00:00:10:01"),)),)))
    assert "instances" not in text and "drained" not in text


def test_without_instance_frees_the_mac() -> None:
    inv = inventory().without_instance("web1")
    assert inv.instance_by_mac("0a:48:43:00:00:01") is None
    assert [i.name for i in inv.instances] == ["db1"]


def _broken(old: str, new: str) -> str:
    text = to_yaml(inventory())
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize("old,new,why", [
    ("  web1:\n", "  Web1:\n", "instances.Web1: instance name 'Web1' is not valid"),
    ("  web1:\n", "  hnode1:\n", "instances.hnode1: name already used by a node"),
    ("mac: 0a:48:43:00:00:02", "mac: '52:54:00:00:11:01'",
     "instances.db1: duplicate MAC 52:54:00:00:11:01 (also nodes.hnode1"),
    ("ip: 203.0.113.11", "ip: 198.51.100.21", "instances.db1: duplicate IP 198.51.100.21"),
    ("ip: 203.0.113.11", "ip: 203.0.113.300", "ip '203.0.113.300' is not an IPv4 address"),
    (f"uuid: {UUID}\n", "uuid: nope\n", "instances.db1: uuid 'nope' is not a lower-case UUID"),
    ("state: error", "state: flying", "state 'flying' not one of creating"),
    ("memory_mb: 384", "memory_mb: big", "memory_mb must be an integer in 64..1048576"),
    ("vcpus: 2", "vcpus: 0", "vcpus must be an integer in 1..128"),
    ("disk_size: 4294967296", "disk_size: 4G", "disk_size must be an integer"),
    ("    vcpus: 2\n", "    vcpus: 2\n    color: red\n", "unknown key 'color'"),
    ("    template: domu-20261204T101500Z\n", "", "missing key 'template'"),
    ("drained:\n- hnode1", "drained: hnode1", "drained: must be a list of node names"),
    ("host: hnode1", "host: bad_name", "host 'bad_name' is not a node name"),
])
def test_reader_errors_name_the_entry(old: str, new: str, why: str) -> None:
    with pytest.raises(InventoryError) as e:
        parse_inventory(_broken(old, new), "inv.yaml", ROLES)
    assert why in str(e.value)
    assert str(e.value).startswith("inv.yaml: ")

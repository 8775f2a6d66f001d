"""The inventory's YAML form (strict reader, legacy list form) and the control service's edits."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import yaml

from homecloud.control.service import ControlService
from homecloud.core.errors import InventoryError, NotFound
from homecloud.core.ids import BadMac, Target, normalize_mac
from homecloud.core.model import ImageExport, VolumeExport
from homecloud.inventory.schema import parse_inventory, to_yaml
from homecloud.inventory.yamlfile import YamlFileStore

ROLES = ("hnode", "snode", "domu")


@pytest.mark.parametrize("raw", [
    "52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", "5254.00ab.cdef", "525400abcdef",
    "01-52-54-00-ab-cd-ef", " 52:54:00:ab:cd:ef\n",
])
def test_mac_spellings_normalised(raw: str) -> None:
    assert normalize_mac(raw) == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize("raw", ["52:54:00:ab:cd", "zz:54:00:ab:cd:ef", "", "52:54:00:ab:cd:ef:01"])
def test_bad_macs(raw: str) -> None:
    with pytest.raises(BadMac):
        normalize_mac(raw)


def test_mac_as_int_is_refused() -> None:
    with pytest.raises(BadMac, match="quote"):
        normalize_mac(525400123456)


@pytest.mark.parametrize("text,needle", [
    ("nodes:\n  - mac: 52:54:00:12:34:56\n    role: hnode\n", "read by YAML as a int"),
    ("nodes:\n  h1: {mac: 525400123456, role: hnode}\n", "quote it"),
    ("nodes:\n  - mac: '52:54:00:12:34:56'\n    role: nope\n", "unknown role 'nope'"),
    ("nodes:\n  - {mac: '52:54:00:12:34:56', role: hnode}\n"
     "  - {mac: '52-54-00-12-34-56', role: snode}\n", "duplicate MAC 52:54:00:12:34:56"),
    ("nodes:\n  a: {mac: '52:54:00:12:34:56', role: hnode}\n"
     "  b: {role: snode, nics: [{mac: '52-54-00-12-34-56'}]}\n", "duplicate MAC"),
    ("nodes:\n  - {mac: '52:54:00:12:34:56', role: hnode, ip: 192.0.2.1}\n"
     "  - {mac: '52:54:00:12:34:57', role: snode, ip: 192.0.2.1}\n", "duplicate IP 192.0.2.1"),
    ("nodes:\n  - {mac: '52:54:00:12:34:56', role: hnode, rol: x}\n", "unknown key 'rol'"),
    ("nodes:\n  h1: {mac: '52:54:00:12:34:56', role: hnode, rol: x}\n", "unknown key 'rol'"),
    ("nodes:\n  - {mac: '52:54:00:12:34:56', role: hnode, ip: 300.1.1.1}\n", "not an IPv4"),
    ("nodes:\n  - {mac: '52:54:00:12:34:56', role: hnode, hostname: 'a b'}\n", "host name"),
    ("nodes:\n  'a b': {mac: '52:54:00:12:34:56', role: hnode}\n", "not a valid host name"),
    ("nodes:\n  - {role: hnode}\n", "missing key 'mac'"),
    ("nodes:\n  h1: {role: hnode}\n", "missing key 'nics'"),
    ("nodes:\n  h1: {role: hnode, nics: [{mac: '52:54:00:12:34:56', purpose: wifi}]}\n",
     "purpose 'wifi'"),
    ("nodes:\n  h1: {role: hnode, nics: [{mac: '52:54:00:12:34:56'}, "
     "{mac: '52:54:00:12:34:57'}]}\n", "more than one NIC with purpose provisioning"),
    ("nodes:\n  h1: {role: hnode, nics: []}\n", "non-empty list"),
    ("node: []\n", "unknown key"),
    ("nodes: [\n", "not valid YAML"),
    ("exports:\n  - {target: x1.0, image: {role: hnode}}\n", "eSHELF.SLOT"),
    ("exports:\n  - {target: e1.255, image: {role: hnode}}\n", "out of range"),
    ("exports:\n  - {target: e1.0, image: {role: hnode}}\n  - {target: e1.0, "
     "volume: {name: v, size: 1G}}\n", "duplicate target"),
    ("exports:\n  - {target: e1.0, volume: {name: v, size: lots}}\n", "not a size"),
    ("exports:\n  - {target: e1.0, image: {role: hnode}, volume: {name: v, size: 1}}\n",
     "exactly one of image or volume"),
])
def test_inventory_errors_name_file_and_entry(text: str, needle: str) -> None:
    with pytest.raises(InventoryError) as ei:
        parse_inventory(text, "/srv/inv.yaml", ROLES)
    msg = str(ei.value)
    assert "/srv/inv.yaml" in msg
    assert needle in msg


def test_error_names_the_entry_and_line() -> None:
    text = ("nodes:\n  - {mac: '52:54:00:00:00:01', role: hnode}\n"
            "  - {mac: '52:54:00:00:00:02', role: bogus}\n")
    with pytest.raises(InventoryError) as ei:
        parse_inventory(text, "inv.yaml", ROLES)
    assert "nodes[1] (52:54:00:00:00:02)" in str(ei.value)
    assert "line 3" in str(ei.value)
    text = "nodes:\n  h1:\n    role: hnode\n    nics:\n      - {mac: '52:54:00:00:00:01'}\n" \
           "      - {mac: 'nope', purpose: instance}\n"
    with pytest.raises(InventoryError) as ei:
        parse_inventory(text, "inv.yaml", ROLES)
    assert "nodes.h1.nics[1]" in str(ei.value) and "line 6" in str(ei.value)


def test_nodes_by_name_with_nics_and_exports_round_trip() -> None:
    text = """
default_role: null
nodes:
  hnode1:
    role: hnode
    nics:
      - {mac: "52:54:00:12:34:56", purpose: provisioning, ip: 192.0.2.10}
      - {mac: "52:54:00:12:34:66", purpose: instance}
    cmdline: quiet
  snode1: {role: snode, mac: "52:54:00:12:34:57"}
exports:
  - {target: e1.0, image: {role: hnode}, consumers: [hnode], mode: ro}
  - {target: e2.3, volume: {name: vm1, size: 2G}, consumers: [hnode1], mode: rw,
     snodes: [snode1]}
"""
    inv = parse_inventory(text, "x", ROLES)
    h = inv.named("hnode1")
    assert h is not None and h.mac == "52:54:00:12:34:56" and h.ip == "192.0.2.10"
    assert inv.node("52:54:00:12:34:66") is h  # any NIC finds its node
    assert [c.purpose for c in h.nics] == ["provisioning", "instance"]
    img, vol = inv.exports
    assert isinstance(img, ImageExport) and img.role == "hnode" and img.target == Target(1, 0)
    assert isinstance(vol, VolumeExport) and vol.size == 2 << 30 and vol.mode == "rw"
    assert inv.consumer_macs(vol) == ("52:54:00:12:34:56",)
    assert inv.consumer_macs(img) == ("52:54:00:12:34:56",)
    snode = inv.named("snode1")
    assert snode is not None and inv.serves(vol, snode)
    again = parse_inventory(to_yaml(inv), "x", ROLES)
    assert again == inv
    # dumped MACs made of digits are quoted so they survive YAML
    assert yaml.safe_load(to_yaml(inv))["nodes"]["snode1"]["mac"] == "52:54:00:12:34:57"


def test_legacy_list_form_is_read_and_written_by_name() -> None:
    text = """
nodes:
  - {mac: "52:54:00:12:34:56", role: hnode, hostname: h1, ip: 192.0.2.10, cmdline: quiet}
  - {mac: "52:54:00:12:34:57", role: snode}
"""
    inv = parse_inventory(text, "x", ROLES)
    assert [n.name for n in inv.nodes] == ["h1", "snode-123457"]
    h1 = inv.named("h1")
    assert h1 is not None and (h1.ip, h1.cmdline) == ("192.0.2.10", "quiet")
    assert "h1:" in to_yaml(inv) and "- mac" not in to_yaml(inv)
    assert parse_inventory(to_yaml(inv), "x", ROLES) == inv


def _svc(tmp_path: Path) -> ControlService:
    return ControlService(YamlFileStore(tmp_path, ROLES), tmp_path, tmp_path / "images")


def test_assign_unassign(tmp_path: Path) -> None:
    svc = _svc(tmp_path)
    n = svc.assign("52-54-00-00-00-01", "hnode", hostname="h1", ip="192.0.2.2")
    assert (n.name, n.mac) == ("h1", "52:54:00:00:00:01")
    svc.assign("52:54:00:00:00:01", "snode")  # role change keeps name and ip
    n2 = svc.inventory().node("52:54:00:00:00:01")
    assert n2 is not None and (n2.role, n2.name, n2.ip) == ("snode", "h1", "192.0.2.2")
    with pytest.raises(InventoryError, match="already assigned to h1"):
        svc.assign("52:54:00:00:00:02", "hnode", ip="192.0.2.2")
    with pytest.raises(InventoryError, match="unknown role"):
        svc.assign("52:54:00:00:00:02", "router")
    with pytest.raises(InventoryError, match="name h1 is already node h1"):
        svc.assign("52:54:00:00:00:02", "hnode", hostname="h1")
    anon = svc.assign("52:54:00:00:00:02", "hnode")
    assert anon.name == "hnode-000002"
    assert svc.unassign("h1").mac == "52:54:00:00:00:01"
    with pytest.raises(NotFound):
        svc.unassign("52:54:00:00:00:01")
    assert svc.unassign("52-54-00-00-00-02").name == "hnode-000002"
    assert svc.inventory().nodes == ()


def test_broken_file_keeps_previous_inventory(tmp_path: Path) -> None:
    svc = _svc(tmp_path)
    svc.assign("52:54:00:00:00:01", "hnode")
    reader = YamlFileStore(tmp_path, ROLES)
    assert reader.snapshot().inventory.node("52:54:00:00:00:01") is not None
    (tmp_path / "inventory.yaml").write_text("nodes:\n  - mac: 52:54:00:00:00:09\n"
                                              "    role: hnode\n")  # unquoted
    assert reader.snapshot().inventory.node("52:54:00:00:00:01") is not None
    assert reader.last_error and "quote" in reader.last_error and "inventory.yaml" in \
        reader.last_error
    with pytest.raises(InventoryError):  # an edit refuses to build on a broken file
        svc.assign("52:54:00:00:00:02", "snode")
    (tmp_path / "inventory.yaml").write_text("nodes:\n  - mac: '52:54:00:00:00:02'\n"
                                              "    role: snode\n")  # repaired
    assert reader.snapshot().inventory.node("52:54:00:00:00:02") is not None
    assert reader.last_error is None


def test_deleted_file_keeps_previous_inventory_and_says_so(tmp_path: Path) -> None:
    svc = _svc(tmp_path)
    svc.assign("52:54:00:00:00:01", "hnode", hostname="h1")
    reader = YamlFileStore(tmp_path, ROLES)
    (tmp_path / "inventory.yaml").unlink()
    assert reader.snapshot().inventory.named("h1") is not None
    assert reader.last_error and "inventory.yaml: deleted" in reader.last_error
    svc2 = _svc(tmp_path)  # a new process on a missing file: an empty inventory, no error
    assert svc2.inventory().nodes == ()


def test_unreadable_file_keeps_previous_inventory(tmp_path: Path) -> None:
    svc = _svc(tmp_path)
    svc.assign("52:54:00:00:00:01", "hnode", hostname="h1")
    reader = YamlFileStore(tmp_path, ROLES)
    (tmp_path / "inventory.yaml").unlink()
    (tmp_path / "inventory.yaml").mkdir()  # unreadable as a file (EISDIR), also as root
    assert reader.snapshot().inventory.named("h1") is not None
    assert reader.last_error and "inventory.yaml" in reader.last_error


def _assign_one(args: tuple[str, int]) -> None:
    state, i = args
    ControlService(YamlFileStore(Path(state), ROLES), Path(state), Path(state)).assign(
        f"52:54:00:00:10:{i:02x}", "hnode", ip=f"192.0.2.{i + 10}")


def test_50_concurrent_assigns_lose_none(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        pool.map(_assign_one, [(str(tmp_path), i) for i in range(50)])
    inv = YamlFileStore(tmp_path, ROLES).snapshot().inventory
    assert len(inv.nodes) == 50
    assert not list(tmp_path.glob(".inventory.yaml.*.tmp"))

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
import yaml

from bootserver.errors import InventoryError
from bootserver.inventory import InventoryFile, InventoryWatcher, parse_inventory
from bootserver.machine import BadMac, normalize_mac

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
    ("nodes:\n  - mac: 525400123456\n    role: hnode\n", "quote it"),
    ("nodes:\n  - mac: '52:54:00:12:34:56'\n    role: nope\n", "unknown role 'nope'"),
    ("nodes:\n  - {mac: '52:54:00:12:34:56', role: hnode}\n"
     "  - {mac: '52-54-00-12-34-56', role: snode}\n", "duplicate MAC 52:54:00:12:34:56"),
    ("nodes:\n  - {mac: '52:54:00:12:34:56', role: hnode, ip: 192.0.2.1}\n"
     "  - {mac: '52:54:00:12:34:57', role: snode, ip: 192.0.2.1}\n", "duplicate IP 192.0.2.1"),
    ("nodes:\n  - {mac: '52:54:00:12:34:56', role: hnode, rol: x}\n", "unknown key 'rol'"),
    ("nodes:\n  - {mac: '52:54:00:12:34:56', role: hnode, ip: 300.1.1.1}\n", "not an IPv4"),
    ("nodes:\n  - {mac: '52:54:00:12:34:56', role: hnode, hostname: 'a b'}\n", "host name"),
    ("nodes:\n  - {role: hnode}\n", "missing key 'mac'"),
    ("node: []\n", "unknown key"),
    ("nodes: [\n", "not valid YAML"),
    ("exports:\n  - {target: x1.0, image: {role: hnode}}\n", "eSHELF.SLOT"),
    ("exports:\n  - {target: e1.0, image: {role: hnode}}\n  - {target: e1.0, "
     "volume: {name: v, size: 1G}}\n", "duplicate target"),
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


def test_round_trip_and_exports(tmp_path: Path) -> None:
    text = """
default_role: null
nodes:
  - {mac: "52:54:00:12:34:56", role: hnode, hostname: h1, ip: 192.0.2.10, cmdline: quiet}
  - {mac: "52:54:00:12:34:57", role: snode}
exports:
  - {target: e1.0, image: {role: hnode}, consumers: [hnode], mode: ro}
  - {target: e2.3, volume: {name: vm1, size: 2G}, consumers: ["52-54-00-12-34-56"], mode: rw,
     snodes: ["52:54:00:12:34:57"]}
"""
    inv = parse_inventory(text, "x", ROLES)
    assert inv.node("52:54:00:12:34:56").hostname == "h1"  # type: ignore[union-attr]
    assert inv.exports[1].volume_size == 2 << 30
    assert inv.exports[1].consumers == ("52:54:00:12:34:56",)
    again = parse_inventory(inv.to_yaml(), "x", ROLES)
    assert again == inv
    # dumped MACs made of digits are quoted so they survive YAML
    inv2 = parse_inventory("nodes: [{mac: '52:54:00:12:34:56', role: hnode}]", "x", ROLES)
    assert yaml.safe_load(inv2.to_yaml())["nodes"][0]["mac"] == "52:54:00:12:34:56"


def test_assign_unassign(tmp_path: Path) -> None:
    f = InventoryFile(tmp_path, ROLES)
    f.assign("52-54-00-00-00-01", "hnode", hostname="h1", ip="192.0.2.2")
    f.assign("52:54:00:00:00:01", "snode")  # role change keeps hostname/ip
    n = f.load().node("52:54:00:00:00:01")
    assert n is not None and (n.role, n.hostname, n.ip) == ("snode", "h1", "192.0.2.2")
    with pytest.raises(InventoryError, match="already assigned"):
        f.assign("52:54:00:00:00:02", "hnode", ip="192.0.2.2")
    with pytest.raises(InventoryError, match="unknown role"):
        f.assign("52:54:00:00:00:02", "router")
    assert f.unassign("52:54:00:00:00:01")
    assert not f.unassign("52:54:00:00:00:01")
    assert f.load().nodes == ()


def test_broken_file_keeps_previous_inventory(tmp_path: Path) -> None:
    f = InventoryFile(tmp_path, ROLES)
    f.assign("52:54:00:00:00:01", "hnode")
    w = InventoryWatcher(f)
    assert w.current().node("52:54:00:00:00:01") is not None
    f.path.write_text("nodes:\n  - mac: 52:54:00:00:00:09\n    role: hnode\n")  # unquoted
    assert not w.poll()
    assert w.current().node("52:54:00:00:00:01") is not None
    assert w.last_error and "quote" in w.last_error
    with pytest.raises(InventoryError):  # a write refuses to build on a broken file
        f.assign("52:54:00:00:00:02", "snode")
    f.path.write_text("nodes:\n  - mac: '52:54:00:00:00:02'\n    role: snode\n")  # repaired
    assert w.poll()
    assert w.current().node("52:54:00:00:00:02") is not None


def test_watcher_thread_picks_up_change_within_a_second(tmp_path: Path) -> None:
    f = InventoryFile(tmp_path, ROLES)
    w = InventoryWatcher(f)
    w.start(interval=0.2)
    try:
        f.assign("52:54:00:00:00:03", "hnode")
        deadline = time.monotonic() + 5
        while w.current().node("52:54:00:00:00:03") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert w.current().node("52:54:00:00:00:03") is not None
    finally:
        w.stop()


def _assign_one(args: tuple[str, int]) -> None:
    state, i = args
    InventoryFile(Path(state), ROLES).assign(f"52:54:00:00:10:{i:02x}", "hnode",
                                             ip=f"192.0.2.{i + 10}")


def test_50_concurrent_assigns_lose_none(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        pool.map(_assign_one, [(str(tmp_path), i) for i in range(50)])
    inv = InventoryFile(tmp_path, ROLES).load()
    assert len(inv.nodes) == 50
    assert not list(tmp_path.glob(".inventory.yaml.*.tmp"))

"""Who is asking (homecloud.control.identity): MAC of an address, the admin."""

from __future__ import annotations

from pathlib import Path

from homecloud.control.identity import ClientIdentity, load_admin_token, neighbour_mac
from homecloud.core.model import Inventory, Nic, Node

ARP = """IP address       HW type     Flags       HW address            Mask     Device
192.0.2.31       0x1         0x2         52:54:00:aa:00:01     *        br0
192.0.2.32       0x1         0x0         00:00:00:00:00:00     *        br0
192.0.2.33       0x1         0x2         52:54:00:aa:00:03     *        eth9
"""


def test_neighbour_table(tmp_path: Path) -> None:
    t = tmp_path / "arp"
    t.write_text(ARP)
    assert neighbour_mac("192.0.2.31", "br0", t) == "52:54:00:aa:00:01"
    assert neighbour_mac("192.0.2.32", "br0", t) is None  # incomplete entry
    assert neighbour_mac("192.0.2.33", "br0", t) is None  # another interface
    assert neighbour_mac("192.0.2.33", None, t) == "52:54:00:aa:00:03"
    assert neighbour_mac("192.0.2.31", "br0", tmp_path / "missing") is None


def test_lease_then_static_then_neighbour(tmp_path: Path) -> None:
    t = tmp_path / "arp"
    t.write_text(ARP)
    inv = Inventory((Node("h1", "hnode", (Nic("52:54:00:bb:00:01", ip="192.0.2.31"),)),))
    ident = ClientIdentity(lambda ip: "52:54:00:cc:00:01" if ip == "192.0.2.99" else None,
                           lambda: inv, "br0", ("192.0.2.1",), "tok", t)
    assert ident.mac_of("192.0.2.99") == "52:54:00:cc:00:01"
    assert ident.mac_of("192.0.2.31") == "52:54:00:bb:00:01"  # static wins over neighbours
    assert ident.mac_of("192.0.2.77") is None


def test_admin(tmp_path: Path) -> None:
    ident = ClientIdentity(lambda ip: None, Inventory, None, ("192.0.2.1",), "s3cret")
    assert ident.is_admin("192.0.2.1", {})
    assert ident.is_admin("127.0.0.1", {}) and ident.is_admin("::1", {})
    assert not ident.is_admin("192.0.2.5", {})
    assert ident.is_admin("192.0.2.5", {"Authorization": "Bearer s3cret"})
    assert not ident.is_admin("192.0.2.5", {"Authorization": "Bearer s3cre"})
    assert not ident.is_admin("not-an-ip", {})


def test_admin_token_is_made_once_and_private(tmp_path: Path) -> None:
    tok = load_admin_token(tmp_path)
    assert tok and len(tok) >= 32
    assert (tmp_path / "admin.token").stat().st_mode & 0o777 == 0o600
    assert load_admin_token(tmp_path) == tok

"""The control service: the one code path behind ``hcboot`` (and, later, the REST API) for what
the cloud knows and changes: nodes, roles, exports, reports, machines seen.

It takes an :class:`~homecloud.inventory.protocol.InventoryStore` and the state directory; it
never prints and never exits: it returns data or raises typed errors that name what is at fault.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from homecloud.control.exports import PlannedExport, plan_all
from homecloud.control.reports import read_reports
from homecloud.control.seen import Seen, read_seen
from homecloud.core.errors import InventoryError, NotFound
from homecloud.core.ids import normalize_mac
from homecloud.core.manifest import ImageStore
from homecloud.core.model import (
    HOSTNAME_RE,
    LOADERS,
    ROLES,
    Export,
    Inventory,
    Nic,
    Node,
    default_node_name,
)
from homecloud.inventory.protocol import InventoryStore, update
from homecloud.inventory.yamlfile import YamlFileStore


def known_roles(images: Path | None = None) -> list[str]:
    """The roles homecloud knows (``homecloud.core.model.ROLES``) plus any role published in
    the image store."""
    roles = set(ROLES)
    if images is not None:
        roles.update(ImageStore(images).roles())
    return sorted(roles)


@dataclass(frozen=True)
class NodeStatus:
    node: Node
    report: dict[str, Any] | None

    def to_doc(self) -> dict[str, Any]:
        n = self.node
        return {"name": n.name, "role": n.role, "mac": n.mac, "hostname": n.name, "ip": n.ip,
                "nics": [{"mac": c.mac, "purpose": c.purpose, "ip": c.ip} for c in n.nics],
                "cmdline": n.cmdline, "loader": n.loader, "report": self.report}


class ControlService:
    def __init__(self, store: InventoryStore, state_dir: Path, images: Path) -> None:
        self.store = store
        self.state_dir = Path(state_dir)
        self.images = Path(images)

    @classmethod
    def open(cls, state_dir: Path, images: Path) -> ControlService:
        """The service over the YAML inventory of ``state_dir``."""
        return cls(YamlFileStore(state_dir, known_roles(images)), state_dir, images)

    # ------------------------------------------------------------------ reading
    def inventory(self) -> Inventory:
        snap = self.store.snapshot()
        if self.store.last_error:
            raise InventoryError(self.store.where, "", self.store.last_error)
        return snap.inventory

    def roles(self) -> list[str]:
        return known_roles(self.images)

    def image_store(self) -> ImageStore:
        return ImageStore(self.images)

    def nodes(self) -> list[NodeStatus]:
        reports = read_reports(self.state_dir)
        return [NodeStatus(n, reports.get(n.mac)) for n in self.inventory().nodes]

    def unassigned(self) -> list[Seen]:
        inv = self.inventory()
        return [s for s in read_seen(self.state_dir) if inv.node(s.mac) is None]

    def exports(self, server: str) -> list[PlannedExport]:
        return plan_all(self.inventory(), self.image_store(), server)

    # ------------------------------------------------------------------ changing
    def assign(self, mac: str, role: str, hostname: str | None = None, ip: str | None = None,
               cmdline: str | None = None, loader: str | None = None) -> Node:
        """Give machine ``mac`` the role ``role``; what the caller does not say is kept from the
        node that already has this MAC.  ``hostname`` is the node's name."""
        mac = normalize_mac(mac)
        where = self.store.where
        if role not in self.roles():
            raise InventoryError(where, mac, f"unknown role {role!r} (known roles: "
                                 f"{', '.join(self.roles())})")
        if hostname is not None and not HOSTNAME_RE.match(hostname):
            raise InventoryError(where, mac, f"hostname {hostname!r} is not a valid host name")
        if ip is not None:
            try:
                ip = str(ipaddress.IPv4Address(ip))
            except ValueError:
                raise InventoryError(where, mac, f"ip {ip!r} is not an IPv4 address") from None
        if loader is not None and loader not in LOADERS:
            raise InventoryError(where, mac, f"loader {loader!r} not one of {LOADERS}")
        result: list[Node] = []

        def change(inv: Inventory) -> Inventory:
            old = inv.node(mac)
            if ip is not None:
                for other in inv.nodes:
                    mine = old is not None and other.name == old.name
                    if not mine and any(c.ip == ip for c in other.nics):
                        raise InventoryError(where, mac, f"IP {ip} is already assigned to "
                                             f"{other.name} ({other.mac})")
            if old is None:
                node = Node(hostname or default_node_name(role, mac), role,
                            (Nic(mac, ip=ip),), cmdline or "", loader)
            else:
                nics = tuple(replace(c, ip=ip) if c.mac == mac and ip is not None else c
                             for c in old.nics)
                node = replace(old, name=hostname or old.name, role=role, nics=nics,
                               cmdline=cmdline if cmdline is not None else old.cmdline,
                               loader=loader or old.loader)
            clash = inv.named(node.name)
            if clash is not None and (old is None or clash.name != old.name):
                raise InventoryError(where, mac, f"name {node.name} is already node "
                                     f"{clash.name} ({clash.mac})")
            result[:] = [node]
            base = inv.without(old.name) if old is not None else inv
            return base.with_node(node)

        update(self.store, change)
        return result[0]

    def unassign(self, key: str) -> Node:
        """Remove the node named ``key`` or owning MAC ``key``."""
        found: list[Node] = []

        def change(inv: Inventory) -> Inventory:
            node = inv.lookup(key) or inv.lookup(_mac_or(key))
            if node is None:
                raise NotFound(f"{key} is not assigned")
            found[:] = [node]
            return inv.without(node.name)

        update(self.store, change)
        return found[0]

    def set_exports(self, exports: tuple[Export, ...]) -> None:
        update(self.store, lambda inv: inv.with_exports(exports))

    def replace_inventory(self, inv: Inventory) -> None:
        """Store ``inv`` as the whole inventory (the lab's set-up; tests)."""
        update(self.store, lambda _old: inv)


def _mac_or(key: str) -> str:
    try:
        return normalize_mac(key)
    except ValueError:
        return key

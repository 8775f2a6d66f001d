"""The inventory: which MAC has which role, which storage node exports what.

``<state-dir>/inventory.yaml``::

    default_role: null            # role for MACs not listed (null: they get no boot file)
    nodes:
      - mac: "52:54:00:12:34:56"  # any usual spelling; quote it (YAML reads some MACs as numbers)
        role: hnode
        hostname: hnode1          # optional
        ip: 192.0.2.21            # optional static address (full DHCP mode)
        cmdline: "quiet"          # optional extra kernel arguments for this node
        loader: pxelinux          # optional: ipxe (default from the image) or pxelinux
    exports:                      # AoE exports served by storage nodes (see bootserver/exports.py)
      - target: e1.0
        image: {role: hnode, artifact: rootfs}
        consumers: [hnode]        # roles or MACs allowed to read it
        snodes: all               # or a list of snode MACs/hostnames
        mode: ro                  # ro (shared roots) | rw (instance volumes)

Writes are atomic and serialised with an flock; readers never see a torn file.  A malformed file
raises InventoryError naming the file and the entry, and a running server keeps the previous
inventory in force (``InventoryWatcher``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from bootserver.errors import InventoryError
from bootserver.fsutil import atomic_write, locked
from bootserver.machine import BadMac, normalize_mac

log = logging.getLogger("hcboot.inventory")

INVENTORY_NAME = "inventory.yaml"
LOADERS = ("ipxe", "pxelinux")
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_TARGET = re.compile(r"^e(\d{1,5})\.(\d{1,3})$")
_NODE_KEYS = ("mac", "role", "hostname", "ip", "cmdline", "loader")
_TOP_KEYS = ("default_role", "nodes", "exports")
_EXPORT_KEYS = ("target", "image", "volume", "consumers", "snodes", "mode")


@dataclass(frozen=True)
class Node:
    mac: str
    role: str
    hostname: str | None = None
    ip: str | None = None
    cmdline: str = ""
    loader: str | None = None

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mac": self.mac, "role": self.role}
        for k in ("hostname", "ip", "loader"):
            v = getattr(self, k)
            if v:
                doc[k] = v
        if self.cmdline:
            doc["cmdline"] = self.cmdline
        return doc


@dataclass(frozen=True)
class Export:
    target: str  # "e<shelf>.<slot>"
    shelf: int
    slot: int
    mode: str = "ro"
    image_role: str | None = None
    image_artifact: str = "rootfs"
    image_build: str | None = None  # None = the role's current build
    volume_name: str | None = None
    volume_size: int | None = None  # bytes
    consumers: tuple[str, ...] = ()  # roles or MACs
    snodes: tuple[str, ...] | None = None  # None = all storage nodes

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"target": self.target}
        if self.image_role:
            img: dict[str, Any] = {"role": self.image_role, "artifact": self.image_artifact}
            if self.image_build:
                img["build"] = self.image_build
            doc["image"] = img
        if self.volume_name:
            doc["volume"] = {"name": self.volume_name, "size": self.volume_size}
        doc["consumers"] = list(self.consumers)
        doc["snodes"] = "all" if self.snodes is None else list(self.snodes)
        doc["mode"] = self.mode
        return doc


@dataclass(frozen=True)
class Inventory:
    nodes: tuple[Node, ...] = ()
    default_role: str | None = None
    exports: tuple[Export, ...] = ()
    _by_mac: dict[str, Node] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_mac.update({n.mac: n for n in self.nodes})

    def node(self, mac: str) -> Node | None:
        return self._by_mac.get(mac)

    def with_node(self, node: Node) -> Inventory:
        nodes = [n for n in self.nodes if n.mac != node.mac] + [node]
        return Inventory(tuple(sorted(nodes, key=lambda n: n.mac)), self.default_role, self.exports)

    def without(self, mac: str) -> Inventory:
        return Inventory(tuple(n for n in self.nodes if n.mac != mac), self.default_role,
                         self.exports)

    def to_yaml(self) -> str:
        doc: dict[str, Any] = {
            "default_role": self.default_role,
            "nodes": [n.to_doc() for n in self.nodes],
            "exports": [e.to_doc() for e in self.exports],
        }
        header = "# homecloud inventory: written by hcboot; edits by hand are fine (quote MACs)\n"
        return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------- parsing

_SIZE = re.compile(r"^(\d+)\s*([KMGT]i?B?|B)?$", re.IGNORECASE)


def parse_size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(str(value).strip())
    if not m:
        raise ValueError(f"not a size: {value!r}")
    unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]


def _scalar_text(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else f"<{type(node).__name__}>"


class _Parser:
    def __init__(self, path: Path, roles: Iterable[str] | None) -> None:
        self.path = path
        self.roles = set(roles) if roles is not None else None

    def err(self, entry: str, msg: str, node: yaml.Node | None = None) -> InventoryError:
        where = f" (line {node.start_mark.line + 1})" if node is not None else ""
        return InventoryError(self.path, entry, msg + where)

    def role(self, entry: str, value: object, node: yaml.Node | None) -> str:
        if not isinstance(value, str) or not value:
            raise self.err(entry, f"role must be a string, got {value!r}", node)
        if self.roles is not None and value not in self.roles:
            known = ", ".join(sorted(self.roles)) or "none"
            raise self.err(entry, f"unknown role {value!r} (known roles: {known})", node)
        return value

    def mac(self, entry: str, vnode: yaml.Node, value: object) -> str:
        if isinstance(vnode, yaml.ScalarNode) and vnode.tag != "tag:yaml.org,2002:str":
            raise self.err(entry, f"MAC {vnode.value} was read by YAML as a "
                           f"{vnode.tag.rsplit(':', 1)[-1]}, not text: quote it "
                           f"(mac: \"{vnode.value}\")", vnode)
        try:
            return normalize_mac(value)
        except BadMac as exc:
            raise self.err(entry, str(exc), vnode) from None

    def parse(self, text: str) -> Inventory:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise InventoryError(self.path, "", f"not valid YAML: {exc}") from None
        if root is None:
            return Inventory()
        if not isinstance(root, yaml.MappingNode):
            raise self.err("top level", "must be a mapping", root)
        data = yaml.SafeLoader(text).get_single_data()
        top = {_scalar_text(k): v for k, v in root.value}
        for key, knode in ((_scalar_text(k), k) for k, _ in root.value):
            if key not in _TOP_KEYS:
                raise self.err(key, f"unknown key (allowed: {', '.join(_TOP_KEYS)})", knode)
        default_role = data.get("default_role")
        if default_role is not None:
            default_role = self.role("default_role", default_role, top.get("default_role"))
        nodes = self.nodes(top.get("nodes"), data.get("nodes"))
        exports = self.exports(top.get("exports"), data.get("exports"))
        return Inventory(nodes, default_role, exports)

    def nodes(self, seq: yaml.Node | None, data: object) -> tuple[Node, ...]:
        if seq is None or data is None:
            return ()
        if not isinstance(seq, yaml.SequenceNode) or not isinstance(data, list):
            raise self.err("nodes", "must be a list of {mac, role, ...}", seq)
        out: list[Node] = []
        macs: dict[str, str] = {}
        ips: dict[str, str] = {}
        for i, (item_node, item) in enumerate(zip(seq.value, data, strict=True)):
            entry = f"nodes[{i}]"
            if not isinstance(item_node, yaml.MappingNode) or not isinstance(item, dict):
                raise self.err(entry, "must be a mapping with mac and role", item_node)
            vnodes = {_scalar_text(k): v for k, v in item_node.value}
            for key in vnodes:
                if key not in _NODE_KEYS:
                    raise self.err(entry, f"unknown key {key!r} (allowed: {', '.join(_NODE_KEYS)})",
                                   vnodes[key])
            if "mac" not in item:
                raise self.err(entry, "missing key 'mac'", item_node)
            mac = self.mac(entry, vnodes["mac"], item["mac"])
            entry = f"nodes[{i}] ({mac})"
            if "role" not in item:
                raise self.err(entry, "missing key 'role'", item_node)
            role = self.role(entry, item["role"], vnodes["role"])
            if mac in macs:
                raise self.err(entry, f"duplicate MAC {mac} (also {macs[mac]})", vnodes["mac"])
            macs[mac] = entry
            ip = item.get("ip")
            if ip is not None:
                try:
                    ip = str(ipaddress.IPv4Address(str(ip)))
                except ValueError:
                    raise self.err(entry, f"ip {ip!r} is not an IPv4 address",
                                   vnodes["ip"]) from None
                if ip in ips:
                    raise self.err(entry, f"duplicate IP {ip} (also {ips[ip]})", vnodes["ip"])
                ips[ip] = entry
            hostname = item.get("hostname")
            if hostname is not None and (not isinstance(hostname, str)
                                         or not _HOSTNAME.match(hostname)):
                raise self.err(entry, f"hostname {hostname!r} is not a valid host name",
                               vnodes.get("hostname"))
            loader = item.get("loader")
            if loader is not None and loader not in LOADERS:
                raise self.err(entry, f"loader {loader!r} not one of {LOADERS}", vnodes["loader"])
            cmdline = item.get("cmdline") or ""
            if not isinstance(cmdline, str) or "\n" in cmdline:
                raise self.err(entry, "cmdline must be a single-line string", vnodes["cmdline"])
            out.append(Node(mac, role, hostname, ip, cmdline, loader))
        return tuple(out)

    def exports(self, seq: yaml.Node | None, data: object) -> tuple[Export, ...]:
        if seq is None or data is None:
            return ()
        if not isinstance(seq, yaml.SequenceNode) or not isinstance(data, list):
            raise self.err("exports", "must be a list", seq)
        out: list[Export] = []
        seen: dict[str, str] = {}
        for i, item in enumerate(data):
            node = seq.value[i]
            entry = f"exports[{i}]"
            if not isinstance(item, dict):
                raise self.err(entry, "must be a mapping", node)
            for key in item:
                if key not in _EXPORT_KEYS:
                    allowed = ", ".join(_EXPORT_KEYS)
                    raise self.err(entry, f"unknown key {key!r} (allowed: {allowed})", node)
            m = _TARGET.match(str(item.get("target", "")))
            if not m or int(m.group(1)) >= 0xFFFF or int(m.group(2)) >= 0xFF:
                raise self.err(entry, f"target {item.get('target')!r} is not eSHELF.SLOT "
                               "(shelf < 65535, slot < 255)", node)
            target = f"e{int(m.group(1))}.{int(m.group(2))}"
            entry = f"exports[{i}] ({target})"
            if target in seen:
                raise self.err(entry, f"duplicate target (also {seen[target]})", node)
            seen[target] = entry
            mode = item.get("mode", "ro")
            if mode not in ("ro", "rw"):
                raise self.err(entry, f"mode {mode!r} must be ro or rw", node)
            img, vol = item.get("image"), item.get("volume")
            if (img is None) == (vol is None):
                raise self.err(entry, "needs exactly one of image or volume", node)
            kw: dict[str, Any] = {}
            if img is not None:
                if not isinstance(img, dict) or "role" not in img:
                    raise self.err(entry, "image must be {role, artifact?, build?}", node)
                kw["image_role"] = self.role(entry, img["role"], node)
                kw["image_artifact"] = str(img.get("artifact", "rootfs"))
                kw["image_build"] = str(img["build"]) if img.get("build") else None
            else:
                if not isinstance(vol, dict) or "name" not in vol or "size" not in vol:
                    raise self.err(entry, "volume must be {name, size}", node)
                try:
                    kw["volume_size"] = parse_size(vol["size"])
                except ValueError as exc:
                    raise self.err(entry, str(exc), node) from None
                kw["volume_name"] = str(vol["name"])
            consumers = item.get("consumers", [])
            if isinstance(consumers, str):
                consumers = [consumers]
            cons: list[str] = []
            for c in consumers:
                try:
                    cons.append(normalize_mac(c))
                except BadMac:
                    cons.append(self.role(entry, c, node))
            snodes_v = item.get("snodes", "all")
            snodes = None if snodes_v in ("all", None) else tuple(
                _mac_or_name(s) for s in (snodes_v if isinstance(snodes_v, list) else [snodes_v]))
            out.append(Export(target=target, shelf=int(m.group(1)), slot=int(m.group(2)),
                              mode=mode, consumers=tuple(cons), snodes=snodes, **kw))
        return tuple(out)


def _mac_or_name(value: object) -> str:
    try:
        return normalize_mac(value)
    except BadMac:
        return str(value)


def parse_inventory(text: str, path: Path | str = INVENTORY_NAME,
                    roles: Iterable[str] | None = None) -> Inventory:
    """Parse inventory YAML; ``roles`` (if given) is the set of known role names."""
    return _Parser(Path(path), roles).parse(text)


# --------------------------------------------------------------------------- the file

class InventoryFile:
    """``<state-dir>/inventory.yaml`` with locked, atomic read-modify-write."""

    def __init__(self, state_dir: Path, roles: Iterable[str] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / INVENTORY_NAME
        self.lock_path = self.state_dir / ".inventory.lock"
        self.roles = tuple(roles) if roles is not None else None

    def load(self) -> Inventory:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return Inventory()
        return parse_inventory(text, self.path, self.roles)

    @contextlib.contextmanager
    def edit(self) -> Iterator[list[Inventory]]:
        """``with inv.edit() as box: box[0] = box[0].with_node(...)`` under an exclusive lock."""
        with locked(self.lock_path):
            box = [self.load()]
            yield box
            atomic_write(self.path, box[0].to_yaml())

    def assign(self, mac: str, role: str, hostname: str | None = None,
               ip: str | None = None, cmdline: str | None = None,
               loader: str | None = None) -> Node:
        mac = normalize_mac(mac)
        if self.roles is not None and role not in self.roles:
            known = ", ".join(sorted(self.roles)) or "none"
            raise InventoryError(self.path, mac, f"unknown role {role!r} (known roles: {known})")
        with self.edit() as box:
            if ip is not None:
                for other in box[0].nodes:
                    if other.ip == ip and other.mac != mac:
                        raise InventoryError(self.path, mac,
                                             f"IP {ip} is already assigned to {other.mac}")
            old = box[0].node(mac)
            node = Node(mac, role, hostname, ip, cmdline or "", loader)
            if old is not None:  # keep what the caller did not say
                node = replace(old, role=role, hostname=hostname or old.hostname,
                               ip=ip or old.ip, cmdline=cmdline if cmdline is not None
                               else old.cmdline, loader=loader or old.loader)
            new = box[0].with_node(node)
            # validate the result exactly as a reader would (duplicate IPs, unknown roles)
            parse_inventory(new.to_yaml(), self.path, self.roles)
            box[0] = new
        return node

    def unassign(self, mac: str) -> bool:
        mac = normalize_mac(mac)
        with self.edit() as box:
            found = box[0].node(mac) is not None
            box[0] = box[0].without(mac)
        return found


class InventoryWatcher:
    """Keeps the last good inventory in memory and reloads it when the file changes.

    ``current()`` is cheap; ``poll()`` (called by a 0.5 s timer thread in the server) stats the
    file and re-parses it on change.  A broken file is logged and the previous one stays in force.
    """

    def __init__(self, file: InventoryFile,
                 on_change: Callable[[Inventory], None] | None = None) -> None:
        self.file = file
        self.on_change = on_change
        self._sig: tuple[int, int, int] | None = None
        self._inv = Inventory()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.poll()

    def current(self) -> Inventory:
        return self._inv

    def poll(self) -> bool:
        try:
            st = os.stat(self.file.path)
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            sig = (0, 0, 0)
        with self._lock:
            if sig == self._sig:
                return False
            self._sig = sig
            try:
                inv = self.file.load()
            except InventoryError as exc:
                if str(exc) != self.last_error:
                    log.error("inventory not reloaded, previous one stays in force: %s", exc)
                self.last_error = str(exc)
                return False
            self.last_error = None
            changed = inv != self._inv
            self._inv = inv
        if changed:
            log.info("inventory loaded: %d nodes, %d exports", len(inv.nodes), len(inv.exports))
            if self.on_change:
                self.on_change(inv)
        return changed

    def start(self, interval: float = 0.5) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.poll()
                except Exception:  # never let the watcher die
                    log.exception("inventory poll failed")

        self._thread = threading.Thread(target=loop, name="inventory-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)

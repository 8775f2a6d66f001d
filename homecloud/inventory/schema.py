"""The inventory's YAML form: one strict reader (errors name the file, the entry and the line) and
one writer.

``inventory.yaml``::

    default_role: null            # role for MACs not listed (null: they get no boot file)
    nodes:                        # by name; the name is the node's host name
      hnode1:
        role: hnode
        nics:                     # one or more; purpose: provisioning (boots) | instance | storage
          - {mac: "52:54:00:12:34:56", purpose: provisioning, ip: 192.0.2.21}
          - {mac: "52:54:00:12:34:57", purpose: instance}
        cmdline: "quiet"          # optional extra kernel arguments for this node
        loader: pxelinux          # optional: ipxe (default from the image) or pxelinux
      snode1: {role: snode, mac: "52:54:00:aa:00:01"}   # shorthand: one provisioning NIC
    exports:                      # AoE exports served by storage nodes
      - target: e1.0
        image: {role: hnode, artifact: rootfs}        # or volume: {name: vol1, size: 10G}
        consumers: [hnode]        # roles, node names or MACs allowed to use it
        snodes: all               # or a list of storage node names/MACs
        mode: ro                  # ro (shared roots) | rw (instance volumes)
      - target: e10.0             # a volume made by `hcboot` (control/volumes.py)
        volume: {name: web1, size: 4G, origin: "template:domu-20261204T101500Z-1a2b"}
        consumers: [hnode]        # origin: template:NAME | volume:NAME | (absent: empty)
        snodes: [snode1]          # the storage node that keeps it
        mode: rw
      - target: e10.1             # a replicated volume: DRBD between two snodes
        volume: {name: db1, size: 8G, drbd_minor: 0}   # /dev/drbd0, link port 7800 + minor
        consumers: [hnode]
        snodes: [snode1, snode2]  # [primary (exports it), replica]
                                  # volume.outdated: snode2 -- set by the config node while
                                  # that side misses writes (it is never promoted then)
        mode: rw
    templates:                    # read-only base volumes on every storage node's pool
      domu-20261204T101500Z-1a2b: {role: domu, build: 20261204T101500Z-1a2b, file: rootfs.img,
                                   size: 1073741824, sha256: "<64 hex>", artifact: rootfs}
    deletions:                    # destroyed volumes/templates the snodes must still delete
      - {kind: volume, name: old1, snodes: [snode1], since: 1796380800.0}
    instances:                    # Xen guests by name (written by hcboot instance ...)
      web1: {template: domu-20261204T101500Z, memory_mb: 384, vcpus: 1, disk_size: 4294967296,
             mac: "0a:48:43:00:00:01", ip: 203.0.113.10, uuid: 5f0c..., volume: web1-root,
             host: hnode1, state: running, ssh_keys: [...], user_data: "", last_error: ""}
    drained: [hnode2]             # hnodes that get no new instances (hcboot node drain)

The list form of earlier releases (``nodes: [{mac, role, hostname, ip, cmdline, loader}]``) is
still read; nodes without a host name are named ``<role>-<last 6 hex digits of the MAC>``.  The
writer always writes the form above.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from homecloud.core.errors import InventoryError
from homecloud.core.ids import BadMac, BadTarget, Target, normalize_mac
from homecloud.core.model import (
    DRBD_MINOR_LIMIT,
    EXPORT_MODES,
    HOSTNAME_RE,
    LOADERS,
    NIC_PURPOSES,
    ORIGIN_KINDS,
    POOL_KINDS,
    VOLUME_NAME_RE,
    Export,
    ImageExport,
    Inventory,
    Nic,
    Node,
    PoolDeletion,
    TemplateImage,
    VolumeExport,
    default_node_name,
)
from homecloud.inventory.instances_schema import InstanceParsing, instance_doc

INVENTORY_NAME = "inventory.yaml"
_TOP_KEYS = ("default_role", "nodes", "exports", "templates", "deletions", "instances",
             "drained")
_NODE_KEYS = ("role", "nics", "mac", "ip", "cmdline", "loader")
_LEGACY_NODE_KEYS = ("mac", "role", "hostname", "ip", "cmdline", "loader")
_NIC_KEYS = ("mac", "purpose", "ip")
_EXPORT_KEYS = ("target", "image", "volume", "consumers", "snodes", "mode")
_SIZE = re.compile(r"^(\d+)\s*([KMGT]i?B?|B)?$", re.IGNORECASE)


def parse_size(value: object) -> int:
    """``10G``, ``512MiB``, ``4096`` (bytes) -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"not a size: {value!r}")
        return value
    m = _SIZE.match(str(value).strip())
    if not m:
        raise ValueError(f"not a size: {value!r}")
    unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]


def _text(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else f"<{type(node).__name__}>"


def _pairs(node: yaml.MappingNode) -> dict[str, yaml.Node]:
    return {_text(k): v for k, v in node.value}


class _Parser(InstanceParsing):
    def __init__(self, path: Path, roles: Iterable[str] | None) -> None:
        self.path = path
        self.roles = set(roles) if roles is not None else None
        self.macs: dict[str, str] = {}
        self.ips: dict[str, str] = {}

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
            mac = normalize_mac(value)
        except BadMac as exc:
            raise self.err(entry, str(exc), vnode) from None
        if mac in self.macs:
            raise self.err(entry, f"duplicate MAC {mac} (also {self.macs[mac]})", vnode)
        self.macs[mac] = entry
        return mac

    def ip(self, entry: str, vnode: yaml.Node, value: object) -> str:
        try:
            ip = str(ipaddress.IPv4Address(str(value)))
        except ValueError:
            raise self.err(entry, f"ip {value!r} is not an IPv4 address", vnode) from None
        if ip in self.ips:
            raise self.err(entry, f"duplicate IP {ip} (also {self.ips[ip]})", vnode)
        self.ips[ip] = entry
        return ip

    def keys(self, entry: str, mapping: yaml.MappingNode, allowed: tuple[str, ...]) -> None:
        for k, _ in mapping.value:
            if _text(k) not in allowed:
                raise self.err(entry, f"unknown key {_text(k)!r} (allowed: {', '.join(allowed)})",
                               k)

    def parse(self, text: str) -> Inventory:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InventoryError(self.path, "", f"not valid YAML: {exc}") from None
        if root is None:
            return Inventory()
        if not isinstance(root, yaml.MappingNode) or not isinstance(data, dict):
            raise self.err("top level", "must be a mapping", root)
        self.keys("top level", root, _TOP_KEYS)
        top = _pairs(root)
        default_role = data.get("default_role")
        if default_role is not None:
            default_role = self.role("default_role", default_role, top.get("default_role"))
        nodes = self.nodes(top.get("nodes"), data.get("nodes"))
        exports = self.exports(top.get("exports"), data.get("exports"))
        templates = self.templates(top.get("templates"), data.get("templates"))
        deletions = self.deletions(top.get("deletions"), data.get("deletions"))
        instances = self.instances(top.get("instances"), data.get("instances"), nodes)
        drained = self.drained(top.get("drained"), data.get("drained"))
        return Inventory(nodes, default_role, exports, templates=templates,
                         deletions=deletions, instances=instances, drained=drained)

    # ------------------------------------------------------------------ templates, deletions
    def pool_name(self, entry: str, value: object, node: yaml.Node | None) -> str:
        if not isinstance(value, str) or not VOLUME_NAME_RE.match(value):
            raise self.err(entry, f"name {value!r} is not a volume/template name (letters, "
                           "digits, . _ -; at most 100; not starting with . _ -)", node)
        return value

    def templates(self, mapping: yaml.Node | None, data: object) -> tuple[TemplateImage, ...]:
        if mapping is None or data is None:
            return ()
        if not isinstance(mapping, yaml.MappingNode) or not isinstance(data, dict):
            raise self.err("templates", "must be a mapping of template name to {role, build,"
                           " file, size, sha256}", mapping)
        keys = ("role", "build", "file", "size", "sha256", "artifact")
        out: list[TemplateImage] = []
        for (knode, vnode), (name, d) in zip(mapping.value, data.items(), strict=True):
            entry = f"templates.{name}"
            name = self.pool_name(entry, name, knode)
            if not isinstance(vnode, yaml.MappingNode) or not isinstance(d, dict):
                raise self.err(entry, "must be a mapping {role, build, file, size, sha256}",
                               vnode)
            self.keys(entry, vnode, keys)
            for k in keys[:5]:
                if k not in d:
                    raise self.err(entry, f"missing key {k!r}", vnode)
            sha = str(d["sha256"])
            if not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise self.err(entry, f"sha256 {sha!r} is not 64 hex digits", vnode)
            size = d["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                raise self.err(entry, f"size {size!r} is not a number of bytes", vnode)
            for k in ("role", "build", "file", "artifact"):
                if k in d and not (isinstance(d[k], str) and VOLUME_NAME_RE.match(d[k])):
                    raise self.err(entry, f"{k} {d[k]!r} is not a name", vnode)
            out.append(TemplateImage(name, d["role"], d["build"], d["file"], size, sha,
                                     d.get("artifact", "rootfs")))
        return tuple(sorted(out, key=lambda t: t.name))

    def deletions(self, seq: yaml.Node | None, data: object) -> tuple[PoolDeletion, ...]:
        if seq is None or data is None:
            return ()
        if not isinstance(seq, yaml.SequenceNode) or not isinstance(data, list):
            raise self.err("deletions", "must be a list of {kind, name, snodes}", seq)
        out: list[PoolDeletion] = []
        for i, (node, d) in enumerate(zip(seq.value, data, strict=True)):
            entry = f"deletions[{i}]"
            if not isinstance(node, yaml.MappingNode) or not isinstance(d, dict):
                raise self.err(entry, "must be a mapping {kind, name, snodes}", node)
            self.keys(entry, node, ("kind", "name", "snodes", "since", "target"))
            if d.get("kind") not in POOL_KINDS:
                raise self.err(entry, f"kind {d.get('kind')!r} not one of {POOL_KINDS}", node)
            name = self.pool_name(entry, d.get("name"), node)
            snodes = d.get("snodes") or []
            if not isinstance(snodes, list) or not all(isinstance(x, str) for x in snodes):
                raise self.err(entry, "snodes must be a list of storage node names", node)
            since = d.get("since", 0.0)
            if not isinstance(since, (int, float)) or isinstance(since, bool):
                raise self.err(entry, f"since {since!r} is not a time", node)
            target = None
            if d.get("target") is not None:
                try:
                    target = Target.parse(str(d["target"]))
                except BadTarget as exc:
                    raise self.err(entry, str(exc), node) from None
            out.append(PoolDeletion(d["kind"], name, tuple(snodes), float(since), target))
        return tuple(out)

    # ------------------------------------------------------------------ nodes
    def nodes(self, seq: yaml.Node | None, data: object) -> tuple[Node, ...]:
        if seq is None or data is None:
            return ()
        out: list[Node] = []
        if isinstance(seq, yaml.SequenceNode) and isinstance(data, list):
            for i, (n, d) in enumerate(zip(seq.value, data, strict=True)):
                out.append(self.legacy_node(f"nodes[{i}]", n, d))
        elif isinstance(seq, yaml.MappingNode) and isinstance(data, dict):
            for (knode, vnode), (name, d) in zip(seq.value, data.items(), strict=True):
                out.append(self.node(knode, vnode, name, d))
        else:
            raise self.err("nodes", "must be a mapping of node name to {role, nics, ...}", seq)
        names: dict[str, str] = {}
        for node in out:
            if node.name in names:
                raise self.err(f"nodes.{node.name}", f"duplicate node name (also "
                               f"{names[node.name]})")
            names[node.name] = node.mac
        return tuple(sorted(out, key=lambda n: n.name))

    def name(self, entry: str, value: object, vnode: yaml.Node | None) -> str:
        if not isinstance(value, str) or not HOSTNAME_RE.match(value):
            raise self.err(entry, f"node name {value!r} is not a valid host name (letters, "
                           "digits and '-', at most 63)", vnode)
        return value

    def common(self, entry: str, vnodes: dict[str, yaml.Node],
               d: dict[str, Any]) -> tuple[str, str | None]:
        loader = d.get("loader")
        if loader is not None and loader not in LOADERS:
            raise self.err(entry, f"loader {loader!r} not one of {LOADERS}", vnodes["loader"])
        cmdline = d.get("cmdline") or ""
        if not isinstance(cmdline, str) or "\n" in cmdline:
            raise self.err(entry, "cmdline must be a single-line string", vnodes["cmdline"])
        return cmdline, loader

    def node(self, knode: yaml.Node, vnode: yaml.Node, raw_name: object, d: object) -> Node:
        name = self.name(f"nodes.{raw_name}", raw_name, knode)
        entry = f"nodes.{name}"
        if not isinstance(vnode, yaml.MappingNode) or not isinstance(d, dict):
            raise self.err(entry, "must be a mapping with role and nics", vnode)
        self.keys(entry, vnode, _NODE_KEYS)
        v = _pairs(vnode)
        if "role" not in d:
            raise self.err(entry, "missing key 'role'", vnode)
        role = self.role(entry, d["role"], v["role"])
        nics: list[Nic] = []
        if "mac" in d:
            if "nics" in d:
                raise self.err(entry, "give either mac (one NIC) or nics, not both", v["mac"])
            ip = self.ip(entry, v["ip"], d["ip"]) if d.get("ip") is not None else None
            nics.append(Nic(self.mac(entry, v["mac"], d["mac"]), ip=ip))
        elif "nics" in d:
            nics = self.nics(entry, v["nics"], d["nics"])
        else:
            raise self.err(entry, "missing key 'nics' (or 'mac')", vnode)
        if "ip" in d and "nics" in d:
            raise self.err(entry, "ip belongs to a NIC: nics: [{mac, ip}]", v["ip"])
        cmdline, loader = self.common(entry, v, d)
        return Node(name, role, tuple(nics), cmdline, loader)

    def nics(self, entry: str, seq: yaml.Node, data: object) -> list[Nic]:
        if not isinstance(seq, yaml.SequenceNode) or not isinstance(data, list) or not data:
            raise self.err(entry, "nics must be a non-empty list of {mac, purpose, ip}", seq)
        out: list[Nic] = []
        for i, (n, d) in enumerate(zip(seq.value, data, strict=True)):
            e = f"{entry}.nics[{i}]"
            if not isinstance(n, yaml.MappingNode) or not isinstance(d, dict):
                raise self.err(e, "must be a mapping {mac, purpose, ip}", n)
            self.keys(e, n, _NIC_KEYS)
            v = _pairs(n)
            if "mac" not in d:
                raise self.err(e, "missing key 'mac'", n)
            mac = self.mac(e, v["mac"], d["mac"])
            purpose = d.get("purpose", "provisioning")
            if purpose not in NIC_PURPOSES:
                raise self.err(e, f"purpose {purpose!r} not one of {NIC_PURPOSES}",
                               v.get("purpose"))
            ip = self.ip(e, v["ip"], d["ip"]) if d.get("ip") is not None else None
            out.append(Nic(mac, purpose, ip))
        if sum(1 for nic in out if nic.purpose == "provisioning") > 1:
            raise self.err(entry, "more than one NIC with purpose provisioning", seq)
        return out

    def legacy_node(self, entry: str, vnode: yaml.Node, d: object) -> Node:
        if not isinstance(vnode, yaml.MappingNode) or not isinstance(d, dict):
            raise self.err(entry, "must be a mapping with mac and role", vnode)
        self.keys(entry, vnode, _LEGACY_NODE_KEYS)
        v = _pairs(vnode)
        if "mac" not in d:
            raise self.err(entry, "missing key 'mac'", vnode)
        mac = self.mac(entry, v["mac"], d["mac"])
        entry = f"{entry} ({mac})"
        if "role" not in d:
            raise self.err(entry, "missing key 'role'", vnode)
        role = self.role(entry, d["role"], v["role"])
        ip = self.ip(entry, v["ip"], d["ip"]) if d.get("ip") is not None else None
        hostname = d.get("hostname")
        name = (self.name(entry, hostname, v["hostname"]) if hostname is not None
                else default_node_name(role, mac))
        cmdline, loader = self.common(entry, v, d)
        return Node(name, role, (Nic(mac, ip=ip),), cmdline, loader)

    # ------------------------------------------------------------------ exports
    def exports(self, seq: yaml.Node | None, data: object) -> tuple[Export, ...]:
        if seq is None or data is None:
            return ()
        if not isinstance(seq, yaml.SequenceNode) or not isinstance(data, list):
            raise self.err("exports", "must be a list", seq)
        out: list[Export] = []
        seen: dict[Target, str] = {}
        for i, (node, item) in enumerate(zip(seq.value, data, strict=True)):
            entry = f"exports[{i}]"
            if not isinstance(item, dict):
                raise self.err(entry, "must be a mapping", node)
            for key in item:
                if key not in _EXPORT_KEYS:
                    raise self.err(entry, f"unknown key {key!r} (allowed: "
                                   f"{', '.join(_EXPORT_KEYS)})", node)
            try:
                target = Target.parse(str(item.get("target", "")))
            except BadTarget as exc:
                raise self.err(entry, str(exc), node) from None
            entry = f"exports[{i}] ({target})"
            if target in seen:
                raise self.err(entry, f"duplicate target (also {seen[target]})", node)
            seen[target] = entry
            mode = item.get("mode", "ro")
            if mode not in EXPORT_MODES:
                raise self.err(entry, f"mode {mode!r} must be ro or rw", node)
            consumers = item.get("consumers", [])
            if isinstance(consumers, str):
                consumers = [consumers]
            if not isinstance(consumers, list):
                raise self.err(entry, "consumers must be a list of roles, node names or MACs",
                               node)
            cons = tuple(self.consumer(entry, c, node) for c in consumers)
            snodes_v = item.get("snodes", "all")
            snodes = None if snodes_v in ("all", None) else tuple(
                _mac_or_name(s) for s in (snodes_v if isinstance(snodes_v, list) else [snodes_v]))
            img, vol = item.get("image"), item.get("volume")
            if (img is None) == (vol is None):
                raise self.err(entry, "needs exactly one of image or volume", node)
            if img is not None:
                if not isinstance(img, dict) or "role" not in img or \
                        set(img) - {"role", "artifact", "build"}:
                    raise self.err(entry, "image must be {role, artifact?, build?}", node)
                out.append(ImageExport(target, mode, cons, snodes,
                                       role=self.role(entry, img["role"], node),
                                       artifact=str(img.get("artifact", "rootfs")),
                                       build=str(img["build"]) if img.get("build") else None))
            else:
                if not isinstance(vol, dict) or not {"name", "size"} <= set(vol) or \
                        set(vol) - {"name", "size", "origin", "drbd_minor", "outdated", "keep"}:
                    raise self.err(entry, "volume must be {name, size, origin?, drbd_minor?, "
                                   "outdated?, keep?}", node)
                try:
                    size = parse_size(vol["size"])
                except ValueError as exc:
                    raise self.err(entry, str(exc), node) from None
                okind, oname = "empty", ""
                if vol.get("origin"):
                    okind, _, oname = str(vol["origin"]).partition(":")
                    if okind not in ORIGIN_KINDS[:2] or not VOLUME_NAME_RE.match(oname):
                        raise self.err(entry, f"origin {vol['origin']!r} is not template:NAME"
                                       " or volume:NAME", node)
                minor = vol.get("drbd_minor")
                if minor is not None:
                    if not isinstance(minor, int) or isinstance(minor, bool) or \
                            not 0 <= minor < DRBD_MINOR_LIMIT:
                        raise self.err(entry, f"drbd_minor {minor!r} must be an integer in "
                                       f"0..{DRBD_MINOR_LIMIT - 1}", node)
                    if snodes is None or len(snodes) != 2:
                        raise self.err(entry, "a replicated volume (drbd_minor) needs exactly "
                                       "two snodes: [primary, replica]", node)
                outdated = vol.get("outdated")
                if outdated is not None and (minor is None or not isinstance(outdated, str)
                                             or outdated not in (snodes or ())):
                    raise self.err(entry, f"outdated {outdated!r} must name one of a replicated "
                                   "volume's two snodes (the one that missed writes)", node)
                keep = vol.get("keep")
                if keep is not None and (minor is None or not isinstance(keep, str)
                                         or keep not in (snodes or ())):
                    raise self.err(entry, f"keep {keep!r} must name one of a replicated "
                                   "volume's two snodes (the side kept after a split brain)",
                                   node)
                out.append(VolumeExport(target, mode, cons, snodes, name=str(vol["name"]),
                                        size=size, origin_kind=okind, origin=oname,
                                        drbd_minor=minor, outdated=outdated, keep=keep))
        return tuple(out)

    def consumer(self, entry: str, value: object, node: yaml.Node) -> str:
        try:
            return normalize_mac(value)
        except BadMac:
            pass
        if isinstance(value, str) and (self.roles is None or value in self.roles
                                       or HOSTNAME_RE.match(value)):
            return value
        raise self.err(entry, f"consumer {value!r} is not a role, a node name or a MAC", node)


def _mac_or_name(value: object) -> str:
    try:
        return normalize_mac(value)
    except BadMac:
        return str(value)


def parse_inventory(text: str, path: Path | str = INVENTORY_NAME,
                    roles: Iterable[str] | None = None) -> Inventory:
    """Parse inventory YAML; ``roles`` (if given) is the set of known role names."""
    return _Parser(Path(path), roles).parse(text)


# ---------------------------------------------------------------------- writing

def node_doc(n: Node) -> dict[str, Any]:
    doc: dict[str, Any] = {"role": n.role}
    if len(n.nics) == 1 and n.nics[0].purpose == "provisioning":
        doc["mac"] = n.nics[0].mac
        if n.nics[0].ip:
            doc["ip"] = n.nics[0].ip
    else:
        doc["nics"] = [{"mac": c.mac, "purpose": c.purpose, **({"ip": c.ip} if c.ip else {})}
                       for c in n.nics]
    if n.cmdline:
        doc["cmdline"] = n.cmdline
    if n.loader:
        doc["loader"] = n.loader
    return doc


def export_doc(e: Export) -> dict[str, Any]:
    doc: dict[str, Any] = {"target": str(e.target)}
    if isinstance(e, ImageExport):
        img: dict[str, Any] = {"role": e.role, "artifact": e.artifact}
        if e.build:
            img["build"] = e.build
        doc["image"] = img
    else:
        doc["volume"] = {"name": e.name, "size": e.size}
        if e.origin_kind != "empty":
            doc["volume"]["origin"] = f"{e.origin_kind}:{e.origin}"
        if e.drbd_minor is not None:
            doc["volume"]["drbd_minor"] = e.drbd_minor
        if e.outdated is not None:
            doc["volume"]["outdated"] = e.outdated
        if e.keep is not None:
            doc["volume"]["keep"] = e.keep
    doc["consumers"] = list(e.consumers)
    doc["snodes"] = "all" if e.snodes is None else list(e.snodes)
    doc["mode"] = e.mode
    return doc


def to_yaml(inv: Inventory) -> str:
    doc: dict[str, Any] = {
        "default_role": inv.default_role,
        "nodes": {n.name: node_doc(n) for n in inv.nodes},
        "exports": [export_doc(e) for e in inv.exports],
    }
    if inv.instances:
        doc["instances"] = {i.name: instance_doc(i) for i in inv.instances}
    if inv.drained:
        doc["drained"] = list(inv.drained)
    if inv.templates:
        doc["templates"] = {t.name: {"role": t.role, "build": t.build, "file": t.file,
                                     "size": t.size, "sha256": t.sha256,
                                     "artifact": t.artifact} for t in inv.templates}
    if inv.deletions:
        doc["deletions"] = [{"kind": d.kind, "name": d.name, "snodes": list(d.snodes),
                             "since": d.since, **({"target": str(d.target)} if d.target else {})}
                            for d in inv.deletions]
    header = "# homecloud inventory: written by hcboot; edits by hand are fine (quote MACs)\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)

"""The inventory's YAML form, part 2: instances and drained hnodes (issue 11).

The instance entries of ``inventory.yaml`` (see :mod:`homecloud.inventory.schema` for the whole
document)::

    instances:
      web1:
        template: domu-20261204T101500Z
        memory_mb: 384
        vcpus: 1
        disk_size: 4294967296       # bytes
        mac: 0a:48:43:00:00:01      # allocated by the control service
        ip: 203.0.113.10            # on the instance network
        uuid: 5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5
        volume: web1-5f0c1d2e
        host: hnode1                # where it runs or last ran
        state: running              # homecloud.core.model.INSTANCE_STATES
        ssh_keys: ["ssh-ed25519 AAAA... admin@config"]
        user_data: "#!/bin/sh ..."  # optional
        last_error: ""              # optional: why the last action failed
    drained: [hnode2]

:class:`InstanceParsing` is a part of the schema's parser (it shares the parser's MAC and
address bookkeeping, so an instance's MAC or address clashing with a node's is refused, naming
both).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from homecloud.core.errors import InventoryError
from homecloud.core.model import (
    HOSTNAME_RE,
    INSTANCE_NAME_RE,
    INSTANCE_STATES,
    Instance,
    Node,
)

_INSTANCE_KEYS = ("template", "memory_mb", "vcpus", "disk_size", "mac", "ip", "uuid", "volume",
                  "host", "state", "ssh_keys", "user_data", "last_error")
_INSTANCE_REQUIRED = ("template", "memory_mb", "vcpus", "disk_size", "mac", "ip", "uuid",
                      "volume")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _pairs(node: yaml.MappingNode) -> dict[str, yaml.Node]:
    return {str(k.value): v for k, v in node.value}


class InstanceParsing:
    """The instances and drained parts of the schema's parser; the parser provides the
    shared helpers below."""

    path: Path

    def err(self, entry: str, msg: str, node: yaml.Node | None = None) -> InventoryError:
        raise NotImplementedError

    def mac(self, entry: str, vnode: yaml.Node, value: object) -> str:
        raise NotImplementedError

    def ip(self, entry: str, vnode: yaml.Node, value: object) -> str:
        raise NotImplementedError

    def keys(self, entry: str, mapping: yaml.MappingNode, allowed: tuple[str, ...]) -> None:
        raise NotImplementedError

    def instances(self, seq: yaml.Node | None, data: object,
                  nodes: tuple[Node, ...]) -> tuple[Instance, ...]:
        if seq is None or data is None:
            return ()
        if not isinstance(seq, yaml.MappingNode) or not isinstance(data, dict):
            raise self.err("instances", "must be a mapping of instance name to {template, ...}",
                           seq)
        names = {n.name for n in nodes}
        out: list[Instance] = []
        for (knode, vnode), (raw, d) in zip(seq.value, data.items(), strict=True):
            if not isinstance(raw, str) or not INSTANCE_NAME_RE.match(raw):
                raise self.err(f"instances.{raw}", f"instance name {raw!r} is not valid "
                               "([a-z][a-z0-9-]*, 2-32 characters, no '-' at the end)", knode)
            if raw in names:
                raise self.err(f"instances.{raw}", "name already used by a node", knode)
            out.append(self.instance(f"instances.{raw}", raw, vnode, d))
        return tuple(sorted(out, key=lambda i: i.name))

    def instance(self, entry: str, name: str, vnode: yaml.Node, d: object) -> Instance:
        if not isinstance(vnode, yaml.MappingNode) or not isinstance(d, dict):
            raise self.err(entry, "must be a mapping {template, memory_mb, ...}", vnode)
        self.keys(entry, vnode, _INSTANCE_KEYS)
        v = _pairs(vnode)
        for key in _INSTANCE_REQUIRED:
            if d.get(key) is None:
                raise self.err(entry, f"missing key {key!r}", vnode)

        def integer(key: str, lo: int, hi: int) -> int:
            x = d[key]
            if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
                raise self.err(entry, f"{key} must be an integer in {lo}..{hi}, got {x!r}",
                               v[key])
            return x

        def text(key: str, default: str = "") -> str:
            x = d.get(key, default)
            if x is None:
                return default
            if not isinstance(x, str):
                raise self.err(entry, f"{key} must be a string, got {x!r}", v[key])
            return x

        uuid = text("uuid")
        if not _UUID_RE.match(uuid):
            raise self.err(entry, f"uuid {uuid!r} is not a lower-case UUID", v["uuid"])
        state = text("state", "stopped")
        if state not in INSTANCE_STATES:
            raise self.err(entry, f"state {state!r} not one of {', '.join(INSTANCE_STATES)}",
                           v["state"])
        keys = d.get("ssh_keys") or []
        if not isinstance(keys, list) or not all(isinstance(k, str) and "\n" not in k
                                                 for k in keys):
            raise self.err(entry, "ssh_keys must be a list of one-line strings",
                           v.get("ssh_keys"))
        host = text("host") or None
        if host is not None and not HOSTNAME_RE.match(host):
            raise self.err(entry, f"host {host!r} is not a node name", v["host"])
        size = integer("disk_size", 0, 1 << 60)
        return Instance(name=name, template=text("template"),
                        memory_mb=integer("memory_mb", 64, 1 << 20),
                        vcpus=integer("vcpus", 1, 128), disk_size=size,
                        mac=self.mac(entry, v["mac"], d["mac"]),
                        ip=self.ip(entry, v["ip"], d["ip"]), uuid=uuid,
                        volume=text("volume"), host=host, state=state, ssh_keys=tuple(keys),
                        user_data=text("user_data"), last_error=text("last_error"))

    def drained(self, seq: yaml.Node | None, data: object) -> tuple[str, ...]:
        if data is None:
            return ()
        if not isinstance(data, list) or not all(isinstance(x, str) and HOSTNAME_RE.match(x)
                                                 for x in data):
            raise self.err("drained", "must be a list of node names", seq)
        return tuple(sorted(set(data)))


def instance_doc(i: Instance) -> dict[str, Any]:
    doc: dict[str, Any] = {"template": i.template, "memory_mb": i.memory_mb, "vcpus": i.vcpus,
                           "disk_size": i.disk_size, "mac": i.mac, "ip": i.ip, "uuid": i.uuid,
                           "volume": i.volume, "host": i.host, "state": i.state,
                           "ssh_keys": list(i.ssh_keys)}
    if i.user_data:
        doc["user_data"] = i.user_data
    if i.last_error:
        doc["last_error"] = i.last_error
    return doc

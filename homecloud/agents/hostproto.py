"""The hnode agent's wire protocol: the domain the config node asks a hardware node to run.

The config node reaches an hnode's agent over SSH (a forced command, see docs/security.md);
each request is one JSON document on the agent's stdin, each answer one JSON document on its
stdout.  This module holds the part both sides must agree on: the :class:`DomainSpec` (what an
instance is, from the host's point of view) with one strict reader and one writer, in the style
of :mod:`homecloud.agents.protocol` (unknown keys refused, the field at fault named).

DomainSpec (version 1)::

    {
      "name": "web1",                          # the Xen domain name = the instance name
      "uuid": "5f0c...-...",                   # per instance: systemd derives the machine-id
      "memory_mb": 384,
      "vcpus": 1,
      "mac": "0a:48:43:00:00:05",              # the instance NIC (locally administered)
      "bridge": "xenbr1",                      # dom0's bridge on the instance network
      "disk": "e1.1",                          # the root volume's AoE target (xvda)
      "seed": {"meta-data": "...", "user-data": "...", "network-config": "..."}   # NoCloud
    }

Standard library only: this module ships into the node images.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from homecloud.agents.protocol import ProtocolError
from homecloud.core.ids import BadMac, BadTarget, Target, normalize_mac

VERSION = 1
#: NoCloud seed files the config node may send (cloud-init reads these names from ``cidata``)
SEED_FILES = ("meta-data", "user-data", "network-config", "vendor-data")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
MAX_SEED_BYTES = 256 * 1024


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    memory_mb: int
    vcpus: int
    mac: str
    bridge: str
    disk: Target
    seed: Mapping[str, str]


def domain_doc(spec: DomainSpec) -> dict[str, Any]:
    return {"name": spec.name, "uuid": spec.uuid, "memory_mb": spec.memory_mb,
            "vcpus": spec.vcpus, "mac": spec.mac, "bridge": spec.bridge,
            "disk": str(spec.disk), "seed": dict(spec.seed)}


def domain_from_doc(doc: object, where: str = "domain") -> DomainSpec:
    """The strict reader: every field checked, unknown keys refused, the field at fault named."""
    if not isinstance(doc, dict):
        raise ProtocolError(where, f"expected an object, got {type(doc).__name__}")
    keys = {"name", "uuid", "memory_mb", "vcpus", "mac", "bridge", "disk", "seed"}
    extra = sorted(set(doc) - keys)
    if extra:
        raise ProtocolError(f"{where}.{extra[0]}", "unknown key")
    missing = sorted(keys - set(doc))
    if missing:
        raise ProtocolError(f"{where}.{missing[0]}", "missing")

    def text(key: str, rx: re.Pattern[str], what: str) -> str:
        v = doc[key]
        if not isinstance(v, str) or not rx.match(v):
            raise ProtocolError(f"{where}.{key}", f"not {what}: {v!r}")
        return v

    def integer(key: str, lo: int, hi: int) -> int:
        v = doc[key]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ProtocolError(f"{where}.{key}", f"not an integer in {lo}..{hi}: {v!r}")
        return v

    name = text("name", NAME_RE, "a domain name ([a-z][a-z0-9-]*, 2-32 characters)")
    uuid = text("uuid", _UUID_RE, "a lower-case UUID")
    bridge = text("bridge", _BRIDGE_RE, "a bridge name")
    try:
        mac = normalize_mac(str(doc["mac"]))
    except BadMac as exc:
        raise ProtocolError(f"{where}.mac", str(exc)) from None
    try:
        disk = Target.parse(str(doc["disk"]))
    except BadTarget as exc:
        raise ProtocolError(f"{where}.disk", str(exc)) from None
    seed = doc["seed"]
    if not isinstance(seed, dict):
        raise ProtocolError(f"{where}.seed", "expected an object")
    total = 0
    for k, v in seed.items():
        if k not in SEED_FILES:
            raise ProtocolError(f"{where}.seed.{k}",
                                f"not a NoCloud file ({', '.join(SEED_FILES)})")
        if not isinstance(v, str):
            raise ProtocolError(f"{where}.seed.{k}", "expected a string")
        total += len(v.encode())
    if total > MAX_SEED_BYTES:
        raise ProtocolError(f"{where}.seed", f"{total} bytes, more than {MAX_SEED_BYTES}")
    if "meta-data" not in seed:
        raise ProtocolError(f"{where}.seed.meta-data", "missing")
    return DomainSpec(name=name, uuid=uuid, memory_mb=integer("memory_mb", 64, 1 << 20),
                      vcpus=integer("vcpus", 1, 128), mac=mac, bridge=bridge, disk=disk,
                      seed=dict(seed))

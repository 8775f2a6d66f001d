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

import json
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


# ------------------------------------------------------------------ requests and answers
#
# Request (version 1), one JSON document on the agent's stdin::
#
#     {"version": 1, "action": "start", "domain": {...DomainSpec...}}
#     {"version": 1, "action": "prepare", "domain": {...DomainSpec...}}   # migration target
#     {"version": 1, "action": "shutdown", "name": "web1", "timeout": 120}
#     {"version": 1, "action": "migrate", "name": "web1", "target": "198.51.100.12"}
#     {"version": 1, "action": "facts"}        # also: list, destroy, reboot, cleanup (name)
#
# Answer (version 1), one JSON document on the agent's stdout::
#
#     {"version": 1, "ok": true, "action": "facts", "result": {...}}
#     {"version": 1, "ok": false, "action": "start", "error": "...",
#      "command": "xl create /run/hc/...cfg", "tail": "<last lines of its output>"}
#
# ``console`` is no request document: the terminal is the session's stdin, so the SSH command
# itself carries it (``hc-hnode-agent console NAME``, see homecloud/agents/hnode.py).

ACTIONS = ("facts", "list", "start", "prepare", "shutdown", "destroy", "reboot", "migrate",
           "cleanup")
#: actions that carry a DomainSpec: ``start`` runs it, ``prepare`` stages it on a migration
#: target (volume seen, seed image and xl config written; nothing started)
WITH_DOMAIN = ("start", "prepare")
#: actions that name a domain
NAMED = ("shutdown", "destroy", "reboot", "migrate", "cleanup")
#: the SSH command the config node sends; the forced command refuses any other
AGENT_COMMAND = "hc-hnode-agent"
MAX_REQUEST_BYTES = MAX_SEED_BYTES + 64 * 1024
MAX_TAIL = 4096
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")


@dataclass(frozen=True)
class Request:
    action: str
    name: str = ""
    domain: DomainSpec | None = None
    target: str = ""  # migrate: the address the source's ssh reaches the target hnode at
    timeout: int = 120


def request_doc(req: Request) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": VERSION, "action": req.action}
    if req.action in WITH_DOMAIN and req.domain is not None:
        doc["domain"] = domain_doc(req.domain)
    if req.action in NAMED:
        doc["name"] = req.name
    if req.action == "migrate":
        doc["target"] = req.target
    if req.action in ("shutdown", "migrate"):
        doc["timeout"] = req.timeout
    return doc


def request_json(req: Request) -> str:
    return json.dumps(request_doc(req), sort_keys=True) + "\n"


def request_from_doc(doc: object, where: str = "request") -> Request:
    """The strict reader of a request: the field at fault named, unknown keys refused."""
    if not isinstance(doc, dict):
        raise ProtocolError(where, f"expected an object, got {type(doc).__name__}")
    version = doc.get("version")
    if version != VERSION:
        raise ProtocolError(f"{where}.version", f"expected {VERSION}, got {version!r}")
    action = doc.get("action")
    if action not in ACTIONS:
        raise ProtocolError(f"{where}.action", f"not one of {', '.join(ACTIONS)}: {action!r}")
    allowed = {"version", "action"}
    if action in WITH_DOMAIN:
        allowed.add("domain")
    if action in NAMED:
        allowed.add("name")
    if action == "migrate":
        allowed.add("target")
    if action in ("shutdown", "migrate"):
        allowed.add("timeout")
    extra = sorted(set(doc) - allowed)
    if extra:
        raise ProtocolError(f"{where}.{extra[0]}", f"unknown key for action {action!r}")
    name, target, domain, timeout = "", "", None, 120
    if action in WITH_DOMAIN:
        if "domain" not in doc:
            raise ProtocolError(f"{where}.domain", "missing")
        domain = domain_from_doc(doc["domain"], f"{where}.domain")
        name = domain.name
    if action in NAMED:
        name = doc.get("name")  # type: ignore[assignment]
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ProtocolError(f"{where}.name", f"not a domain name: {name!r}")
    if action == "migrate":
        target = doc.get("target")  # type: ignore[assignment]
        if not isinstance(target, str) or not _HOST_RE.match(target):
            raise ProtocolError(f"{where}.target", f"not a host name or address: {target!r}")
    if "timeout" in doc:
        t = doc["timeout"]
        if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= 86400:
            raise ProtocolError(f"{where}.timeout", f"not an integer in 1..86400: {t!r}")
        timeout = t
    return Request(action=action, name=name, domain=domain, target=target, timeout=timeout)


def parse_request(text: str | bytes) -> Request:
    """The request in ``text``; :class:`ProtocolError` naming the field at fault."""
    if len(text) > MAX_REQUEST_BYTES:
        raise ProtocolError("request", f"{len(text)} bytes, more than {MAX_REQUEST_BYTES}")
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("request", f"not JSON: {exc}") from None
    return request_from_doc(doc)


@dataclass(frozen=True)
class Answer:
    action: str
    ok: bool
    result: Mapping[str, Any]
    error: str = ""
    command: str = ""
    tail: str = ""


def answer_json(ans: Answer) -> str:
    doc: dict[str, Any] = {"version": VERSION, "ok": ans.ok, "action": ans.action}
    if ans.ok:
        doc["result"] = dict(ans.result)
    else:
        doc.update(error=ans.error, command=ans.command, tail=ans.tail[-MAX_TAIL:])
    return json.dumps(doc, sort_keys=True) + "\n"


def parse_answer(text: str | bytes) -> Answer:
    """The agent's answer (read by the config node); :class:`ProtocolError` if malformed."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("answer", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("answer", f"expected an object, got {type(doc).__name__}")
    if doc.get("version") != VERSION:
        raise ProtocolError("answer.version", f"expected {VERSION}, got {doc.get('version')!r}")
    ok, action = doc.get("ok"), doc.get("action")
    if not isinstance(ok, bool):
        raise ProtocolError("answer.ok", "expected true or false")
    if not isinstance(action, str):
        raise ProtocolError("answer.action", "expected a string")
    if ok:
        result = doc.get("result")
        if not isinstance(result, dict):
            raise ProtocolError("answer.result", "expected an object")
        return Answer(action=action, ok=True, result=result)
    fields = {k: doc.get(k, "") for k in ("error", "command", "tail")}
    for k, v in fields.items():
        if not isinstance(v, str):
            raise ProtocolError(f"answer.{k}", "expected a string")
    return Answer(action=action, ok=False, result={}, error=fields["error"],
                  command=fields["command"], tail=fields["tail"])

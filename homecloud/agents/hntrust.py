"""SSH trust on an hnode: who may run what (authorized_keys) and which peers are who
(known_hosts for migration), written from the trust document the config node serves.

Trust document (version 1), served with the node's plan (the boot path's trust: see
docs/security.md)::

    {
      "version": 1,
      "config_keys": ["ssh-ed25519 AAAA... hc-config"],   # run only the agent
      "admin_keys": ["ssh-ed25519 AAAA... alice"],        # a shell
      "peers": [                                          # the other hnodes
        {"name": "hn2", "address": "198.51.100.12",
         "host_key": "ssh-ed25519 AAAA...",               # pinned, from hn2's report
         "migration_key": "ssh-ed25519 AAAA..."}          # runs only xl migrate-receive
      ]
    }

Private keys never leave the node that made them: this host's host keys and migration key are
made at boot (:func:`ensure_migration_key`), their public halves go into the node's report.

Standard library only: this module ships into the node images.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path

from homecloud.agents.common import run
from homecloud.agents.protocol import ProtocolError

VERSION = 1
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa", "sk-ssh-ed25519@openssh.com")
_COMMENT_RE = re.compile(r"^[A-Za-z0-9@._+:=-]{0,128}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_KEYS = 256


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: str  # base64
    comment: str = ""

    def __str__(self) -> str:
        return f"{self.type} {self.blob}" + (f" {self.comment}" if self.comment else "")

    @property
    def bare(self) -> str:
        return f"{self.type} {self.blob}"


@dataclass(frozen=True)
class Peer:
    name: str
    address: str
    host_key: PublicKey
    migration_key: PublicKey


@dataclass(frozen=True)
class Trust:
    config_keys: tuple[PublicKey, ...]
    admin_keys: tuple[PublicKey, ...]
    peers: tuple[Peer, ...]


def parse_key(text: object, where: str) -> PublicKey:
    """One OpenSSH public key line (``TYPE BASE64 [COMMENT]``), strictly: no options, no
    second line (an ``authorized_keys`` option smuggled in would widen what the key may do)."""
    if not isinstance(text, str) or "\n" in text or "\r" in text:
        raise ProtocolError(where, "expected one line of text")
    words = text.split()
    if len(words) not in (2, 3) or words[0] not in KEY_TYPES:
        raise ProtocolError(where, f"not an OpenSSH public key ({'|'.join(KEY_TYPES[:2])}"
                                   f" BASE64 [COMMENT]): {text[:60]!r}")
    try:
        raw = base64.b64decode(words[1], validate=True)
    except ValueError:
        raise ProtocolError(where, "the key is not base64") from None
    # the blob starts with its own type name, length-prefixed
    n = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    kind = raw[4:4 + n].decode("ascii", "replace") if n > 0 else ""
    expect = "ssh-rsa" if words[0].startswith("rsa-sha2") else words[0]
    if kind != expect:
        raise ProtocolError(where, f"the key's blob is a {kind or 'garbage'!r}, not {expect!r}")
    comment = words[2] if len(words) == 3 else ""
    if not _COMMENT_RE.match(comment):
        raise ProtocolError(where, f"comment with unexpected characters: {comment[:40]!r}")
    return PublicKey(words[0], words[1], comment)


def trust_from_doc(doc: object, where: str = "trust") -> Trust:
    if not isinstance(doc, dict):
        raise ProtocolError(where, "expected an object")
    extra = sorted(set(doc) - {"version", "config_keys", "admin_keys", "peers"})
    if extra:
        raise ProtocolError(f"{where}.{extra[0]}", "unknown key")
    if doc.get("version") != VERSION:
        raise ProtocolError(f"{where}.version", f"expected {VERSION}, got {doc.get('version')!r}")

    def keys(name: str) -> tuple[PublicKey, ...]:
        v = doc.get(name, [])
        if not isinstance(v, list) or len(v) > MAX_KEYS:
            raise ProtocolError(f"{where}.{name}", f"expected a list of at most {MAX_KEYS} keys")
        return tuple(parse_key(k, f"{where}.{name}[{i}]") for i, k in enumerate(v))

    peers: list[Peer] = []
    raw = doc.get("peers", [])
    if not isinstance(raw, list) or len(raw) > MAX_KEYS:
        raise ProtocolError(f"{where}.peers", "expected a list")
    for i, p in enumerate(raw):
        at = f"{where}.peers[{i}]"
        if not isinstance(p, dict):
            raise ProtocolError(at, "expected an object")
        fields = {"name", "address", "host_key", "migration_key"}
        if set(p) != fields:
            odd = sorted(set(p) ^ fields)[0]
            raise ProtocolError(f"{at}.{odd}", "unknown key" if odd in p else "missing")
        if not isinstance(p["name"], str) or not _NAME_RE.match(p["name"]):
            raise ProtocolError(f"{at}.name", f"not a node name: {p['name']!r}")
        if not isinstance(p["address"], str) or not _HOST_RE.match(p["address"]):
            raise ProtocolError(f"{at}.address", f"not an address: {p['address']!r}")
        peers.append(Peer(p["name"], p["address"], parse_key(p["host_key"], f"{at}.host_key"),
                          parse_key(p["migration_key"], f"{at}.migration_key")))
    return Trust(config_keys=keys("config_keys"), admin_keys=keys("admin_keys"),
                 peers=tuple(peers))


def parse_trust(text: str | bytes) -> Trust:
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("trust", f"not JSON: {exc}") from None
    return trust_from_doc(doc)


def trust_json(t: Trust) -> str:
    return json.dumps({
        "version": VERSION, "config_keys": [str(k) for k in t.config_keys],
        "admin_keys": [str(k) for k in t.admin_keys],
        "peers": [{"name": p.name, "address": p.address, "host_key": str(p.host_key),
                   "migration_key": str(p.migration_key)} for p in t.peers]},
        indent=1, sort_keys=True) + "\n"


def authorized_keys(t: Trust, agent: str, gate: str) -> str:
    """root's authorized_keys: config keys run only ``agent``, peers' migration keys only
    ``gate`` (xl migrate-receive), admin keys get a shell.  ``restrict`` takes away port, agent
    and X11 forwarding and the pty; the agent's console mode needs a pty, so it is given back."""
    for cmd in (agent, gate):
        if '"' in cmd or "\n" in cmd or "\\" in cmd:
            raise ValueError(f"forced command with a quote, backslash or newline: {cmd!r}")
    lines = ["# written by hc-hnode-agent trust from the config node's trust document"]
    lines += [f'restrict,pty,command="{agent}" {k.bare} hc-config' for k in t.config_keys]
    lines += [f'restrict,command="{gate}" {p.migration_key.bare} hc-migrate-{p.name}'
              for p in t.peers]
    lines += [str(k) for k in t.admin_keys]
    return "\n".join(lines) + "\n"


def known_hosts(t: Trust) -> str:
    """The peers' pinned host keys, by name and address (what ``xl migrate -s ssh`` reaches)."""
    return "".join(f"{p.address},{p.name} {p.host_key.bare}\n" for p in t.peers)


def ensure_migration_key(path: Path) -> PublicKey:
    """This host's migration key (made once per boot; the private half never leaves)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hc-migrate", "-f", str(path)],
            timeout=60)
    return parse_key(path.with_name(path.name + ".pub").read_text().strip(), str(path))


def install(t: Trust, auth_path: Path, known_path: Path, agent: str, gate: str) -> None:
    """Write both files atomically (mode 0600)."""
    for path, text in ((auth_path, authorized_keys(t, agent, gate)), (known_path, known_hosts(t))):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        tmp.replace(path)

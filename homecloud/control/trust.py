"""The SSH trust document an hnode gets from the config node (``GET /trust/<mac>.json``, the same
trust as its plan: only the address that holds <mac> and the admin may fetch it).

What goes in (:mod:`homecloud.agents.hntrust` writes it into authorized_keys / known_hosts):

- ``config_keys``: the config node's public key (``<state>/ssh/id_ed25519.pub``, made on first
  use by :func:`homecloud.control.hosts.ensure_config_key`): runs only the hnode agent;
- ``admin_keys``: the lines of ``<state>/admin_keys`` (OpenSSH public keys, ``#`` comments):
  a root shell on every hnode;
- ``peers``: every other hnode of the inventory that has reported both its host key and its
  migration key (report facts ``ssh_host_key``, ``migration_key``) and has an address: its
  migration key may run only ``xl migrate-receive``, its host key is pinned for ``xl migrate``.

Only public keys travel; each private key stays on the node that made it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from homecloud.agents.hntrust import Peer, Trust, parse_key, trust_json
from homecloud.agents.protocol import ProtocolError
from homecloud.control.admin_keys import ADMIN_KEYS, read_admin_keys
from homecloud.control.hosts import ensure_config_key
from homecloud.core.model import HOST_ROLE, Inventory


def trust_for(mac: str, inventory: Inventory, reports: dict[str, dict[str, Any]],
              state_dir: Path) -> Trust | None:
    """The trust document for the hnode with ``mac``; None if it is not an hnode."""
    node = inventory.node(mac)
    if node is None or node.role != HOST_ROLE:
        return None
    key = ensure_config_key(state_dir)
    config = parse_key(key.with_name(key.name + ".pub").read_text().strip(), str(key) + ".pub")
    admins = tuple(parse_key(k, f"{Path(state_dir) / ADMIN_KEYS}:{i + 1}")
                   for i, k in enumerate(read_admin_keys(state_dir)))
    peers: list[Peer] = []
    for other in inventory.nodes:
        if other.role != HOST_ROLE or other.name == node.name or not other.ip:
            continue
        facts = (reports.get(other.mac) or {}).get("facts") or {}
        host, mig = facts.get("ssh_host_key"), facts.get("migration_key")
        if not isinstance(host, str) or not isinstance(mig, str):
            continue
        try:
            peers.append(Peer(other.name, other.ip, parse_key(host, f"{other.name}.ssh_host_key"),
                              parse_key(mig, f"{other.name}.migration_key")))
        except ProtocolError:
            continue  # a malformed report never reaches another node's authorized_keys
    return Trust(config_keys=(config,), admin_keys=admins, peers=tuple(peers))


def trust_doc_json(mac: str, inventory: Inventory, reports: dict[str, dict[str, Any]],
                   state_dir: Path) -> str | None:
    t = trust_for(mac, inventory, reports, state_dir)
    return None if t is None else trust_json(t)

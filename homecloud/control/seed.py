"""The NoCloud seed of an instance (cloud-init's ``cidata``): the files of ``DomainSpec.seed``.

- ``meta-data``: ``instance-id`` = the instance's uuid (a copy gets a new one, so cloud-init runs
  its per-instance modules again: new host keys, new hostname) and ``local-hostname``;
- ``user-data``: the SSH keys as ``ssh_authorized_keys``, merged with the user's own user-data:
  a ``#cloud-config`` document gets the keys added to its ``ssh_authorized_keys``; anything
  else cloud-init understands (a ``#!`` script, ``#include``, ``#cloud-boothook``, ...) goes
  with a cloud-config part carrying the keys in a multipart MIME message;
- ``network-config``: DHCP on the instance NIC, matched by its MAC (version 2, or 1).

The output is deterministic (golden-tested): same instance, same bytes.
"""

from __future__ import annotations

from typing import Any

import yaml

from homecloud.control.lifecycle import InstanceError
from homecloud.core.model import Instance


class SeedError(InstanceError):
    """The user's user-data cannot be merged; names the instance and what is wrong."""


#: first line -> MIME type cloud-init gives that part (cloudinit/handlers)
_PART_TYPES = (
    ("#!", "text/x-shellscript"),
    ("#include-once", "text/x-include-once-url"),
    ("#include", "text/x-include-url"),
    ("#cloud-boothook", "text/cloud-boothook"),
    ("#part-handler", "text/part-handler"),
    ("#cloud-config-archive", "text/cloud-config-archive"),
    ("#cloud-config", "text/cloud-config"),
    ("## template: jinja", "text/jinja2"),
)


def meta_data(inst: Instance) -> str:
    return _dump({"instance-id": inst.uuid, "local-hostname": inst.name})


def network_config(inst: Instance, version: int = 2) -> str:
    if version == 2:
        return _dump({"version": 2, "ethernets": {"id0": {
            "match": {"macaddress": inst.mac}, "dhcp4": True}}})
    if version == 1:
        return _dump({"version": 1, "config": [{
            "type": "physical", "name": "eth0", "mac_address": inst.mac,
            "subnets": [{"type": "dhcp"}]}]})
    raise SeedError(f"instance {inst.name}: network-config version {version} (want 1 or 2)")


def user_data(inst: Instance) -> str:
    keys = list(dict.fromkeys(inst.ssh_keys))
    own = inst.user_data
    if not own.strip():
        return "#cloud-config\n" + _dump({"ssh_authorized_keys": keys})
    first = own.lstrip().split("\n", 1)[0].strip()
    if first.startswith("#cloud-config") and not first.startswith("#cloud-config-archive"):
        return _merge_cloud_config(inst, own, keys)
    kind = next((t for prefix, t in _PART_TYPES if first.startswith(prefix)), None)
    if kind is None:
        raise SeedError(f"instance {inst.name}: user-data starts with {first[:40]!r}: not "
                        "something cloud-init runs (want #cloud-config, a #! script, "
                        "#include, #cloud-boothook, ...)")
    return _multipart(inst, [("text/cloud-config", "homecloud.cfg",
                              "#cloud-config\n" + _dump({"ssh_authorized_keys": keys})),
                             (kind, "user-data", own)])


def render(inst: Instance, network_version: int = 2) -> dict[str, str]:
    """The seed files of ``inst`` (keys: hostproto.SEED_FILES)."""
    return {"meta-data": meta_data(inst), "user-data": user_data(inst),
            "network-config": network_config(inst, network_version)}


def _merge_cloud_config(inst: Instance, text: str, keys: list[str]) -> str:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SeedError(f"instance {inst.name}: user-data (#cloud-config) is not valid YAML: "
                        f"{exc}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SeedError(f"instance {inst.name}: user-data (#cloud-config) must be a mapping, "
                        f"got {type(doc).__name__}")
    theirs = doc.get("ssh_authorized_keys", [])
    if isinstance(theirs, str):
        theirs = [theirs]
    if not isinstance(theirs, list) or not all(isinstance(k, str) for k in theirs):
        raise SeedError(f"instance {inst.name}: user-data ssh_authorized_keys must be a list "
                        "of strings")
    merged = dict(doc)
    merged["ssh_authorized_keys"] = list(dict.fromkeys([*theirs, *keys]))
    return "#cloud-config\n" + _dump(merged)


def _multipart(inst: Instance, parts: list[tuple[str, str, str]]) -> str:
    boundary = f"==hc-{inst.uuid}=="
    out = [f'Content-Type: multipart/mixed; boundary="{boundary}"', "MIME-Version: 1.0", ""]
    for ctype, filename, body in parts:
        if boundary in body:
            raise SeedError(f"instance {inst.name}: user-data contains the MIME boundary "
                            f"{boundary!r}")
        enc = "7bit" if body.isascii() else "8bit"
        out += [f"--{boundary}", f'Content-Type: {ctype}; charset="utf-8"', "MIME-Version: 1.0",
                f"Content-Transfer-Encoding: {enc}",
                f'Content-Disposition: attachment; filename="{filename}"', "",
                body.rstrip("\n")]
    out += [f"--{boundary}--", ""]
    return "\n".join(out)


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True,
                          width=1 << 16)

"""The instance lifecycle: the one code path behind ``hcboot instance ...`` (and later the API).

:class:`InstanceService` drives the hardware nodes through a
:class:`~homecloud.control.contracts.HostDriver` and the storage nodes' volumes through a
:class:`~homecloud.control.contracts.VolumeApi`, and keeps each instance's record in the
inventory store (``instances:``).  Each action checks the state machine
(:mod:`homecloud.control.lifecycle`), records its busy state, reports its steps through a
``Progress`` callable and records its outcome (a failure: the state and the error, for
``hcboot instance show``).

- ``create``: the name is checked (a valid domain and host name, unique across instances and
  nodes), the template resolved (a template's name, or a role: its newest template); the MAC
  (``0a:48:43`` + the lowest free 3 bytes), the address (the lowest free on the instance
  network) and a uuid are allocated in the same compare-and-set that writes the record, so
  concurrent creates never collide; then the volume (a CoW clone of the template), then
  ``start``.
- ``copy SRC NEW``: only from a *stopped* SRC (decision: refuse rather than stop it: a running
  guest's disk is not consistent, and stopping someone's instance as a side effect is a
  surprise); NEW is a new instance (new MAC, address, uuid, so cloud-init gives it a new
  identity) whose volume is a copy of SRC's, with SRC's size, memory, keys and user-data.
- ``start [--on]``: refused while any hnode still has the domain (or a migration leftover);
  placement (:mod:`homecloud.control.placement`: up, not drained, the bridge, the memory; the
  volume is attached by the driver's start, a fresh volume may not be discovered yet); the
  DomainSpec with the NoCloud seed.
- ``stop`` (clean, ``xl shutdown``; a timeout leaves it running with the error) / ``--force``
  (``xl destroy``); ``reboot``; ``console``.
- ``destroy``: the domain on every hnode that has it (or a leftover), the volume, then the
  record (which frees the MAC and the address).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from homecloud.control.allocate import allocate_ip, allocate_mac
from homecloud.control.contracts import HostError, Origin, Progress, Template
from homecloud.control.instbase import quiet
from homecloud.control.lifecycle import ACTIONS, InstanceError, check
from homecloud.control.migration import INCOMING, MIGRATEDAWAY, MigrationOps
from homecloud.control.placement import Need, place
from homecloud.control.seed import render
from homecloud.core.model import INSTANCE_NAME_RE, Instance, Inventory
from homecloud.inventory.protocol import update

MIN_MEMORY_MB = 64
DEFAULT_MEMORY_MB = 512


def resolve_template(templates: Sequence[Template], wanted: str) -> Template:
    """A template by name, or a role's newest template (by build id)."""
    for t in templates:
        if t.name == wanted:
            return t
    of_role = sorted((t for t in templates if t.role == wanted), key=lambda t: (t.build, t.name))
    if of_role:
        return of_role[-1]
    known = ", ".join(sorted(t.name for t in templates)) or "none (hcboot template import domu)"
    raise InstanceError(f"no template {wanted!r} (templates: {known})")


def describe(inst: Instance) -> dict[str, Any]:
    """An instance as a JSON document (``instance list --json``, ``instance show``)."""
    return {"name": inst.name, "state": inst.state, "host": inst.host, "template": inst.template,
            "memory_mb": inst.memory_mb, "vcpus": inst.vcpus, "disk_size": inst.disk_size,
            "mac": inst.mac, "ip": inst.ip, "uuid": inst.uuid, "volume": inst.volume,
            "ssh_keys": list(inst.ssh_keys), "user_data": bool(inst.user_data),
            "last_error": inst.last_error,
            "actions": sorted(a for a, act in ACTIONS.items()
                              if inst.state in act.from_states and a not in ("create",))}


class InstanceService(MigrationOps):
    # ------------------------------------------------------------------ create / copy
    def check_name(self, inv: Inventory, name: str) -> None:
        if not INSTANCE_NAME_RE.match(name):
            raise InstanceError(f"instance name {name!r} is not valid: lower-case letters, "
                                "digits and '-', 2-32 characters, starting with a letter and "
                                "not ending with '-' (it is the guest's host name and its Xen "
                                "domain name)")
        if inv.instance(name) is not None:
            raise InstanceError(f"instance {name} already exists")
        node = inv.named(name)
        if node is not None:
            raise InstanceError(f"name {name} is already the name of node {name} "
                                f"({node.role})")

    def _reserve(self, proto: Instance, progress: Progress) -> Instance:
        """Write the new record in state ``creating`` with its MAC, address and uuid allocated
        from the inventory it is written to (compare-and-set: no two creates share one)."""
        out: list[Instance] = []

        def change(inv: Inventory) -> Inventory:
            self.check_name(inv, proto.name)
            mac = allocate_mac(inv, self.settings.mac_pool_size)
            ip = allocate_ip(inv, self.settings.network)
            inst = replace(proto, mac=mac, ip=ip, state="creating")
            out[:] = [inst]
            return inv.with_instance(inst)

        update(self.store, change)
        inst = out[0]
        progress(f"{inst.name}: MAC {inst.mac}, address {inst.ip}, uuid {inst.uuid}")
        return inst

    def _proto(self, name: str, template: str, memory_mb: int, vcpus: int, disk_size: int,
               ssh_keys: Sequence[str], user_data: str) -> Instance:
        self.check_name(self.inventory(), name)
        if not MIN_MEMORY_MB <= memory_mb <= 1 << 20:
            raise InstanceError(f"instance {name}: memory {memory_mb} MiB (want "
                                f"{MIN_MEMORY_MB}..{1 << 20})")
        if not 1 <= vcpus <= 128:
            raise InstanceError(f"instance {name}: vcpus {vcpus} (want 1..128)")
        keys = tuple(k.strip() for k in ssh_keys if k.strip())
        for k in keys:
            if "\n" in k or len(k.split()) < 2:
                raise InstanceError(f"instance {name}: not an SSH public key: {k[:40]!r}")
        uid = str(uuidlib.uuid4())
        proto = Instance(name=name, template=template, memory_mb=memory_mb, vcpus=vcpus,
                         disk_size=disk_size, mac="0a:48:43:00:00:00", ip="0.0.0.0", uuid=uid,
                         volume=f"{name}-{uid[:8]}", ssh_keys=keys, user_data=user_data)
        render(proto, self.settings.network_config_version)  # refuse bad user-data up front
        return proto

    def create(self, name: str, template: str, memory_mb: int = DEFAULT_MEMORY_MB,
               vcpus: int = 1, disk_size: int | None = None, ssh_keys: Sequence[str] = (),
               user_data: str = "", on: str | None = None, start: bool = True,
               progress: Progress = quiet, replicas: int | None = None) -> Instance:
        """``replicas``: 2 keeps the volume on two snodes (DRBD), 1 on one; None: 2 when two
        snodes have a volume pool, else 1 (said in a step)."""
        tmpl = resolve_template(self.volumes.templates(), template)
        if replicas is None:
            replicas, why = self.volumes.default_replicas()
            progress(f"{name}: volume on {replicas} snode{'s' if replicas > 1 else ''} ({why})")
        size = disk_size if disk_size is not None else tmpl.size
        if size < tmpl.size:
            raise InstanceError(f"instance {name}: disk size {size} bytes is smaller than "
                                f"template {tmpl.name} ({tmpl.size} bytes)")
        proto = self._proto(name, tmpl.name, memory_mb, vcpus, size, ssh_keys, user_data)
        self._fits(proto, on, start, progress)
        inst = self._reserve(proto, progress)
        return self._fill(inst, Origin("template", tmpl.name), on, start, progress, replicas)

    def copy(self, src: str, new: str, on: str | None = None, start: bool = True,
             progress: Progress = quiet) -> Instance:
        s = self.get(src)
        if s.state != "stopped":
            check("copy", src, s.state)  # the refusal names the state and what allows it
        proto = self._proto(new, s.template, s.memory_mb, s.vcpus, s.disk_size, s.ssh_keys,
                            s.user_data)
        self._fits(proto, on, start, progress)
        inst = self._reserve(proto, progress)
        progress(f"{new}: copying {src}'s volume {s.volume}")
        return self._fill(inst, Origin("volume", s.volume), on, start, progress)

    def _fits(self, proto: Instance, on: str | None, start: bool, progress: Progress) -> None:
        """Refuse before anything is made when the instance would not fit on any hnode (or on
        ``on``); the volume is checked again at start, once it exists."""
        if on is not None:
            self.hnode(on)
        if start:
            place(self.candidates(progress), Need(proto.memory_mb, self.settings.network.bridge,
                                                  "", self.settings.overhead_mb),
                  on, what=f"instance {proto.name}")

    def _fill(self, inst: Instance, origin: Origin, on: str | None, start: bool,
              progress: Progress, replicas: int = 1) -> Instance:
        act = ACTIONS["create"]
        with self.failing(inst.name, act, progress):
            export = self.volumes.create(inst.volume, inst.disk_size, origin, progress,
                                         replicas=replicas)
            progress(f"volume {inst.volume} served at {export.target}")
        inst = self.set_state(inst.name, act.done)
        if start:
            inst = self.start(inst.name, on, progress)
        return inst

    # ------------------------------------------------------------------ start / stop
    def start(self, name: str, on: str | None = None, progress: Progress = quiet) -> Instance:
        inst = self.get(name)
        check("start", name, inst.state)
        disk = self.volume_target(inst)
        cands = self.candidates(progress)
        for c in cands:
            for d in c.facts.domains if c.facts else ():
                if d.name in (name, name + INCOMING, name + MIGRATEDAWAY):
                    raise InstanceError(f"instance {name}: {c.node.name} still has domain "
                                        f"{d.name}; hcboot instance migrate --cleanup {name}")
        # the volume is not required in the host's facts here: a volume made a moment ago may
        # not be discovered yet, and the driver's start attaches it (and fails naming it)
        chosen = place(cands, Need(inst.memory_mb, self.settings.network.bridge, "",
                                   self.settings.overhead_mb), on, what=f"instance {name}")
        node = chosen.node
        progress(f"placed {name} on {node.name}"
                 + (f" ({chosen.facts.free_memory_mb} MiB free)" if chosen.facts else ""))
        _, act = self.begin(name, "start")
        with self.failing(name, act, progress, host=node.name):
            info = self.hosts.start(node, self.spec(inst, disk), progress)
            progress(f"{name} runs on {node.name} (domain {info.domid})")
        return self.set_state(name, act.done, host=node.name)

    def stop(self, name: str, force: bool = False, progress: Progress = quiet) -> Instance:
        inst = self.get(name)
        action = "stop-force" if force else "stop"
        check(action, name, inst.state)
        node = self.inventory().named(inst.host) if inst.host else None
        _, act = self.begin(name, action)
        with self.failing(name, act, progress):
            if node is None:
                progress(f"{name} has no host recorded: nothing to stop")
            elif force:
                self.hosts.destroy(node, name, progress)
                progress(f"{name} destroyed on {node.name}")
            else:
                self.hosts.shutdown(node, name, self.settings.shutdown_timeout, progress)
                progress(f"{name} shut down on {node.name}")
        if node is not None:
            self._tidy(node, name, progress)
        return self.set_state(name, act.done)

    def reboot(self, name: str, progress: Progress = quiet) -> Instance:
        inst = self.get(name)
        check("reboot", name, inst.state)
        node = self.hnode(inst.host or "")
        _, act = self.begin(name, "reboot")
        with self.failing(name, act, progress):
            self.hosts.reboot(node, name, progress)
        return self.set_state(name, act.done)

    def console(self, name: str) -> int:
        inst = self.get(name)
        if inst.state != "running" or not inst.host:
            raise InstanceError(f"instance {name}: no console while {inst.state}")
        return self.hosts.console(self.hnode(inst.host), name)

    # ------------------------------------------------------------------ destroy
    def destroy(self, name: str, progress: Progress = quiet) -> None:
        inst, act = self.begin(name, "destroy")
        in_doubt = inst.state not in ("stopped", "running", "creating")
        with self.failing(name, act, progress):
            for node in self.hnodes():
                try:
                    facts = self.hosts.facts(node)
                except HostError as exc:
                    if node.name == inst.host or in_doubt:
                        raise InstanceError(f"hnode {node.name} did not answer ({exc}): "
                                            f"{name} may still run there") from None
                    continue
                for d in facts.domains:
                    if d.name in (name, name + INCOMING, name + MIGRATEDAWAY):
                        self.hosts.destroy(node, d.name, progress)
                        progress(f"domain {d.name} destroyed on {node.name}")
                if node.name == inst.host:
                    self.hosts.cleanup(node, name, progress)
            if any(v.name == inst.volume for v in self.volumes.volumes()):
                self.volumes.delete(inst.volume, progress)
                progress(f"volume {inst.volume} deleted")
        update(self.store, lambda inv: inv.without_instance(name))
        progress(f"{name} destroyed: MAC {inst.mac} and address {inst.ip} are free")

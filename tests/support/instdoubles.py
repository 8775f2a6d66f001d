"""In-memory doubles of the control's HostDriver and VolumeApi (homecloud/control/contracts.py)
for the instance lifecycle's unit tests.

Doubles, not the real things, because the real ones need Xen (the hnode agent behind SSH) and
LVM/device-mapper (the snodes' volumes), which only run inside QEMU guests on this machine; the
e2e tests drive the real ones.  They model what the service relies on: each host's domains and
free memory, `xl migrate`'s ``NAME--incoming``/``NAME--migratedaway`` halfway states, hosts
that do not answer, volumes with a target each; and they check every DomainSpec with the
agent's own strict reader (a spec the real agent would refuse fails here too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from homecloud.agents.hostproto import DomainSpec, domain_doc, domain_from_doc
from homecloud.control.contracts import (
    DomainInfo,
    HostError,
    HostFacts,
    MigrationResult,
    Origin,
    Progress,
    Template,
)
from homecloud.core.ids import Target
from homecloud.core.model import Inventory, Nic, Node, VolumeExport


@dataclass
class FakeHost:
    name: str
    total_mb: int = 4096
    xen: str = "4.17.3"
    bridges: tuple[str, ...] = ("xenbr0", "xenbr1")
    domains: dict[str, DomainInfo] = field(default_factory=dict)
    up: bool = True
    specs: dict[str, DomainSpec] = field(default_factory=dict)
    cleaned: list[str] = field(default_factory=list)
    staged: dict[str, DomainSpec] = field(default_factory=dict)  # prepare: seed + config
    blind: set[str] = field(default_factory=set)  # AoE targets this host does not see

    @property
    def free_mb(self) -> int:
        return self.total_mb - sum(d.memory_mb for d in self.domains.values())


class FakeHosts:
    """A HostDriver over :class:`FakeHost` objects; ``fail`` injects one failure per action."""

    def __init__(self, *hosts: FakeHost, volumes: FakeVolumes | None = None) -> None:
        self.hosts = {h.name: h for h in hosts}
        self.volumes = volumes
        self.fail: dict[str, str] = {}  # action -> mode
        self.fail_again = False  # True: an injected migrate failure happens every time
        self.calls: list[tuple[str, ...]] = []
        self._domid = 0

    def _host(self, node: Node) -> FakeHost:
        h = self.hosts[node.name]
        if not h.up:
            raise HostError(f"{node.name}: ssh root@{node.ip}: connection timed out")
        return h

    def facts(self, node: Node) -> HostFacts:
        h = self._host(node)
        seen = tuple(str(v.target) for v in self.volumes.exports.values()
                     if str(v.target) not in h.blind) if self.volumes else ()
        return HostFacts(node.name, h.xen, h.total_mb, h.free_mb,
                         tuple(h.domains.values()), h.bridges, seen)

    def _add(self, h: FakeHost, name: str, spec: DomainSpec, state: str = "-b----") -> None:
        self._domid += 1
        h.domains[name] = DomainInfo(name, self._domid, spec.memory_mb, spec.vcpus, state,
                                     spec.uuid)
        h.specs[name] = spec

    def start(self, node: Node, spec: DomainSpec, progress: Progress) -> DomainInfo:
        self.calls.append(("start", node.name, spec.name))
        spec = domain_from_doc(domain_doc(spec))  # the agent's strict reader
        h = self._host(node)
        if self.fail.pop("start", None):
            raise HostError(f"{node.name}: xl create /run/hc/{spec.name}.cfg failed: "
                            "libxl: error: Domain could not be created")
        if spec.memory_mb > h.free_mb:
            raise HostError(f"{node.name}: xl create: not enough memory")
        self._add(h, spec.name, spec)
        progress(f"{spec.name} created on {node.name}")
        return h.domains[spec.name]

    def prepare(self, node: Node, spec: DomainSpec, progress: Progress) -> None:
        self.calls.append(("prepare", node.name, spec.name))
        spec = domain_from_doc(domain_doc(spec))  # the agent's strict reader
        h = self._host(node)
        if self.fail.pop("prepare", None) or str(spec.disk) in h.blind:
            raise HostError(f"{node.name}: AoE target {spec.disk} not seen")
        if spec.name in h.domains:
            raise HostError(f"{node.name}: domain {spec.name} already runs")
        h.staged[spec.name] = spec

    def shutdown(self, node: Node, name: str, timeout: float, progress: Progress) -> None:
        self.calls.append(("shutdown", node.name, name))
        h = self._host(node)
        if self.fail.pop("shutdown", None):
            raise HostError(f"{node.name}: xl shutdown -w {name}: still running after "
                            f"{timeout:.0f} s")
        h.domains.pop(name, None)

    def destroy(self, node: Node, name: str, progress: Progress) -> None:
        self.calls.append(("destroy", node.name, name))
        self._host(node).domains.pop(name, None)

    def reboot(self, node: Node, name: str, progress: Progress) -> None:
        self.calls.append(("reboot", node.name, name))
        h = self._host(node)
        if name not in h.domains:
            raise HostError(f"{node.name}: xl reboot {name}: no such domain")

    def migrate(self, source: Node, name: str, target: Node,
                progress: Progress) -> MigrationResult:
        self.calls.append(("migrate", source.name, name, target.name))
        s, t = self._host(source), self._host(target)
        mode = self.fail.get("migrate") if self.fail_again else self.fail.pop("migrate", None)
        spec = s.specs[name]
        if mode in ("no-suspend", "suspended-late"):
            # the guest did not suspend in libxl's 60 s: it runs on, or it suspended after
            # xl gave up (then it sits shut down for suspend on the source)
            if mode == "suspended-late":
                s.domains[name] = replace(s.domains[name], state="---s--")
            self._add(t, name + "--incoming", spec, "--p---")
            raise HostError(f"{source.name}: xl migrate {name} {target.name}: libxl: error: "
                            "guest did not suspend, timed out | migration target: Domain "
                            "creation failed (code -3). | Migration failed, failed to "
                            "suspend at sender.")
        if mode == "refused":  # the stream never started: the source keeps running
            raise HostError(f"{source.name}: xl migrate {name} {target.name}: ssh: "
                            "Host key verification failed.")
        if mode == "halfway":  # suspended on the source, incomplete on the target
            self._rename(s, name, name + "--migratedaway")
            self._add(t, name + "--incoming", spec, "--p---")
            raise HostError(f"{source.name}: xl migrate {name} {target.name}: "
                            "migration target: Failed to unpause domain (exit 1)")
        if mode == "renamed":  # the target runs it, the source kept its suspended copy
            self._rename(s, name, name + "--migratedaway")
            self._add(t, name, spec)
            raise HostError(f"{source.name}: xl migrate: lost the connection after the "
                            "target resumed")
        if mode == "paused":  # the target has it under its name, but never unpaused
            del s.domains[name]
            self._add(t, name, spec, "--p---")
            return MigrationResult(source.name, target.name, 1.5)
        if mode == "vanished":  # xl says it worked, the target does not list it
            s.domains.pop(name)
            return MigrationResult(source.name, target.name, 1.5)
        if name not in t.staged:  # xl migrate-receive: the seed image the config names
            raise HostError(f"{source.name}: xl migrate {name} {target.name}: migration "
                            f"target: /run/hc/hnode/{name}-seed.img: No such file")
        del s.domains[name]
        s.specs.pop(name)
        self._add(t, name, spec)
        return MigrationResult(source.name, target.name, 2.5, "migration successful")

    @staticmethod
    def _rename(h: FakeHost, old: str, new: str) -> None:
        h.domains[new] = replace(h.domains.pop(old), name=new)

    def console(self, node: Node, name: str) -> int:
        self.calls.append(("console", node.name, name))
        return 0 if name in self._host(node).domains else 1

    def cleanup(self, node: Node, name: str, progress: Progress) -> None:
        self.calls.append(("cleanup", node.name, name))
        h = self._host(node)
        h.cleaned.append(name)
        for suffix in ("--incoming", "--migratedaway"):
            h.domains.pop(name + suffix, None)
        if name not in h.domains:
            h.staged.pop(name, None)


class FakeVolumes:
    """A VolumeApi in memory: targets e1.0, e1.1, ... (the lowest free)."""

    def __init__(self, *templates: Template) -> None:
        self.tmpl = list(templates)
        self.exports: dict[str, VolumeExport] = {}
        self.origins: dict[str, Origin] = {}
        self.fail: dict[str, str] = {}

    def default_replicas(self) -> tuple[int, str]:
        return 1, "not replicated: one snode in this test"

    def create(self, name: str, size: int, origin: Origin, progress: Progress,
               timeout: float = 600, replicas: int = 1) -> VolumeExport:
        self.replicas = replicas
        if self.fail.pop("create", None):
            raise HostError(f"sn1: volume {name}: lvcreate failed: Insufficient free space")
        if name in self.exports:
            raise HostError(f"volume {name} exists")
        if origin.kind == "template" and origin.name not in {t.name for t in self.tmpl}:
            raise HostError(f"no template {origin.name}")
        if origin.kind == "volume" and origin.name not in self.exports:
            raise HostError(f"no volume {origin.name}")
        used = {v.target.slot for v in self.exports.values()}
        slot = min(s for s in range(255) if s not in used)
        exp = VolumeExport(Target(1, slot), "rw", ("hnode",), ("sn1",), name=name, size=size)
        self.exports[name] = exp
        self.origins[name] = origin
        progress(f"volume {name} served at {exp.target}")
        return exp

    def delete(self, name: str, progress: Progress, timeout: float = 300) -> None:
        self.exports.pop(name)
        self.origins.pop(name)

    def volumes(self) -> Sequence[VolumeExport]:
        return list(self.exports.values())

    def templates(self) -> Sequence[Template]:
        return list(self.tmpl)

    def import_template(self, role: str, build: str | None, progress: Progress,
                        timeout: float = 1800) -> Template:
        raise NotImplementedError("not used by the instance lifecycle")

    def remove_template(self, name: str, progress: Progress) -> None:
        raise NotImplementedError("not used by the instance lifecycle")


DOMU = Template("domu-20261204T101500Z", "domu", "20261204T101500Z", 2 << 30, "0" * 64)
DOMU_OLD = Template("domu-20261201T080000Z", "domu", "20261201T080000Z", 2 << 30, "1" * 64)


def hnode(i: int) -> Node:
    return Node(f"hnode{i}", "hnode", (Nic(f"52:54:00:00:10:{i:02x}", ip=f"198.51.100.{20 + i}"),
                                       Nic(f"52:54:00:00:11:{i:02x}", "instance")))


def lab_inventory(hnodes: int = 2) -> Inventory:
    return Inventory((*(hnode(i) for i in range(1, hnodes + 1)),
                      Node("sn1", "snode", (Nic("52:54:00:00:20:01", ip="198.51.100.11"),))))

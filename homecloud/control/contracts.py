"""The contracts between the control service's instance lifecycle and the two things it drives:
the hardware nodes (:class:`HostDriver`, over SSH to the hnode agent: ``control/hosts.py``) and
the storage nodes' volumes (:class:`VolumeApi`: ``control/volumes.py``, through the snodes'
plans and reports).

The instance lifecycle (``control/instances.py``) is written against these protocols only, so
its unit tests can run it against in-memory doubles and the real implementations stay
replaceable (an etcd-backed control plane, DRBD replicas).  ``Progress`` is how every long
action reports its timestamped steps to the CLI (and later the API).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from homecloud.agents.hostproto import DomainSpec
from homecloud.core.model import Node, VolumeExport

#: one step of a long action, for the user: ``progress("volume e1.3 served by sn1")``
Progress = Callable[[str], None]


# ------------------------------------------------------------------------------- hosts


@dataclass(frozen=True)
class DomainInfo:
    """One domain as ``xl list`` shows it on a host (``state``: xl's flags, e.g. ``-b----``)."""

    name: str  # may end in --incoming or --migratedaway during/after a migration
    domid: int
    memory_mb: int
    vcpus: int
    state: str
    uuid: str = ""


@dataclass(frozen=True)
class HostFacts:
    """What an hnode agent reports about its host."""

    node: str  # the hnode's name
    xen_version: str
    total_memory_mb: int
    free_memory_mb: int  # what xl can still give guests
    domains: tuple[DomainInfo, ...]
    bridges: tuple[str, ...]
    aoe_targets: tuple[str, ...]  # eS.L the host's aoe driver sees


@dataclass(frozen=True)
class MigrationResult:
    source: str
    target: str
    seconds: float  # xl migrate from start to the target reporting the domain running
    log_tail: str = ""


class HostError(Exception):
    """An action on a host failed; the message names the node, the command and the log tail."""


class HostDriver(Protocol):
    def facts(self, node: Node) -> HostFacts: ...

    def start(self, node: Node, spec: DomainSpec, progress: Progress) -> DomainInfo:
        """Attach the volume, write the seed and the xl config, ``xl create``; return when the
        domain runs."""

    def prepare(self, node: Node, spec: DomainSpec, progress: Progress) -> None:
        """Stage ``spec`` on a migration target without starting it: the volume seen, the seed
        and the xl config written where the source's config expects them."""

    def shutdown(self, node: Node, name: str, timeout: float, progress: Progress) -> None:
        """``xl shutdown -w`` (clean; raises HostError after ``timeout``)."""

    def destroy(self, node: Node, name: str, progress: Progress) -> None:
        """``xl destroy`` (hard stop); no error if the domain is not there."""

    def reboot(self, node: Node, name: str, progress: Progress) -> None: ...

    def migrate(self, source: Node, name: str, target: Node,
                progress: Progress) -> MigrationResult:
        """Live-migrate over the authenticated channel between the two hosts."""

    def console(self, node: Node, name: str) -> int:
        """Attach the caller's terminal to the domain's console; returns the exit status."""

    def cleanup(self, node: Node, name: str, progress: Progress) -> None:
        """Remove what ``start`` left on the host for ``name`` (seed, xl config, a stale domain)."""


# ------------------------------------------------------------------------------- volumes

OriginKind = Literal["template", "volume", "empty"]


@dataclass(frozen=True)
class Origin:
    """Where a new volume's bytes come from: a CoW clone of a template, a copy of another
    volume, or zeros."""

    kind: OriginKind
    name: str = ""


@dataclass(frozen=True)
class Template:
    name: str  # e.g. domu-20261204T101500Z
    role: str
    build: str
    size: int
    sha256: str
    snodes: tuple[str, ...] = ()  # where it is present (reported), for `template list`
    clones: tuple[str, ...] = field(default=())  # volumes whose origin it is


class VolumeApi(Protocol):
    def default_replicas(self) -> tuple[int, str]:
        """How many snodes a new instance's volume goes on by default, and why."""

    def create(self, name: str, size: int, origin: Origin, progress: Progress,
               timeout: float = 600, replicas: int = 1) -> VolumeExport:
        """Pick an snode (two for ``replicas=2``: a primary and its DRBD replica) and a free
        shelf.slot, record the volume, return once the primary reports it served (read-write,
        allowed to every hnode) and the replica reports it kept."""

    def delete(self, name: str, progress: Progress, timeout: float = 300) -> None:
        """Stop the export, delete the volume on its snode, free the shelf.slot."""

    def volumes(self) -> Sequence[VolumeExport]: ...

    def templates(self) -> Sequence[Template]: ...

    def import_template(self, role: str, build: str | None, progress: Progress,
                        timeout: float = 1800) -> Template: ...

    def remove_template(self, name: str, progress: Progress) -> None:
        """Refused (naming them) while volumes cloned from it exist."""

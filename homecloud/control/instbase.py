"""The instance service's base: the inventory records, the state machine's bookkeeping and
what every action asks the hosts and the volumes.

Written only against :class:`~homecloud.control.contracts.HostDriver`,
:class:`~homecloud.control.contracts.VolumeApi` and the inventory store: the SSH driver and the
snodes' volumes in production, in-memory doubles in the unit tests.  Actions live in
:mod:`homecloud.control.migration` (migrate, cleanup, drain) and
:mod:`homecloud.control.instances` (create, start, stop, ...).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from homecloud.agents.hostproto import DomainSpec
from homecloud.control.allocate import InstanceNetwork
from homecloud.control.contracts import HostDriver, HostError, HostFacts, Progress, VolumeApi
from homecloud.control.lifecycle import ACTIONS, Action, InstanceError, check
from homecloud.control.placement import Candidate
from homecloud.control.seed import render
from homecloud.core.errors import HomecloudError, InventoryError
from homecloud.core.ids import Target
from homecloud.core.model import HOST_ROLE, Instance, Inventory, Node
from homecloud.inventory.protocol import InventoryStore, update

log = logging.getLogger("homecloud.control")
_KEEP: Any = object()


def quiet(_msg: str) -> None:
    """A :data:`Progress` that drops the steps."""


@dataclass(frozen=True)
class Settings:
    network: InstanceNetwork = field(default_factory=InstanceNetwork)
    shutdown_timeout: float = 120.0  # seconds for a clean `xl shutdown -w`
    network_config_version: int = 2  # NoCloud network-config v2 (or 1)
    overhead_mb: int = 0  # memory Xen needs per domain beyond the guest's own
    mac_pool_size: int = 1 << 24


class InstanceBase:
    def __init__(self, store: InventoryStore, hosts: HostDriver, volumes: VolumeApi,
                 settings: Settings | None = None) -> None:
        self.store = store
        self.hosts = hosts
        self.volumes = volumes
        self.settings = settings or Settings()

    # ------------------------------------------------------------------ reading
    def inventory(self) -> Inventory:
        snap = self.store.snapshot()
        if self.store.last_error:
            raise InventoryError(self.store.where, "", self.store.last_error)
        return snap.inventory

    def instances(self) -> list[Instance]:
        return list(self.inventory().instances)

    def get(self, name: str) -> Instance:
        inst = self.inventory().instance(name)
        if inst is None:
            raise InstanceError(f"no instance named {name!r} (hcboot instance list)")
        return inst

    def hnodes(self) -> list[Node]:
        return [n for n in self.inventory().nodes if n.role == HOST_ROLE]

    def hnode(self, name: str) -> Node:
        node = self.inventory().named(name)
        if node is None or node.role != HOST_ROLE:
            known = ", ".join(n.name for n in self.hnodes()) or "none"
            what = "no node" if node is None else f"{node.role}, not an hnode"
            raise InstanceError(f"{name}: {what} (hnodes: {known})")
        return node

    def facts(self, node: Node) -> HostFacts:
        try:
            return self.hosts.facts(node)
        except HostError as exc:
            raise InstanceError(f"hnode {node.name} did not answer: {exc}") from None

    def candidates(self, progress: Progress = quiet) -> list[Candidate]:
        """Every hnode with its facts (None and the error when it did not answer).  The hnodes
        are asked at once (one SSH session each, seconds apiece on a busy host), in the
        inventory's order."""
        drained = set(self.inventory().drained)
        nodes = self.hnodes()

        def ask(node: Node) -> tuple[HostFacts | None, str]:
            try:
                return self.hosts.facts(node), ""
            except HostError as exc:
                return None, str(exc)

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(nodes)))) as pool:
            answers = list(pool.map(ask, nodes))
        out: list[Candidate] = []
        for node, (f, err) in zip(nodes, answers, strict=True):
            if f is None:
                progress(f"{node.name} did not answer: {err}")
            out.append(Candidate(node, f, node.name in drained, err))
        return out

    def volume_target(self, inst: Instance) -> Target:
        for v in self.volumes.volumes():
            if v.name == inst.volume:
                return v.target
        raise InstanceError(f"instance {inst.name}: its volume {inst.volume} is not among the "
                            "storage nodes' volumes (hcboot volume list)")

    def spec(self, inst: Instance, disk: Target) -> DomainSpec:
        return DomainSpec(name=inst.name, uuid=inst.uuid, memory_mb=inst.memory_mb,
                          vcpus=inst.vcpus, mac=inst.mac, bridge=self.settings.network.bridge,
                          disk=disk, seed=render(inst, self.settings.network_config_version))

    # ------------------------------------------------------------------ records
    def record(self, name: str, change: Callable[[Instance], Instance]) -> Instance:
        """Apply ``change`` to the stored record of ``name`` (compare-and-set)."""
        out: list[Instance] = []

        def edit(inv: Inventory) -> Inventory:
            cur = inv.instance(name)
            if cur is None:
                raise InstanceError(f"no instance named {name!r} (it was destroyed meanwhile)")
            new = change(cur)
            out[:] = [new]
            return inv.with_instance(new)

        update(self.store, edit)
        return out[0]

    def set_state(self, name: str, state: str, host: Any = _KEEP,
                  error: str | None = "") -> Instance:
        """Record ``state`` (and ``host``); ``error`` "" clears last_error, None keeps it."""
        def change(cur: Instance) -> Instance:
            return replace(cur, state=state, host=cur.host if host is _KEEP else host,
                           last_error=cur.last_error if error is None else error)
        return self.record(name, change)

    def begin(self, name: str, action: str) -> tuple[Instance, Action]:
        """Check the state machine and record the action's busy state, in one compare-and-set
        (two actions on one instance cannot both begin)."""
        before: list[Instance] = []

        def change(cur: Instance) -> Instance:
            check(action, name, cur.state)
            before[:] = [cur]
            return replace(cur, state=ACTIONS[action].busy)

        self.record(name, change)
        return before[0], ACTIONS[action]

    @contextlib.contextmanager
    def failing(self, name: str, act: Action, progress: Progress,
                host: Any = _KEEP) -> Iterator[None]:
        """Around an action's work: a failure records ``act.failed`` and the error, and is
        raised as an :class:`InstanceError` that says what the state is now."""
        try:
            yield
        except (HostError, HomecloudError) as exc:
            msg = str(exc)
            progress(f"FAILED: {msg}")
            self.set_state(name, act.failed, host=host, error=f"{act.name}: {msg}")
            log.warning("instance %s: %s failed: %s", name, act.name, msg)
            raise InstanceError(f"instance {name}: {act.name} failed: {msg} (state now "
                                f"{act.failed}; hcboot instance show {name})") from None
        except BaseException as exc:
            self.set_state(name, act.failed, host=host,
                           error=f"{act.name}: {type(exc).__name__}: {exc}")
            raise

"""Volumes and templates on the storage nodes: the control side (:class:`Volumes` implements
``homecloud.control.contracts.VolumeApi``).

The records live in the inventory store (changed by compare-and-set through
``homecloud.inventory.protocol.update``): a volume is a ``VolumeExport`` (rw, at a free
shelf.slot, consumers: every hnode, ``snodes``: the one storage node that keeps it: a second
replica is a second entry there, issue 12); a template is a ``TemplateImage`` (on every storage
node's pool); a destroyed one is a ``PoolDeletion`` addressed to its storage nodes, dropped once
their reports no longer list it.  The storage nodes act on their plans
(``homecloud.control.exports.plan_for``) and say what they did in their reports
(``reports.json``, key ``storage``): every wait here reads those reports, with timestamped
progress, and a failure names the storage node, the target and the node's own words.

A volume is NOT redundant yet: one storage node keeps it; if that node's disks die, the volume
is gone (replication across two storage nodes is issue 12).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from homecloud.control.contracts import Origin, Progress, Template, VolumeApi
from homecloud.control.exports import storage_nodes
from homecloud.control.reports import read_reports
from homecloud.core.errors import HomecloudError, NotFound
from homecloud.core.ids import Target
from homecloud.core.manifest import ImageStore
from homecloud.core.model import (
    DRBD_MINOR_LIMIT,
    HOST_ROLE,
    VOLUME_NAME_RE,
    Inventory,
    Node,
    PoolDeletion,
    TemplateImage,
    VolumeExport,
)
from homecloud.inventory.protocol import InventoryStore, update

#: the shelves volumes are allocated on (image exports use low shelves, e1.0 ...)
VOLUME_SHELVES = range(10, 100)
MAX_SLOT = 0xFE
#: who may use a volume: every hardware node (vblade -m with their provisioning MACs)
VOLUME_CONSUMERS = (HOST_ROLE,)
TEMPLATE_ARTIFACT = "rootfs"
WAIT_SAY_EVERY = 60.0    # seconds between "still waiting" lines of a long wait


class VolumeError(HomecloudError):
    """A volume or template action refused or failed; the message names what is at fault."""


def check_name(kind: str, name: str) -> str:
    if not VOLUME_NAME_RE.match(name):
        raise VolumeError(f"{kind} name {name!r} is not valid (letters, digits, . _ -; at most"
                          " 100; not starting with . _ -)")
    return name


def free_target(inv: Inventory, shelves: Iterable[int] = VOLUME_SHELVES) -> Target:
    """The first shelf.slot on ``shelves`` that no export of the inventory uses, nor a deleted
    volume whose storage node has not confirmed yet (an hnode may still see it there)."""
    used = {e.target for e in inv.exports} | {d.target for d in inv.deletions if d.target}
    for shelf in shelves:
        for slot in range(MAX_SLOT + 1):
            t = Target(shelf, slot)
            if t not in used:
                return t
    raise VolumeError("no free AoE shelf.slot left for a volume (every slot of shelves "
                      f"{min(shelves, default=0)}..{max(shelves, default=0)} is used)")


def storage_report(reports: dict[str, Any], node: Node) -> dict[str, Any] | None:
    """The storage agent's last report of ``node`` (``reports.json`` key ``storage``)."""
    r = reports.get(node.mac)
    s = r.get("storage") if isinstance(r, dict) else None
    return s if isinstance(s, dict) else None


def pool_names(report: dict[str, Any] | None, kind: str) -> set[str]:
    if report is None:
        return set()
    return {str(v.get("name")) for v in report.get("volumes") or []
            if isinstance(v, dict) and v.get("kind") == kind}


def no_pool_reason(report: dict[str, Any] | None) -> str:
    """Why a storage node cannot take volumes ("" if it can)."""
    if report is None:
        return "no report from its storage agent yet"
    facts = report.get("facts") or {}
    if facts.get("volume_pool") is True:
        return ""
    return str(facts.get("volume_pool_why") or "it reports no volume pool")


def last_word(report: dict[str, Any], now: float) -> str:
    """"its last report 12s ago: exports-ready" (a storage agent's report, for waits)."""
    try:
        ago = f"{max(0.0, now - float(report.get('time') or 0)):.0f}s ago"
    except (TypeError, ValueError):
        ago = "at an unknown time"
    detail = str(report.get("detail") or "")[:200]
    return f"its last report {ago}: {report.get('state')}" + (f": {detail}" if detail else "")


def volume_count(inv: Inventory, node: Node) -> int:
    return sum(1 for e in inv.exports if isinstance(e, VolumeExport) and e.snodes is not None
               and node.name in e.snodes)


def free_minor(inv: Inventory) -> int:
    """The lowest DRBD minor no volume of the inventory uses."""
    used = {e.drbd_minor for e in inv.exports if isinstance(e, VolumeExport)}
    minor = next((m for m in range(DRBD_MINOR_LIMIT) if m not in used), None)
    if minor is None:
        raise VolumeError(f"every DRBD minor (0..{DRBD_MINOR_LIMIT - 1}) is in use")
    return minor


def replica_connected(report: dict[str, Any] | None, e: VolumeExport) -> bool:
    """The replica's DRBD is connected to its primary (in step, or resyncing from it)."""
    for v in (report or {}).get("volumes") or []:
        if isinstance(v, dict) and v.get("name") == e.name and isinstance(v.get("drbd"), dict):
            return v["drbd"].get("connection") in ("Connected", "SyncTarget", "PausedSyncT")
    return False


#: DRBD connection states of a side that is connected to its peer (in step or resyncing)
CONNECTED = ("Connected", "SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT")


def replica_connected_any(report: dict[str, Any] | None, e: VolumeExport) -> bool:
    """This side's DRBD is connected to its peer (in step, or resyncing either way)."""
    for v in (report or {}).get("volumes") or []:
        if isinstance(v, dict) and v.get("name") == e.name and isinstance(v.get("drbd"), dict):
            return v["drbd"].get("connection") in CONNECTED
    return False


def replica_words(report: dict[str, Any] | None, e: VolumeExport) -> str:
    """"Connected, Secondary/Primary, UpToDate/UpToDate" from a report's pool entry."""
    for v in (report or {}).get("volumes") or []:
        if isinstance(v, dict) and v.get("name") == e.name and isinstance(v.get("drbd"), dict):
            d = v["drbd"]
            words = (f"{d.get('connection')}, {d.get('role')}/{d.get('peer_role')}, "
                     f"{d.get('disk')}/{d.get('peer_disk')}")
            if d.get("synced_percent") is not None:
                words += f", synced {d['synced_percent']}%"
            return words
    return "no DRBD state reported"


def primary_count(inv: Inventory, node: Node) -> int:
    """The volumes ``node`` exports (a replicated volume's primary is its first snode)."""
    return sum(1 for e in inv.exports if isinstance(e, VolumeExport) and e.snodes
               and e.snodes[0] == node.name)


def pick_snode(inv: Inventory, reports: dict[str, Any], origin: Origin,
               besides: Node | None = None) -> Node:
    """The storage node for a new volume: the source volume's for a copy (a thin snapshot lives
    in the same pool), else the storage node with a pool that keeps the fewest volumes
    (preferring one that already holds the template).  ``besides``: the primary of a
    replicated volume, which its replica must not share."""
    snodes = [n for n in storage_nodes(inv) if n is not besides]
    if not snodes:
        raise VolumeError("no storage node in the inventory" if besides is None else
                          f"a replicated volume needs a second storage node besides "
                          f"{besides.name}: there is none")
    if origin.kind == "volume":
        src = inv.volume(origin.name)
        if src is None:
            raise NotFound(f"volume {origin.name} (the origin) does not exist")
        names = src.snodes if src.snodes is not None else tuple(n.name for n in snodes)
        node = next((n for n in snodes if n.name in names or n.mac in names), None)
        if node is None:
            raise VolumeError(f"volume {origin.name} is kept by {', '.join(names)}, which is"
                              " not a storage node of the inventory")
        return node
    why = {n.name: no_pool_reason(storage_report(reports, n)) for n in snodes}
    ok = [n for n in snodes if not why[n.name]]
    if not ok:
        raise VolumeError(("no storage node has a volume pool: " if besides is None else
                           f"no storage node besides {besides.name} has a volume pool for "
                           "the replica: ") + "; ".join(
            f"{n}: {w}" for n, w in sorted(why.items())))

    def key(n: Node) -> tuple[int, int, int, str]:
        has = origin.kind == "template" and origin.name in pool_names(
            storage_report(reports, n), "template")
        return (0 if has or origin.kind != "template" else 1, volume_count(inv, n),
                primary_count(inv, n), n.name)

    return min(ok, key=key)


def _snode_names(inv: Inventory, names: tuple[str, ...] | None) -> tuple[str, ...]:
    snodes = storage_nodes(inv)
    if names is None:
        return tuple(n.name for n in snodes)
    return tuple(n.name for n in snodes if n.name in names or n.mac in names)


class Volumes:
    """``VolumeApi`` over the inventory store, the state directory's reports and the image
    store.  ``clock``/``sleep`` are injectable for tests that drive a fake storage node."""

    def __init__(self, store: InventoryStore, state_dir: Path, images: Path,
                 poll: float = 1.0, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 shelves: Iterable[int] = VOLUME_SHELVES) -> None:
        self.store, self.state_dir, self.images = store, Path(state_dir), Path(images)
        self.poll, self.clock, self.sleep = poll, clock, sleep
        self.shelves = tuple(shelves)

    def inventory(self) -> Inventory:
        return self.store.snapshot().inventory

    def reports(self) -> dict[str, Any]:
        return read_reports(self.state_dir)

    # ------------------------------------------------------------------ reading
    def volumes(self) -> Sequence[VolumeExport]:
        return [e for e in self.inventory().exports if isinstance(e, VolumeExport)]

    def volume(self, name: str) -> VolumeExport:
        v = self.inventory().volume(name)
        if v is None:
            raise NotFound(f"volume {name} does not exist")
        return v

    def templates(self) -> Sequence[Template]:
        inv, reports = self.inventory(), self.reports()
        out = []
        for t in inv.templates:
            present = tuple(n.name for n in storage_nodes(inv)
                            if t.name in pool_names(storage_report(reports, n), "template"))
            clones = tuple(sorted(e.name for e in inv.exports if isinstance(e, VolumeExport)
                                  and e.origin_kind == "template" and e.origin == t.name))
            out.append(Template(t.name, t.role, t.build, t.size, t.sha256, present, clones))
        return out

    def resolve_template(self, name_or_role: str) -> TemplateImage:
        """A template by name, or the newest imported template of a role."""
        inv = self.inventory()
        t = inv.template(name_or_role)
        if t is not None:
            return t
        of_role = sorted((t for t in inv.templates if t.role == name_or_role),
                         key=lambda t: t.build)
        if not of_role:
            known = ", ".join(t.name for t in inv.templates) or "none"
            raise NotFound(f"no template {name_or_role} (templates: {known}; import one with "
                           f"hcboot template import ROLE)")
        return of_role[-1]

    # ------------------------------------------------------------------ volumes
    def default_replicas(self) -> tuple[int, str]:
        """2 when two storage nodes have a volume pool (a new instance's volume survives
        either), else 1; and why."""
        inv, reports = self.inventory(), self.reports()
        pools = [n.name for n in storage_nodes(inv)
                 if not no_pool_reason(storage_report(reports, n))]
        if len(pools) >= 2:
            return 2, f"replicated: {len(pools)} snodes have a volume pool"
        return 1, (f"not replicated: only {pools[0]} has a volume pool" if pools else
                   "not replicated: no second snode with a volume pool")

    def create(self, name: str, size: int, origin: Origin, progress: Progress,
               timeout: float = 600, replicas: int = 1) -> VolumeExport:
        check_name("volume", name)
        if size < 0:
            raise VolumeError(f"volume {name}: size {size} is negative")
        if origin.kind not in ("template", "volume", "empty"):
            raise VolumeError(f"volume {name}: origin kind {origin.kind!r} is not template,"
                              " volume or empty")
        if replicas not in (1, 2):
            raise VolumeError(f"volume {name}: {replicas} replicas: 1 (one snode) or 2 (DRBD "
                              "between two snodes)")
        if replicas == 2 and origin.kind == "volume":
            raise VolumeError(f"volume {name}: a copy of a volume cannot be replicated yet "
                              "(its two sides would not start identical): copy it with one "
                              "replica")
        reports = self.reports()
        made: list[VolumeExport] = []

        def change(inv: Inventory) -> Inventory:
            old = inv.volume(name)
            if old is not None:
                raise VolumeError(f"volume {name} already exists ({old.target} on "
                                  f"{', '.join(old.snodes or ('every snode',))})")
            gone = next((d for d in inv.deletions if d.kind == "volume" and d.name == name),
                        None)
            if gone is not None:
                raise VolumeError(f"volume {name} is still being deleted on "
                                  f"{', '.join(gone.snodes)}: try again when it is gone")
            want = size
            if origin.kind == "template":
                t = inv.template(origin.name)
                if t is None:
                    raise NotFound(f"template {origin.name} does not exist")
                want = max(size, t.size)
            elif origin.kind == "volume":
                src = inv.volume(origin.name)
                if src is None:
                    raise NotFound(f"volume {origin.name} (the origin) does not exist")
                want = max(size, src.size)
            if want <= 0:
                raise VolumeError(f"volume {name}: an empty volume needs a size")
            node = pick_snode(inv, reports, origin)
            keepers: tuple[str, ...] = (node.name,)
            minor: int | None = None
            if replicas == 2:
                keepers = (node.name, pick_snode(inv, reports, origin, besides=node).name)
                minor = free_minor(inv)
            target = free_target(inv, self.shelves)
            e = VolumeExport(target, "rw", VOLUME_CONSUMERS, keepers, name=name,
                             size=want, origin_kind=origin.kind,
                             origin=origin.name if origin.kind != "empty" else "",
                             drbd_minor=minor)
            made[:] = [e]
            return inv.with_exports((*inv.exports, e))

        since = self.clock()
        update(self.store, change)
        e = made[0]
        snodes = e.snodes or ("?",)
        what = "empty" if e.origin_kind == "empty" else f"from {e.origin_kind} {e.origin}"
        if e.drbd_minor is None:
            progress(f"volume {name}: {e.target} on {snodes[0]}, {e.size} bytes, {what}")
        else:
            progress(f"volume {name}: {e.target} on {snodes[0]} replicated to {snodes[1]} "
                     f"(DRBD minor {e.drbd_minor}), {e.size} bytes, {what}")
        self._wait_served(e, snodes[0], since, timeout, progress)
        if e.drbd_minor is not None:
            self._wait_served(e, snodes[1], since, timeout, progress, want="replica")
        return e

    def _wait_served(self, e: VolumeExport, snode: str, since: float, timeout: float,
                     progress: Progress, want: str = "served") -> None:
        """Until ``snode`` reports ``e`` in its pool and its export ``want`` (``served``: by
        this snode; ``replica``: kept in step with the primary, not exported here)."""
        deadline = self.clock() + timeout
        said = ""
        while True:
            inv = self.inventory()
            node = inv.named(snode)
            if node is None:
                raise VolumeError(f"volume {e.name}: storage node {snode} is no longer in the"
                                  " inventory")
            r = storage_report(self.reports(), node)
            if r is not None and float(r.get("time") or 0) >= since:
                st = next((x for x in r.get("exports") or []
                           if isinstance(x, dict) and x.get("target") == str(e.target)), None)
                listed = e.name in pool_names(r, "volume")
                if st is not None and st.get("state") == "failed":
                    raise VolumeError(f"volume {e.name}: {snode} cannot serve {e.target}: "
                                      f"{st.get('detail') or r.get('detail')}")
                if st is not None and st.get("state") == want and (
                        listed or not (r.get("facts") or {}).get("volume_pool")) and (
                        want == "served" or replica_connected(r, e)):
                    progress(f"volume {e.name}: {e.target} served by {snode} (rw, to every "
                             "hnode)" if want == "served" else
                             f"volume {e.name}: replica on {snode} ({replica_words(r, e)})")
                    return
                if listed and said != "made":
                    said = "made"
                    progress(f"volume {e.name}: made on {snode}, waiting for its "
                             + ("export" if want == "served" else "replica to connect"))
            if self.clock() >= deadline:
                last = (f"its last report: {r.get('state')}: {r.get('detail')}" if r else
                        "no report from its storage agent")
                did = f"serve {e.target}" if want == "served" else "keep its replica"
                raise VolumeError(f"volume {e.name}: {snode} did not {did} within "
                                  f"{timeout:g}s ({last})")
            self.sleep(self.poll)

    def delete(self, name: str, progress: Progress, timeout: float = 300) -> None:
        gone: list[PoolDeletion] = []
        since = self.clock()

        def change(inv: Inventory) -> Inventory:
            v = inv.volume(name)
            if v is None:
                raise NotFound(f"volume {name} does not exist")
            d = PoolDeletion("volume", name, _snode_names(inv, v.snodes), since, v.target)
            gone[:] = [d]
            rest = tuple(e for e in inv.exports
                         if not (isinstance(e, VolumeExport) and e.name == name))
            dels = tuple(x for x in inv.deletions if (x.kind, x.name) != ("volume", name))
            return inv.with_exports(rest).with_deletions((*dels, d))

        update(self.store, change)
        progress(f"volume {name}: export stopped, deletion asked of "
                 f"{', '.join(gone[0].snodes) or 'no storage node'}")
        self._settle(gone[0], timeout, progress)

    def resolve(self, name: str, keep: str, progress: Progress,
                timeout: float = 300) -> VolumeExport:
        """After a split brain of replicated volume ``name``: keep snode ``keep``'s data.  The
        other side throws away its writes since the split (``connect --discard-my-data``) and
        resyncs from ``keep``, which becomes (or stays) the primary.  Returns once both sides
        are connected again (the resync may still run: ``hcboot volumes`` shows it)."""
        made: list[VolumeExport] = []

        def change(inv: Inventory) -> Inventory:
            e = inv.volume(name)
            if e is None:
                raise NotFound(f"volume {name} does not exist")
            if e.drbd_minor is None or len(e.snodes or ()) != 2:
                raise VolumeError(f"volume {name} is not replicated: nothing to resolve")
            node = inv.lookup(keep)
            keys = e.snodes or ()
            key = next((k for k in keys if inv.lookup(k) is node), None)
            if node is None or key is None:
                raise VolumeError(f"volume {name}: {keep} is not one of its snodes "
                                  f"({', '.join(keys)})")
            other = keys[1] if key == keys[0] else keys[0]
            new = replace(e, snodes=(key, other), keep=key, outdated=other)
            made[:] = [new]
            return inv.with_exports(tuple(new if x is e else x for x in inv.exports))

        update(self.store, change)
        e = made[0]
        kept, lost = (e.snodes or ("?", "?"))[:2]
        progress(f"volume {name}: keeping {kept}'s data; {lost} discards its writes since the "
                 "split and resyncs from it")
        deadline = self.clock() + timeout
        inv = self.inventory()
        nodes = [inv.lookup(k) for k in (kept, lost)]
        while True:
            reports = self.reports()
            states = [replica_words(storage_report(reports, n), e) if n else "?" for n in nodes]
            if all(n is not None and replica_connected_any(storage_report(reports, n), e)
                   for n in nodes):
                break
            if self.clock() >= deadline:
                raise VolumeError(f"volume {name}: not reconnected within {timeout:g}s "
                                  f"({kept}: {states[0]}; {lost}: {states[1]}); the choice "
                                  "stays recorded: the storage agents go on trying")
            self.sleep(self.poll)

        def clear(inv: Inventory) -> Inventory:
            cur = inv.volume(name)
            if cur is None or cur.keep is None:
                return inv
            return inv.with_exports(tuple(replace(x, keep=None) if x is cur else x
                                          for x in inv.exports))

        update(self.store, clear)
        progress(f"volume {name}: {kept} and {lost} connected again ({states[0]}; "
                 f"{states[1]})")
        return e

    # ------------------------------------------------------------------ templates
    def import_template(self, role: str, build: str | None, progress: Progress,
                        timeout: float = 1800) -> Template:
        m = ImageStore(self.images).manifest(role, build)
        if m is None:
            raise NotFound(f"no published build {build or '(current)'} of role {role} in "
                           f"{self.images}")
        art = m.artifacts.get(TEMPLATE_ARTIFACT)
        if art is None:
            raise VolumeError(f"build {role}/{m.build_id} has no {TEMPLATE_ARTIFACT} artifact"
                              f" (it has: {', '.join(sorted(m.artifacts)) or 'none'})")
        name = check_name("template", f"{role}-{m.build_id}")
        t = TemplateImage(name, role, m.build_id, art.file, art.size, art.sha256,
                          TEMPLATE_ARTIFACT)

        def change(inv: Inventory) -> Inventory:
            if any(d.kind == "template" and d.name == name for d in inv.deletions):
                raise VolumeError(f"template {name} is still being deleted: try again when it"
                                  " is gone")
            old = inv.template(name)
            if old is not None:
                return inv
            return inv.with_templates((*inv.templates, t))

        since = self.clock()
        update(self.store, change)
        progress(f"template {name}: {art.size} bytes, sha256 {art.sha256[:12]}..., to every "
                 "storage node with a volume pool")
        self._wait_template(name, since, timeout, progress)
        return next(x for x in self.templates() if x.name == name)

    def _wait_template(self, name: str, since: float, timeout: float,
                       progress: Progress) -> None:
        deadline = self.clock() + timeout
        done: set[str] = set()
        told = self.clock()
        while True:
            inv, reports = self.inventory(), self.reports()
            want: list[str] = []
            last: dict[str, str] = {}
            for n in storage_nodes(inv):
                r = storage_report(reports, n)
                if no_pool_reason(r):
                    continue
                want.append(n.name)
                if name in pool_names(r, "template"):
                    if n.name not in done:
                        done.add(n.name)
                        progress(f"template {name}: present on {n.name}")
                    continue
                assert r is not None
                last[n.name] = last_word(r, self.clock())
                detail = str(r.get("detail") or "")
                if float(r.get("time") or 0) >= since and r.get("state") == "exports-error" \
                        and f"template {name}:" in detail:
                    raise VolumeError(f"template {name}: {n.name} failed: {detail}")
            if not want:
                raise VolumeError(f"template {name}: no storage node has a volume pool (see "
                                  "hcboot nodes)")
            if set(want) <= done:
                return
            missing = "; ".join(f"{n} ({last[n]})" for n in sorted(set(want) - done))
            if self.clock() >= deadline:
                raise VolumeError(f"template {name}: not on {missing} within {timeout:g}s")
            if self.clock() - told >= WAIT_SAY_EVERY:
                told = self.clock()
                progress(f"template {name}: waiting on {missing}")
            self.sleep(self.poll)

    def remove_template(self, name: str, progress: Progress, timeout: float = 300) -> None:
        gone: list[PoolDeletion] = []
        since = self.clock()

        def change(inv: Inventory) -> Inventory:
            if inv.template(name) is None:
                raise NotFound(f"template {name} does not exist")
            clones = sorted(e.name for e in inv.exports if isinstance(e, VolumeExport)
                            and e.origin_kind == "template" and e.origin == name)
            if clones:
                raise VolumeError(f"template {name} is the origin of volume(s) "
                                  f"{', '.join(clones)}: delete them first")
            d = PoolDeletion("template", name, _snode_names(inv, None), since)
            gone[:] = [d]
            dels = tuple(x for x in inv.deletions if (x.kind, x.name) != ("template", name))
            return inv.with_templates(tuple(t for t in inv.templates if t.name != name)
                                      ).with_deletions((*dels, d))

        update(self.store, change)
        progress(f"template {name}: deletion asked of {', '.join(gone[0].snodes) or 'none'}")
        self._settle(gone[0], timeout, progress)

    # ------------------------------------------------------------------ deletions
    def _settle(self, d: PoolDeletion, timeout: float, progress: Progress) -> None:
        """Wait until the storage nodes of ``d`` report it gone, then drop ``d``; a node that
        never reported a pool is not waited for."""
        deadline = self.clock() + timeout
        left = set(d.snodes)
        while True:
            inv, reports = self.inventory(), self.reports()
            for n in storage_nodes(inv):
                if n.name not in left:
                    continue
                r = storage_report(reports, n)
                if r is None:
                    left.discard(n.name)   # nothing there to delete until it reports
                    continue
                if float(r.get("time") or 0) >= d.since and d.name not in pool_names(r, d.kind):
                    left.discard(n.name)
                    progress(f"{d.kind} {d.name}: deleted on {n.name}")
            left &= {n.name for n in storage_nodes(inv)}
            if not left:
                self._drop(d)
                return
            if self.clock() >= deadline:
                raise VolumeError(f"{d.kind} {d.name}: {', '.join(sorted(left))} did not "
                                  f"confirm the deletion within {timeout:g}s (its plan keeps "
                                  "asking)")
            self.sleep(self.poll)

    def _drop(self, d: PoolDeletion) -> None:
        def change(inv: Inventory) -> Inventory:
            return inv.with_deletions(tuple(x for x in inv.deletions
                                            if (x.kind, x.name, x.since) !=
                                            (d.kind, d.name, d.since)))

        update(self.store, change)


def volume_doc(e: VolumeExport) -> dict[str, Any]:
    return {"name": e.name, "target": str(e.target), "size": e.size, "mode": e.mode,
            "origin": "" if e.origin_kind == "empty" else f"{e.origin_kind}:{e.origin}",
            "snodes": list(e.snodes) if e.snodes is not None else "all",
            "consumers": list(e.consumers)}


def template_doc(t: Template) -> dict[str, Any]:
    return {"name": t.name, "role": t.role, "build": t.build, "size": t.size,
            "sha256": t.sha256, "snodes": list(t.snodes), "clones": list(t.clones)}



def _implements(v: Volumes) -> VolumeApi:
    return v   # mypy checks that Volumes keeps the VolumeApi contract

"""Live migration, its repair, and draining an hnode.

- ``migrate``: prechecks first (nothing is recorded when one refuses): the instance runs where
  its record says, the target is up and not drained, runs the source's Xen version, has the
  bridge, sees the volume and has the memory; the target stages the domain
  (``HostDriver.prepare``: its own seed image and xl config, since the source's config names
  them), then ``HostDriver.migrate`` (``xl migrate`` over the hosts' authenticated channel)
  and the new placement is recorded only once the target's facts list the domain under its
  own name.  When the guest did not suspend within libxl's 60 s (``failed to suspend at
  sender``; a fresh-clone CI run lost a migration so, cause not reproduced) and still runs on
  the source with no copy left on the target, ``xl migrate`` runs again, three times in all.
  Any other failure leaves the state ``error`` with the driver's message (node, command, log
  tail) and points at ``migrate --cleanup``.
- ``cleanup``: asks every hnode where the domain really is (``NAME``, ``NAME--incoming``,
  ``NAME--migratedaway``) and repairs the record: the one host running ``NAME`` wins and every
  leftover elsewhere is destroyed (a ``--migratedaway`` copy must never resume: two writers on
  one volume); when no host runs ``NAME`` the leftovers are destroyed and the instance is
  ``stopped`` (its disk is on the snodes; ``start`` boots it again).  It decides nothing while
  an hnode does not answer (the domain may run there) or when two hosts run ``NAME``.
- ``drain``: marks the hnode drained (placement skips it) and migrates every running instance
  off it; ``undrain`` clears the mark.
"""

from __future__ import annotations

import time

from homecloud.control.contracts import DomainInfo, HostError, MigrationResult, Progress
from homecloud.control.instbase import InstanceBase, quiet
from homecloud.control.lifecycle import InstanceError
from homecloud.control.placement import Candidate, Need, PlacementError, place
from homecloud.core.model import Instance, Node
from homecloud.inventory.protocol import update

INCOMING = "--incoming"
MIGRATEDAWAY = "--migratedaway"
#: what xl migrate prints when the guest did not suspend within libxl's 60 s (xl_migrate.c);
#: the sender then neither resumes nor destroys: the domain runs on, the migration may re-run
SUSPEND_TIMEOUT = "failed to suspend at sender"


def is_running(d: DomainInfo) -> bool:
    """Whether xl's flags say the domain runs (not paused, shut down, crashed or dying)."""
    return not any(flag in d.state for flag in "pscd")


class MigrationOps(InstanceBase):
    #: how often ``migrate`` runs ``xl migrate`` when the guest did not suspend in time, and
    #: the pause between two runs
    migrate_attempts = 3
    retry_pause_s = 10.0

    # ------------------------------------------------------------------ migrate
    def migration_target(self, inst: Instance, to: str | None,
                         progress: Progress = quiet) -> tuple[Node, Candidate]:
        """The prechecks: the source node and the target candidate, or a refusal."""
        if inst.state != "running" or not inst.host:
            raise InstanceError(f"instance {inst.name}: cannot migrate while {inst.state} "
                                "(only a running instance migrates)")
        source = self.hnode(inst.host)
        cands = self.candidates(progress)  # every hnode at once, the source among them
        src_cand = next(c for c in cands if c.node.name == source.name)
        if src_cand.facts is None:
            raise InstanceError(f"hnode {source.name} did not answer: {src_cand.error}")
        src = src_cand.facts
        names = [d.name for d in src.domains]
        if inst.name not in names:
            raise InstanceError(
                f"instance {inst.name}: not running on {source.name}, where its record says "
                f"(xl list there: {', '.join(names) or 'no guests'}); hcboot instance migrate "
                f"--cleanup {inst.name} finds where it is")
        if to == source.name:
            raise InstanceError(f"instance {inst.name}: already runs on {to}")
        disk = self.volume_target(inst)
        need = Need(inst.memory_mb, self.settings.network.bridge, str(disk),
                    self.settings.overhead_mb, xen_version=src.xen_version)
        others = [c for c in cands if c.node.name != source.name]
        try:
            target = place(others, need, to, what=f"instance {inst.name}")
        except PlacementError as exc:
            raise PlacementError(f"cannot migrate: {exc}") from None
        return source, target

    def migrate(self, name: str, to: str | None = None,
                progress: Progress = quiet) -> MigrationResult:
        inst = self.get(name)
        source, target = self.migration_target(inst, to, progress)
        progress(f"prechecks passed: {name} {source.name} -> {target.node.name} "
                 f"({target.facts.free_memory_mb if target.facts else '?'} MiB free there)")
        _, act = self.begin(name, "migrate")
        with self.failing(name, act, progress):
            # the seed image is a file in each host's dom0: the target needs its own before
            # xl migrate-receive opens the disks the source's config names
            self.hosts.prepare(target.node, self.spec(inst, self.volume_target(inst)), progress)
            attempt = 1
            while True:
                try:
                    result = self.hosts.migrate(source, name, target.node, progress)
                    break
                except HostError as exc:
                    if attempt < self.migrate_attempts and \
                            self._may_retry(source, target.node, name, exc, progress):
                        attempt += 1
                        progress(f"the guest did not suspend in time and still runs on "
                                 f"{source.name}; attempt {attempt} of "
                                 f"{self.migrate_attempts} in {self.retry_pause_s:.0f} s")
                        time.sleep(self.retry_pause_s)
                        continue
                    self._unstage(target.node, name, progress)
                    raise
            progress(f"xl migrate finished in {result.seconds:.1f} s; asking "
                     f"{target.node.name}")
            there = self.facts(target.node).domains
            if not any(d.name == name and is_running(d) for d in there):
                seen = ", ".join(f"{d.name} ({d.state})" for d in there) or "none"
                raise InstanceError(f"after xl migrate, {target.node.name} does not list "
                                    f"{name} running (xl list there: {seen})")
        self.set_state(name, act.done, host=target.node.name)
        progress(f"placement recorded: {name} runs on {target.node.name}")
        self._tidy(source, name, progress)
        return result

    def _may_retry(self, source: Node, target: Node, name: str, exc: HostError,
                   progress: Progress) -> bool:
        """Whether a failed ``xl migrate`` may simply run again: only when the guest did not
        suspend in time (xl_migrate.c's ``failed to suspend at sender``: libxl waited 60 s
        for the guest to freeze, e.g. a task stuck in I/O; the sender never resumes or
        destroys anything then), the source still runs the domain, and the target holds no
        copy of it once a half-built ``NAME--incoming`` is destroyed."""
        if SUSPEND_TIMEOUT not in str(exc):
            return False
        try:
            src = {d.name: d for d in self.hosts.facts(source).domains}
            if name not in src or not is_running(src[name]):
                return False
            if self._copies_on(target, name) & {name + INCOMING}:
                self.hosts.destroy(target, name + INCOMING, progress)
            return not self._copies_on(target, name)
        except HostError as err:
            progress(f"not retrying: {err}")
            return False

    def _copies_on(self, node: Node, name: str) -> set[str]:
        """The names under which ``node`` lists the domain (itself, mid-migration or after)."""
        return {d.name for d in self.hosts.facts(node).domains} & {
            name, name + INCOMING, name + MIGRATEDAWAY}

    def _unstage(self, node: Node, name: str, progress: Progress) -> None:
        """After a failed migration: remove what ``prepare`` staged on the target, unless the
        target holds any copy of the domain (then ``migrate --cleanup`` decides)."""
        try:
            copies = self._copies_on(node, name)
        except HostError as exc:
            progress(f"warning: {node.name} did not answer after the failed migration: {exc}")
            return
        if not copies:
            self._tidy(node, name, progress)

    def _tidy(self, node: Node, name: str, progress: Progress) -> None:
        """Remove what the domain left on a host it no longer runs on (seed, xl config); a
        failure here is reported, not fatal (the instance runs elsewhere)."""
        try:
            self.hosts.cleanup(node, name, progress)
        except HostError as exc:
            progress(f"warning: cleaning up {name} on {node.name} failed: {exc}")

    # ------------------------------------------------------------------ cleanup
    def cleanup(self, name: str, progress: Progress = quiet) -> Instance:
        """Find where ``name`` really is and repair its record (see the module docstring)."""
        self.get(name)
        running: list[Node] = []
        leftovers: list[tuple[Node, DomainInfo]] = []
        silent: list[str] = []
        for node in self.hnodes():
            try:
                facts = self.hosts.facts(node)
            except HostError as exc:
                silent.append(f"{node.name} ({exc})")
                progress(f"{node.name} did not answer: {exc}")
                continue
            for d in facts.domains:
                if d.name == name:
                    running.append(node)
                    progress(f"{node.name} runs {name} ({d.state})")
                elif d.name in (name + INCOMING, name + MIGRATEDAWAY):
                    leftovers.append((node, d))
                    progress(f"{node.name} has {d.name} ({d.state})")
        if len(running) > 1:
            msg = (f"cleanup: {name} runs on {' and '.join(n.name for n in running)}: two "
                   "writers on one volume; stop all but one by hand (xl destroy), then run "
                   "cleanup again")
            self.set_state(name, "error", error=msg)
            raise InstanceError(f"instance {name}: {msg}")
        if not running and silent:
            msg = (f"cleanup: {name} runs on no hnode that answered, and "
                   f"{', '.join(silent)} did not answer: it may run there; nothing changed")
            self.set_state(name, "error", error=msg)
            raise InstanceError(f"instance {name}: {msg}")
        removed = []
        for node, d in leftovers:
            self.hosts.destroy(node, d.name, progress)
            removed.append(f"{d.name} on {node.name}")
            if node not in running:
                self._tidy(node, name, progress)
        if running:
            inst = self.set_state(name, "running", host=running[0].name)
            progress(f"recorded: {name} runs on {running[0].name}"
                     + (f"; removed {', '.join(removed)}" if removed else ""))
            return inst
        note = (f"cleanup: {name} ran on no hnode; removed {', '.join(removed)} (its memory "
                "is lost, its disk is intact); start it again" if removed else "")
        inst = self.set_state(name, "stopped", error=note)
        progress(f"recorded: {name} is stopped (runs nowhere)")
        return inst

    # ------------------------------------------------------------------ drain
    def drain(self, hnode: str, progress: Progress = quiet) -> list[MigrationResult]:
        """Mark ``hnode`` drained and live-migrate every running instance off it."""
        self.hnode(hnode)
        update(self.store, lambda inv: inv.with_drained((*inv.drained, hnode)))
        progress(f"{hnode} drained: nothing new is placed there")
        results: list[MigrationResult] = []
        failed: list[str] = []
        for inst in self.instances():
            if inst.host != hnode or inst.state == "stopped":
                continue
            if inst.state != "running":
                failed.append(f"{inst.name} ({inst.state}: not moved; hcboot instance migrate "
                              f"--cleanup {inst.name})")
                continue
            progress(f"migrating {inst.name} off {hnode}")
            try:
                results.append(self.migrate(inst.name, None, progress))
            except InstanceError as exc:
                failed.append(f"{inst.name} ({exc})")
        if failed:
            raise InstanceError(f"hnode {hnode} is drained but still has {len(failed)} "
                                f"instance(s): {'; '.join(failed)}")
        return results

    def undrain(self, hnode: str) -> None:
        self.hnode(hnode)
        update(self.store, lambda inv: inv.with_drained(
            tuple(n for n in inv.drained if n != hnode)))

    def drained(self) -> tuple[str, ...]:
        return self.inventory().drained


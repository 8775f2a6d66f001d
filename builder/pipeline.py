"""The build of one role as a flat list of small steps.

``make_plan`` (builder/plan.py) resolves the inputs and computes the keys; ``build_role`` then,
under the role's store lock, either returns the published build of the same key (reuse) or
makes a ``Build`` context (builder/context.py) and runs the steps on it; only ``store.publish``
makes the result visible.

Steps: plan (profile, elements, lint, mirrors, keys) -> reuse (same key published: done) ->
dib (builder/tree.py): one diskimage-builder run with every element plus hc-build-layers, which
either starts from the base layer of this base key in the layer cache or runs debootstrap and
takes the layer checkpoint in passing (see elements/hc-build-layers; a thread keeps it in the
cache), and hands the finished tree over instead of making an image (elements/hc-tree-output)
-> tree -> artifacts (builder/artifacts.py, packed by builder/pack.py: kernel / xen / initrd
beside the rootfs) -> manifest -> publish -> gc.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from builder.artifacts import step_artifacts, step_manifest
from builder.context import Build, Options, Plan
from builder.pack import ext4_geometry, pack_ext4, pack_ram_root, tree_usage
from builder.plan import make_plan, resolved_profile
from builder.progress import Progress
from builder.store import RoleStore, safe_rmtree
from builder.tree import (
    chroot_processes,
    dpkg_packages,
    step_dib,
    step_tree,
    stop_chroot_processes,
)

__all__ = [
    "STEPS",
    "Build",
    "Options",
    "Plan",
    "Result",
    "build_role",
    "chroot_processes",
    "dpkg_packages",
    "ext4_geometry",
    "make_plan",
    "pack_ext4",
    "pack_ram_root",
    "resolved_profile",
    "stop_chroot_processes",
    "tree_usage",
]


def reuse(plan: Plan, store: RoleStore) -> str | None:
    """The published build of ``plan``'s key (made current), or None."""
    found = store.find_by_key(plan.key)
    if found is None:
        return None
    if store.current_id() != found:
        store.set_current(found)
    return found


def step_publish(b: Build) -> None:
    safe_rmtree(b.work)
    with b.progress.step("publish"):
        b.store.publish(b.tmp, b.build_id)
    b.published = True


STEPS: tuple[Callable[[Build], None], ...] = (
    step_dib,
    step_tree,
    step_artifacts,
    step_manifest,
    step_publish,
)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class Result:
    role: str
    build_id: str
    path: Path
    reused: bool
    seconds: float
    build_key: str
    removed: tuple[str, ...] = ()


@contextlib.contextmanager
def new_build(plan: Plan, opts: Options, progress: Progress, started: float) -> Iterator[Build]:
    """A Build in a fresh temporary directory of the role's store; unless it was published,
    what it started is stopped and the directory removed (current is untouched)."""
    store = RoleStore(opts.store, plan.role)
    build_id = f"{_stamp()}-{plan.key[:12]}"
    b = Build(plan=plan, opts=opts, progress=progress, build_id=build_id,
              tmp=store.new_tmp_dir(build_id), started=started)
    try:
        with b.cleanup:
            b.work.mkdir()
            yield b
    finally:
        if not b.published:  # failed: drop the half build
            safe_rmtree(b.tmp)


def build_role(role: str, opts: Options, progress: Progress | None = None) -> Result:
    prog = progress or Progress()
    started = time.monotonic()
    with prog.step(f"{role}: plan"):
        plan = make_plan(role, opts)
    store = RoleStore(opts.store, role)
    with store.lock(opts.lock_wait):
        left = store.clean_leftovers()
        if left:
            prog.info(f"{role}: removed leftovers of killed builds: {[x.name for x in left]}")
        found = None if opts.force else reuse(plan, store)
        if found is not None:
            prog.info(f"{role}: inputs unchanged, build {found} (key {plan.key[:12]})")
            return Result(role, found, store.dir / found, True, time.monotonic() - started,
                          plan.key)
        with new_build(plan, opts, prog, started) as b:
            for step in STEPS:
                name = step.__name__.removeprefix("step_")
                with prog.step(f"{role}: {name}"):
                    step(b)
        removed = tuple(store.gc(opts.keep))
    return Result(role, b.build_id, store.dir / b.build_id, False,
                  time.monotonic() - started, plan.key, removed)

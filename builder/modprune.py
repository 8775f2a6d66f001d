"""Pruning a root tree's kernel modules to what a server can load.

Debian's kernel ships ~390 MiB of modules; sound, GPU, media, wireless, Bluetooth and the like
are more than half of it, and a storage node carries every byte of its modules in RAM (its root
is the initrd) while every snode fetches the hnodes' shared root at boot.  A profile names
prune sets of its kernel spec (``modules.prune``; kernels/<name>.yaml ``prune_sets``: regular
expressions matched with ``re.search`` against a module's path as modules.dep writes it, e.g.
``kernel/sound/core/snd.ko``) and may keep some back (``modules.keep``, same form), as mkosi's
KernelModulesExclude=/KernelModulesInclude= do.  Never removed: a module of the kernel spec's
module sets (the initramfs loads them) and any module a kept module depends on (modules.dep
lists each module's whole dependency closure).  Then the tree's own depmod rebuilds the indexes
(modules.dep and its .bin files, aliases), so modprobe and udev see only what is there.

:func:`plan_prune` decides (pure, unit-tested); :func:`prune_tree` deletes and runs depmod.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from builder.initramfs import module_name

DEPMOD_PATHS = ("usr/sbin/depmod", "sbin/depmod")


@dataclass(frozen=True)
class PrunePlan:
    remove: tuple[str, ...]              # module paths relative to the modules dir
    needed: Mapping[str, str]            # a path a prune pattern matched -> why it stays
    total: int                           # modules in modules.dep


def compile_patterns(patterns: Iterable[str], where: str) -> list[re.Pattern[str]]:
    """The regexes of ``patterns``; BuildError naming ``where`` and the index of a bad one."""
    out = []
    for i, p in enumerate(patterns):
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise BuildError(f"{where}[{i}]: {p!r} is not a regular expression: {exc}") from None
    return out


def read_dep(modules_dir: Path) -> dict[str, tuple[str, ...]]:
    """modules.dep as {path: dependency paths}, paths relative to ``modules_dir``."""
    dep = modules_dir / "modules.dep"
    try:
        text = dep.read_text()
    except OSError as exc:
        raise BuildError(f"{dep}: cannot read ({exc.strerror}); run depmod first") from None
    out: dict[str, tuple[str, ...]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        mod, colon, rest = line.partition(":")
        if not colon:
            raise BuildError(f"{dep}:{n}: no ':' in {line!r}")
        out[_rel(mod.strip(), modules_dir)] = tuple(_rel(d, modules_dir) for d in rest.split())
    return out


def _rel(path: str, modules_dir: Path) -> str:
    # kmod writes paths relative to the modules dir; some depmods write absolute ones
    return path.split(f"/{modules_dir.name}/", 1)[-1] if path.startswith("/") else path


def plan_prune(dep: Mapping[str, Sequence[str]], prune: Sequence[re.Pattern[str]],
               keep: Sequence[re.Pattern[str]], keep_names: Iterable[str]) -> PrunePlan:
    """Which modules of ``dep`` to delete: those a ``prune`` pattern matches, unless a ``keep``
    pattern matches them, their name is in ``keep_names``, or a module that stays needs them."""
    names = {n.replace("-", "_") for n in keep_names}
    matched = {p for p in dep if any(r.search(p) for r in prune)}
    needed: dict[str, str] = {}
    for p in sorted(matched):
        if any(r.search(p) for r in keep):
            needed[p] = "modules.keep"
        elif module_name(p) in names:
            needed[p] = "a module set of the kernel spec (the initramfs)"
    staying = [p for p in dep if p not in matched or p in needed]
    for p in staying:
        for d in dep[p]:
            if d in matched and d not in needed:
                needed[d] = f"needed by {module_name(p)}"
    # a module kept as a dependency keeps its own dependencies: modules.dep lists the whole
    # closure of each module, so one pass over the staying ones covers them
    remove = tuple(sorted(p for p in matched if p not in needed))
    return PrunePlan(remove=remove, needed=needed, total=len(dep))


def find_depmod(root: Path) -> str:
    for p in DEPMOD_PATHS:
        if (root / p).is_file():
            return "/" + p
    raise BuildError(f"{root}: the profile prunes kernel modules but the tree has no depmod "
                     f"({' or '.join(DEPMOD_PATHS)}; Debian's package kmod) to rebuild the "
                     "indexes with")


@dataclass(frozen=True)
class Pruned:
    removed: int
    total: int
    bytes: int
    needed: Mapping[str, str]


def prune_tree(modules_dir: Path, plan: PrunePlan,
               depmod: Callable[[], None]) -> Pruned:
    """Delete ``plan.remove`` under ``modules_dir``, drop directories left empty, then
    ``depmod()`` (which must rebuild modules.dep in place); BuildError if the new modules.dep
    still names a removed module or misses a kept one."""
    freed = 0
    dirs: set[Path] = set()
    for rel in plan.remove:
        f = modules_dir / rel
        try:
            freed += f.stat().st_size
            f.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BuildError(f"{f}: cannot delete ({exc.strerror})") from None
        dirs.update(f.parents)
    for d in sorted((d for d in dirs if modules_dir in d.parents), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):    # not empty
            d.rmdir()
    depmod()
    after = read_dep(modules_dir)
    gone = set(plan.remove)
    back = sorted(gone & set(after))
    if back:
        raise BuildError(f"{modules_dir}/modules.dep still lists removed modules: {back[:5]}")
    if len(after) != plan.total - len(gone):
        raise BuildError(f"{modules_dir}/modules.dep lists {len(after)} modules after pruning "
                         f"{len(gone)} of {plan.total}: depmod did not see the tree as planned")
    return Pruned(removed=len(gone), total=plan.total, bytes=freed, needed=plan.needed)

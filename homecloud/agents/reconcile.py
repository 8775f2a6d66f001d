"""The storage agent's decisions, without processes: desired plan + what runs -> actions.

The executor (homecloud.agents.storage) carries the actions out (downloads, vblade processes)
and feeds back what runs; unit tests drive these functions directly."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from homecloud.agents.protocol import Export, ImageExport, Plan
from homecloud.core.ids import Target


@dataclass(frozen=True)
class Start:
    """Prepare the export's file (download, create) and start its vblade."""

    export: Export


@dataclass(frozen=True)
class Replace:
    """The plan changed an export that runs: prepare the new file, then stop the old vblade
    and start the new one (the old one keeps serving if the new file cannot be prepared)."""

    old: Export
    new: Export


@dataclass(frozen=True)
class Stop:
    target: Target
    why: str


@dataclass(frozen=True)
class Keep:
    export: Export


@dataclass(frozen=True)
class Unassigned:
    """In the plan without a consumer: not served (vblade without -m would serve everyone)."""

    target: Target


Action = Start | Replace | Stop | Keep | Unassigned


def reconcile(plan: Plan, running: Mapping[Target, Export]) -> list[Action]:
    """The actions that make ``running`` (target -> the export its vblade serves) match
    ``plan``: plan order first, then the stops of what the plan no longer has."""
    actions: list[Action] = []
    wanted: set[Target] = set()
    for e in plan.exports:
        if not e.allow:
            actions.append(Unassigned(e.target))
            continue
        wanted.add(e.target)
        cur = running.get(e.target)
        if cur is None:
            actions.append(Start(e))
        elif cur == e:
            actions.append(Keep(e))
        else:
            actions.append(Replace(cur, e))
    for t in sorted(running):
        if t not in wanted:
            actions.append(Stop(t, "no longer in the plan"))
    return actions


def vblade_argv(vblade: str, e: Export, iface: str, path: str) -> list[str]:
    """One vblade for ``e``: ``-r`` read-only, ``-s`` (O_SYNC) for rw so that a write is on
    disk before vblade acknowledges it (vblade ignores FLUSH otherwise), ``-m`` the allow-list."""
    mode = "-s" if e.mode == "rw" else "-r"
    return [vblade, mode, "-m", ",".join(e.allow), str(e.target.shelf), str(e.target.slot),
            iface, path]


def images_in_use(exports: Iterable[Export]) -> set[str]:
    """sha256 of every image the given (running) exports serve: the others can go."""
    return {e.sha256 for e in exports if isinstance(e, ImageExport)}


def served_list(plan: Plan, serving: Iterable[Target]) -> list[Target]:
    """The targets served now, in plan order (then any others, sorted)."""
    s = set(serving)
    order = [e.target for e in plan.exports if e.target in s]
    return order + sorted(s - set(order))

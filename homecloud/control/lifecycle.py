"""The instance state machine, as data: which action may start from which state, the state it
records while it runs, and the states it ends in.

Every action of :mod:`homecloud.control.instances` begins by moving the record (compare-and-set
on the inventory) from one of ``Action.from_states`` to ``Action.busy``, so two actions on one
instance never run at once and a crash halfway leaves a state that says what was going on;
it ends in ``Action.done`` or, on failure, in ``Action.failed`` with the error kept in the
record's ``last_error`` (what ``hcboot instance show`` prints).

States (``homecloud.core.model.INSTANCE_STATES``)::

    creating --(volume made)--> stopped --start--> starting --> running
    running --stop--> stopping --> stopped           running --reboot--> rebooting --> running
    running --migrate--> migrating --> running       any --destroy--> destroying --> (gone)
    a failure whose outcome is unknown --> error     (stop --force, start, destroy or
                                                      migrate --cleanup get out of it)
"""

from __future__ import annotations

from dataclasses import dataclass

from homecloud.core.errors import HomecloudError
from homecloud.core.model import INSTANCE_STATES


class InstanceError(HomecloudError):
    """An instance action was refused or failed; the message names the instance and what is at
    fault (the node, the command, the log tail)."""


class StateError(InstanceError):
    """The action is not allowed from the instance's current state."""


@dataclass(frozen=True)
class Action:
    name: str
    from_states: tuple[str, ...]
    busy: str  # recorded while the action runs ("" = nothing recorded: it only reads/repairs)
    done: str  # recorded when it succeeds ("" = the record is removed)
    failed: str  # recorded when it fails
    also: tuple[str, ...] = ()  # other states a success may record (cleanup: what it finds)

    def __post_init__(self) -> None:
        for s in (*self.from_states, self.busy, self.done, self.failed, *self.also):
            if s and s not in INSTANCE_STATES:
                raise ValueError(f"action {self.name}: unknown state {s!r}")

    def ends(self) -> tuple[str, ...]:
        return tuple(s for s in (self.done, *self.also, self.failed) if s)


_ANY = INSTANCE_STATES
ACTIONS: dict[str, Action] = {a.name: a for a in (
    # create's record is written in "creating" by the allocation itself
    Action("create", ("creating",), "creating", "stopped", "error"),
    Action("start", ("stopped", "error"), "starting", "running", "error"),
    # a clean shutdown that times out leaves the domain running: back to running
    Action("stop", ("running",), "stopping", "stopped", "running"),
    Action("stop-force", ("running", "starting", "stopping", "rebooting", "error"), "stopping",
           "stopped", "error"),
    Action("reboot", ("running",), "rebooting", "running", "error"),
    Action("migrate", ("running",), "migrating", "running", "error"),
    # the copy's source must be stopped: a running guest's disk is not consistent; the source
    # stays as it is (the new instance goes through create's states)
    Action("copy", ("stopped",), "", "stopped", "stopped"),
    Action("destroy", _ANY, "destroying", "", "error"),
    # migrate --cleanup: asks every hnode where the domain is and records what it finds
    Action("cleanup", _ANY, "", "running", "error", also=("stopped",)),
)}

#: every (from, to) pair some action can record, derived from ACTIONS (for show and tests)
TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    pair for a in ACTIONS.values() for f in a.from_states
    for pair in (((f, a.busy), *((a.busy, e) for e in a.ends())) if a.busy
                 else tuple((f, e) for e in a.ends()))
    if pair[0] != pair[1])


def check(action: str, name: str, state: str) -> Action:
    """The action, if ``state`` allows it; otherwise a :class:`StateError` naming the states
    that would."""
    a = ACTIONS[action]
    if state not in a.from_states:
        hint = ""
        if state in ("starting", "stopping", "rebooting", "migrating", "destroying", "creating"):
            hint = (f"; another action may still run, or one was interrupted: "
                    f"`hcboot instance migrate --cleanup {name}` finds where it really is")
        raise StateError(f"instance {name}: cannot {action.replace('-', ' ')} while {state} "
                         f"(allowed from: {', '.join(a.from_states)}){hint}")
    return a

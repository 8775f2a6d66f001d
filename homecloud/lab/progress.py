"""Where a lab node is in its boot, from its serial console and the reports it POSTs to hcboot.

Console lines (the serial log, SeaBIOS/iPXE included thanks to ``-device sga``):

    iPXE ...                                   pxe          firmware PXE (iPXE ROM)
    Nothing to boot / No bootable device       unassigned   DHCP gave no boot file (no role)
    homecloud: <mac> boots <role> (...)        loading      per-node iPXE script, fetching files
    Xen version ...                            xen          hypervisor started (hnode)
    Linux version ...                          kernel       kernel started
    hc: ...                                    initramfs    homecloud's small initramfs
    hc: switch_root to ... / hc: ... mounted   root mounted root found (AoE, RAM), switching
    systemd[1] / Welcome to                    userland     the image's init runs
    hc-storage: exports ready ...              exports ready   (storage agent)
    hc-node: dom0 up                           dom0 up      (hc-node-report, Xen dom0)
    hc-node: <role> ready                      ready        (hc-node-report)
    HC-ERROR: ... / Kernel panic ...           failed

Reports (``POST /report/<mac>``): ``exports-ready``, ``dom0-up``, ``ready``; ``failed``,
``exports-error``, ``storage-error`` (shown as failed).

Within one boot the state only moves forward (a later ``hc:`` line does not take a node back from
root mounted to initramfs); an iPXE banner after a later state is a new boot and starts over at
pxe.  A report of the role's final state wins.  Each role has one final ("done") state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STATES = ("off", "starting", "pxe", "unassigned", "loading", "xen", "kernel", "initramfs",
          "root mounted", "userland", "ready", "exports ready", "dom0 up", "failed")

FINAL = {"snode": "exports ready", "hnode": "dom0 up"}
DEFAULT_FINAL = "ready"

REPORTED = {"exports-ready": "exports ready", "dom0-up": "dom0 up", "ready": "ready",
            "failed": "failed", "exports-error": "failed", "storage-error": "failed"}

# optional leading CRs, Xen's "(d0) " guest prefix, and the "[  12.3] unit[42]: " of a line that
# systemd's journal forwards to the console
_P = r"^[\r\s]*(?:\(d\d+\)\s*)?(?:\[\s*[\d.]+\]\s+)?(?:[\w@.-]+\[\d+\]:\s+)?"
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (state, re.compile(rx, re.MULTILINE)) for state, rx in (
        ("pxe", r"iPXE \(|iPXE initialising|Booting from ROM"),
        ("unassigned", r"Nothing to boot|No filename or root path|has no role yet|"
                       r"No bootable device"),
        ("loading", _P + r"homecloud: \S+ boots "),
        ("xen", r"Xen version \d"),
        ("kernel", r"Linux version \d"),
        ("initramfs", _P + r"hc: "),
        ("root mounted", _P + r"hc: (?:switch_root to|\[[^\]]*\] (?:mounted|root unpacked))"),
        ("userland", r"systemd\[1\]: |Welcome to \S"),
        # the final states may follow other output on the same line (a getty's "login: "
        # prompt printed while the agent writes): matched anywhere in a line
        ("exports ready", r"hc-storage: exports ready"),
        ("dom0 up", r"hc-node: dom0 up"),
        ("ready", r"hc-node: \S+ ready"),
        ("failed", _P + r"HC-ERROR: .*|Kernel panic.*"),
    ))


def final_state(role: str | None) -> str:
    return FINAL.get(role or "", DEFAULT_FINAL)


RANK = {s: i for i, s in enumerate(STATES)}


@dataclass
class ConsoleState:
    state: str = "starting"
    detail: str = ""            # the line that set it (failed: the error)
    final_seen: bool = False    # the role's final state appeared at least once
    changes: list[str] = field(default_factory=list)  # states entered, in order (drained)

    def apply(self, state: str, detail: str, role: str | None) -> None:
        """One console event.  Within a boot the state only moves forward; ``pxe`` after a
        later state is a new boot (reboot); ``failed`` always applies."""
        if state == final_state(role):
            self.final_seen = True
        cur = RANK.get(self.state, 0)
        if state == "failed" or (state == "pxe" and cur > RANK["unassigned"]) \
                or RANK[state] > cur or (self.state == "failed" and state != "failed"):
            if state != self.state:
                self.changes.append(state)
            self.state, self.detail = state, detail

    def drain(self) -> list[str]:
        out, self.changes = self.changes, []
        return out


def events(text: str) -> list[tuple[int, str, str]]:
    """(position, state, line) of every matching console line, in order."""
    out: list[tuple[int, str, str]] = []
    for state, rx in PATTERNS:
        out.extend((m.start(), state, m.group(0).strip()) for m in rx.finditer(text))
    out.sort()
    return out


def scan(text: str, role: str | None, start: ConsoleState | None = None) -> ConsoleState:
    """The state after ``text`` (a whole log, or what was appended since ``start``)."""
    st = start or ConsoleState()
    for _, state, line in events(text):
        st.apply(state, line, role)
    return st


def reported_states(report: dict[str, object] | None, since: float = 0.0) -> set[str]:
    """The states a node reported since ``since`` (the report's history, else its last
    state): a later report ("ready" after "exports-ready") does not hide an earlier one."""
    if not report:
        return set()
    out: set[str] = set()
    hist = report.get("states")
    if isinstance(hist, dict):
        out |= {REPORTED[k] for k, t in hist.items()
                if k in REPORTED and isinstance(t, (int, float)) and t >= since}
    last = REPORTED.get(str(report.get("state")))
    t = report.get("time")
    if last and (not isinstance(t, (int, float)) or t >= since):
        out.add(last)
    return out


def reported_at(report: dict[str, object] | None, state: str) -> float | None:
    """When the node reported ``state`` (a shown state such as "exports ready"), if it did."""
    if not report:
        return None
    hist = report.get("states")
    times = [t for k, t in (hist.items() if isinstance(hist, dict) else ())
             if REPORTED.get(k) == state and isinstance(t, (int, float))]
    last = report.get("time")
    if REPORTED.get(str(report.get("state"))) == state and isinstance(last, (int, float)):
        times.append(last)
    return float(max(times)) if times else None


def combine(console: ConsoleState, role: str | None, report: dict[str, object] | None,
            vm_running: bool, since: float = 0.0) -> str:
    """The state shown for a node (reports older than ``since``, its boot, are ignored)."""
    final = final_state(role)
    reported = REPORTED.get(str((report or {}).get("state")))
    t = (report or {}).get("time")
    if isinstance(t, (int, float)) and t < since:
        reported = None  # from an earlier boot
    if console.final_seen or final in reported_states(report, since):
        return final
    state = console.state
    if reported and STATES.index(reported) > STATES.index(state):
        state = reported
    if not vm_running and state not in (final, "failed"):
        return "off"
    return state


class Follower:
    """Incremental reader of one serial log (only what was appended since the last poll)."""

    def __init__(self, path: str, role: str | None) -> None:
        self.path = path
        self.role = role
        self.pos = 0
        self.tail = ""  # an unfinished last line, rescanned with the next chunk
        self.state = ConsoleState()

    def poll(self) -> ConsoleState:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return self.state
        if not data:
            return self.state
        self.pos += len(data)
        text = self.tail + data.decode(errors="replace")
        cut = text.rfind("\n")
        complete, self.tail = (text[:cut + 1], text[cut + 1:]) if cut >= 0 else ("", text)
        if len(self.tail) > 4096:  # a line that never ends (progress dots): scan it anyway
            complete, self.tail = complete + self.tail, ""
        if complete:
            scan(complete, self.role, self.state)
        return self.state

"""Where a lab node is in its boot, from its serial console and the reports it POSTs to hcboot.

Console lines (the serial log, SeaBIOS/iPXE included thanks to ``-device sga``):

    iPXE ...                                   pxe          firmware PXE (iPXE ROM)
    No filename or root path / no role yet     unassigned   DHCP gave no boot file (no role)
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

Reports (``POST /report/<mac>``): ``exports-ready``, ``dom0-up``, ``ready``.

The state is that of the *last* console line that matches (a reboot starts over at pxe), raised
to the reported final state when a report says so.  Each role has one final ("done") state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STATES = ("off", "starting", "pxe", "unassigned", "loading", "xen", "kernel", "initramfs",
          "root mounted", "userland", "ready", "exports ready", "dom0 up", "failed")

FINAL = {"snode": "exports ready", "hnode": "dom0 up"}
DEFAULT_FINAL = "ready"

REPORTED = {"exports-ready": "exports ready", "dom0-up": "dom0 up", "ready": "ready"}

_P = r"^[\r\s]*(?:\(d\d+\)\s*)?"  # optional leading CRs and Xen's "(d0) " guest prefix
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (state, re.compile(rx, re.MULTILINE)) for state, rx in (
        ("pxe", r"iPXE \(|iPXE initialising|PXE ROM|Booting from ROM"),
        ("unassigned", r"No filename or root path|has no role yet|No bootable device"),
        ("loading", _P + r"homecloud: \S+ boots "),
        ("xen", r"Xen version \d"),
        ("kernel", r"Linux version \d"),
        ("initramfs", _P + r"hc: "),
        ("root mounted", _P + r"hc: (?:switch_root to|\[[^\]]*\] (?:mounted|root unpacked))"),
        ("userland", r"systemd\[1\]: |Welcome to \S"),
        ("exports ready", _P + r"hc-storage: exports ready"),
        ("dom0 up", _P + r"hc-node: dom0 up"),
        ("ready", _P + r"hc-node: \S+ ready"),
        ("failed", _P + r"HC-ERROR: .*|Kernel panic.*"),
    ))


def final_state(role: str | None) -> str:
    return FINAL.get(role or "", DEFAULT_FINAL)


@dataclass
class ConsoleState:
    state: str = "starting"
    detail: str = ""            # the line that set it (failed: the error)
    final_seen: bool = False    # the role's final state appeared at least once


def scan(text: str, role: str | None, start: ConsoleState | None = None) -> ConsoleState:
    """The state after ``text`` (a whole log, or what was appended since ``start``)."""
    st = start or ConsoleState()
    best_pos = -1
    best: tuple[str, str] | None = None
    for state, rx in PATTERNS:
        last = None
        for last in rx.finditer(text):  # noqa: B007 - we want the last match
            pass
        if last is not None and last.start() > best_pos:
            best_pos = last.start()
            best = (state, last.group(0).strip())
        if last is not None and state == final_state(role):
            st.final_seen = True
    if best is not None:
        st.state, st.detail = best
    return st


def combine(console: ConsoleState, role: str | None, report: dict[str, object] | None,
            vm_running: bool) -> str:
    """The state shown for a node."""
    final = final_state(role)
    reported = REPORTED.get(str((report or {}).get("state")))
    if reported == final or console.final_seen:
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

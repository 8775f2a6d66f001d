"""The lab's addressing (MACs, addresses, ids) and its status rows: plain data, no processes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homecloud.lab.errors import LabError
from homecloud.lab.progress import final_state

LAB_NAME = "lab.json"
FORMAT = 1
MAC_PREFIX = "52:54:00:4c"          # QEMU's OUI, then 0x4c ('L'ab)
ROLE_CODES = {"snode": 0x53, "hnode": 0x48}  # 'S', 'H'; other roles 0x4e
ROLE_IP_BASE = {"snode": 10, "hnode": 20}    # snode1 = .11, hnode1 = .21; others .50+
DEFAULT_NET = "198.51.100.1/24"      # documentation range (RFC 5737)
DEFAULT_MTU = 9000                    # the lab's provisioning/storage bridge: jumbo frames
DEFAULT_INST_NET = "203.0.113.1/24"  # the instance network (issue 11), another RFC 5737 range
INST_NIC_BIT = 0x80                  # second NIC (instance network): role code | 0x80
INST_NIC_ROLES = ("hnode",)          # roles whose VMs get NIC 2 on the instance bridge
POOL = (100, 199)                    # dynamic pool for machines without a role
ROOT_TARGET = "e1.0"
# snode: its whole system is the initrd, unpacked into the initramfs tmpfs, which the kernel
# limits to half the RAM: hcbuild's snode image (~680 MB unpacked) does not fit in 1024 MB
MEMORY = {"snode": 2048, "hnode": 2048}
HNODE_MEMORY_SHARED = 1536           # each, when more than one hnode runs on this host
HNODE_AOE_WAIT = 900                 # s an hnode's initramfs waits for its root (hc.aoe_wait)
HNODE_STARTS = ("with-snodes", "snodes-ready", "exports-ready")   # when `lab up` starts hnodes
HNODE_GUEST_CPUID = "host,avx=0,avx2=0"  # guests' cpuid mask under TCG (hc.guest_cpuid)
BOOT_ORDER = "order=n,reboot-timeout=1000"  # PXE; SeaBIOS retries 1 s after a failed boot

Say = Callable[[str], None]


def lab_id(lab_dir: Path) -> str:
    return hashlib.sha256(str(Path(lab_dir).resolve()).encode()).hexdigest()[:6]


def lab_mac(role: str, index: int, nic: int = 1) -> str:
    """NIC 1 (provisioning) ``52:54:00:4c:RR:II``; NIC 2 (instance network) has bit 0x80 set in
    the role byte (hnode1: ``...:48:01`` and ``...:c8:01``)."""
    if not 0 < index < 256:
        raise LabError(f"{role}{index}: lab MACs number nodes 1..255")
    if nic not in (1, 2):
        raise LabError(f"{role}{index}: lab nodes have NIC 1 or 2, not {nic}")
    code = ROLE_CODES.get(role, 0x4E) | (INST_NIC_BIT if nic == 2 else 0)
    return f"{MAC_PREFIX}:{code:02x}:{index:02x}"


def lab_ip(prefix: str, role: str, index: int) -> str | None:
    base = ROLE_IP_BASE.get(role, 50)
    n = base + index
    return f"{prefix}{n}" if n < POOL[0] else None


def read_leases(state_dir: Path) -> dict[str, str]:
    """MAC -> IPv4 from hcboot's lease journal (the last bound record wins)."""
    out: dict[str, str] = {}
    try:
        lines = (Path(state_dir) / "leases.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        mac, ip = str(rec.get("mac", "")), str(rec.get("ip", ""))
        if rec.get("event") == "bound":
            out[mac] = ip
        elif rec.get("event") == "released" and out.get(mac) == ip:
            del out[mac]
    return out


@dataclass
class NodeStatus:
    name: str
    mac: str
    role: str
    address: str
    state: str
    seconds: float | None       # VM start (or assignment) to the role's final state
    vm: str                     # running | off
    detail: str = ""

    @property
    def done(self) -> bool:
        return self.state == final_state(self.role)

    def to_doc(self) -> dict[str, Any]:
        return {"node": self.name, "mac": self.mac, "role": self.role, "address": self.address,
                "state": self.state, "boot_seconds": self.seconds, "vm": self.vm,
                "done": self.done, "detail": self.detail}


def format_table(rows: list[NodeStatus]) -> str:
    head = f"{'NODE':8}  {'MAC':17}  {'ROLE':6}  {'ADDRESS':15}  {'STATE':13}  {'BOOT':>7}  VM"
    lines = [head]
    for r in rows:
        secs = f"{r.seconds:.1f}s" if r.seconds is not None else "-"
        lines.append(f"{r.name:8}  {r.mac:17}  {r.role:6}  {r.address:15}  {r.state:13}  "
                     f"{secs:>7}  {r.vm}" + (f"  {r.detail[:60]}" if r.detail else ""))
    return "\n".join(lines)


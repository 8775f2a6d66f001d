"""Checks of a running lab, shared by tests/e2e/test_lab.py (stand-in images) and
tests/e2e/test_instances.py (the real images, booted once for the whole instance story): the
two networks and the storage segment's isolation from the instance segment."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def hcboot(*args: str, timeout: float = 1800,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "homecloud", *args], capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"hcboot {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def status(lab: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(hcboot("lab", "status", "--json", "--state-dir",
                                            str(lab)).stdout)
    return doc


def ports(netns: str, bridge: str) -> set[str]:
    r = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "master", bridge],
                       capture_output=True, text=True, check=True)
    return {line.split(":", 2)[1].strip().split("@", 1)[0] for line in r.stdout.splitlines()}


def assert_two_networks(lab: Path, netns: str, hnodes: list[str], snodes: list[str]) -> None:
    """Provisioning bridge: every node's NIC 1; instance bridge: the hnodes' NIC 2 only; the
    config node on both; no forwarding; the context file and `lab env` name the lab."""
    assert ports(netns, "hcbr0") == {f"tap-{n}" for n in hnodes + snodes}
    assert ports(netns, "hcbr1") == {f"tapi-{n}" for n in hnodes}
    addrs = subprocess.run(["ip", "-n", netns, "-o", "-4", "addr"], capture_output=True,
                           text=True, check=True).stdout
    assert any("hcbr0" in ln and "198.51.100.1/24" in ln for ln in addrs.splitlines())
    assert any("hcbr1" in ln and "203.0.113.1/24" in ln for ln in addrs.splitlines())
    fwd = subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-n", "net.ipv4.ip_forward"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert fwd == "0"
    rec = {n["name"]: n for n in json.loads((lab / "lab.json").read_text())["nodes"]}
    for h in hnodes:
        argv = Path(rec[h]["argv"]).read_text()
        assert f"ifname=tapi-{h}" in argv and rec[h]["inst_mac"] in argv
        assert argv.count("virtio-net-pci") == 2
        assert f"mac={rec[h]['inst_mac']},romfile= " in argv  # NIC 2 never boots
    for sn in snodes:
        assert "tapi-" not in Path(rec[sn]["argv"]).read_text()
    log = (lab / "hcboot" / "hcboot.log").read_text(errors="replace")
    assert "instance DHCP on hcbr1 (203.0.113.1)" in log
    env = hcboot("lab", "env", "--state-dir", str(lab)).stdout
    assert f"HC_STATE_DIR={lab / 'hcboot'}" in env and f"HC_LAB_NETNS={netns}" in env
    keys = (lab / "hcboot" / "admin_keys").read_text()
    assert keys == (lab / "ssh" / "id_ed25519.pub").read_text()


PROBE_MAC = "52:54:00:4c:43:01"  # the lab bridge's MAC: a consumer every snode's vblade allows


def aoe_scan(netns: str, interface: str) -> list[dict[str, Any]]:
    r = hcboot("aoe", "scan", "--netns", netns, "--interface", interface, "--json",
               "--timeout", "3")
    found: list[dict[str, Any]] = json.loads(r.stdout)
    return found


def assert_instance_segment_has_no_aoe(netns: str) -> None:
    """The threat of FIELD-NOTES "AoE and security": a guest forging an allowed MAC.  On the
    provisioning bridge both snodes answer a scan; a probe on the instance bridge that sends
    from an allowed MAC (the lab bridge's, in every export's vblade -m list) gets nothing."""
    seen = aoe_scan(netns, "hcbr0")
    assert len({m for t in seen for m in t["macs"]}) == 2, seen  # both snodes export e1.0
    ip = ["ip", "-n", netns]
    subprocess.run([*ip, "link", "add", "hcprobe0", "address", PROBE_MAC, "type", "veth",
                    "peer", "name", "hcprobe1"], check=True)
    try:
        subprocess.run([*ip, "link", "set", "hcprobe1", "master", "hcbr1", "up"], check=True)
        subprocess.run([*ip, "link", "set", "hcprobe0", "up"], check=True)
        assert aoe_scan(netns, "hcprobe0") == []
    finally:
        subprocess.run([*ip, "link", "del", "hcprobe0"], check=False)


@contextlib.contextmanager
def _console(rec: dict[str, Any], command: str) -> Iterator[Callable[[], bytes]]:
    """``command`` typed on a lab VM's serial console (``rec``: its entry in lab.json); yields
    a reader of what the console prints (up to 0.5 s per call).  The caller keeps the
    connection open, and reads it, until it has what it needs: QEMU takes typed bytes only as
    fast as the guest's UART does and drops what a closed client still had queued, and an
    unread client holds the guest's output back."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(rec["serial_sock"])
        s.settimeout(0.5)
        s.sendall(b"\r" + command.encode() + b"\r")

        def read() -> bytes:
            try:
                return s.recv(65536)
            except TimeoutError:
                return b""
        yield read


def console_type(rec: dict[str, Any], command: str, linger: float = 3.0) -> None:
    """Types ``command`` on a lab VM's serial console, the connection open for ``linger`` s."""
    with _console(rec, command) as read:
        end = time.monotonic() + linger
        while time.monotonic() < end:
            read()


def console_run(rec: dict[str, Any], command: str, pattern: str, timeout: float) -> str:
    """Types ``command`` once on a lab VM's serial console; the first match of regex
    ``pattern`` (group 1) in what the console prints after it (its log and the connection)."""
    log = Path(rec["serial_log"])
    start = log.stat().st_size
    seen = b""
    with _console(rec, command) as read:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen += read()
            with log.open("rb") as f:
                f.seek(start)
                text = f.read().decode(errors="replace") + seen.decode(errors="replace")
            m = re.search(pattern, text)
            if m:
                return m.group(1)
    raise AssertionError(f"{rec['name']}: no {pattern!r} on its console within {timeout:.0f} s "
                         f"of {command!r}")

"""``hcboot lab``: a whole homecloud in QEMU (TCG) inside one network namespace.

Two image sets:

- stand-ins (always): the Debian kernel + a marker initramfs (tests/support/artifacts.py) per
  role, published in hcbuild's store format.  The snode stand-in prints the storage agent's
  ``hc-storage: exports ready`` line, the hnode stand-in boots Xen (smap=0 from its manifest)
  and prints ``hc-node: dom0 up`` from dom0, then each powers off.  They exercise everything the
  lab does (namespace, hcboot serve in full DHCP mode, PXE over iPXE, progress from the serial
  consoles, add-node through the unassigned path, console attach, down) but not the images;
- the real images boot once, in tests/e2e/test_instances.py (its first test: all nodes ready,
  ``hcboot aoe verify`` of the hnode root export, the storage segment's isolation), where the
  same lab then runs instances.

Both boot two hnodes (the default since issue 11) with NIC 2 on the instance bridge
(the checks of the two networks: tests/support/labchecks.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from homecloud.core.manifest import BootInfo
from tests.support import artifacts
from tests.support.images import publish
from tests.support.labchecks import assert_two_networks, hcboot, ports, status

SNODE_STANDIN = "hc-storage: exports ready (stand-in: marker initramfs, nothing exported)"
HNODE_STANDIN = "hc-node: dom0 up (stand-in: marker initramfs in dom0, no AoE root)"
XEN_CMDLINE = ("console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all noreboot "
               "console_timestamps=boot dom0_mem=512M,max:512M smap=0")


def publish_stand_ins(store: Path) -> Path:
    """snode and hnode stand-in images (see the module docstring) in ``store``."""
    k = artifacts.debian_kernel()
    publish(store, "snode", {"kernel": k.vmlinuz,
                             "initrd": artifacts.marker_initramfs(SNODE_STANDIN)},
            BootInfo(kind="linux", loader="ipxe", root="ram",
                     cmdline="console=ttyS0,115200n8 panic=-1"))
    publish(store, "hnode", {"kernel": k.vmlinuz, "xen": artifacts.xen().xen_elf,
                             "initrd": artifacts.marker_initramfs(HNODE_STANDIN)},
            BootInfo(kind="xen", loader="ipxe", root="ram", cmdline="console=hvc0",
                     xen_cmdline=XEN_CMDLINE))
    return store


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out.append((int(d.name), cmd))
    return out


def namespaces() -> list[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def assert_nothing_left(lab: Path, netns: str) -> None:
    assert processes_mentioning(str(lab)) == []
    assert netns not in namespaces()
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for name in ("tap-snode1", "tapi-hnode1", "hcbr0", "hcbr1"):
        assert name not in host_links


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return publish_stand_ins(tmp_path_factory.mktemp("lab-images") / "images")


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "lab"
    yield d
    hcboot("lab", "down", "--state-dir", str(d), check=False)


def test_lab_up_add_node_console_down(stand_ins: Path, lab_dir: Path) -> None:
    r = hcboot("lab", "up", "--state-dir", str(lab_dir), "--images", str(stand_ins),
               "--no-build", "--timeout", "900")
    out = r.stdout
    for name in ("snode1", "snode2", "hnode1", "hnode2"):
        assert name in out
    assert "all 4 nodes ready" in out
    doc = status(lab_dir)
    netns = doc["netns"]
    assert doc["netns_exists"] and doc["server"]["running"]
    by = {n["node"]: n for n in doc["nodes"]}
    assert by["snode1"]["state"] == by["snode2"]["state"] == "exports ready"
    assert by["hnode1"]["state"] == by["hnode2"]["state"] == "dom0 up"
    assert by["snode1"]["address"] == "198.51.100.11"
    assert by["hnode1"]["mac"] == "52:54:00:4c:48:01"
    assert_two_networks(lab_dir, netns, ["hnode1", "hnode2"], ["snode1", "snode2"])
    assert all(n["boot_seconds"] and n["boot_seconds"] > 0 for n in doc["nodes"])
    # the namespace holds the lab's links only; nothing is bound on the host
    links = subprocess.run(["ip", "-n", netns, "-o", "link"], capture_output=True,
                           text=True).stdout
    assert "hcbr0" in links and "tap-hnode1" in links
    assert "veth" not in links
    # hcboot's view agrees (its inventory and reports)
    nodes = json.loads(hcboot("--state-dir", str(lab_dir / "hcboot"), "--images",
                              str(stand_ins), "nodes", "--json").stdout)
    assert {n["hostname"] for n in nodes} == {"snode1", "snode2", "hnode1", "hnode2"}

    # add-node: a fresh MAC PXE-boots without a role, is seen, assigned, boots into hnode
    add = subprocess.Popen([sys.executable, "-m", "homecloud", "lab", "add-node", "--role",
                            "hnode", "--state-dir", str(lab_dir), "--assign-after", "8"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lab_json = lab_dir / "lab.json"
        deadline = time.monotonic() + 120
        while True:
            nodes_doc = json.loads(lab_json.read_text())["nodes"]
            rec = next((n for n in nodes_doc if n["name"] == "hnode3"), None)
            if rec and rec.get("pid") and Path(rec["serial_sock"]).exists():
                break
            assert time.monotonic() < deadline, "hnode3 never started"
            time.sleep(0.5)
        # attach to its console while it retries PXE; Ctrl-] detaches
        con = subprocess.Popen([sys.executable, "-m", "homecloud", "lab", "console", "hnode3",
                                "--state-dir", str(lab_dir)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(6)
        assert con.stdin is not None
        con.stdin.write(b"\x1d")
        con.stdin.flush()
        cout, cerr = con.communicate(timeout=20)
        assert con.returncode == 0, cerr
        assert b"attached to hnode3" in cerr and b"detached" in cerr
        assert cout, "nothing came from the console"
        # a reboot through the QEMU monitor (the machine comes back through PXE by itself)
        assert "hnode3: reset" in hcboot("lab", "reset", "hnode3", "--state-dir",
                                         str(lab_dir)).stdout
        aout, _ = add.communicate(timeout=900)
    finally:
        if add.poll() is None:
            add.kill()
    assert add.returncode == 0, aout
    assert "seen unassigned" in aout
    assert "assignment to dom0 up" in aout
    by = {n["node"]: n for n in status(lab_dir)["nodes"]}
    assert by["hnode3"]["state"] == "dom0 up"
    assert by["hnode3"]["mac"] == "52:54:00:4c:48:03"
    assert "tapi-hnode3" in ports(netns, "hcbr1")  # an added hnode gets NIC 2 too
    serial = Path(rec["serial_log"]).read_text(errors="replace")
    # it went through the unassigned path: iPXE found no boot file, SeaBIOS retried
    assert "Nothing to boot" in serial or "No bootable device" in serial
    assert "Xen version" in serial and HNODE_STANDIN in serial

    down = hcboot("lab", "down", "--state-dir", str(lab_dir)).stdout
    assert "namespace" in down
    assert_nothing_left(lab_dir, netns)
    assert not (lab_dir / "context.json").exists()
    # idempotent
    assert "nothing to stop" in hcboot("lab", "down", "--state-dir", str(lab_dir)).stdout


def test_down_cleans_up_after_up_was_killed(stand_ins: Path, lab_dir: Path) -> None:
    up = subprocess.Popen([sys.executable, "-m", "homecloud", "lab", "up", "--state-dir",
                           str(lab_dir), "--images", str(stand_ins), "--no-build"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab_json = lab_dir / "lab.json"
    deadline = time.monotonic() + 120
    netns = ""
    while True:
        try:
            doc = json.loads(lab_json.read_text())
        except (FileNotFoundError, ValueError):
            doc = {}
        netns = doc.get("netns") or netns
        if any(n.get("pid") for n in doc.get("nodes") or []):
            break
        assert up.poll() is None and time.monotonic() < deadline, "lab up never started a VM"
        time.sleep(0.2)
    up.send_signal(signal.SIGKILL)
    up.wait(10)
    assert netns in namespaces()
    assert processes_mentioning(str(lab_dir))  # the lab's processes outlived `lab up`
    r = hcboot("lab", "up", "--state-dir", str(lab_dir), "--images", str(stand_ins),
               "--no-build", check=False)
    assert r.returncode != 0 and "lab down" in r.stderr
    hcboot("lab", "down", "--state-dir", str(lab_dir))
    assert_nothing_left(lab_dir, netns)

"""``hcboot lab``: a whole homecloud in QEMU (TCG) inside one network namespace.

Two image sets:

- stand-ins (always): the Debian kernel + a marker initramfs (tests/support/artifacts.py) per
  role, published in hcbuild's store format.  The snode stand-in prints the storage agent's
  ``hc-storage: exports ready`` line, the hnode stand-in boots Xen (smap=0 from its manifest)
  and prints ``hc-node: dom0 up`` from dom0, then each powers off.  They exercise everything the
  lab does (namespace, hcboot serve in full DHCP mode, PXE over iPXE, progress from the serial
  consoles, add-node through the unassigned path, console attach, down) but not the images;
- the real images (``hcbuild image --all``), when a store with snode and hnode (with a rootfs)
  is given in ``HC_LAB_IMAGES``: all nodes ready, and ``hcboot aoe verify`` run inside the
  lab's namespace checks the hnode root export byte for byte against the manifest.

Both boot two hnodes (the default since issue 11) with NIC 2 on the instance bridge; the real
images also show the storage segment's isolation: an AoE broadcast sent on the instance bridge,
from a MAC the snodes' allow-list accepts, gets no answer, while the same scan on the
provisioning bridge sees the exports.
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
from typing import Any

import pytest

from homecloud.core.manifest import BootInfo, ImageStore
from tests.support import artifacts
from tests.support.builds import ensure_built_all
from tests.support.images import publish

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


@pytest.fixture(scope="module")
def real_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hcbuild's snode and hnode images: ``HC_LAB_IMAGES`` if it names a store that has them,
    else the session's ``hcbuild image --all`` (tests/support/builds.py; reused, not rebuilt,
    when the integration tier already built them)."""
    env = os.environ.get("HC_LAB_IMAGES")
    path = Path(env) if env else ensure_built_all(tmp_path_factory)[0]
    store = ImageStore(path)
    h, s = store.manifest("hnode"), store.manifest("snode")
    assert h is not None and s is not None, f"{path}: no hnode/snode images"
    assert "rootfs" in h.artifacts and h.boot.root == "aoe", f"{path}: hnode is not an AoE root"
    return path


def test_real_images_all_ready_and_root_export_verifies(lab_dir: Path, real_store: Path) -> None:
    store = real_store
    r = hcboot("lab", "up", "--state-dir", str(lab_dir), "--images", str(store), "--no-build",
               "--timeout", "2400", timeout=2700, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = status(lab_dir)
    by = {n["node"]: n for n in doc["nodes"]}
    assert by["hnode1"]["state"] == by["hnode2"]["state"] == "dom0 up"
    assert by["snode1"]["state"] == by["snode2"]["state"] == "exports ready"
    for rec in json.loads((lab_dir / "lab.json").read_text())["nodes"]:
        if rec["role"] == "hnode":
            assert "hc: switch_root" in Path(rec["serial_log"]).read_text(errors="replace")
    netns = doc["netns"]
    assert_two_networks(lab_dir, netns, ["hnode1", "hnode2"], ["snode1", "snode2"])
    assert_instance_segment_has_no_aoe(netns)
    v = hcboot("aoe", "verify", "--netns", doc["netns"], "--interface", "hcbr0", "--target",
               "e1.0", "--role", "hnode", "--images", str(store), "--no-progress",
               timeout=1800, check=False)
    assert v.returncode == 0, v.stdout + v.stderr
    # the same through the lab's shortcut
    v = hcboot("lab", "verify", "--state-dir", str(lab_dir), "--sample", "256", timeout=600,
               check=False)
    assert v.returncode == 0, v.stdout + v.stderr


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

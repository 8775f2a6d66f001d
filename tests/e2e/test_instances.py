"""Issue 11's "Done when", in one lab session: instances from the domu template on real snodes
(LVM thin clones exported over AoE) and real Xen hnodes (PVH guests via pvgrub2, NoCloud
seed), reached on the instance network from the config node, live-migrated while pinged.

``hcboot lab up`` (2 snodes, 2 hnodes) from ``HC_LAB_IMAGES`` (must hold snode, hnode, domu),
else the session's ``hcbuild image --all`` (tests/support/builds.py).  The test functions are
the steps in order and share the lab (module-scoped); each prints its duration.  Every command
talks to the nodes inside the lab's network namespace; no timing asserts (the numbers are
printed: the migration's ping gap and lost pings).

This is also the suite's one boot of the real images as a whole lab (it took over the checks of
tests/e2e/test_lab.py's real-image test and of the former tests/e2e/test_hnode_ssh.py, which
each booted a lab of their own): every node ready, the hnode root export verified byte for byte,
the two networks, AoE unreachable from the instance segment, the SSH trust between the config
node and the hnodes and between the hnodes (migration only)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from homecloud.control.contracts import HostError
from homecloud.control.hosts import SshHostDriver, host_key_from_reports
from homecloud.control.reports import read_reports
from homecloud.core.manifest import ImageStore
from homecloud.core.model import Nic, Node
from homecloud.lab.context import LabContext, read_context
from homecloud.lab.demo import USER_DATA, hcboot, instance_doc, migrate_pinged, wait_ping
from tests.support.builds import ensure_built_all
from tests.support.labchecks import (
    assert_instance_segment_has_no_aoe,
    assert_two_networks,
    console_run,
    console_type,
)
from tests.support.labchecks import status as lab_status

T0 = time.monotonic()
#: the record writer (append + fsync, then a check) run in guests and dom0s (issue 12)
RECWRITER = Path(__file__).resolve().parents[1] / "support" / "recwriter.py"
#: MiB per instance: two must fit on one lab hnode (1536 MB VM, dom0 512 MB) for the drain
MEMORY = "256"


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {text}", flush=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("HC_LAB_IMAGES")
    path = Path(env) if env else ensure_built_all(tmp_path_factory)[0]
    store = ImageStore(path)
    assert store.manifest("snode") is not None, f"{path}: no snode image"
    for role in ("hnode", "domu"):  # the hnode root export and the template are rootfs images
        m = store.manifest(role)
        assert m is not None and "rootfs" in m.artifacts, f"{path}: no {role} image with a rootfs"
    return path


@pytest.fixture(scope="module")
def lab(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabContext]:
    d = tmp_path_factory.mktemp("inst") / "lab"
    base = [sys.executable, "-m", "homecloud"]
    t = time.monotonic()
    r = subprocess.run([*base, "lab", "up", "--state-dir", str(d), "--images", str(store),
                        "--no-build", "--snodes", "2", "--hnodes", "2", "--timeout", "2400"],
                       capture_output=True, text=True, timeout=2700)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        say(f"lab up in {time.monotonic() - t:.1f} s")
        yield read_context(d)
    finally:
        subprocess.run([*base, "lab", "down", "--state-dir", str(d)], capture_output=True,
                       timeout=600)


@pytest.fixture(scope="module")
def user_data(lab: LabContext) -> Path:
    p = Path(lab.lab_dir) / "user-data"
    p.write_text(USER_DATA)
    return p


def run(lab: LabContext, *args: str) -> str:
    return hcboot(lab, *args, say=say)


def ssh(lab: LabContext, ip: str, command: str, timeout: float = 120) -> str:
    r = subprocess.run(lab.ssh_argv(ip, command), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"ssh root@{ip} {command!r} -> {r.returncode}: {r.stderr[-800:]}"
    return r.stdout


def wait_ssh(lab: LabContext, ip: str, timeout: float = 900) -> str:
    """The guest's hostname once SSH with the lab's key works (cloud-init installs it)."""
    deadline = time.monotonic() + timeout
    err = ""
    while time.monotonic() < deadline:
        r = subprocess.run(lab.ssh_argv(ip, "hostname"), capture_output=True, text=True,
                           timeout=60)
        if r.returncode == 0:
            return r.stdout.strip()
        err = r.stderr[-300:]
        time.sleep(5)
    raise AssertionError(f"ssh root@{ip}: not in within {timeout:.0f} s: {err}")


def step_timer(name: str) -> Iterator[None]:
    t = time.monotonic()
    say(f"step {name}")
    yield
    say(f"step {name} done in {time.monotonic() - t:.1f} s")


@pytest.fixture(autouse=True)
def _timed(request: pytest.FixtureRequest) -> Iterator[None]:
    yield from step_timer(request.node.name)


def hnodes(lab: LabContext) -> list[str]:
    doc = json.loads(subprocess.run([sys.executable, "-m", "homecloud", "lab", "status",
                                     "--json", "--state-dir", lab.lab_dir],
                                    capture_output=True, text=True, check=True).stdout)
    return sorted(n["node"] for n in doc["nodes"] if n["role"] == "hnode")


def other(lab: LabContext, host: str) -> str:
    return next(h for h in hnodes(lab) if h != host)


def test_lab_ready_networks_and_root_export(lab: LabContext, store: Path) -> None:
    """(from tests/e2e/test_lab.py) every node ready, the hnodes on the AoE root, the two
    networks, no AoE answer on the instance segment, the hnode root export verified."""
    lab_dir = Path(lab.lab_dir)
    doc = lab_status(lab_dir)
    by = {n["node"]: n for n in doc["nodes"]}
    assert by["hnode1"]["state"] == by["hnode2"]["state"] == "dom0 up", by
    assert by["snode1"]["state"] == by["snode2"]["state"] == "exports ready", by
    server = str(json.loads((lab_dir / "lab.json").read_text())["server_cidr"]).split("/")[0]
    # jumbo frames on the storage network (lab up --mtu 9000 -> hcboot serve --mtu -> hc.mtu=
    # for the hnodes' initramfs, DHCP option 26 for networkd): every node's link to the config
    # node has MTU 9000, and the hnodes' aoe driver reads their root 8 KiB+ per frame
    link_mtu = (f"echo MTU-$(cat /sys/class/net/$(ip -o route get {server} | "
                "sed -n 's/.* dev \\([^ ]*\\).*/\\1/p')/mtu)-END")
    for rec in json.loads((lab_dir / "lab.json").read_text())["nodes"]:
        if rec["role"] == "hnode":
            serial = Path(rec["serial_log"]).read_text(errors="replace")
            assert "hc: switch_root" in serial and "eth0: mtu 9000" in serial, serial[-3000:]
            frames = re.findall(r"e1\.0: setting (\d+) byte data frames", serial)
            assert frames and int(frames[-1]) >= 8192, (frames, serial[-3000:])
            mtu = ssh(lab, rec["ip"], link_mtu)
        else:                                   # snodes: no sshd, their serial console
            mtu = console_run(rec, link_mtu, r"(MTU-\d+-END)", 120)
        assert "MTU-9000-END" in mtu, (rec["name"], mtu)
        # a node boots the built tree each time: systemd-sysusers found the image up to date
        # (hc-base's /etc/.updated), eight generators are off and nothing is remounted
        # (elements/hc-node-boot)
        trims = ("echo BOOT-$(systemctl show -P ConditionResult systemd-sysusers)-"
                 "$(ls /etc/systemd/system-generators | wc -l)-"
                 "$(systemctl is-enabled systemd-remount-fs)-END")
        got = (ssh(lab, rec["ip"], trims) if rec["role"] == "hnode"
               else console_run(rec, trims, r"(BOOT-\w+-\d+-\w+-END)", 120))
        assert "BOOT-no-8-masked-END" in got, (rec["name"], got)
    assert_two_networks(lab_dir, lab.netns, ["hnode1", "hnode2"], ["snode1", "snode2"])
    assert_instance_segment_has_no_aoe(lab.netns)
    # lab only: root's shell on a node's serial console (hc.autologin=1 from the inventory)
    rec = next(r for r in json.loads((lab_dir / "lab.json").read_text())["nodes"]
               if r["name"] == "snode1")
    assert "HC-CONSOLE-42" in console_says(rec, "echo HC-CONSOLE-$((40 + 2))", "HC-CONSOLE-42"), \
        Path(rec["serial_log"]).read_text(errors="replace")[-1500:]
    v = subprocess.run([sys.executable, "-m", "homecloud", "lab", "verify", "--state-dir",
                        lab.lab_dir, "--sample", "256"], capture_output=True, text=True,
                       timeout=900)
    assert v.returncode == 0, v.stdout + v.stderr


def console_says(rec: dict[str, str], command: str, expect: str,
                 timeout: float = 120) -> str:
    """Types ``command`` on a lab VM's serial console (its QEMU chardev socket) and returns
    what the console printed after it, once ``expect`` shows or ``timeout`` passed."""
    log = Path(rec["serial_log"])
    start = log.stat().st_size
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(rec["serial_sock"])
        deadline, seen = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            s.sendall(b"\r" + command.encode() + b"\r")
            time.sleep(5)
            with log.open("rb") as f:
                f.seek(start)
                seen = f.read().decode(errors="replace")
            if expect in seen:
                return seen
    return seen


def node_addresses(lab: LabContext) -> dict[str, str]:
    return {n["node"]: n["address"] for n in lab_status(Path(lab.lab_dir))["nodes"]}


def admin_ssh(lab: LabContext, ip: str, command: str, key: str | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = lab.ssh_argv(ip, command)
    if key is not None:
        argv[argv.index(lab.ssh_key)] = key
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_hnodes_trust_each_other_for_migration_only(lab: LabContext, tmp_path: Path) -> None:
    """(from the former tests/e2e/test_hnode_ssh.py) each hnode pins the other's host key; a
    peer's migration key runs nothing but ``xl migrate-receive``; an admin key configured on
    the config node after the hnodes booted reaches them through the trust timer."""
    addr = node_addresses(lab)
    reports = read_reports(Path(lab.state_dir))
    macs = {n["node"]: n["mac"] for n in lab_status(Path(lab.lab_dir))["nodes"]}
    hk2 = str(reports[macs["hnode2"]]["facts"]["ssh_host_key"])
    want = f"{addr['hnode2']},hnode2 {hk2}"
    deadline = time.monotonic() + 300  # hnode1's trust timer (30 s) brings a later peer
    while True:
        peers = admin_ssh(lab, addr["hnode1"], "cat /var/lib/hc/hnode/peers_known_hosts")
        if (peers.returncode == 0 and want in peers.stdout) or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert peers.returncode == 0, peers
    assert want in peers.stdout, peers.stdout
    mig = ("ssh -i /var/lib/hc/hnode/migration_key -l root -o BatchMode=yes "
           "-o StrictHostKeyChecking=yes -o UserKnownHostsFile=/var/lib/hc/hnode/peers_known_hosts "
           f"-o IdentitiesOnly=yes {addr['hnode2']}")
    refused = admin_ssh(lab, addr["hnode1"], f"{mig} id; echo rc=$?")
    assert "rc=2" in refused.stdout and "runs only 'xl migrate-receive'" in refused.stderr, \
        refused
    assert "uid=" not in refused.stdout
    rcv = admin_ssh(lab, addr["hnode1"], f"{mig} xl migrate-receive < /dev/null; echo rc=$?")
    assert "migration target" in rcv.stdout + rcv.stderr, rcv  # the real xl, no stream
    # a new admin key on the config node: the hnodes' trust timer installs it
    admin = tmp_path / "admin"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(admin)],
                   check=True, capture_output=True)
    keys = Path(lab.state_dir) / "admin_keys"
    before = keys.read_text()
    keys.write_text(before + admin.with_suffix(".pub").read_text())
    try:
        deadline, r = time.monotonic() + 300, None
        while time.monotonic() < deadline:
            r = admin_ssh(lab, addr["hnode2"], "id -u", key=str(admin))
            if r.returncode == 0:
                break
            time.sleep(5)
        assert r is not None and r.returncode == 0 and r.stdout.strip() == "0", r
    finally:
        keys.write_text(before)


def test_agent_facts_over_pinned_ssh(lab: LabContext, tmp_path: Path) -> None:
    """(folded from tests/e2e/test_hnode_ssh.py) the config key reaches the agent of each
    hnode with the host key pinned from its report; it runs nothing else; a wrong pinned key
    is refused."""
    hcboot_dir = Path(lab.state_dir)
    doc = json.loads(subprocess.run([sys.executable, "-m", "homecloud", "lab", "status",
                                     "--json", "--state-dir", lab.lab_dir],
                                    capture_output=True, text=True, check=True).stdout)
    key = hcboot_dir / "ssh" / "id_ed25519"
    for hn in (n for n in doc["nodes"] if n["role"] == "hnode"):
        node = Node(name=hn["node"], role="hnode", nics=(Nic(hn["mac"], ip=hn["address"]),))
        driver = SshHostDriver(key, host_key_from_reports(read_reports(hcboot_dir)),
                               tmp_path / "known", prefix=lab.exec_prefix(),
                               connect_timeout=30, action_timeout=300)
        deadline = time.monotonic() + 300
        while True:  # the report can come before sshd listens: a few tries
            try:
                hf = driver.facts(node)
                break
            except HostError as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{hn['node']}: facts over SSH: {exc}") from None
                time.sleep(5)
        assert hf.xen_version == "4.17" and "xenbr1" in hf.bridges, hf
        out = subprocess.run(driver.ssh_argv(node, ["id"]), capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 2 and "refused" in out.stdout and "uid=" not in out.stdout, out
        facts = read_reports(hcboot_dir)[hn["mac"]]["facts"]
        mig = str(facts["migration_key"])
        wrong = SshHostDriver(key, lambda n, k=mig: k, tmp_path / "known2",
                              prefix=lab.exec_prefix(), connect_timeout=30)
        with pytest.raises(HostError, match="Host key verification failed"):
            wrong.facts(node)


def test_create_ping_ssh(lab: LabContext, user_data: Path) -> None:
    run(lab, "template", "import", "domu")
    run(lab, "instance", "create", "web1", "--template", "domu", "--memory", MEMORY,
        "--user-data", str(user_data),
        "--ssh-key", lab.ssh_key + ".pub")
    doc = instance_doc(lab, "web1")
    assert doc["state"] == "running", doc
    ip = str(doc["ip"])
    assert str(doc["mac"]).startswith("0a:48:43:"), doc
    say(f"web1 answers ping after {wait_ping(lab, ip, 900):.1f} s")
    assert wait_ssh(lab, ip) == "web1"
    # its own kernel, from its own disk, through pvgrub2 (no guest kernel in dom0)
    domu = ImageStore(Path(lab.images)).manifest("domu")
    assert domu is not None
    assert ssh(lab, ip, "uname -r").strip() == domu.versions["kernel"]
    host = node_addresses(lab)[str(doc["host"])]
    cfg = admin_ssh(lab, host, "cat /run/hc/hnode/web1.cfg")
    assert 'kernel = "/usr/lib/grub-xen/grub-i386-xen_pvh.bin"' in cfg.stdout, cfg
    assert 'type = "pvh"' in cfg.stdout and "ramdisk" not in cfg.stdout, cfg.stdout
    # the lab's hnodes hide AVX from guests: it faults under TCG's emulated SVM (docs/guests.md)
    assert 'cpuid = "host,avx=0,avx2=0"' in cfg.stdout, cfg.stdout
    # the storage as its snode reports it: web1's volume served there, nothing amiss
    st = json.loads(run(lab, "volumes", "--json"))
    vol = next(v for v in st["volumes"] if v["instance"] == "web1")
    assert vol["health"] == "ok" and vol["origin"].startswith("template:domu-"), vol
    # replicated by default (two snodes with pools): the primary serves, the replica keeps
    assert [r["export"] for r in vol["replicas"]] == ["served", "replica"], st
    assert st["strays"] == [], st
    say(run(lab, "verify").strip())


def test_write_and_sync(lab: LabContext) -> None:
    ip = str(instance_doc(lab, "web1")["ip"])
    ssh(lab, ip, "echo written-before-migration > /root/marker && sync")


def test_migrate_while_pinged(lab: LabContext) -> None:
    doc = instance_doc(lab, "web1")
    src, ip = str(doc["host"]), str(doc["ip"])
    stats = migrate_pinged(lab, "web1", ip, other(lab, src), say)
    say(f"MIGRATION {src} -> {other(lab, src)}: {stats.line()}")
    after = instance_doc(lab, "web1")
    assert after["host"] == other(lab, src) and after["state"] == "running", after
    assert stats.received > 0
    assert ssh(lab, ip, "cat /root/marker").strip() == "written-before-migration"


def test_migrate_back(lab: LabContext) -> None:
    """The way back with a writer running in the guest (issue 12: its volume is replicated;
    both hnodes reach it at one shelf.slot): every record written and fsynced is intact."""
    doc = instance_doc(lab, "web1")
    src, ip = str(doc["host"]), str(doc["ip"])
    with RECWRITER.open("rb") as rw:
        writer = subprocess.Popen(lab.ssh_argv(ip, "python3 - write /root/migrec 60"),
                                  stdin=rw, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
    time.sleep(5)
    stats = migrate_pinged(lab, "web1", ip, None, say)
    say(f"MIGRATION BACK {src} -> {instance_doc(lab, 'web1')['host']}: {stats.line()}")
    out, err = writer.communicate(timeout=600)
    lines = out.splitlines()
    assert lines and lines[-1].startswith("done "), (out[-2000:], err[-2000:])
    done = json.loads(lines[-1][5:])
    say(f"writer during the migration: {done}")
    assert done["errors"] == 0, out[-3000:]
    with RECWRITER.open("rb") as rw:
        r = subprocess.run(lab.ssh_argv(ip, f"python3 - check /root/migrec {done['records']}"),
                           stdin=rw, capture_output=True, text=True, timeout=300)
    assert json.loads(r.stdout.strip().splitlines()[-1][5:])["intact"] == done["records"], r
    assert instance_doc(lab, "web1")["host"] == other(lab, src)
    assert ssh(lab, ip, "cat /root/marker").strip() == "written-before-migration"
    # minutes of uptime and two migrations: no oops in the guest's kernel (without the AVX
    # mask its aesni self-test faulted at ~60 s and a stuck udev worker failed a migration;
    # soft-lockup warnings of a starved TCG vCPU are not what this looks for)
    log = ssh(lab, ip, "dmesg")
    bad = [x for x in log.splitlines()
           if any(w in x for w in ("invalid opcode", "Oops:", "crypto_wait_for_test"))]
    assert not bad, bad


def test_second_instance_and_drain(lab: LabContext, user_data: Path) -> None:
    host1 = str(instance_doc(lab, "web1")["host"])
    run(lab, "instance", "create", "web2", "--template", "domu", "--memory", MEMORY,
        "--user-data", str(user_data),
        "--ssh-key", lab.ssh_key + ".pub", "--on", host1)
    ip2 = str(instance_doc(lab, "web2")["ip"])
    assert ip2 != instance_doc(lab, "web1")["ip"]
    wait_ping(lab, ip2, 900)
    assert wait_ssh(lab, ip2) == "web2"
    run(lab, "node", "drain", host1)
    for name in ("web1", "web2"):
        d = instance_doc(lab, name)
        assert d["host"] == other(lab, host1) and d["state"] == "running", d
    run(lab, "node", "undrain", host1)


def test_clones_differ_in_identity(lab: LabContext) -> None:
    cmd = "cat /etc/machine-id; cat /etc/ssh/ssh_host_ed25519_key.pub"
    a = ssh(lab, str(instance_doc(lab, "web1")["ip"]), cmd).split("\n")
    b = ssh(lab, str(instance_doc(lab, "web2")["ip"]), cmd).split("\n")
    assert a[0] != b[0], "same machine-id in web1 and web2"
    assert a[1].split()[1] != b[1].split()[1], "same SSH host key in web1 and web2"


#: run with python3 on a node or guest: broadcasts an AoE "query config" (every shelf, every
#: slot) from NIC ``dev`` with source MAC ``src`` (a spoofed one from a guest), three times, and
#: counts the AoE responses (the response flag set) heard within 3 s
AOE_PROBE = """
import socket, struct, sys, time
dev, src = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88A2))
s.bind((dev, 0))
hdr = struct.pack("!BBHBBI", 0x10, 0, 0xFFFF, 0xFF, 1, 0x48430001)
frame = b"\\xff" * 6 + src + struct.pack("!H", 0x88A2) + hdr + bytes(8)
frame += bytes(max(0, 60 - len(frame)))
for _ in range(3):
    s.send(frame)
s.settimeout(0.5)
got, end = 0, time.time() + 3
while time.time() < end:
    try:
        d = s.recv(2048)
    except socket.timeout:
        continue
    if d[12:14] == b"\\x88\\xa2" and d[14] & 0x08:
        got += 1
print("aoe-answers", got)
"""


#: run in the lab's namespace: counts the frames carrying AOE_PROBE's tag seen on a bridge
PROBE_SNIFF = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88A2))
s.bind((sys.argv[1], 0))
s.settimeout(0.5)
seen, end = 0, time.time() + float(sys.argv[2])
print("listening", flush=True)
while time.time() < end:
    try:
        d = s.recv(2048)
    except socket.timeout:
        continue
    if d[20:24] == bytes.fromhex("48430001") and not d[14] & 0x08:
        seen += 1
print("probe-frames", seen)
"""


def aoe_probe(lab: LabContext, argv: list[str]) -> tuple[int, int]:
    """Runs AOE_PROBE through ``argv`` while the config node listens on the storage bridge:
    (AoE answers the prober heard, probe frames that reached the storage bridge)."""
    sniff = subprocess.Popen([*lab.exec_prefix(), sys.executable, "-c", PROBE_SNIFF,
                              lab.bridge, "25"], stdout=subprocess.PIPE, text=True)
    try:
        assert sniff.stdout is not None and sniff.stdout.readline().strip() == "listening"
        r = subprocess.run(argv, input=AOE_PROBE, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "aoe-answers" in r.stdout, (argv, r.stdout, r.stderr[-500:])
        out, _ = sniff.communicate(timeout=60)
    finally:
        if sniff.poll() is None:
            sniff.kill()
            sniff.wait()
    return int(r.stdout.split()[-1]), int(out.split()[-1])


def test_guest_cannot_reach_the_storage_network(lab: LabContext) -> None:
    """AoE frames sent from inside an instance, even from the MAC of an hnode every export
    allows, never reach the storage network and get no answer; the same probe from that
    hnode's dom0 is seen there and answered (the probe and the listener work)."""
    ip = str(instance_doc(lab, "web1")["ip"])
    hn_mac = next(n["mac"] for n in lab_status(Path(lab.lab_dir))["nodes"]
                  if n["node"] == "hnode1")
    answers, seen = aoe_probe(lab, lab.ssh_argv(node_addresses(lab)["hnode1"],
                                                f"python3 - eth0 {hn_mac}"))
    assert answers > 0 and seen > 0, (answers, seen)
    links = [x for x in ssh(lab, ip, "ls /sys/class/net").split() if x != "lo"]
    assert len(links) == 1, links  # one NIC: the instance network
    answers, seen = aoe_probe(lab, lab.ssh_argv(ip, f"python3 - {links[0]} {hn_mac}"))
    assert (answers, seen) == (0, 0), f"from the guest: {answers} answers, {seen} frames seen"
    addrs = ssh(lab, ip, "ip -4 -o addr; ip -4 route; ls /dev/etherd 2>/dev/null; true")
    assert "198.51.100." not in addrs and "etherd" not in addrs, addrs


def test_agent_refused_without_the_key(lab: LabContext, tmp_path: Path) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    hn = hnodes(lab)[0]
    doc = json.loads(subprocess.run([sys.executable, "-m", "homecloud", "lab", "status",
                                     "--json", "--state-dir", lab.lab_dir],
                                    capture_output=True, text=True, check=True).stdout)
    addr = next(n["address"] for n in doc["nodes"] if n["node"] == hn)
    r = subprocess.run([*lab.exec_prefix(), "ssh", "-i", str(key), "-o", "IdentitiesOnly=yes",
                        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                        "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", f"root@{addr}",
                        '{"op": "facts"}'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 255 and "Permission denied" in r.stderr, (r.returncode, r.stderr)


def wait_hnode_back(lab: LabContext, name: str, timeout: float = 900) -> float:
    """Seconds until the config node's driver gets ``name``'s facts again after a reboot."""
    hcboot_dir = Path(lab.state_dir)
    hn = next(n for n in lab_status(Path(lab.lab_dir))["nodes"] if n["node"] == name)
    node = Node(name=name, role="hnode", nics=(Nic(hn["mac"], ip=hn["address"]),))
    t0 = time.monotonic()
    time.sleep(20)  # past the reset: the old dom0 must not answer for the new one
    err = ""
    while time.monotonic() - t0 < timeout:
        driver = SshHostDriver(hcboot_dir / "ssh" / "id_ed25519",
                               host_key_from_reports(read_reports(hcboot_dir)),
                               Path(lab.lab_dir) / "known-wait", prefix=lab.exec_prefix(),
                               connect_timeout=15)
        try:
            driver.facts(node)
            return time.monotonic() - t0
        except HostError as exc:
            err = str(exc)
            time.sleep(10)
    raise AssertionError(f"{name} did not answer within {timeout:.0f} s of its reset: {err}")


def test_stop_reboot_its_hnode_start_on_the_other(lab: LabContext) -> None:
    """Stop the instance, reboot its hnode, start it on the other hnode: the file is there.
    (web2 runs on the same hnode since the drain: it is stopped too, and stays stopped.)"""
    doc = instance_doc(lab, "web1")
    host, ip = str(doc["host"]), str(doc["ip"])
    for name in ("web1", "web2"):  # web1 shuts down cleanly; web2 is only in the way
        if instance_doc(lab, name)["host"] == host:
            run(lab, "instance", "stop", name, *(("--force",) if name == "web2" else ()))
            assert instance_doc(lab, name)["state"] == "stopped"
    r = subprocess.run([sys.executable, "-m", "homecloud", "lab", "reset", host,
                        "--state-dir", lab.lab_dir], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    say(f"{host} reset (rebooting)")
    run(lab, "instance", "start", "web1", "--on", other(lab, host))
    assert instance_doc(lab, "web1")["host"] == other(lab, host)
    wait_ping(lab, ip, 900)
    wait_ssh(lab, ip)
    assert ssh(lab, ip, "cat /root/marker").strip() == "written-before-migration"
    # the rebooted hnode comes back (new host key, reported and pinned; trust fetched): the
    # config node's agent calls reach it again, so destroy can clean up there
    say(f"{host} back after {wait_hnode_back(lab, host):.0f} s more")


def volume_state(lab: LabContext, name: str) -> dict[str, Any]:
    st = json.loads(hcboot(lab, "volumes", "--json"))
    return next(v for v in st["volumes"] if v["name"] == name)


def lab_cmd(lab: LabContext, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "homecloud", "lab", *args, "--state-dir",
                        lab.lab_dir], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"hcboot lab {' '.join(args)}: {r.stdout}{r.stderr}"
    say(r.stdout.strip())
    return r.stdout


def node_rec(lab: LabContext, name: str) -> dict[str, Any]:
    doc = json.loads((Path(lab.lab_dir) / "lab.json").read_text())
    return dict(next(n for n in doc["nodes"] if n["name"] == name))


def vm_state(lab: LabContext, node: str) -> str:
    return str(next(n for n in lab_status(Path(lab.lab_dir))["nodes"] if n["node"] == node)
               ["vm"])


def backing_sums(lab: LabContext, vol: str, snodes: tuple[str, str]) -> dict[str, str]:
    """sha256 of volume ``vol``'s backing LV on each snode (read with O_DIRECT: a buffered
    read can return pages cached before DRBD wrote the LV), both snodes at once."""
    from concurrent.futures import ThreadPoolExecutor
    cmd = (f"echo HCSUM-$(dd if=/dev/hc/v-{vol} bs=4M iflag=direct status=none | sha256sum "
           "| cut -c1-64)-END")
    with ThreadPoolExecutor(2) as ex:
        futs = {n: ex.submit(console_run, node_rec(lab, n), cmd, r"HCSUM-([0-9a-f]{64})-END",
                             900) for n in snodes}
        return {n: f.result() for n, f in futs.items()}


def wait_volume(lab: LabContext, name: str, ok: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        v = volume_state(lab, name)
        if ok(v) or time.monotonic() > deadline:
            return v
        time.sleep(5)


def guest_io_errors(lab: LabContext, ip: str) -> str:
    return ssh(lab, ip, "dmesg | grep -ciE 'I/O error|blk_update_request|Buffer I/O' "
                        "|| true").strip()


def dom0_io_errors(lab: LabContext, hn: str, target: str) -> int:
    return int(ssh(lab, hn, f"dmesg | grep -c 'I/O error, dev etherd/{target}' || true")
               .strip())


def writer_through(lab: LabContext, ip: str, path: str, seconds: int, at: float,
                   event: Any) -> dict[str, Any]:
    """The record writer inside the guest at ``ip`` appends to ``path`` for ``seconds``;
    ``event()`` runs ``at`` seconds into its run.  Asserts no write or fsync failed and every
    acknowledged record reads back intact; the writer's summary (stalls included)."""
    with RECWRITER.open("rb") as src:
        writer = subprocess.Popen(lab.ssh_argv(ip, f"python3 - write {path} {seconds}"),
                                  stdin=src, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
    t_start = time.monotonic()
    try:
        time.sleep(at)
        event()
    finally:
        out, err = writer.communicate(timeout=900)
    lines = out.splitlines()
    assert lines and lines[-1].startswith("done "), (out[-2000:], err[-2000:])
    done: dict[str, Any] = json.loads(lines[-1][5:])
    stalls = [ln for ln in lines if ln.startswith("stall ")]
    say(f"writer: {done}; stalls over 1 s: {stalls}; the event came {at:.0f} s into its "
        f"run, it ended {time.monotonic() - t_start:.0f} s after its start")
    assert done["errors"] == 0 and not [ln for ln in lines if ln.startswith("err ")], out[-3000:]
    acked = sum(1 for ln in lines if ln.startswith("ack "))
    assert acked == done["records"]
    with RECWRITER.open("rb") as src:
        r = subprocess.run(lab.ssh_argv(ip, f"python3 - check {path} {acked}"),
                           stdin=src, capture_output=True, text=True, timeout=300)
    res = json.loads(r.stdout.strip().splitlines()[-1][5:])
    say(f"check: {res}")
    assert res["intact"] == acked, res
    return done


@pytest.fixture
def snodes_back(lab: LabContext) -> Iterator[None]:
    """A loss test that fails halfway leaves an snode killed or powered off: start it again
    afterwards, so the tests after it find both snodes (and one failure reads as one)."""
    yield
    for n in lab_status(Path(lab.lab_dir))["nodes"]:
        if str(n["node"]).startswith("snode") and n["vm"] != "running":
            say(f"{n['node']} was left {n['vm']} by the test: starting it again")
            lab_cmd(lab, "start", str(n["node"]))


def wait_in_step(lab: LabContext, vol: str, since: float, who: str) -> dict[str, Any]:
    v = wait_volume(lab, vol, in_step_ok, 900)
    assert in_step_ok(v), v
    say(f"{who} back and resynced {time.monotonic() - since:.0f} s after its start")
    return v


def replicas_identical(lab: LabContext, vol: str, host: str, domain: str) -> None:
    """Both backing devices of ``vol`` hash the same, the guest paused meanwhile (``xl
    pause``: nothing is written while both are read; its in-flight writes have completed)."""
    hn = node_addresses(lab)[host]
    v = volume_state(lab, vol)
    ssh(lab, hn, f"xl pause {domain} && sleep 2")
    try:
        sums = backing_sums(lab, vol, (v["replicas"][0]["snode"], v["replicas"][1]["snode"]))
    finally:
        ssh(lab, hn, f"xl unpause {domain}")
    say(f"backing devices: {sums}")
    assert len(set(sums.values())) == 1, sums


def test_snode_killed_under_a_running_instance(lab: LabContext, snodes_back: None) -> None:
    """Issue 12: a writer inside web1 (on a replicated volume) appends records and fsyncs each;
    the volume's primary snode is killed (SIGKILL to its VM) mid-stream: no I/O error in the
    guest or in dom0, every acknowledged record intact, the stall measured; the config node
    promotes the replica, which exports the same shelf.slot.  The killed snode comes back,
    resyncs by itself, and both backing devices are identical."""
    doc = instance_doc(lab, "web1")
    ip, host, vol = str(doc["ip"]), str(doc["host"]), str(doc["volume"])
    v = volume_state(lab, vol)
    assert len(v["replicas"]) == 2 and v["health"] == "ok", v
    prim, repl = v["replicas"][0]["snode"], v["replicas"][1]["snode"]
    target = v["target"]
    hn = node_addresses(lab)[host]
    before = dom0_io_errors(lab, hn, target)
    writer_through(lab, ip, "/root/records", 75, 15, lambda: lab_cmd(lab, "kill", prim))
    assert guest_io_errors(lab, ip) == "0", ssh(lab, ip, "dmesg | tail -30")
    assert dom0_io_errors(lab, hn, target) == before, ssh(lab, hn, "dmesg | tail -30")
    v = volume_state(lab, vol)
    assert v["replicas"][0]["snode"] == repl and v["replicas"][0]["export"] == "served", v
    assert v["target"] == target
    # the killed snode comes back as the replica and resyncs by itself
    lab_cmd(lab, "start", prim)
    wait_in_step(lab, vol, time.monotonic(), prim)
    replicas_identical(lab, vol, host, "web1")


def test_replica_killed_primary_killed_then_powered_off(lab: LabContext, snodes_back: None) -> None:
    """Issue 12, the other losses, under the same writer inside web1, one after the other, each
    snode back and resynced before the next: the *replica* killed (the primary fences it
    through the config node and goes on alone); the *primary* killed (after the first test,
    the other snode: snode2 in a fresh lab); the new primary shut down cleanly with
    ``poweroff`` (its agent hands the resource over and says it is leaving: the replica is
    promoted at its next plan fetch).  No I/O error, every acknowledged record intact each
    time; the two backing devices identical at the end."""
    doc = instance_doc(lab, "web1")
    ip, host, vol = str(doc["ip"]), str(doc["host"]), str(doc["volume"])
    v = wait_volume(lab, vol, in_step_ok, 300)
    assert in_step_ok(v), v
    first, second = v["replicas"][0]["snode"], v["replicas"][1]["snode"]
    target, hn = v["target"], node_addresses(lab)[host]
    before = dom0_io_errors(lab, hn, target)

    # 1. the replica killed: no promotion, the replica outdated, back by itself
    writer_through(lab, ip, "/root/records-replica", 40, 10,
                   lambda: lab_cmd(lab, "kill", second))
    v = volume_state(lab, vol)
    say(f"{second} (replica) killed: {v['problems']}")
    assert v["replicas"][0]["snode"] == first and v["replicas"][0]["export"] == "served", v
    assert any(f"on {second}: outdated" in p for p in v["problems"]), v
    lab_cmd(lab, "start", second)
    wait_in_step(lab, vol, time.monotonic(), second)

    # 2. the primary killed: the replica promoted at the same target
    writer_through(lab, ip, "/root/records-primary", 40, 10,
                   lambda: lab_cmd(lab, "kill", first))
    v = volume_state(lab, vol)
    say(f"{first} (primary) killed: {v['problems']}")
    assert v["replicas"][0]["snode"] == second and v["replicas"][0]["export"] == "served", v
    assert v["target"] == target
    lab_cmd(lab, "start", first)
    wait_in_step(lab, vol, time.monotonic(), first)

    # 3. the new primary powered off cleanly: promoted away at once, shown down
    def poweroff() -> None:
        console_type(node_rec(lab, second), "poweroff")
        t0 = time.monotonic()
        while vm_state(lab, second) != "off" and time.monotonic() - t0 < 300:
            time.sleep(1)
        assert vm_state(lab, second) == "off", f"{second}: still running 300 s after poweroff"
        say(f"{second} powered off (its VM ended {time.monotonic() - t0:.0f} s after poweroff)")
    writer_through(lab, ip, "/root/records-poweroff", 40, 10, poweroff)
    v = volume_state(lab, vol)
    say(f"{second} (primary) powered off: {v['problems']}")
    assert v["replicas"][0]["snode"] == first and v["replicas"][0]["export"] == "served", v
    assert v["replicas"][1]["export"] == "down", v         # its agent's last report: leaving
    assert v["target"] == target
    assert guest_io_errors(lab, ip) == "0", ssh(lab, ip, "dmesg | tail -30")
    assert dom0_io_errors(lab, hn, target) == before, ssh(lab, hn, "dmesg | tail -30")
    lab_cmd(lab, "start", second)
    wait_in_step(lab, vol, time.monotonic(), second)
    replicas_identical(lab, vol, host, "web1")


def test_replicated_volume_on_both_snodes(lab: LabContext) -> None:
    """Issue 12, first slice: a volume kept by both snodes with DRBD (protocol C), started
    without a full sync; the primary exports /dev/drbdN over AoE, the replica nothing; a write
    from an hnode reads back through the export, DRBD reports both disks UpToDate with
    nothing out of sync; delete takes the resource down on both and frees everything."""
    t0 = time.monotonic()
    run(lab, "volume", "create", "rep1", "--size", "64M", "--replicas", "2")
    say(f"replicated volume created in {time.monotonic() - t0:.1f} s")
    deadline = time.monotonic() + 120
    while True:
        v = volume_state(lab, "rep1")
        if v["health"] == "ok" or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert v["health"] == "ok", v
    prim, repl = v["replicas"]
    assert (prim["export"], repl["export"]) == ("served", "replica"), v
    for side, role in ((prim, "Primary"), (repl, "Secondary")):
        d = side["drbd"]
        assert (d["connection"], d["role"], d["disk"], d["peer_disk"], d["out_of_sync_kib"]) \
            == ("Connected", role, "UpToDate", "UpToDate", 0), v
    # what the kernel runs (not only what the file says): a resync is capped at 40 MiB/s (the
    # dynamic controller's c-max-rate; c-plan-ahead 20 is DRBD's default, so not shown), and a
    # lost peer is fenced through the config node
    for side in (prim, repl):
        shown = console_run(node_rec(lab, side["snode"]), "echo HCX-$(/usr/lib/drbd/"
                            f"drbdsetup-84 show hc{side['drbd']['minor']} | grep -cE "
                            "'c-max-rate[[:space:]]+40960k|fencing[[:space:]]+"
                            "resource-and-stonith')-END",
                            r"HCX-(\d+)-END", 120)
        assert shown == "2", (side["snode"], shown)
    target = v["target"]
    hn = node_addresses(lab)["hnode1"]
    r = admin_ssh(lab, hn, f"echo 1 > /dev/etherd/discover; for i in $(seq 60); do "
                  f"[ -b /dev/etherd/{target} ] && break; sleep 1; done; "
                  "head -c 8388608 /dev/urandom > /tmp/rep1.blk && "
                  f"dd if=/tmp/rep1.blk of=/dev/etherd/{target} bs=1M oflag=direct,sync "
                  "status=none && sha256sum < /tmp/rep1.blk && "
                  f"dd if=/dev/etherd/{target} bs=1M count=8 iflag=direct status=none "
                  "| sha256sum", timeout=300)
    assert r.returncode == 0, r
    wrote, read = r.stdout.split()[0], r.stdout.split()[2]
    assert wrote == read, r.stdout
    v = volume_state(lab, "rep1")
    assert all(x["drbd"]["out_of_sync_kib"] == 0 and x["drbd"]["peer_disk"] == "UpToDate"
               for x in v["replicas"]), v
    run(lab, "volume", "delete", "rep1")
    st = json.loads(run(lab, "volumes", "--json"))
    assert all(x["name"] != "rep1" for x in st["volumes"]) and st["strays"] == [], st


def replication_link(lab: LabContext, cut: bool) -> None:
    """Cut (or heal) the link between the lab's two snodes, and nothing else: their bridge
    ports become isolated (``bridge link set ... isolated on``: isolated ports do not forward
    to each other, but still to every other port).  Between the snodes runs only DRBD; their
    AoE to the hnodes and their HTTP to the config node go on."""
    for node in ("snode1", "snode2"):
        subprocess.run([*lab.exec_prefix(), "bridge", "link", "set", "dev",
                        node_rec(lab, node)["tap"], "isolated", "on" if cut else "off"],
                       check=True)


def test_replication_link_cut_then_healed(lab: LabContext) -> None:
    """Issue 12: only the link between the snodes is cut while a writer runs on a replicated
    volume, then healed.  The primary fences its peer through the config node and goes on (no
    write fails, none is lost); the replica is not promoted (its primary is alive); `hcboot
    volumes` says the replica is outdated; after the heal DRBD resyncs and the mark clears."""
    run(lab, "volume", "create", "repcut", "--size", "128M", "--replicas", "2")
    v = wait_volume(lab, "repcut", in_step_ok, 120)
    assert in_step_ok(v), v
    prim, repl = v["replicas"][0]["snode"], v["replicas"][1]["snode"]
    target = v["target"]
    hn = node_addresses(lab)["hnode1"]
    ssh(lab, hn, f"echo 1 > /dev/etherd/discover; for i in $(seq 60); do "
                 f"[ -b /dev/etherd/{target} ] && break; sleep 1; done")
    with RECWRITER.open("rb") as src:
        writer = subprocess.Popen(lab.ssh_argv(hn, f"python3 - write /dev/etherd/{target} 50"),
                                  stdin=src, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
    try:
        time.sleep(10)
        replication_link(lab, cut=True)
        say(f"link between {prim} and {repl} cut")
        v = wait_volume(lab, "repcut", lambda v: any("outdated" in p for p in v["problems"]),
                        60)
        say(f"cut: {v['problems']}")
        assert v["replicas"][0]["snode"] == prim, v         # no promotion: prim is alive
        assert any(f"on {repl}: outdated" in p for p in v["problems"]), v
        time.sleep(5)
    finally:
        replication_link(lab, cut=False)
    say("replication link healed")
    out, _ = writer.communicate(timeout=600)
    lines = out.splitlines()
    done = json.loads(lines[-1][5:])
    say(f"writer: {done}; stalls: {[ln for ln in lines if ln.startswith('stall ')]}")
    assert done["errors"] == 0, out[-3000:]
    r = subprocess.run(lab.ssh_argv(hn, f"python3 - check /dev/etherd/{target} "
                                        f"{done['records']}"),
                       stdin=RECWRITER.open("rb"), capture_output=True, text=True, timeout=300)
    res = json.loads(r.stdout.strip().splitlines()[-1][5:])
    assert res["intact"] == done["records"], res
    v = wait_volume(lab, "repcut", in_step_ok, 300)
    assert in_step_ok(v) and v["replicas"][0]["snode"] == prim, v
    sums = backing_sums(lab, "repcut", (prim, repl))
    assert sums[prim] == sums[repl], sums
    run(lab, "volume", "delete", "repcut")


def in_step_ok(v: dict[str, Any]) -> bool:
    return v["health"] == "ok" and all(
        (x.get("drbd") or {}).get("connection") == "Connected"
        and (x.get("drbd") or {}).get("peer_disk") == "UpToDate" for x in v["replicas"])


def test_destroy_frees_everything(lab: LabContext) -> None:
    gone = {}
    for name in ("web1", "web2"):
        d = instance_doc(lab, name)
        gone[name] = (d["ip"], d["mac"], d.get("volume"))
        run(lab, "instance", "destroy", name)
    assert json.loads(run(lab, "instance", "list", "--json")) == []
    vols = json.loads(run(lab, "volume", "list", "--json"))
    targets = {v["target"] for v in vols}
    for name, (_, _, vol) in gone.items():
        assert all(v["name"] != vol for v in vols), (name, vol, vols)
    r = subprocess.run([sys.executable, "-m", "homecloud", "aoe", "scan", "--interface",
                        lab.bridge, "--netns", lab.netns, "--json", "--timeout", "3"],
                       capture_output=True, text=True, timeout=120, check=True)
    seen = {f"e{t['shelf']}.{t['slot']}" for t in json.loads(r.stdout)}
    assert seen <= targets | {"e1.0"}, (seen, targets)
    say(f"freed: {gone}")
    # nothing left behind on the snodes that the inventory does not name (exit 1 otherwise)
    say(run(lab, "verify").strip())
    assert json.loads(run(lab, "volumes", "--json"))["strays"] == []

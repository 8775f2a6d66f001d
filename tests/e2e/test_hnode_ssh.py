"""The hnode agent in the real hnode image, reached by the control's SshHostDriver over SSH.

``hcboot lab up`` with one snode and one hnode from the real images (``HC_LAB_IMAGES``, else
the session's ``hcbuild image --all``; tests/support/builds.py).  At boot the hnode makes its
SSH host key and migration key, fetches its trust from hcboot (``GET /trust/<mac>.json``: the
config node's key, made on that first request) and reports both public keys; the config node
then pins the reported host key and asks the agent for the host's facts: Xen 4.17, its memory,
the instance bridge ``xenbr1``.  A session with the config key that asks for anything but the
agent is refused.  Everything runs inside the lab's network namespace (``ip netns exec``).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
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
from tests.support.builds import ensure_built_all


def hcboot(*args: str, timeout: float = 1800,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "homecloud", *args], capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"hcboot {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("HC_LAB_IMAGES")
    path = Path(env) if env else ensure_built_all(tmp_path_factory)[0]
    h = ImageStore(path).manifest("hnode")
    assert h is not None and "rootfs" in h.artifacts, f"{path}: no hnode image with a rootfs"
    return path


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "lab"
    yield d
    hcboot("lab", "down", "--state-dir", str(d), check=False)


def _reported_keys(hcboot_dir: Path, mac: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    facts: dict[str, Any] = {}
    while time.monotonic() < deadline:
        facts = (read_reports(hcboot_dir).get(mac) or {}).get("facts") or {}
        if "ssh_host_key" in facts and "migration_key" in facts:
            return facts
        time.sleep(2)
    raise AssertionError(f"{mac}: no ssh_host_key/migration_key in its report: {facts}")


def test_driver_reaches_the_agent_in_the_real_hnode(lab_dir: Path, store: Path,
                                                    tmp_path: Path) -> None:
    r = hcboot("lab", "up", "--state-dir", str(lab_dir), "--images", str(store), "--no-build",
               "--snodes", "1", "--hnodes", "1", "--timeout", "2400", timeout=2700,
               check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(hcboot("lab", "status", "--json", "--state-dir", str(lab_dir)).stdout)
    hn = next(n for n in doc["nodes"] if n["role"] == "hnode")
    assert hn["state"] == "dom0 up", hn
    hcboot_dir = lab_dir / "hcboot"
    facts = _reported_keys(hcboot_dir, hn["mac"])
    assert facts["ssh_host_key"].startswith("ssh-ed25519 ")
    key = hcboot_dir / "ssh" / "id_ed25519"
    assert key.is_file(), "the trust route did not make the config node's key"
    node = Node(name=hn["node"], role="hnode", nics=(Nic(hn["mac"], ip=hn["address"]),))
    prefix = ["ip", "netns", "exec", doc["netns"]]
    driver = SshHostDriver(key, host_key_from_reports(read_reports(hcboot_dir)),
                           tmp_path / "known", prefix=prefix, connect_timeout=30,
                           action_timeout=300)
    # sshd may still be starting after the report: a few tries
    deadline, last = time.monotonic() + 180, None
    while True:
        try:
            hf = driver.facts(node)
            break
        except HostError as exc:  # retried, then reported
            last = exc
            if time.monotonic() > deadline:
                raise AssertionError(f"facts over SSH never worked: {last}") from None
            time.sleep(5)
    assert hf.xen_version == "4.17", hf
    assert hf.total_memory_mb > 512 and 0 < hf.free_memory_mb <= hf.total_memory_mb, hf
    assert "xenbr1" in hf.bridges, hf
    assert hf.domains == (), hf
    # the config key runs nothing but the agent
    argv = driver.ssh_argv(node, ["id"])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "refused" in out.stdout and "uid=" not in out.stdout, out
    # a changed host key is refused
    other = SshHostDriver(key, lambda n: facts["migration_key"], tmp_path / "known2",
                          prefix=prefix, connect_timeout=30)
    with pytest.raises(HostError, match="Host key verification failed"):
        other.facts(node)


def _admin_ssh(prefix: list[str], key: Path, known: Path, ip: str, command: str,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, "ssh", "-i", str(key), "-l", "root", "-o", "BatchMode=yes",
                           "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
                           "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=30",
                           "-T", ip, command], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_two_hnodes_trust_each_other_for_migration_only(lab_dir: Path, store: Path,
                                                        tmp_path: Path) -> None:
    r = hcboot("lab", "up", "--state-dir", str(lab_dir), "--images", str(store), "--no-build",
               "--snodes", "1", "--hnodes", "2", "--timeout", "2400", timeout=2700,
               check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(hcboot("lab", "status", "--json", "--state-dir", str(lab_dir)).stdout)
    hn1, hn2 = sorted((n for n in doc["nodes"] if n["role"] == "hnode"),
                      key=lambda n: n["node"])
    hcboot_dir, prefix = lab_dir / "hcboot", ["ip", "netns", "exec", doc["netns"]]
    f1, f2 = (_reported_keys(hcboot_dir, n["mac"]) for n in (hn1, hn2))
    # an admin key, configured on the config node after the hnodes booted: the trust timer
    # brings it to them, with the peer that booted later
    admin = tmp_path / "admin"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(admin)],
                   check=True, capture_output=True)
    (hcboot_dir / "admin_keys").write_text(
        admin.with_suffix(".pub").read_text())
    known = tmp_path / "known_hosts"
    known.write_text(f"{hn1['address']} {f1['ssh_host_key']}\n"
                     f"{hn2['address']} {f2['ssh_host_key']}\n")
    deadline, peers = time.monotonic() + 300, None
    while time.monotonic() < deadline:
        peers = _admin_ssh(prefix, admin, known, hn1["address"],
                           "cat /var/lib/hc/hnode/peers_known_hosts")
        if peers.returncode == 0 and f2["ssh_host_key"] in peers.stdout:
            break
        time.sleep(5)
    assert peers is not None and peers.returncode == 0, peers
    assert f"{hn2['address']},{hn2['node']} {f2['ssh_host_key']}" in peers.stdout, peers
    # hn1's migration key on hn2: nothing but xl migrate-receive
    mig = ("ssh -i /var/lib/hc/hnode/migration_key -l root -o BatchMode=yes "
           "-o StrictHostKeyChecking=yes -o UserKnownHostsFile=/var/lib/hc/hnode/peers_known_hosts "
           f"-o IdentitiesOnly=yes {hn2['address']}")
    refused = _admin_ssh(prefix, admin, known, hn1["address"], f"{mig} id; echo rc=$?")
    assert "rc=2" in refused.stdout and "runs only 'xl migrate-receive'" in refused.stderr, \
        refused
    assert "uid=" not in refused.stdout
    # migrate-receive runs the real xl on hn2; with no stream it gives up, in xl's words
    rcv = _admin_ssh(prefix, admin, known, hn1["address"],
                     f"{mig} xl migrate-receive < /dev/null; echo rc=$?")
    assert "migration target" in rcv.stdout + rcv.stderr, rcv
    # the driver reaches both agents
    key = hcboot_dir / "ssh" / "id_ed25519"
    driver = SshHostDriver(key, host_key_from_reports(read_reports(hcboot_dir)),
                           tmp_path / "known", prefix=prefix, connect_timeout=30)
    for n in (hn1, hn2):
        node = Node(name=n["node"], role="hnode", nics=(Nic(n["mac"], ip=n["address"]),))
        assert driver.facts(node).xen_version == "4.17"


GUEST_INIT = """#!/bin/busybox sh
# a guest that stays up and counts: its console shows it keeps running after a migration
/bin/busybox mount -t proc proc /proc
n=0
while true; do
    n=$((n + 1))
    /bin/busybox echo "HC-GUEST-TICK $n"
    /bin/busybox sleep 2
done
"""


def _guest_initrd(tmp: Path) -> Path:
    root = tmp / "groot"
    for d in ("bin", "proc", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")   # static (busybox-static)
    (root / "init").write_text(GUEST_INIT)
    (root / "init").chmod(0o755)
    out = tmp / "guest.img"
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True,
                           check=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files.encode(),
                          capture_output=True, check=True).stdout
    out.write_bytes(gzip.compress(cpio))
    return out


def test_live_migration_of_a_pvh_guest_between_real_hnodes(lab_dir: Path, store: Path,
                                                           tmp_path: Path) -> None:
    """The agent's migrate: real ``xl migrate -s "ssh ..."`` from hn1 to hn2 over the pinned
    migration key into hn2's migrate-gate.  The guest is a disk-less PVH domain (dom0's own
    kernel + a busybox initramfs that counts on its console), started by the admin's shell,
    since its volume (an AoE export) is the volumes' part; what migrates is the same."""
    r = hcboot("lab", "up", "--state-dir", str(lab_dir), "--images", str(store), "--no-build",
               "--snodes", "1", "--hnodes", "2", "--timeout", "2400", timeout=2700,
               check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(hcboot("lab", "status", "--json", "--state-dir", str(lab_dir)).stdout)
    hn1, hn2 = sorted((n for n in doc["nodes"] if n["role"] == "hnode"),
                      key=lambda n: n["node"])
    hcboot_dir, prefix = lab_dir / "hcboot", ["ip", "netns", "exec", doc["netns"]]
    f1, f2 = (_reported_keys(hcboot_dir, n["mac"]) for n in (hn1, hn2))
    admin = tmp_path / "admin"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(admin)],
                   check=True, capture_output=True)
    (hcboot_dir / "admin_keys").write_text(admin.with_suffix(".pub").read_text())
    known = tmp_path / "known_hosts"
    known.write_text(f"{hn1['address']} {f1['ssh_host_key']}\n"
                     f"{hn2['address']} {f2['ssh_host_key']}\n")

    def sh(n: dict[str, Any], cmd: str, stdin: bytes | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*prefix, "ssh", "-i", str(admin), "-l", "root", "-o",
                               "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                               "-o", "StrictHostKeyChecking=yes",
                               "-o", f"UserKnownHostsFile={known}", "-T", n["address"], cmd],
                              input=stdin or b"", capture_output=True, timeout=timeout)

    # both hnodes know each other (trust timer) and take the admin key
    deadline = time.monotonic() + 300
    while True:
        ok = [sh(a, "cat /var/lib/hc/hnode/peers_known_hosts") for a in (hn1, hn2)]
        if all(p.returncode == 0 for p in ok) and f2["ssh_host_key"].encode() in ok[0].stdout \
                and f1["ssh_host_key"].encode() in ok[1].stdout:
            break
        assert time.monotonic() < deadline, f"no mutual trust: {ok}"
        time.sleep(5)
    img = _guest_initrd(tmp_path)
    assert sh(hn1, "cat > /run/hc-guest.img", stdin=img.read_bytes()).returncode == 0
    cfg = ('name = "mig1"\ntype = "pvh"\nkernel = "KERNEL"\nramdisk = "/run/hc-guest.img"\n'
           'extra = "console=hvc0"\nmemory = 96\nvcpus = 1\ntsc_mode = "native"\n'
           'on_crash = "destroy"\n')
    create = sh(hn1, f"k=$(ls /boot/vmlinuz-* | tail -n 1); "
                     f"printf '%s' '{cfg}' | sed \"s|KERNEL|$k|\" > /run/mig1.cfg && "
                     "/usr/lib/xen-4.17/bin/xl create /run/mig1.cfg", timeout=600)
    assert create.returncode == 0, create
    # xenconsoled names the log by the name it first sees (mig1--incoming on the target)
    log = "/var/log/xen/console/guest-mig1*.log"
    deadline = time.monotonic() + 600
    while b"HC-GUEST-TICK 3" not in sh(hn1, f"cat {log}").stdout:
        assert time.monotonic() < deadline, sh(hn1, f"cat {log}; xl list").stdout[-2000:]
        time.sleep(5)

    key = hcboot_dir / "ssh" / "id_ed25519"
    driver = SshHostDriver(key, host_key_from_reports(read_reports(hcboot_dir)),
                           tmp_path / "known", prefix=prefix, connect_timeout=30,
                           action_timeout=1200)
    node = {n["node"]: Node(name=n["node"], role="hnode",
                            nics=(Nic(n["mac"], ip=n["address"]),)) for n in (hn1, hn2)}
    steps: list[str] = []
    res = driver.migrate(node[hn1["node"]], "mig1", node[hn2["node"]], steps.append)
    print(f"migration of a 96 MB PVH guest between two TCG hnodes: {res.seconds:.1f} s; "
          f"log tail: {res.log_tail}")
    assert res.seconds > 0 and (res.source, res.target) == (hn1["node"], hn2["node"])
    on1 = {d.name for d in driver.facts(node[hn1["node"]]).domains}
    on2 = {d.name: d for d in driver.facts(node[hn2["node"]]).domains}
    assert "mig1" not in on1 and "mig1--migratedaway" not in on1, on1
    assert "mig1" in on2, on2
    # the guest kept running on hn2: its console counts on
    first = sh(hn2, f"cat {log}").stdout.count(b"HC-GUEST-TICK")
    deadline = time.monotonic() + 120
    while sh(hn2, f"cat {log}").stdout.count(b"HC-GUEST-TICK") <= first:
        assert time.monotonic() < deadline, sh(hn2, f"cat {log}").stdout[-1000:]
        time.sleep(3)
    driver.destroy(node[hn2["node"]], "mig1", steps.append)
    driver.cleanup(node[hn1["node"]], "mig1", steps.append)
    assert "mig1" not in {d.name for d in driver.facts(node[hn2["node"]]).domains}

"""Issue 11's "Done when", in one lab session: instances from the domu template on real snodes
(LVM thin clones exported over AoE) and real Xen hnodes (PVH guests via pvgrub2, NoCloud
seed), reached on the instance network from the config node, live-migrated while pinged.

``hcboot lab up`` (2 snodes, 2 hnodes) from ``HC_LAB_IMAGES`` (must hold snode, hnode, domu),
else the session's ``hcbuild image --all`` (tests/support/builds.py).  The test functions are
the steps in order and share the lab (module-scoped); each prints its duration.  Every command
talks to the nodes inside the lab's network namespace; no timing asserts (the numbers are
printed: the migration's ping gap and lost pings).

Status (10:30 UTC, 2026-12-04, by hand with the same commands in a 2+2 lab): lab up 593 s,
template import 248 s, instance create 76 s (clone e10.0 on snode1, xl create on hnode1), the
guest boots via pvgrub2 with its seed (cloud-init done at 295 s of guest uptime, hostname web1)
but sent no frame on the instance bridge hcbr1 in 15 s of listening: no DHCP, no ping yet.
The module as a whole has not passed yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from homecloud.control.contracts import HostError
from homecloud.control.hosts import SshHostDriver, host_key_from_reports
from homecloud.control.reports import read_reports
from homecloud.core.manifest import ImageStore
from homecloud.core.model import Nic, Node
from homecloud.lab.context import LabContext, read_context
from homecloud.lab.demo import USER_DATA, hcboot, instance_doc, migrate_pinged, wait_ping
from tests.support.builds import ensure_built_all

T0 = time.monotonic()

# Not yet passing (the guest sends nothing on the instance bridge; see the docstring and issue
# 11): opt in with HC_E2E_INSTANCES=1 until it does; tests/skips_allowed.txt says why CI skips it.
pytestmark = pytest.mark.skipif(not os.environ.get("HC_E2E_INSTANCES"),
                                reason="issue 11: the instance network does not reach the guest"
                                " yet; HC_E2E_INSTANCES=1 runs it")


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {text}", flush=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("HC_LAB_IMAGES")
    path = Path(env) if env else ensure_built_all(tmp_path_factory)[0]
    for role in ("snode", "hnode", "domu"):
        m = ImageStore(path).manifest(role)
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
    run(lab, "instance", "create", "web1", "--template", "domu", "--user-data", str(user_data),
        "--ssh-key", lab.ssh_key + ".pub")
    doc = instance_doc(lab, "web1")
    assert doc["state"] == "running", doc
    ip = str(doc["ip"])
    assert str(doc["mac"]).startswith("0a:48:43:"), doc
    say(f"web1 answers ping after {wait_ping(lab, ip, 900):.1f} s")
    assert wait_ssh(lab, ip) == "web1"


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
    doc = instance_doc(lab, "web1")
    src, ip = str(doc["host"]), str(doc["ip"])
    stats = migrate_pinged(lab, "web1", ip, None, say)
    say(f"MIGRATION BACK {src} -> {instance_doc(lab, 'web1')['host']}: {stats.line()}")
    assert instance_doc(lab, "web1")["host"] == other(lab, src)
    assert ssh(lab, ip, "cat /root/marker").strip() == "written-before-migration"


def test_second_instance_and_drain(lab: LabContext, user_data: Path) -> None:
    host1 = str(instance_doc(lab, "web1")["host"])
    run(lab, "instance", "create", "web2", "--template", "domu", "--user-data", str(user_data),
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


def test_guest_cannot_reach_the_storage_network(lab: LabContext) -> None:
    ip = str(instance_doc(lab, "web1")["ip"])
    # one NIC only (the instance network); the snodes' addresses and the config node's
    # storage-side address do not answer, and no AoE device exists in the guest
    links = ssh(lab, ip, "ls /sys/class/net").split()
    assert sorted(links) == ["eth0", "lo"] or len([x for x in links if x != "lo"]) == 1, links
    out = ssh(lab, ip, "for a in 198.51.100.1 198.51.100.11 198.51.100.12; do "
              "ping -c 1 -W 2 $a >/dev/null 2>&1 && echo reached $a; done; "
              "ls /dev/etherd 2>/dev/null; true")
    assert "reached" not in out and out.strip() == "", out


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


def test_stop_and_start_on_the_other_hnode(lab: LabContext) -> None:
    doc = instance_doc(lab, "web1")
    host, ip = str(doc["host"]), str(doc["ip"])
    run(lab, "instance", "stop", "web1")
    assert instance_doc(lab, "web1")["state"] == "stopped"
    run(lab, "instance", "start", "web1", "--on", other(lab, host))
    assert instance_doc(lab, "web1")["host"] == other(lab, host)
    wait_ping(lab, ip, 900)
    wait_ssh(lab, ip)
    assert ssh(lab, ip, "cat /root/marker").strip() == "written-before-migration"


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

"""The storage-node agent (homecloud.agents.storage, run by its launcher from
elements/hc-aoe-target) against the real ``hcboot serve`` and real
vblade, checked with real AoE (homecloud.aoe), all inside namespaces made here.

Topology (one Lab per module)::

    ns srv: br0 192.0.2.1/24, hcboot serve (HTTP: plans, images, reports)
      +-- ns sn (eth0, 192.0.2.10): the agent, as the snode image would run it; its vblades
      +-- ns c  (c0): an hnode stand-in (AoE initiator, consumer once assigned)
      +-- ns d  (d0): a second initiator, assigned later

The agent's disks are loop devices over sparse files (``HC_DISKS=/dev/loopN``): a real mkfs.ext4
and mount, inside the private mount namespace ``ip netns exec`` gives the agent (gone with it).
The kernel command line is a file (``HC_CMDLINE``) holding what ``hcboot serve`` would put there.
Every process is stopped by PID (Lab), every loop device detached, every namespace removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from homecloud.agents.protocol import parse_plan
from homecloud.agents.storage import READY_PREFIX
from homecloud.aoe.cli import aoe
from homecloud.aoe.io import AoESocket
from homecloud.aoe.scan import ScanTarget, scan
from homecloud.core.ids import Target
from homecloud.core.manifest import BootInfo
from homecloud.core.model import Export, ImageExport, VolumeExport
from tests.support.agents import agent_env, storage_agent_argv
from tests.support.hcboot import Served, start_hcboot
from tests.support.images import publish
from tests.support.netns import Lab, Netns, sh

pytestmark = pytest.mark.skipif(shutil.which("vblade") is None, reason="vblade not installed")

SERVER = "192.0.2.1"
SNODE_IP = "192.0.2.10/24"
IMAGE_MIB = 16


@dataclass
class Env:
    lab: Lab
    srv: Served
    sn: Netns
    c: Netns
    d: Netns
    mac_sn: str
    mac_c: str
    mac_d: str
    tmp: Path
    image: Path
    sha: str
    loops: list[str]
    agent: subprocess.Popen[bytes] | None = None
    agent_log: Path | None = None
    run: Path | None = None

    def log(self) -> str:
        return self.agent_log.read_text(errors="replace") if self.agent_log else ""

    def start_agent(self, tag: str, disks: str, **env: str) -> None:
        self.agent_log = self.tmp / f"agent-{tag}.log"
        self.run = self.tmp / f"run-{tag}"
        cmdline = self.tmp / f"cmdline-{tag}"
        cmdline.write_text(f"console=ttyS0 BOOTIF=01-{self.mac_sn.replace(':', '-')} "
                           f"hc.mac={self.mac_sn} hc.role=snode hc.server=http://{SERVER}\n")
        store = self.tmp / f"store-{tag}"
        store.mkdir(exist_ok=True)
        self.agent = self.lab.popen(
            storage_agent_argv(), ns=self.sn, log=self.agent_log,
            env={**agent_env(), "HC_CMDLINE": str(cmdline), "HC_DISKS": disks,
                 "HC_STORE": str(store), "HC_RUN": str(self.run), "HC_POLL": "1",
                 "HC_CONSOLE": "none", **env})

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.lab.stop(self.agent, timeout=15)
            self.agent = None

    def wait(self, pred: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            if self.agent is not None and self.agent.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n--- agent log\n{self.log()}\n"
                             f"--- hcboot log (tail)\n{self.srv.log_text()[-3000:]}")

    def scan(self, which: str = "c") -> dict[str, ScanTarget]:
        ns, ifname = (self.c, "c0") if which == "c" else (self.d, "d0")
        with AoESocket(ifname, netns=ns.name) as sock:
            return {str(t.target): t for t in scan(sock, timeout=0.4)}

    def set_exports(self, *exports: Export) -> None:
        self.srv.set_exports(*exports)

    def vblade_pid(self, target: str) -> int:
        assert self.run is not None
        return int((self.run / "exports" / f"{target}.pid").read_text())


E10 = ImageExport(Target(1, 0), mode="ro", role="hnode", artifact="rootfs", consumers=("hnode",))
E11 = VolumeExport(Target(1, 1), mode="rw", name="scratch", size=8 << 20, consumers=("hnode",))


def _loop(path: Path, mib: int) -> str:
    with open(path, "wb") as f:
        f.truncate(mib << 20)
    return sh("losetup", "--find", "--show", str(path)).stdout.strip()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("agent")
    image = tmp / "rootfs.img"
    image.write_bytes(os.urandom(IMAGE_MIB << 20))
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    images = tmp / "images"
    publish(images, "hnode", {"rootfs": image, "kernel": b"not a kernel"},
            BootInfo(kind="linux", root="aoe"))
    loops: list[str] = []
    with Lab() as lab:
        try:
            srv_ns, sn, c, d = (lab.netns(n) for n in ("srv", "sn", "c", "d"))
            lab.bridge(srv_ns, "br0", f"{SERVER}/24")
            lab.port(srv_ns, "br0", sn, "eth0")
            lab.port(srv_ns, "br0", c, "c0")
            lab.port(srv_ns, "br0", d, "d0")
            lab.addr(sn, "eth0", SNODE_IP)
            state = tmp / "state"
            srv = start_hcboot(lab, srv_ns, "br0", SERVER, state, images, mode="proxy")
            mac_sn = sn.mac("eth0")
            srv.cli("assign", mac_sn, "snode", "--hostname", "sn1")
            for n in range(3):
                loops.append(_loop(tmp / f"disk{n}.img", 64))
            e = Env(lab, srv, sn, c, d, mac_sn, c.mac("c0"), d.mac("d0"), tmp, image, sha,
                    loops)
            e.set_exports(E10)
            plan_url = f"http://{SERVER}/plan/{mac_sn}.json"

            def planned() -> bool:
                r = sn.run("curl", "-sf", plan_url, check=False)
                return r.returncode == 0 and [
                    (str(x.target), x.mode, x.kind, x.size)
                    for x in parse_plan(r.stdout).exports] == [("e1.0", "ro", "image",
                                                                IMAGE_MIB << 20)]

            e.wait(planned, "the export in the served plan")
            yield e
            e.stop_agent()
        finally:
            lab.close()
            for dev in loops:
                sh("losetup", "-d", dev, check=False)


def test_agent_waits_for_a_consumer_then_serves_the_image(env: Env) -> None:
    t0 = time.monotonic()
    env.start_agent("main", env.loops[0])
    env.wait(lambda: READY_PREFIX + "none" in env.log(), "first plan applied")
    assert f"storage: new store on {env.loops[0]} mounted" in env.log()
    assert "export e1.0: no consumer assigned yet: not served" in env.log()
    assert env.scan() == {}

    env.srv.cli("assign", env.mac_c, "hnode", "--hostname", "hn1")  # while everything runs
    env.wait(lambda: READY_PREFIX + "e1.0" in env.log(), "exports ready e1.0")
    ready_s = time.monotonic() - t0
    found = env.scan()
    assert list(found) == ["e1.0"]
    t = found["e1.0"]
    assert t.macs == [env.mac_sn]
    assert t.size_bytes == IMAGE_MIB << 20
    r = CliRunner().invoke(aoe, ["scan", "-i", "c0", "--netns", env.c.name, "--json",
                                 "--timeout", "0.5"])                 # `hcboot aoe scan`
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert [(d["target"], d["size_bytes"], d["macs"]) for d in doc] == [
        ("e1.0", IMAGE_MIB << 20, [env.mac_sn])]
    # every byte served over AoE is the published image
    r = CliRunner().invoke(aoe, ["verify", "-i", "c0", "--netns", env.c.name, "--target",
                                 "e1.0", "--role", "hnode", "--images", str(env.srv.images),
                                 "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["ok"] and doc["sha256"] == env.sha
    # the allow-list: the unassigned initiator sees nothing
    assert env.scan("d") == {}
    # the report reached the boot server
    def reported() -> bool:
        nodes = json.loads(env.srv.cli("nodes", "--json"))
        rep = next((n["report"] or {} for n in nodes if n["mac"] == env.mac_sn), {})
        return bool(rep.get("state") == "exports-ready" and rep.get("detail") == "e1.0")

    env.wait(reported, "the exports-ready report on the boot server")
    print(f"\nagent: store made, image downloaded, e1.0 served {ready_s:.1f}s after start")


def test_changed_plan_is_applied_without_restart(env: Env) -> None:
    agent_pid = env.agent.pid if env.agent else 0
    e10_pid = env.vblade_pid("e1.0")
    env.set_exports(E10, E11)                          # a new rw volume
    env.wait(lambda: READY_PREFIX + "e1.0,e1.1" in env.log(), "e1.1 added")
    assert env.vblade_pid("e1.0") == e10_pid           # untouched
    found = env.scan()
    assert sorted(found) == ["e1.0", "e1.1"] and found["e1.1"].size_bytes == 8 << 20
    assert env.scan("d") == {}

    env.srv.cli("assign", env.mac_d, "hnode")          # a second consumer: allow-lists change
    env.wait(lambda: sorted(env.scan("d")) == ["e1.0", "e1.1"], "d allowed")
    assert env.vblade_pid("e1.0") != e10_pid           # restarted with the new -m
    assert sorted(env.scan()) == ["e1.0", "e1.1"]
    assert env.agent is not None and env.agent.pid == agent_pid and env.agent.poll() is None
    assert env.log().count("agent 1: server") == 1


def test_killed_vblade_is_restarted(env: Env) -> None:
    old = env.vblade_pid("e1.0")
    os.kill(old, 9)
    env.wait(lambda: (env.run is not None and (env.run / "exports/e1.0.pid").exists()
                      and env.vblade_pid("e1.0") != old), "a new vblade for e1.0")
    env.wait(lambda: "e1.0" in env.scan(), "e1.0 answering again")
    assert "exited with status" in env.log()


def test_removed_export_is_stopped(env: Env) -> None:
    pid = env.vblade_pid("e1.1")
    env.set_exports(E10)
    env.wait(lambda: sorted(env.scan()) == ["e1.0"], "e1.1 gone")
    assert not Path(f"/proc/{pid}").exists()
    assert "export e1.1: no longer in the plan" in env.log()


def test_restart_reuses_the_store_and_the_image(env: Env) -> None:
    env.stop_agent()
    env.wait(lambda: env.scan() == {}, "vblades stopped with the agent")
    env.start_agent("again", env.loops[0])
    env.wait(lambda: READY_PREFIX + "e1.0" in env.log(), "ready after restart")
    log = env.log()
    assert f"storage: reusing {env.loops[0]} (label hc-store)" in log
    assert f"image {env.sha}: present, sha256 ok (not downloaded)" in log
    assert "downloading" not in log
    r = CliRunner().invoke(aoe, ["verify", "-i", "c0", "--netns", env.c.name, "--target",
                                 "e1.0", "--role", "hnode", "--images", str(env.srv.images)])
    assert r.exit_code == 0, r.output
    env.stop_agent()


def test_two_empty_disks_make_a_raid1_or_fall_back_to_one(env: Env) -> None:
    """RAID1 needs the md driver: the host kernel here has none (no /proc/mdstat), so the agent
    must fall back to one disk and say so; with md it builds the array (VM test)."""
    disks = f"{env.loops[1]},{env.loops[2]}"
    env.start_agent("raid", disks)
    env.wait(lambda: READY_PREFIX + "e1.0" in env.log(), "ready on two disks")
    log = env.log()
    if Path("/proc/mdstat").exists() and shutil.which("mdadm"):
        assert "storage: creating RAID1" in log and "new store on /dev/md" in log
    else:
        assert "storage: creating RAID1" in log or "no mdadm" in log
        assert f"single disk {env.loops[1]}" in log
        assert f"new store on {env.loops[1]} mounted" in log
    assert "e1.0" in env.scan()
    env.stop_agent()

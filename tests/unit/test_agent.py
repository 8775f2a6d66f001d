"""The storage agent (homecloud.agents.storage): its decisions without processes (reconcile,
local store choice, vblade command lines), its element, and the real agent process end to end
without root or network.

The process tests run the real agent (its launcher, this interpreter): the boot server is a
``file://`` tree (urllib reads plans and images from it), ``vblade`` is a stand-in that records
its arguments and sleeps (the real one needs raw sockets: tests/integration/test_storage_agent.py
runs it), and the store is a plain directory (``HC_DISKS=none``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builder.elements import ElementLibrary, lint_element
from homecloud.agents import disks as D
from homecloud.agents import reconcile as R
from homecloud.agents.common import (
    AgentError,
    Backoff,
    CommandError,
    Reporter,
    cmdline_args,
    run,
)
from homecloud.agents.protocol import (
    Deletion,
    ImageExport,
    Plan,
    Report,
    TemplateSpec,
    VolumeExport,
    make_report,
    plan_json,
)
from homecloud.agents.storage import (
    READY_PREFIX,
    USAGE,
    Config,
    images_only,
    kernel_named,
    udev_pending,
)
from homecloud.core.ids import Target
from tests.support.agents import STORAGE_LAUNCHER, agent_env, storage_agent_argv

MAC = "52:54:00:5a:00:01"
HNODE = "52:54:00:4b:00:01"
HNODE2 = "52:54:00:4b:00:02"
SHA = "ab" * 32


def img(t: str, sha: str = SHA, allow: tuple[str, ...] = (HNODE,), mode: str = "ro",
        url: str = "http://192.0.2.1/images/hnode/b1/rootfs", size: int = 4096) -> ImageExport:
    return ImageExport(target=Target.parse(t), mode=mode,  # type: ignore[arg-type]
                       allow=allow, role="hnode", build="b1", size=size, sha256=sha, url=url)


def vol(t: str, name: str = "inst1", allow: tuple[str, ...] = (HNODE,),
        size: int = 8 << 20) -> VolumeExport:
    return VolumeExport(target=Target.parse(t), mode="rw", allow=allow, name=name, size=size)


# ---------------------------------------------------------------- the reconciler (pure)


def test_reconcile_starts_keeps_replaces_and_stops() -> None:
    e10, e11, e20 = img("e1.0"), img("e1.1", allow=()), vol("e2.0")
    assert R.reconcile(Plan(MAC, (e10, e11, e20)), {}) == [
        R.Start(e10), R.Unassigned(e11.target), R.Start(e20)]
    running = {e10.target: e10, e20.target: e20}
    assert R.reconcile(Plan(MAC, (e10, e11, e20)), running) == [
        R.Keep(e10), R.Unassigned(e11.target), R.Keep(e20)]
    # a new allow-list, a new image build: that export is replaced, the other kept
    e10b = img("e1.0", allow=(HNODE, HNODE2))
    e20b = vol("e2.0", size=16 << 20)
    assert R.reconcile(Plan(MAC, (e10b, e20)), running) == [R.Replace(e10, e10b), R.Keep(e20)]
    assert R.reconcile(Plan(MAC, (e10, e20b)), running) == [R.Keep(e10), R.Replace(e20, e20b)]
    # removed, or left without a consumer: stopped
    assert R.reconcile(Plan(MAC, (e10,)), running) == [
        R.Keep(e10), R.Stop(e20.target, "no longer in the plan")]
    assert R.reconcile(Plan(MAC, (img("e1.0", allow=()),)), {e10.target: e10}) == [
        R.Unassigned(e10.target), R.Stop(e10.target, "no longer in the plan")]
    assert R.reconcile(Plan(MAC), running) == [
        R.Stop(e10.target, "no longer in the plan"), R.Stop(e20.target, "no longer in the plan")]


def test_vblade_argv_read_only_and_durable_writes() -> None:
    assert R.vblade_argv("vblade", img("e1.0", allow=(HNODE, HNODE2)), "eth0", "/srv/x.img") == [
        "vblade", "-r", "-m", f"{HNODE},{HNODE2}", "1", "0", "eth0", "/srv/x.img"]
    # rw: O_SYNC, so an acknowledged write is on disk (vblade ignores FLUSH otherwise)
    assert R.vblade_argv("/usr/sbin/vblade", vol("e2.3"), "eth1", "/v") == [
        "/usr/sbin/vblade", "-s", "-m", HNODE, "2", "3", "eth1", "/v"]


def test_images_in_use_and_served_order() -> None:
    assert R.images_in_use([img("e1.0"), img("e1.1", sha="cd" * 32), vol("e2.0")]) == {
        SHA, "cd" * 32}
    plan = Plan(MAC, (img("e1.1"), img("e1.0")))
    assert R.served_list(plan, [Target(1, 0), Target(1, 1), Target(9, 9)]) == [
        Target(1, 1), Target(1, 0), Target(9, 9)]


def test_backoff_doubles_to_the_cap_and_resets_after_a_long_run() -> None:
    b = Backoff(cap=30)
    assert [b.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    b.ran_for(29)
    assert b.next() == 30
    b.ran_for(30)
    assert b.next() == 1


# ---------------------------------------------------------------- the local store (pure)


def test_a_report_that_did_not_arrive_is_sent_again_until_it_does() -> None:
    now = [0.0]
    sent: list[str] = []
    log: list[str] = []
    down = [True]

    def post(r: Report) -> None:
        if down[0]:
            raise AgentError("POST http://192.0.2.1/report/x: timed out")
        sent.append(r.state)

    rep = Reporter(post, log.append, every=300, clock=lambda: now[0])
    assert rep.again()                     # nothing to send yet
    assert not rep.send(make_report(MAC, "exports-ready"))
    assert not rep.again() and not rep.again()
    assert log == ["warning: report exports-ready: POST http://192.0.2.1/report/x: timed out "
                   "(sent again at each poll until it arrives)"]     # said once, not per poll
    down[0] = False
    assert rep.again() and sent == ["exports-ready"]
    assert log[-1] == "report exports-ready: delivered after 3 failed POST(s)"
    now[0] = 299.0
    assert rep.again() and sent == ["exports-ready"]     # delivered and fresh: not again
    now[0] = 300.0
    assert rep.again() and sent == ["exports-ready"] * 2   # the heartbeat
    assert rep.send(make_report(MAC, "exports-error", "e10.0: boom"))
    assert sent[-1] == "exports-error" and len(log) == 2


def test_raid1_create_argv_and_assume_clean(tmp_path: Path) -> None:
    members = ("/dev/sda", "/dev/sdb")
    argv = D.md_create_argv("/dev/md/hc-store", "hc-store", members)
    assert argv[:3] == ["mdadm", "--create", "/dev/md/hc-store"] and argv[-2:] == list(members)
    assert "--bitmap=internal" in argv and "--level=1" in argv and "--raid-devices=2" in argv
    assert "--assume-clean" not in argv
    clean = D.md_create_argv("/dev/md/hc-store", "hc-store", members, assume_clean=True)
    assert sorted(clean) == sorted([*argv, "--assume-clean"])
    assert clean.index("--assume-clean") < clean.index("/dev/sda")   # an option, not a member
    # the storage agent's setting: hc.md_assume_clean=1 on the command line (the lab's
    # snodes: their disks are new sparse files), or HC_MD_ASSUME_CLEAN (wins); off by default
    cl = tmp_path / "cmdline"
    for line, env, want in (("hc.mac=x", {}, False), ("hc.md_assume_clean=1", {}, True),
                            ("hc.md_assume_clean=1", {"HC_MD_ASSUME_CLEAN": "no"}, False),
                            ("hc.mac=x", {"HC_MD_ASSUME_CLEAN": "yes"}, True)):
        cl.write_text(line + "\n")
        assert Config.from_env({"HC_CMDLINE": str(cl), **env}).md_assume_clean is want, line
    cl.write_text("hc.md_assume_clean=maybe\n")
    with pytest.raises(AgentError, match="HC_MD_ASSUME_CLEAN=maybe"):
        Config.from_env({"HC_CMDLINE": str(cl)})


def test_store_choice() -> None:
    L = "hc-store"
    a, b, c = "/dev/vdb", "/dev/vdc", "/dev/vdd"
    assert D.choose([D.Disk(a, empty=True), D.Disk(b, empty=True)], L, True) == \
        D.Choice("raid1", members=(a, b))
    one = D.choose([D.Disk(a, empty=True), D.Disk(b, empty=True)], L, False)
    assert one.how == "single" and one.dev == a and "no mdadm: single disk /dev/vdb" in one.skipped
    assert D.choose([D.Disk(a, holder_md="/dev/md127", in_use=True), D.Disk(b)], L, True) == \
        D.Choice("reuse", dev="/dev/md127")
    assert D.choose([D.Disk(a, md_member=True), D.Disk(b, md_member=True)], L, True) == \
        D.Choice("assemble", members=(a, b))
    assert D.choose([D.Disk(a, label="other"), D.Disk(b, label=L)], L, True) == \
        D.Choice("reuse", dev=b)
    # data is never touched; a disk in use is skipped
    c1 = D.choose([D.Disk(a, label="data"), D.Disk(b, in_use=True, empty=True),
                   D.Disk(c, empty=True)], L, True)
    assert c1.how == "single" and c1.dev == c
    assert c1.skipped == ("/dev/vdb not empty: skipped", "/dev/vdc is in use: skipped")
    fail = D.choose([D.Disk(a, label="data")], L, True)
    assert fail.how == "fail" and "never touched" in fail.reason
    assert D.choose([], L, True).how == "fail"


def test_store_looks_at_what_a_disk_holds(tmp_path: Path) -> None:
    """Real file systems made by mkfs.ext4 (on plain files: no root needed)."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 not installed")
    empty = tmp_path / "empty"
    empty.write_bytes(bytes(1 << 20))
    fs = tmp_path / "fs"
    fs.write_bytes(bytes(8 << 20))
    run(["mkfs.ext4", "-q", "-F", "-L", "hc-store", str(fs)])
    md = tmp_path / "md"
    md.write_bytes(bytes(D.MD_MAGIC_OFF) + D.MD_MAGIC + bytes(1 << 16))
    assert D.look(str(empty)).empty and D.look(str(empty)).label == ""
    got = D.look(str(fs))
    assert got.label == "hc-store" and not got.empty and not got.md_member
    assert D.look(str(md)).md_member
    assert not D.look(str(tmp_path / "absent")).readable


def test_command_failure_names_the_command_exit_code_and_tail() -> None:
    with pytest.raises(CommandError) as ei:
        run(["sh", "-c", "echo one; echo two >&2; exit 3", "x y"])
    msg = str(ei.value)
    assert msg.startswith("sh -c 'echo one; echo two >&2; exit 3' 'x y': exit code 3: ")
    assert "one | two" in msg and ei.value.code == 3
    with pytest.raises(CommandError, match="no-such-tool-here --x: exit code 127: "):
        run(["no-such-tool-here", "--x"])


def test_config_from_the_command_line_and_the_environment(tmp_path: Path) -> None:
    cl = tmp_path / "cmdline"
    cl.write_text("console=ttyS0 BOOTIF=01-52-54-00-5a-00-01 hc.server=http://192.0.2.1/ "
                  "hc.mac=52:54:00:5a:00:01 hc.iface=eth1 hc.server=http://ignored\n")
    assert cmdline_args(cl)["hc.server"] == "http://192.0.2.1/"
    c = Config.from_env({"HC_CMDLINE": str(cl)})
    assert (c.server, c.mac, c.iface, c.bootif) == (
        "http://192.0.2.1", MAC, "eth1", "01-52-54-00-5a-00-01")
    assert (c.disks, c.store, c.poll, c.run, c.backoff_max) == (
        "auto", "/srv/hc", None, "/run/hc-storage", 30)
    c = Config.from_env({"HC_CMDLINE": str(cl), "HC_SERVER": "http://198.51.100.7:8080",
                         "HC_POLL": "2", "HC_DISKS": "/dev/vdb,/dev/vdc"})
    assert (c.server, c.poll, D.disk_list(c.disks)) == (
        "http://198.51.100.7:8080", 2, ["/dev/vdb", "/dev/vdc"])


def test_help_documents_every_setting() -> None:
    text = (Path(__file__).parents[2] / "homecloud" / "agents" / "storage.py").read_text()
    readme = (ElementLibrary().get("hc-aoe-target").path / "README.md").read_text()
    settings = sorted(set(re.findall(r'"(HC_[A-Z_]+)"', text)))
    assert {"HC_DISKS", "HC_POLL", "HC_SERVER", "HC_CMDLINE", "HC_DL_TIMEOUT"} <= set(settings)
    for var in settings:
        assert var in USAGE, var
        assert var in readme, var
    r = subprocess.run([*storage_agent_argv(), "--help"], capture_output=True, text=True,
                       env={**os.environ, **agent_env()}, timeout=30)
    assert r.returncode == 0 and r.stdout == USAGE
    r = subprocess.run([*storage_agent_argv(), "--bogus"], capture_output=True, text=True,
                       env={**os.environ, **agent_env()}, timeout=30)
    assert r.returncode == 2


def test_elements_install_the_python_agents() -> None:
    lib = ElementLibrary()
    for name in ("hc-agents-python", "hc-aoe-target", "hc-node-report"):
        assert lint_element(lib.get(name)) == [], name
    py = lib.get("hc-agents-python")
    assert {"python3-minimal", "libpython3-stdlib"} <= set(py.packages)
    aoe = lib.get("hc-aoe-target")
    assert "hc-agents-python" in aoe.deps and "hc-agents-python" in lib.get("hc-node-report").deps
    assert {"vblade", "mdadm", "e2fsprogs"} <= set(aoe.packages)
    launcher = STORAGE_LAUNCHER.read_text()
    assert launcher.startswith("#!/usr/bin/python3 -I\n")
    assert "from homecloud.agents.storage import main" in launcher
    unit = (aoe.path / "static/etc/systemd/system/hc-storage-agent.service").read_text()
    assert "ExecStart=/usr/local/sbin/hc-storage-agent" in unit
    assert "Restart=always" in unit and "RestartPreventExitStatus=2" in unit
    report = (lib.get("hc-node-report").path / "install.d" / "60-hc-node-report").read_text()
    assert "from homecloud.agents.report import main" in report


# ---------------------------------------------------------------- the agent process


FAKE_VBLADE = """#!/bin/sh
# stand-in for vblade (the real one needs raw sockets): records its pid and arguments
echo "$$ $*" >> "{log}"
if [ -e "{crash}" ]; then rm -f "{crash}"; exit 3; fi
exec sleep 1000
"""


class Agent:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.server = tmp / "server"
        (self.server / "plan").mkdir(parents=True)
        (self.server / "images").mkdir()
        self.store = tmp / "store"
        self.run = tmp / "run"
        self.vlog = tmp / "vblade.calls"
        self.crash = tmp / "vblade.crash"
        fake = tmp / "vblade"
        fake.write_text(FAKE_VBLADE.format(log=self.vlog, crash=self.crash))
        fake.chmod(0o755)
        self.cmdline = tmp / "cmdline"
        self.cmdline.write_text(f"console=ttyS0 hc.server=file://{self.server} hc.mac={MAC} "
                                "hc.role=snode\n")
        self.out = tmp / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def image(self, name: str, data: bytes) -> tuple[str, int, str]:
        p = self.server / "images" / name
        p.write_bytes(data)
        return hashlib.sha256(data).hexdigest(), len(data), f"file://{p}"

    def plan(self, *exports: ImageExport | VolumeExport) -> None:
        tmp = self.server / "plan" / ".new"
        tmp.write_text(plan_json(Plan(MAC, tuple(exports))))
        os.replace(tmp, self.server / "plan" / f"{MAC}.json")

    def start(self, **env: str) -> None:
        e = {**os.environ, **agent_env(), "PATH": f"{self.tmp}:{os.environ['PATH']}",
             "HC_CMDLINE": str(self.cmdline), "HC_IFACE": "lo", "HC_DISKS": "none",
             "HC_STORE": str(self.store), "HC_RUN": str(self.run), "HC_POLL": "1",
             "HC_CONSOLE": "none", "HC_BACKOFF_MAX": "1", **env}
        with open(self.out, "ab") as f:
            self.proc = subprocess.Popen(storage_agent_argv(), stdout=f,
                                         stderr=subprocess.STDOUT, env=e, start_new_session=True)

    def log(self) -> str:
        return self.out.read_text(errors="replace")

    def calls(self) -> list[tuple[int, str]]:
        if not self.vlog.exists():
            return []
        out = []
        for line in self.vlog.read_text().splitlines():
            pid, _, args = line.partition(" ")
            out.append((int(pid), args))
        return out

    def running(self) -> dict[str, str]:
        """target -> vblade args, for the stand-ins alive now."""
        return {_target(args): args for pid, args in self.calls() if _alive(pid)}

    def wait(self, pred: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n--- agent log\n{self.log()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill_group(self) -> None:
        """Whatever is left (a failed test): the agent's session, by its PID."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        for pid, _ in self.calls():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(") ")[2][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _target(args: str) -> str:
    words = args.split()
    return f"e{words[-4]}.{words[-3]}"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path)
    yield a
    a.kill_group()


def _img(agent: Agent, t: str, data_name: str, allow: tuple[str, ...] = (HNODE,),
         data: bytes | None = None) -> ImageExport:
    p = agent.server / "images" / data_name
    if data is not None or not p.exists():
        agent.image(data_name, data if data is not None else os.urandom(4096))
    sha, size, url = hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size, f"file://{p}"
    return img(t, sha=sha, allow=allow, url=url, size=size)


def test_agent_serves_applies_changes_and_stops(agent: Agent) -> None:
    e10 = _img(agent, "e1.0", "rootfs")
    agent.plan(e10, _img(agent, "e1.1", "rootfs", allow=()))    # no consumer: not served
    agent.start()
    agent.wait(lambda: READY_PREFIX + "e1.0" in agent.log(), "exports ready e1.0")
    image = agent.store / "images" / f"{e10.sha256}.img"
    assert image.read_bytes() == (agent.server / "images" / "rootfs").read_bytes()
    # the stand-in vblade records its arguments once it runs: a moment after the agent spawned it
    agent.wait(lambda: list(agent.running()) == ["e1.0"], "the vblade stand-in of e1.0")
    running = agent.running()
    assert running["e1.0"] == f"-r -m {HNODE} 1 0 lo {image}"
    assert "e1.1: no consumer assigned yet: not served" in agent.log()
    assert "errors" not in agent.log()
    first_pid = next(p for p, a in agent.calls() if _target(a) == "e1.0")

    # a new rw volume and a consumer for e1.1: started without touching e1.0
    agent.plan(e10, _img(agent, "e1.1", "rootfs", allow=(HNODE2,)),
               vol("e2.0", allow=(HNODE, HNODE2)))
    agent.wait(lambda: READY_PREFIX + "e1.0,e1.1,e2.0" in agent.log(), "three exports")
    running = agent.running()
    volume = agent.store / "volumes" / "inst1.vol"
    assert running["e2.0"] == f"-s -m {HNODE},{HNODE2} 2 0 lo {volume}"
    assert volume.stat().st_size == 8 << 20 and volume.stat().st_blocks == 0  # sparse
    assert _alive(first_pid)
    assert agent.log().count(f"image {e10.sha256}: downloading") == 1  # shared, once

    # allow-list change restarts that export only; a removed export is stopped by PID
    agent.plan(_img(agent, "e1.0", "rootfs", allow=(HNODE, HNODE2)),
               vol("e2.0", allow=(HNODE, HNODE2)))
    agent.wait(lambda: set(agent.running()) == {"e1.0", "e2.0"}
               and HNODE2 in agent.running()["e1.0"], "e1.1 stopped, e1.0 restarted")
    assert not _alive(first_pid)
    assert "export e1.1: no longer in the plan" in agent.log()

    # a new image build for e1.0: downloaded, served, the old file collected
    e10b = _img(agent, "e1.0", "rootfs2", allow=(HNODE, HNODE2), data=os.urandom(8192))
    agent.plan(e10b, vol("e2.0", allow=(HNODE, HNODE2)))
    agent.wait(lambda: e10b.sha256 in agent.running().get("e1.0", ""), "e1.0 on the new image")
    agent.wait(lambda: not image.exists(), "old image deleted")

    vblades = [p for p, _ in agent.calls() if _alive(p)]
    assert agent.stop() == 0
    assert not any(_alive(p) for p in vblades)
    assert list((agent.run / "exports").iterdir()) == []


def test_agent_restarts_a_vblade_that_exits(agent: Agent) -> None:
    agent.plan(_img(agent, "e1.0", "rootfs"))
    agent.crash.write_text("once")        # the first vblade exits at once with status 3
    agent.start()
    agent.wait(lambda: "exited with status 3: restart in 1s" in agent.log(), "the exit seen")
    agent.wait(lambda: len(agent.calls()) == 2 and "e1.0" in agent.running(), "restarted")
    pid = agent.calls()[-1][0]            # killing the running one (by PID) is survived too
    os.kill(pid, signal.SIGKILL)
    agent.wait(lambda: len(agent.calls()) == 3 and "e1.0" in agent.running(), "restarted")
    assert "exited with status 137 (signal 9)" in agent.log()
    assert agent.stop() == 0


def test_agent_refuses_an_image_with_the_wrong_sha256(agent: Agent) -> None:
    good = _img(agent, "e1.0", "rootfs")
    agent.plan(ImageExport(good.target, "ro", good.allow, "hnode", "b1", good.size, "0" * 64,
                           good.url))
    agent.start()
    agent.wait(lambda: "errors: e1.0: sha256 mismatch" in agent.log(), "sha256 mismatch")
    assert f"got {good.sha256}, plan says {'0' * 64}" in agent.log()
    assert agent.running() == {}
    assert READY_PREFIX + "none" in agent.log()
    assert not list((agent.store / "images").iterdir())    # no .part left, nothing used
    assert agent.stop() == 0


def test_agent_reuses_an_intact_image_and_retries_the_plan(agent: Agent) -> None:
    e10 = _img(agent, "e1.0", "rootfs")
    agent.start()                          # no plan yet: retried with backoff
    agent.wait(lambda: "retry in 1s" in agent.log(), "plan retry")
    agent.plan(e10)
    agent.wait(lambda: READY_PREFIX + "e1.0" in agent.log(), "exports ready")
    assert agent.stop() == 0
    shutil.rmtree(agent.run)               # /run is a tmpfs: empty after a reboot
    agent.start()                          # "reboot": the image is checked, not downloaded
    agent.wait(lambda: agent.log().count(READY_PREFIX + "e1.0") == 2, "ready again")
    assert f"image {e10.sha256}: present, sha256 ok (not downloaded)" in agent.log()
    assert agent.log().count(f"image {e10.sha256}: downloading") == 1
    assert agent.stop() == 0
    image = agent.store / "images" / f"{e10.sha256}.img"
    image.write_bytes(b"x" * e10.size)     # a damaged copy is downloaded again
    shutil.rmtree(agent.run)
    agent.start()
    agent.wait(lambda: agent.log().count(READY_PREFIX + "e1.0") == 3, "ready a third time")
    assert "present but damaged: downloading it again" in agent.log()
    assert image.read_bytes() == (agent.server / "images" / "rootfs").read_bytes()
    assert agent.stop() == 0


def test_agent_names_the_field_of_a_bad_plan(agent: Agent) -> None:
    doc = {"version": 1, "node": MAC, "exports": [
        {"kind": "volume", "target": "e1.0", "mode": "rw", "allow": [], "name": "v", "size": 1,
         "colour": "red"}]}
    (agent.server / "plan" / f"{MAC}.json").write_text(json.dumps(doc))
    agent.start()
    agent.wait(lambda: "plan.exports[0].colour: unknown key" in agent.log(), "the bad field")
    assert agent.stop() == 0


def test_agent_without_server_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_text("console=ttyS0\n")
    r = subprocess.run(storage_agent_argv(), capture_output=True, text=True, timeout=30,
                       env={"PATH": os.environ["PATH"], **agent_env(),
                            "HC_CMDLINE": str(tmp_path / "cmdline"),
                            "HC_RUN": str(tmp_path / "run"), "HC_CONSOLE": "none"})
    assert r.returncode == 2
    assert "ERROR: no boot server" in r.stdout


def test_agent_without_a_pool_serves_empty_volumes_and_refuses_clones(agent: Agent) -> None:
    """HC_DISKS=none (or a store made before LVM): no volume pool.  An empty volume is a sparse
    file as before; a template and a clone are refused, saying why; nothing is deleted."""
    empty = VolumeExport(Target(10, 0), "rw", (HNODE,), "scratch", 1 << 20)
    clone = VolumeExport(Target(10, 1), "rw", (HNODE,), "web", 1 << 20, "template", "domu-b1")
    tpl = TemplateSpec("domu-b1", "domu", "b1", 4096, SHA, "http://192.0.2.1/images/domu/b1/r")
    (agent.store / "volumes").mkdir(parents=True)
    keep = agent.store / "volumes" / "old.vol"
    keep.write_bytes(b"x")
    plan = Plan(MAC, (empty, clone), templates=(tpl,), delete=(Deletion("volume", "old"),))
    (agent.server / "plan" / f"{MAC}.json").write_text(plan_json(plan))
    agent.start()
    agent.wait(lambda: READY_PREFIX + "e10.0" in agent.log(), "exports ready e10.0")
    agent.wait(lambda: "errors:" in agent.log(), "the errors line")
    log = agent.log()
    assert "no volume pool: HC_DISKS=none" in log
    assert ("export e10.1: volume web: cannot clone template domu-b1: no volume pool on this "
            "storage node (HC_DISKS=none)") in log
    assert "template domu-b1: no volume pool on this storage node (HC_DISKS=none);" in log
    agent.wait(lambda: list(agent.running()) == ["e10.0"], "the vblade of e10.0 only")
    vol = agent.store / "volumes" / "scratch.vol"
    assert agent.running()["e10.0"] == f"-s -m {HNODE} 10 0 lo {vol}"
    assert vol.stat().st_size == 1 << 20
    assert keep.read_bytes() == b"x"
    assert agent.stop() == 0


def test_udev_pending_waits_only_for_a_kernel_named_nic_udev_has_not_seen(tmp_path: Path) -> None:
    """The storage agent must not touch eth0 before udev renamed it (ens2): an `ip link set
    up` first made udev's rename fail and left the lab snode without an address (seen)."""
    net, udev = tmp_path / "net", tmp_path / "udev"
    for name, assign, idx in (("eth0", "1", "2"), ("ens3", "4", "3"), ("veth-sn", "3", "4")):
        (net / name).mkdir(parents=True)
        (net / name / "name_assign_type").write_text(assign + "\n")
        (net / name / "ifindex").write_text(idx + "\n")
    assert not udev_pending("eth0", net, udev)              # no udevd here: never wait
    (udev / "data").mkdir(parents=True)
    (udev / "control").touch()
    assert udev_pending("eth0", net, udev)                  # kernel name, not processed yet
    assert not udev_pending("ens3", net, udev)              # renamed by udev: done
    assert not udev_pending("veth-sn", net, udev)           # named by a person
    assert not udev_pending("gone0", net, udev)             # vanished: find_iface decides
    (udev / "data" / "n2").touch()
    assert not udev_pending("eth0", net, udev)              # processed, kept its name
    # still the kernel's name under a running udevd: the agent drains udev's queue once
    assert kernel_named("eth0", net, udev) and not kernel_named("ens3", net, udev)
    assert not kernel_named("eth0", net, tmp_path / "no-udev")


def test_images_only_is_what_a_store_serves_before_its_thin_pool_exists() -> None:
    tpl = TemplateSpec("domu-b1", "domu", "b1", 4096, "0" * 64, "http://192.0.2.1/images/d/r")
    plan = Plan(MAC, (img("e1.0"), vol("e10.0"), vol("e10.1", "web")), templates=(tpl,),
                delete=(Deletion("volume", "old"),), poll=7)
    first = images_only(plan)
    assert [str(e.target) for e in first.exports] == ["e1.0"]
    assert (first.templates, first.delete, first.poll, first.node) == ((), (), 7, MAC)

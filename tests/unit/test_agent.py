"""The storage-node agent script (elements/hc-aoe-target): syntax, anatomy, and its plan logic.

The behaviour tests run the real script without root and without a network: the boot server is
a ``file://`` tree (curl reads plans and images from it), ``vblade`` is a stand-in that records
its arguments and sleeps (the real one needs raw sockets: tests/integration/test_storage_agent.py
runs it), and the store is a plain directory (``HC_DISKS=none``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bootserver.agent import (
    PLAN_FIELDS,
    READY_PREFIX,
    SCRIPT_IN_IMAGE,
    agent_script,
    element_dir,
    unit_file,
)
from builder.elements import ElementLibrary, lint_element
from homecloud.control.exports import plan_text
from tests.support.ci_skips import in_ci

SCRIPT = agent_script()
MAC = "52:54:00:5a:00:01"
HNODE = "52:54:00:4b:00:01"
HNODE2 = "52:54:00:4b:00:02"


# ---------------------------------------------------------------- syntax and anatomy


@pytest.mark.parametrize("shell", ["sh", "bash", "busybox", "dash"])
def test_script_parses(shell: str) -> None:
    exe = shutil.which(shell)
    if exe is None:
        pytest.skip(f"{shell} not installed")
    argv = [exe, "sh", "-n", str(SCRIPT)] if shell == "busybox" else [exe, "-n", str(SCRIPT)]
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        if in_ci():
            pytest.fail("shellcheck not installed (.ci/run installs it)")
        pytest.skip("shellcheck not installed")
    r = subprocess.run(["shellcheck", "-s", "sh", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_script_anatomy() -> None:
    text = SCRIPT.read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert SCRIPT.stat().st_mode & 0o111
    assert "set -u" in lines[:40]
    assert "\t" not in text
    assert max(len(x) for x in lines) <= 100
    # POSIX sh only: no bashisms that dash / busybox ash reject
    code = "\n".join(x for x in lines if not x.lstrip().startswith("#"))
    for bad in (r"\[\[", r"^\s*function ", r"^\s*local ", r"\$'", r"<<<", r"\$\{!",
                r"^\s*source ", r"\becho -e\b", r"&>"):
        assert not re.search(bad, code, re.M), bad
    # every setting read from the environment is documented in --help and in the README
    settings = sorted(set(re.findall(r"^(HC_[A-Z_]+)=\$\{\1:-", text, re.M)))
    assert "HC_DISKS" in settings and "HC_POLL" in settings and "HC_SERVER" in settings
    helptext = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True,
                              check=True).stdout
    readme = (element_dir() / "README.md").read_text()
    for var in settings:
        assert var in helptext, var
        assert var in readme, var


def test_plan_contract_matches_plan_text() -> None:
    """The agent reads plan_text's nine fields in PLAN_FIELDS order."""
    text = SCRIPT.read_text()
    m = re.search(r"while read -r (_t .*?) _rest; do", text)
    assert m is not None
    assert len(m.group(1).split()) == len(PLAN_FIELDS)
    line = plan_text(_plan([_image_export("e1.0", "ab" * 32, 1024, "http://x/r", [HNODE])]))
    fields = line.splitlines()[1].split()
    assert dict(zip(PLAN_FIELDS, fields, strict=True))["allow"] == HNODE


def test_element_and_unit() -> None:
    el = ElementLibrary().get("hc-aoe-target")
    assert lint_element(el) == []
    assert {"vblade", "mdadm", "aoetools", "curl"} <= set(el.packages)
    unit = unit_file().read_text()
    assert f"ExecStart={SCRIPT_IN_IMAGE}" in unit
    assert "Restart=always" in unit and "WantedBy=multi-user.target" in unit
    install = (element_dir() / "install.d" / "60-hc-aoe-target").read_text()
    assert "systemctl enable hc-storage-agent.service" in install


# ---------------------------------------------------------------- behaviour

FAKE_VBLADE = """#!/bin/sh
# stand-in for vblade: records its pid and arguments, then serves nothing until killed
echo "$$ $*" >> "{log}"
if [ -e "{crash}" ]; then rm -f "{crash}"; exit 3; fi
exec sleep 1000
"""


def _plan(exports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"snode": MAC, "exports": exports}


def _image_export(target: str, sha: str, size: int, url: str, allow: list[str],
                  mode: str = "ro") -> dict[str, Any]:
    shelf, slot = target[1:].split(".")
    return {"target": target, "shelf": int(shelf), "slot": int(slot), "mode": mode,
            "allow": allow, "problem": None,
            "source": {"kind": "image", "sha256": sha, "size": size, "url": url}}


def _volume_export(target: str, name: str, size: int, allow: list[str]) -> dict[str, Any]:
    shelf, slot = target[1:].split(".")
    return {"target": target, "shelf": int(shelf), "slot": int(slot), "mode": "rw",
            "allow": allow, "problem": None,
            "source": {"kind": "volume", "name": name, "size": size}}


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

    def plan(self, exports: list[dict[str, Any]]) -> None:
        tmp = self.server / "plan" / ".new"
        tmp.write_text(plan_text(_plan(exports)))
        os.replace(tmp, self.server / "plan" / f"{MAC}.txt")

    def start(self, **env: str) -> None:
        e = {"PATH": f"{self.tmp}:{os.environ['PATH']}", "HC_CMDLINE": str(self.cmdline),
             "HC_IFACE": "lo", "HC_DISKS": "none", "HC_STORE": str(self.store),
             "HC_RUN": str(self.run), "HC_POLL": "1", "HC_CONSOLE": "none",
             "HC_BACKOFF_MAX": "1", **env}
        with open(self.out, "ab") as f:
            self.proc = subprocess.Popen([str(SCRIPT)], stdout=f, stderr=subprocess.STDOUT,
                                         env=e, start_new_session=True)

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
        live = {}
        for pid, args in self.calls():
            if _alive(pid):
                live[_target(args)] = args
        return live

    def wait(self, pred: Callable[[], bool], what: str, timeout: float = 20) -> None:
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
                self.proc.wait(10)
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
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _target(args: str) -> str:
    words = args.split()
    return f"e{words[-4]}.{words[-3]}"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    a = Agent(tmp_path)
    yield a
    a.kill_group()


def test_agent_serves_applies_changes_and_stops(agent: Agent) -> None:
    sha, size, url = agent.image("rootfs", os.urandom(4096))
    missing = _image_export("e3.0", "cd" * 32, 1, "file:///nonexistent", [HNODE])
    missing["problem"] = "no published image for role hnodexen"
    agent.plan([_image_export("e1.0", sha, size, url, [HNODE]),
                _image_export("e1.1", sha, size, url, []),           # no consumer: not served
                missing])                                            # a comment line only
    agent.start()
    agent.wait(lambda: READY_PREFIX + "e1.0" in agent.log(), "exports ready e1.0")
    img = agent.store / "images" / f"{sha}.img"
    assert img.read_bytes() == (agent.server / "images" / "rootfs").read_bytes()
    running = agent.running()
    assert list(running) == ["e1.0"]
    assert running["e1.0"] == f"-r -m {HNODE} 1 0 lo {img}"
    assert "e1.1: no consumer assigned yet: not served" in agent.log()
    assert "e3.0" not in agent.log() and "errors" not in agent.log()
    first_pid = next(p for p, a in agent.calls() if _target(a) == "e1.0")

    # a new rw volume and a second consumer for e1.1: started without touching e1.0
    agent.plan([_image_export("e1.0", sha, size, url, [HNODE]),
                _image_export("e1.1", sha, size, url, [HNODE2]),
                _volume_export("e2.0", "inst1", 8 << 20, [HNODE, HNODE2])])
    agent.wait(lambda: READY_PREFIX + "e1.0,e1.1,e2.0" in agent.log(), "three exports")
    running = agent.running()
    vol = agent.store / "volumes" / "inst1.vol"
    assert running["e2.0"] == f"-s -m {HNODE},{HNODE2} 2 0 lo {vol}"
    assert vol.stat().st_size == 8 << 20 and vol.stat().st_blocks == 0  # sparse
    assert _alive(first_pid)
    assert agent.log().count(f"image {sha}: downloading") == 1  # shared, downloaded once

    # allow-list change restarts that export only; a removed export is stopped by PID
    agent.plan([_image_export("e1.0", sha, size, url, [HNODE, HNODE2]),
                _volume_export("e2.0", "inst1", 8 << 20, [HNODE, HNODE2])])
    agent.wait(lambda: set(agent.running()) == {"e1.0", "e2.0"}
               and HNODE2 in agent.running()["e1.0"], "e1.1 stopped, e1.0 restarted")
    assert not _alive(first_pid)
    assert "export e1.1: no longer in the plan" in agent.log()

    # a new image build for e1.0: downloaded, served, the old file collected
    sha2, size2, url2 = agent.image("rootfs2", os.urandom(8192))
    agent.plan([_image_export("e1.0", sha2, size2, url2, [HNODE, HNODE2]),
                _volume_export("e2.0", "inst1", 8 << 20, [HNODE, HNODE2])])
    agent.wait(lambda: sha2 in agent.running().get("e1.0", ""), "e1.0 on the new image")
    agent.wait(lambda: not img.exists(), "old image deleted")

    vblades = [p for p, _ in agent.calls() if _alive(p)]
    assert agent.stop() == 0
    assert not any(_alive(p) for p in vblades)
    assert list((agent.run / "exports").iterdir()) == []


def test_agent_restarts_a_vblade_that_exits(agent: Agent) -> None:
    sha, size, url = agent.image("rootfs", os.urandom(2048))
    agent.plan([_image_export("e1.0", sha, size, url, [HNODE])])
    agent.crash.write_text("once")        # the first vblade exits at once with status 3
    agent.start()
    agent.wait(lambda: "exited with status 3: restart in 1s" in agent.log(), "the exit seen")
    agent.wait(lambda: len(agent.calls()) == 2 and "e1.0" in agent.running(), "restarted")
    # killing the running one (by PID) is survived as well
    pid = agent.calls()[-1][0]
    os.kill(pid, signal.SIGKILL)
    agent.wait(lambda: len(agent.calls()) == 3 and "e1.0" in agent.running(), "restarted")
    assert agent.stop() == 0


def test_agent_refuses_an_image_with_the_wrong_sha256(agent: Agent) -> None:
    _, size, url = agent.image("rootfs", os.urandom(1024))
    agent.plan([_image_export("e1.0", "0" * 64, size, url, [HNODE])])
    agent.start()
    agent.wait(lambda: "errors: e1.0: sha256 mismatch" in agent.log(), "sha256 mismatch")
    assert agent.running() == {}
    assert READY_PREFIX + "none" in agent.log()
    assert not list((agent.store / "images").glob("*.img"))
    assert agent.stop() == 0


def test_agent_reuses_an_intact_image_and_retries_the_plan(agent: Agent) -> None:
    sha, size, url = agent.image("rootfs", os.urandom(4096))
    agent.start()                          # no plan yet: retried with backoff
    agent.wait(lambda: "retry in 1s" in agent.log(), "plan retry")
    agent.plan([_image_export("e1.0", sha, size, url, [HNODE])])
    agent.wait(lambda: READY_PREFIX + "e1.0" in agent.log(), "exports ready")
    assert agent.stop() == 0
    shutil.rmtree(agent.run)               # /run is a tmpfs: empty after a reboot
    agent.start()                          # "reboot": the image is checked, not downloaded
    agent.wait(lambda: agent.log().count(READY_PREFIX + "e1.0") == 2, "ready again")
    assert f"image {sha}: present, sha256 ok (not downloaded)" in agent.log()
    assert agent.log().count(f"image {sha}: downloading") == 1
    # a damaged copy is downloaded again
    assert agent.stop() == 0
    img = agent.store / "images" / f"{sha}.img"
    img.write_bytes(b"x" * size)
    shutil.rmtree(agent.run)               # /run is a tmpfs: empty after a reboot
    agent.start()
    agent.wait(lambda: agent.log().count(READY_PREFIX + "e1.0") == 3, "ready a third time")
    assert "present but damaged: downloading it again" in agent.log()
    assert img.read_bytes() == (agent.server / "images" / "rootfs").read_bytes()
    assert agent.stop() == 0


def test_agent_without_server_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_text("console=ttyS0\n")
    r = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=20,
                       env={"PATH": os.environ["PATH"], "HC_CMDLINE": str(tmp_path / "cmdline"),
                            "HC_RUN": str(tmp_path / "run"), "HC_CONSOLE": "none"})
    assert r.returncode == 2
    assert "ERROR: no boot server" in r.stdout

"""``hcboot lab ssh`` and the lab's admin key with a real sshd and ssh, in test namespaces.

The lab makes its key the way ``lab up`` does (``Lab._lab_key``: real ssh-keygen, the public
line added to ``STATE/admin_keys``) and writes its context; a "node" namespace runs a real sshd
(``/usr/sbin/sshd -D -f CONFIG``, started and stopped by PID) whose authorized_keys is what the
config node delivers to hnodes: the lines of ``STATE/admin_keys``.  ``hcboot lab ssh`` then runs
ssh inside the lab's namespace (the context's argv prefix), as it does against the QEMU lab.
Addresses: 198.51.100.0/24 inside the namespaces only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from homecloud.control.admin_keys import read_admin_keys
from homecloud.lab.context import write_context
from homecloud.lab.lab import Lab
from tests.support.netns import Lab as NetLab
from tests.support.netns import Netns

SSHD = "/usr/sbin/sshd"
NODE_IP = "198.51.100.21"

pytestmark = pytest.mark.skipif(not Path(SSHD).exists() or shutil.which("ssh") is None,
                                reason="openssh-server/client not installed")


@dataclass
class Env:
    lab: Lab
    cfg: Netns
    node: Netns
    env: dict[str, str]


def _sshd(nl: NetLab, node: Netns, tmp: Path, authorized: str) -> subprocess.Popen[bytes]:
    d = tmp / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")],
                   check=True)
    (d / "authorized_keys").write_text(authorized)
    (d / "authorized_keys").chmod(0o600)
    cfg = d / "sshd_config"
    cfg.write_text(f"ListenAddress {NODE_IP}\nPort 22\nHostKey {d / 'host'}\n"
                   f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'pid'}\n"
                   "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                   "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    p = nl.popen([SSHD, "-D", "-e", "-f", str(cfg)], ns=node, log=d / "log")
    deadline = time.monotonic() + 10
    while node.run("ss", "-ltn", check=False).stdout.find(f"{NODE_IP}:22") < 0:
        assert p.poll() is None, (d / "log").read_text()
        assert time.monotonic() < deadline, "sshd did not listen"
        time.sleep(0.1)
    return p


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    lab = Lab(tmp_path / "lab", tmp_path / "images", say=lambda s: None)
    lab.hcboot_dir.mkdir(parents=True)
    lab._lab_key()
    with NetLab() as nl:
        cfg, node = nl.netns("cfg"), nl.netns("node")
        nl.veth(cfg, "eth0", node, "eth0")
        nl.addr(cfg, "eth0", "198.51.100.1/24")
        nl.addr(node, "eth0", f"{NODE_IP}/24")
        # the lab's records: the namespace the commands run in and one node
        lab.doc = {"netns": cfg.name, "nodes": [{"name": "hnode1", "mac": "52:54:00:4c:48:01",
                                                  "ip": NODE_IP, "role": "hnode"}]}
        lab.save()
        monkeypatch.setenv("HC_LAB_CURRENT", str(tmp_path / "run" / "current.json"))
        write_context(lab.context())
        # no lab variables of the calling process (hcboot --lab exports them): this lab only
        env = {k: v for k, v in os.environ.items() if not k.startswith("HC_")}
        env["HC_LAB_CURRENT"] = str(tmp_path / "run" / "current.json")
        authorized = "".join(k + "\n" for k in read_admin_keys(lab.hcboot_dir))
        _sshd(nl, node, tmp_path, authorized)
        yield Env(lab, cfg, node, env)


def hcboot(e: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homecloud", *args], capture_output=True,
                          text=True, timeout=60, env=e.env, stdin=subprocess.DEVNULL)


def test_lab_ssh_by_node_name_and_address(env: Env) -> None:
    r = hcboot(env, "lab", "ssh", "--state-dir", str(env.lab.dir), "hnode1", "echo",
               "lab-ssh-ok", "$(id", "-u)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "lab-ssh-ok 0"
    # the host key was recorded in the lab's own known_hosts (accept-new), not the user's
    ctx = json.loads((env.lab.dir / "context.json").read_text())
    host_pub = (env.lab.dir.parent / "sshd" / "host.pub").read_text().split()[:2]
    assert Path(ctx["known_hosts"]).read_text().split() == [NODE_IP, *host_pub]
    r = hcboot(env, "lab", "ssh", "--state-dir", str(env.lab.dir), NODE_IP, "hostname", "-I")
    assert r.returncode == 0 and NODE_IP in r.stdout, r.stderr


def test_lab_ssh_uses_the_current_lab_without_any_path(env: Env) -> None:
    r = hcboot(env, "lab", "ssh", "hnode1", "true")
    assert r.returncode == 0, r.stderr


def test_a_key_that_is_not_an_admin_key_is_refused(env: Env, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    r = env.cfg.run("ssh", "-i", str(other), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    f"root@{NODE_IP}", "true", check=False)
    assert r.returncode == 255 and "Permission denied" in r.stderr


def test_unknown_node_is_named(env: Env) -> None:
    r = hcboot(env, "lab", "ssh", "--state-dir", str(env.lab.dir), "hnode9", "true")
    assert r.returncode != 0 and "no lab node 'hnode9'" in r.stderr and "hnode1" in r.stderr

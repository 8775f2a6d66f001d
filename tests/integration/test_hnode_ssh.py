"""The hnode agent behind a real sshd, reached by the control's SshHostDriver over real SSH.

Topology (one Lab for the module; nothing leaves its namespaces)::

    cn (config node, 198.51.100.1 on br0) --+-- hn1 (198.51.100.11, sshd -D)
                                            +-- hn2 (198.51.100.12, sshd -D)

Each hnode's sshd is the real OpenSSH server with the authorized_keys that
``hc-hnode-agent trust`` writes from a trust document (config key -> the agent; the other
hnode's migration key -> ``migrate-gate``; an admin key -> a shell).  Xen cannot run here: where
a test needs ``xl`` a stand-in script plays it; its ``migrate`` does what xl_migrate.c does
(runs ``-s CMD HOST xl migrate-receive`` through ``sh`` and pipes the domain stream into it), so
the migration transport is the real ssh between the two namespaces, checked against the pinned
host key, into the target's forced command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from homecloud.agents import hntrust
from homecloud.agents.hostproto import AGENT_COMMAND
from homecloud.control.contracts import HostError
from homecloud.control.hosts import SshHostDriver, ensure_config_key
from homecloud.core.model import Nic, Node
from tests.support.agents import ROOT
from tests.support.netns import Lab, Netns
from tests.support.sshd import Sshd, keygen, start_sshd

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="no sshd")

LAUNCHER = ROOT / "elements" / "hc-xen-dom0" / "static" / "usr" / "local" / "sbin" / \
    "hc-hnode-agent"
ADDR = {"hn1": "198.51.100.11", "hn2": "198.51.100.12"}
MAC = {"hn1": "52:54:00:4b:00:01", "hn2": "52:54:00:4b:00:02"}

# the stand-in xl (Xen cannot run on this host): info/list like Xen 4.17's xl; migrate runs the
# -s command as xl does ("exec CMD HOST xl migrate-receive") with a stream on its stdin;
# migrate-receive stores the stream it gets; leading -v flags are passed on to the receiver
# as xl_migrate.c does
FAKE_XL = r"""#!/bin/sh
d=$(dirname "$0")
echo "$*" >> "$d/calls"
v=""; while [ "$1" = "-v" ]; do v="$v -v"; shift; done
case "$1" in
  info) printf 'xen_major : 4\nxen_minor : 17\ntotal_memory : 4095\nfree_memory : 3012\n' ;;
  list) printf 'Name ID Mem VCPUs State Time(s)\nDomain-0 0 512 1 r----- 1.0\n'
        [ -f "$d/running" ] && cat "$d/running"; true ;;
  migrate) [ "$2" = "-s" ] || exit 9
        echo "DOMAIN-STREAM $4 from $(cat "$d/name")" | sh -c "exec $3 $5 xl$v migrate-receive"
        rc=$?; [ $rc = 0 ] && rm -f "$d/running"; exit $rc ;;
  migrate-receive) cat > "$d/received"
        echo "migration target: got $(wc -c < "$d/received") bytes" >&2 ;;
  console) echo "console of $2 on $(cat "$d/name") tty=$(tty)" ;;
  *) echo "xl: unexpected $*" >&2; exit 1 ;;
esac
"""


@dataclass
class Host:
    name: str
    ns: Netns
    sshd: Sshd
    dir: Path
    xl: Path | None
    migration_key: str = ""

    @property
    def node(self) -> Node:
        return Node(name=self.name, role="hnode", nics=(Nic(MAC[self.name], ip=ADDR[self.name]),))

    def agent(self, with_xl: bool = True) -> str:
        env = [f"PYTHONPATH={ROOT}", f"HC_HNODE_NAME={self.name}",
               f"HC_HNODE_STATE={self.dir / 'state'}",
               f"HC_HNODE_RUN={self.dir / 'run'}"]
        if with_xl and self.xl:  # the stand-in xl, and a dom0's /proc/xen/capabilities
            env += [f"HC_HNODE_XL={self.xl}", f"HC_HNODE_XEN_CAPS={self.dir / 'caps'}"]
        return f"/usr/bin/env {' '.join(env)} {sys.executable} {LAUNCHER}"


@dataclass
class Env:
    lab: Lab
    cn: Netns
    tmp: Path
    config_key: Path
    admin_key: Path
    hosts: dict[str, Host]

    def driver(self, key: Path | None = None, host_key: str | None = None) -> SshHostDriver:
        def of(node: Node) -> str | None:
            return host_key or self.hosts[node.name].sshd.host_key
        return SshHostDriver(key or self.config_key, of, self.tmp / "known",
                             prefix=self.cn.cmd(), connect_timeout=10, action_timeout=60)

    def install_trust(self, with_xl: bool = True) -> None:
        """What each hnode's boot does with the trust document from its plan."""
        cfg_pub = self.config_key.with_name(self.config_key.name + ".pub").read_text().strip()
        adm_pub = self.admin_key.with_name(self.admin_key.name + ".pub").read_text().strip()
        for h in self.hosts.values():
            peers = [{"name": p.name, "address": ADDR[p.name], "host_key": p.sshd.host_key,
                      "migration_key": p.migration_key}
                     for p in self.hosts.values() if p.name != h.name]
            doc = {"version": 1, "config_keys": [cfg_pub], "admin_keys": [adm_pub],
                   "peers": peers}
            (h.dir / "trust.json").write_text(json.dumps(doc))
            agent = h.agent(with_xl)
            r = subprocess.run([sys.executable, str(LAUNCHER), "trust", str(h.dir / "trust.json")],
                               env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                    "HC_HNODE_STATE": str(h.dir / "state"),
                                    "HC_HNODE_AGENT": agent,
                                    "HC_HNODE_AUTHORIZED_KEYS": str(h.sshd.authorized_keys)},
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            assert r.stdout.split() == h.migration_key.split()[:2]

    def ssh(self, host: Host, key: Path, *command: str, stdin: str = "",
            tty: bool = False) -> subprocess.CompletedProcess[str]:
        """A plain ssh client (the admin's, or an attacker holding some key)."""
        known = self.tmp / f"raw-{host.name}.known"
        known.write_text(f"{host.sshd.address} {host.sshd.host_key}\n")
        argv = self.cn.cmd("ssh", "-i", str(key), "-l", "root", "-o", "IdentitiesOnly=yes",
                           "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                           "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=10",
                           "-tt" if tty else "-T", host.sshd.address, *command)
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("hnode-ssh")
    with Lab() as lab:
        cn = lab.netns("cn")
        br = lab.bridge(cn, "br0", "198.51.100.1/24")
        hosts: dict[str, Host] = {}
        for name in ("hn1", "hn2"):
            ns = lab.netns(name)
            lab.port(cn, br, ns, "eth0")
            lab.addr(ns, "eth0", f"{ADDR[name]}/24")
            d = tmp / name
            d.mkdir()
            (d / "name").write_text(name)
            (d / "caps").write_text("control_d\n")
            xl = d / "xl"
            xl.write_text(FAKE_XL)
            xl.chmod(0o755)
            sshd = start_sshd(lab, ns, ADDR[name], d / "sshd")
            # the migration key the hnode makes at boot (hntrust.ensure_migration_key)
            mig = hntrust.ensure_migration_key(d / "state" / "migration_key")
            hosts[name] = Host(name, ns, sshd, d, xl, mig.bare)
        config_key = ensure_config_key(tmp / "cn-state")
        admin_key = tmp / "admin"
        keygen(admin_key, "admin")
        e = Env(lab, cn, tmp, config_key, admin_key, hosts)
        e.install_trust()
        yield e


def test_facts_over_ssh(env: Env) -> None:
    facts = env.driver().facts(env.hosts["hn1"].node)
    assert (facts.xen_version, facts.total_memory_mb, facts.free_memory_mb) == ("4.17", 4095, 3012)
    assert facts.domains == ()


def test_facts_without_xl_is_reported_not_a_crash(env: Env) -> None:
    env.install_trust(with_xl=False)  # the agent looks for Xen as on a node: not a dom0 here
    try:
        with pytest.raises(HostError) as exc:
            env.driver().facts(env.hosts["hn1"].node)
        msg = str(exc.value)
        assert msg.startswith("hn1: facts: hn1: not a Xen dom0: /proc/xen/capabilities"), msg
        assert "Traceback" not in msg
    finally:
        env.install_trust()


def test_a_key_not_in_authorized_keys_is_refused(env: Env) -> None:
    stranger = env.tmp / "stranger"
    if not stranger.exists():
        keygen(stranger, "stranger")
    with pytest.raises(HostError) as exc:
        env.driver(key=stranger).facts(env.hosts["hn1"].node)
    assert "hn1: facts: ssh to 198.51.100.11 failed (exit code 255)" in str(exc.value)
    assert "Permission denied" in str(exc.value)


def test_a_changed_host_key_is_refused(env: Env) -> None:
    other = env.hosts["hn2"].sshd.host_key  # hn1 answering with another key = not hn1
    with pytest.raises(HostError) as exc:
        env.driver(host_key=other).facts(env.hosts["hn1"].node)
    assert "Host key verification failed" in str(exc.value), str(exc.value)
    # and a node that has not reported a key is not contacted at all
    d = SshHostDriver(env.config_key, lambda n: None, env.tmp / "known", prefix=env.cn.cmd())
    with pytest.raises(HostError, match="no SSH host key reported yet"):
        d.facts(env.hosts["hn1"].node)


def test_the_config_key_runs_only_the_agent(env: Env) -> None:
    h = env.hosts["hn1"]
    marker = env.tmp / "pwned"
    for cmd in (["touch", str(marker)], ["sh", "-c", f"touch {marker}"],
                [f"{AGENT_COMMAND};", "touch", str(marker)]):
        r = env.ssh(h, env.config_key, *cmd)
        assert r.returncode == 2, r
        assert json.loads(r.stdout)["ok"] is False and "refused" in r.stdout
    r = env.ssh(h, env.config_key, tty=True)  # an interactive shell
    assert r.returncode == 2 and "refused" in r.stdout
    assert not marker.exists()
    # port forwarding is off for it too (restrict)
    r = subprocess.run(env.cn.cmd("ssh", "-i", str(env.config_key), "-l", "root",
                                  "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                                  "-o", "StrictHostKeyChecking=no",
                                  "-o", "UserKnownHostsFile=/dev/null",
                                  "-W", "198.51.100.12:22", h.sshd.address),
                       capture_output=True, text=True, timeout=60, input="")
    assert r.returncode != 0
    # the admin key gets a shell
    r = env.ssh(h, env.admin_key, "echo", "admin-shell-ok")
    assert r.returncode == 0 and r.stdout.strip() == "admin-shell-ok", r


def test_a_migration_key_runs_only_migrate_receive(env: Env) -> None:
    hn1, hn2 = env.hosts["hn1"], env.hosts["hn2"]
    key = hn1.dir / "state" / "migration_key"   # hn1's key, trusted by hn2 for migration only
    marker = env.tmp / "pwned-mig"
    for cmd in (["id"], ["xl", "list"], ["xl", "migrate-receive;", "touch", str(marker)],
                ["touch", str(marker)], [AGENT_COMMAND]):
        r = env.ssh(hn2, key, *cmd)
        assert r.returncode == 2, r
        assert "a migration key runs only 'xl migrate-receive'" in r.stderr or \
            "unexpected arguments" in r.stderr, r
    assert not marker.exists()
    r = env.ssh(hn2, key, "xl", "migrate-receive", stdin="stream-bytes")
    assert r.returncode == 0, r
    assert (hn2.dir / "received").read_text() == "stream-bytes"
    # hn1's migration key is no config key: it cannot reach hn1's or hn2's agent
    r = env.ssh(hn1, key, AGENT_COMMAND, stdin='{"version": 1, "action": "facts"}')
    assert r.returncode == 255 and "Permission denied" in r.stderr


def test_migrate_over_pinned_ssh_between_hnodes(env: Env) -> None:
    hn1, hn2 = env.hosts["hn1"], env.hosts["hn2"]
    (hn2.dir / "received").unlink(missing_ok=True)
    (hn1.dir / "running").write_text("web1 3 384 1 -b---- 2.0\n")
    steps: list[str] = []
    res = env.driver().migrate(hn1.node, "web1", hn2.node, steps.append)
    assert (res.source, res.target) == ("hn1", "hn2") and res.seconds > 0
    assert (hn2.dir / "received").read_text() == "DOMAIN-STREAM web1 from hn1\n"
    assert "migration target: got 28 bytes" in res.log_tail
    # the agent runs xl migrate as an operator would (no -v: the bench's floor is that)
    assert "migrate-receive" in (hn2.dir / "calls").read_text()
    assert "-v" not in (hn2.dir / "calls").read_text()
    assert steps[0] == "hn1: xl migrate web1 to hn2 (198.51.100.12)"
    # a peer with the wrong pinned key: the source's ssh refuses the target
    (hn1.dir / "running").write_text("web1 3 384 1 -b---- 2.0\n")
    known = hn1.dir / "state" / "peers_known_hosts"
    good = known.read_text()
    known.write_text(f"198.51.100.12,hn2 {hn1.sshd.host_key}\n")
    try:
        with pytest.raises(HostError) as exc:
            env.driver().migrate(hn1.node, "web1", hn2.node, steps.append)
        msg = str(exc.value)
        assert "hn1: migrate: hn1: migration of web1 to 198.51.100.12 failed" in msg, msg
        assert "Host key verification failed" in msg and "xl migrate -s" in msg, msg
    finally:
        known.write_text(good)
        (hn1.dir / "running").unlink(missing_ok=True)


def test_console_runs_xl_console_on_a_terminal(env: Env) -> None:
    h = env.hosts["hn1"]
    r = env.ssh(h, env.config_key, AGENT_COMMAND, "console", "web1", tty=True)
    assert r.returncode == 0, r
    assert "console of web1 on hn1 tty=/dev/pts/" in r.stdout, r
    # only a domain name: no option, no path, no second word
    for bad in ("-h", "../web1", "web1 extra"):
        r = env.ssh(h, env.config_key, AGENT_COMMAND, "console", *bad.split())
        assert r.returncode == 2 and "refused" in r.stdout, r
    # the driver's own console call (no local terminal here: ssh says so and runs it anyway)
    assert env.driver().console(h.node, "web1") == 0

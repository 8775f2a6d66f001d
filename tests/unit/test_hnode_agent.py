"""The hnode agent (homecloud.agents.hnode, hostproto requests, xlcfg, hntrust): the xl config
golden, strict request and trust readers, the forced commands' decisions, and whole requests
through the agent's entry point.  Xen cannot run here: where an action needs ``xl`` a stand-in
script plays it (it prints what Xen 4.17's ``xl`` prints and logs its arguments); mkfs.vfat and
mcopy are the real tools."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from homecloud.agents import hnode, hntrust, xlcfg
from homecloud.agents.hnode import (
    Config,
    Refused,
    agent_mode,
    guest_suspend_lines,
    migrate_receive_argv,
    migrate_ssh_command,
    migration_failure_lines,
    parse_xl_list,
)
from homecloud.agents.hostproto import (
    Request,
    domain_from_doc,
    parse_answer,
    parse_request,
    request_json,
)
from homecloud.agents.protocol import ProtocolError
from tests.support.agents import ROOT, agent_env

GOLDEN = Path(__file__).parent / "golden"
LAUNCHER = ROOT / "elements" / "hc-xen-dom0" / "static" / "usr" / "local" / "sbin" / \
    "hc-hnode-agent"
DOMAIN = {"name": "web1", "uuid": "5f0c2a4e-8d1b-4c3a-9e7f-0123456789ab", "memory_mb": 384,
          "vcpus": 2, "mac": "0A:48:43:00:00:05", "bridge": "xenbr1", "disk": "e1.5",
          "seed": {"meta-data": "instance-id: iid-web1\nlocal-hostname: web1\n",
                   "user-data": "#cloud-config\nruncmd: [echo hi]\n"}}


def _key(kind: str = "ssh-ed25519", fill: bytes = b"\x01") -> str:
    blob = len(kind).to_bytes(4, "big") + kind.encode() + (32).to_bytes(4, "big") + fill * 32
    return f"{kind} {base64.b64encode(blob).decode()}"


# ------------------------------------------------------------------------------ xl config


def test_xl_config_golden() -> None:
    spec = domain_from_doc(DOMAIN)
    text = xlcfg.render(spec, Path("/run/hc/hnode/web1-seed.img"))
    assert text == (GOLDEN / "xlcfg-web1.cfg").read_text()


def test_xl_config_guest_cpuid_mask() -> None:
    """Only when asked (the lab's hnodes: hc.guest_cpuid=host,avx=0,avx2=0), one cpuid line;
    anything but host,FEATURE=0|1,... is refused, naming it."""
    spec = domain_from_doc(DOMAIN)
    seed = Path("/run/hc/hnode/web1-seed.img")
    masked = xlcfg.render(spec, seed, cpuid="host,avx=0,avx2=0")
    plain = (GOLDEN / "xlcfg-web1.cfg").read_text()
    assert masked == plain + 'cpuid = "host,avx=0,avx2=0"\n'
    for bad in ("avx=0", "host", "host,avx=2", 'host,avx=0"', "host,avx=0,,x=1",
                "host,AVX=0", "host,avx=0 extra=1", "libxl,avx=0"):
        with pytest.raises(ValueError, match="guest cpuid"):
            xlcfg.render(spec, seed, cpuid=bad)


def test_guest_cpuid_from_the_kernel_command_line(tmp_path: Path) -> None:
    cl = tmp_path / "cmdline"
    cl.write_text("console=hvc0 hc.mac=52:54:00:4c:48:01 hc.guest_cpuid=host,avx=0,avx2=0\n")
    assert hnode.Config.from_env({"HC_CMDLINE": str(cl)}).guest_cpuid == "host,avx=0,avx2=0"
    # the environment wins (also to turn the mask off); no key: no mask
    assert hnode.Config.from_env({"HC_CMDLINE": str(cl), "HC_HNODE_GUEST_CPUID": ""}
                                 ).guest_cpuid == ""
    cl.write_text("console=hvc0\n")
    assert hnode.Config.from_env({"HC_CMDLINE": str(cl)}).guest_cpuid == ""


def test_xl_config_refuses_a_quote_in_a_path() -> None:
    spec = domain_from_doc(DOMAIN)
    with pytest.raises(ValueError, match="quote"):
        xlcfg.render(spec, Path('/run/x"y.img'))


# ------------------------------------------------------------------------------ requests


def test_request_round_trip() -> None:
    for req in (Request("facts"), Request("list"), Request("destroy", name="web1"),
                Request("shutdown", name="web1", timeout=30),
                Request("migrate", name="web1", target="198.51.100.12", timeout=600),
                Request("cleanup", name="web1"),
                Request("start", name="web1", domain=domain_from_doc(DOMAIN))):
        assert parse_request(request_json(req)) == req


@pytest.mark.parametrize(("doc", "fault"), [
    ("not json", "request: not JSON"),
    ([], "request: expected an object"),
    ({"version": 2, "action": "facts"}, "request.version: expected 1"),
    ({"version": 1, "action": "rm"}, "request.action: not one of"),
    ({"version": 1, "action": "facts", "name": "x1"}, "request.name: unknown key for action"),
    ({"version": 1, "action": "destroy"}, "request.name: not a domain name"),
    ({"version": 1, "action": "destroy", "name": "../etc"}, "request.name: not a domain name"),
    ({"version": 1, "action": "destroy", "name": "Web1"}, "request.name: not a domain name"),
    ({"version": 1, "action": "migrate", "name": "web1", "target": "a b"},
     "request.target: not a host name"),
    ({"version": 1, "action": "migrate", "name": "web1", "target": "-oProxyCommand=x"},
     "request.target: not a host name"),
    ({"version": 1, "action": "shutdown", "name": "web1", "timeout": True},
     "request.timeout: not an integer"),
    ({"version": 1, "action": "start"}, "request.domain: missing"),
    ({"version": 1, "action": "start", "domain": {**DOMAIN, "disk": "sda"}},
     "request.domain.disk: not an AoE target"),
    ({"version": 1, "action": "start", "domain": {**DOMAIN, "seed": {"x": ""}}},
     "request.domain.seed.x: not a NoCloud file"),
    ({"version": 1, "action": "start", "domain": {**DOMAIN, "extra": 1}},
     "request.domain.extra: unknown key"),
])
def test_bad_requests_name_the_field(doc: object, fault: str) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(ProtocolError) as exc:
        parse_request(text)
    assert str(exc.value).startswith(fault), str(exc.value)


def test_oversized_request_refused() -> None:
    with pytest.raises(ProtocolError, match="more than"):
        parse_request("{" + " " * (1 << 20) + "}")


# ------------------------------------------------------------------------------ forced commands


def test_agent_mode_decisions() -> None:
    assert agent_mode(None, via_ssh=False) == ("serve", "")
    assert agent_mode("hc-hnode-agent") == ("serve", "")
    assert agent_mode("hc-hnode-agent console web1") == ("console", "web1")
    for bad in (None, "", "sh", "bash -i", "hc-hnode-agent 'x", "hc-hnode-agent; sh",
                "hc-hnode-agent console ../x",
                "hc-hnode-agent console web1 extra", "xl list", "scp -t /root",
                "hc-hnode-agent migrate-gate"):
        with pytest.raises(Refused, match="runs only 'hc-hnode-agent'"):
            agent_mode(bad)


def test_migrate_gate_decisions() -> None:
    xl = "/usr/lib/xen-4.17/bin/xl"
    assert migrate_receive_argv("xl migrate-receive", xl) == [xl, "migrate-receive"]
    # what xl_migrate.c sends with -e / debug / verbose
    assert migrate_receive_argv("xl -t -vvv -e migrate-receive -d", xl) == \
        [xl, "-t", "-vvv", "-e", "migrate-receive", "-d"]
    for bad in (None, "", "sh", "xl list", "xl destroy web1", "xl migrate-receive; sh",
                "xl migrate-receive web1", "xl -f /etc/x migrate-receive",
                "/bin/xl migrate-receive", "xl migrate-receive && sh", "xl 'migrate-receive"):
        with pytest.raises(Refused):
            migrate_receive_argv(bad, xl)


def test_migrate_ssh_command_is_pinned_and_batch(tmp_path: Path) -> None:
    cmd = migrate_ssh_command(Config(state=tmp_path, node="hn1"))
    assert f"-i {tmp_path}/migration_key" in cmd
    assert "StrictHostKeyChecking=yes" in cmd and "BatchMode=yes" in cmd
    assert f"UserKnownHostsFile={tmp_path}/peers_known_hosts" in cmd


# ------------------------------------------------------------------------------ trust


def _trust_doc() -> dict[str, object]:
    return {"version": 1, "config_keys": [_key() + " hc-config"],
            "admin_keys": [_key(fill=b"\x02") + " alice@example"],
            "peers": [{"name": "hn2", "address": "198.51.100.12",
                       "host_key": _key(fill=b"\x03"), "migration_key": _key(fill=b"\x04")}]}


def test_authorized_keys_and_known_hosts() -> None:
    t = hntrust.trust_from_doc(_trust_doc())
    k2, k3, k4 = (_key(fill=bytes([i])) for i in (2, 3, 4))
    auth = hntrust.authorized_keys(t, "/usr/local/sbin/hc-hnode-agent",
                                   "/usr/local/sbin/hc-hnode-agent migrate-gate").splitlines()
    assert auth[1] == (f'restrict,pty,command="/usr/local/sbin/hc-hnode-agent" {_key()} '
                       "hc-config")
    assert auth[2] == ('restrict,command="/usr/local/sbin/hc-hnode-agent migrate-gate" '
                       f"{k4} hc-migrate-hn2")
    assert auth[3] == k2 + " alice@example"
    assert hntrust.known_hosts(t) == f"198.51.100.12,hn2 {k3}\n"
    assert hntrust.parse_trust(hntrust.trust_json(t)) == t


@pytest.mark.parametrize(("edit", "fault"), [
    (lambda d: d.update(version=2), "trust.version"),
    (lambda d: d.update(extra=1), "trust.extra: unknown key"),
    # an authorized_keys option or a second line smuggled into a key would widen its rights
    (lambda d: d["admin_keys"].append('command="sh" ' + _key()), "trust.admin_keys[1]"),
    (lambda d: d["config_keys"].append(_key() + "\n" + _key()), "trust.config_keys[1]"),
    (lambda d: d["config_keys"].append("ssh-ed25519 !!!"), "trust.config_keys[1]"),
    (lambda d: d["config_keys"].append(_key() + ' x"y'), "trust.config_keys[1]"),
    # the blob must be the type it claims
    (lambda d: d["config_keys"].append("ssh-ed25519 " + _key("ssh-rsa").split()[1]),
     "trust.config_keys[1]: the key's blob is a 'ssh-rsa'"),
    (lambda d: d["peers"][0].pop("host_key"), "trust.peers[0].host_key: missing"),
    (lambda d: d["peers"][0].update(address="a;b"), "trust.peers[0].address"),
])
def test_bad_trust_refused(edit: object, fault: str) -> None:
    doc = _trust_doc()
    edit(doc)  # type: ignore[operator]
    with pytest.raises(ProtocolError) as exc:
        hntrust.trust_from_doc(doc)
    assert str(exc.value).startswith(fault), str(exc.value)


# ------------------------------------------------------------------------------ the agent


XL_INFO = """host                   : hn1
xen_major              : 4
xen_minor              : 17
total_memory           : 4095
free_memory            : 3012
"""
XL_LIST_V = """Name                                        ID   Mem VCPUs\tState\tTime(s)   UUID                            Reason-Code\tSecurity Label
Domain-0                                     0   512     1     r-----      12.1 00000000-0000-0000-0000-000000000000        -                -
web1--incoming                               3   384     2     --p---       0.0 5f0c2a4e-8d1b-4c3a-9e7f-0123456789ab        -                -
"""  # noqa: E501


def _fake_xl(tmp_path: Path, listing: str = XL_LIST_V) -> Path:
    """The stand-in xl: logs its argv, ``xl create`` adds the domain to its listing."""
    (tmp_path / "list").write_text(listing)
    xl = tmp_path / "xl"
    xl.write_text(f"""#!/bin/sh
echo "$*" >> {tmp_path}/calls
case "$1" in
  info) cat <<'E'
{XL_INFO}E
  ;;
  list) cat {tmp_path}/list ;;
  create) echo "web1 5 384 2 -b---- 0.1 5f0c2a4e-8d1b-4c3a-9e7f-0123456789ab - -" \\
            >> {tmp_path}/list ;;
  destroy) grep -v "^$2 " {tmp_path}/list > {tmp_path}/l2; mv {tmp_path}/l2 {tmp_path}/list ;;
  *) echo "xl: unexpected $*" >&2; exit 1 ;;
esac
""")
    xl.chmod(0o755)
    return xl


def _agent(tmp_path: Path, request: object, xl: Path | None,
           original: str | None = "hc-hnode-agent",
           args: tuple[str, ...] = ()) -> tuple[int, dict[str, object], str]:
    (tmp_path / "etherd").mkdir(exist_ok=True)
    if not (tmp_path / "caps").exists():
        (tmp_path / "caps").write_text("control_d\n")  # /proc/xen/capabilities of a dom0
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **agent_env(),
           "HC_HNODE_ETHERD": str(tmp_path / "etherd"), "HC_HNODE_AOE_WAIT": "1",
           "HC_HNODE_XEN_CAPS": str(tmp_path / "caps"),
           "HC_HNODE_STATE": str(tmp_path / "state"), "HC_HNODE_RUN": str(tmp_path / "run")}
    if xl is not None:
        env["HC_HNODE_XL"] = str(xl)
    if original is not None:  # as sshd runs a forced command
        env["SSH_ORIGINAL_COMMAND"] = original
        env["SSH_CONNECTION"] = "198.51.100.1 50000 198.51.100.11 22"
    text = request if isinstance(request, str) else json.dumps(request)
    r = subprocess.run([sys.executable, str(LAUNCHER), *args], input=text, env=env,
                       capture_output=True, text=True, timeout=60)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


def test_facts_and_list(tmp_path: Path) -> None:
    code, ans, _ = _agent(tmp_path, {"version": 1, "action": "facts"}, _fake_xl(tmp_path))
    assert code == 0 and ans["ok"] is True, ans
    res = ans["result"]
    assert isinstance(res, dict)
    assert (res["xen_version"], res["total_memory_mb"], res["free_memory_mb"]) == \
        ("4.17", 4095, 3012)
    assert res["domains"] == [{"name": "web1--incoming", "domid": 3, "memory_mb": 384,
                               "vcpus": 2, "state": "--p---",
                               "uuid": "5f0c2a4e-8d1b-4c3a-9e7f-0123456789ab"}]
    assert parse_xl_list("Name ID Mem VCPUs State Time(s)\nDomain-0 0 512 1 r----- 1.0\n") == \
        [{"name": "Domain-0", "domid": 0, "memory_mb": 512, "vcpus": 1, "state": "r-----",
          "uuid": ""}]


def test_facts_without_xl_is_a_clear_answer(tmp_path: Path) -> None:
    code, ans, _ = _agent(tmp_path, {"version": 1, "action": "facts"},
                          tmp_path / "no-such-xl")
    assert code == 1 and ans["ok"] is False
    assert "xl not executable" in str(ans["error"]) and "no-such-xl" in str(ans["error"])


def test_facts_outside_a_dom0_says_so(tmp_path: Path) -> None:
    (tmp_path / "caps").write_text("")  # a domU's /proc/xen/capabilities
    code, ans, _ = _agent(tmp_path, {"version": 1, "action": "facts"}, _fake_xl(tmp_path))
    assert code == 1 and "not a Xen dom0" in str(ans["error"]) and "control_d" in str(ans["error"])
    assert not (tmp_path / "calls").exists()  # xl was not even run


def test_bad_request_and_refused_command(tmp_path: Path) -> None:
    code, ans, _ = _agent(tmp_path, {"version": 1, "action": "rm", "name": "x"}, None)
    assert code == 2 and "bad request: request.action: not one of" in str(ans["error"])
    code, ans, err = _agent(tmp_path, "", None, original="/bin/sh -c id")
    assert code == 2 and ans["ok"] is False and "refused" in str(ans["error"])
    code, ans, err = _agent(tmp_path, "", None, original="cat /etc/shadow",
                            args=("migrate-gate",))
    assert code != 0 and "a migration key runs only 'xl migrate-receive'" in err


def test_start_writes_seed_and_config_then_cleanup(tmp_path: Path) -> None:
    xl = _fake_xl(tmp_path)
    etherd = tmp_path / "etherd"
    etherd.mkdir()
    (etherd / "e1.5").write_text("")  # the aoe driver's device (no aoe module here)
    req = {"version": 1, "action": "start", "domain": DOMAIN}
    code, ans, err = _agent(tmp_path, req, xl)
    assert code == 0, (ans, err)
    assert ans["result"] == {"name": "web1", "domid": 5, "memory_mb": 384, "vcpus": 2,
                             "state": "-b----", "uuid": "5f0c2a4e-8d1b-4c3a-9e7f-0123456789ab"}
    cfg = (tmp_path / "run" / "web1.cfg").read_text()
    assert f"target={etherd}/e1.5" in cfg and 'type = "pvh"' in cfg
    seed = tmp_path / "run" / "web1-seed.img"
    label = subprocess.run(["mdir", "-i", str(seed), "::"], capture_output=True, text=True)
    assert "CIDATA" in label.stdout and "meta-data" in label.stdout, label
    meta = subprocess.run(["mtype", "-i", str(seed), "::meta-data"], capture_output=True,
                          text=True)
    assert meta.stdout == DOMAIN["seed"]["meta-data"]  # type: ignore[index]
    assert f"create {tmp_path}/run/web1.cfg" in (tmp_path / "calls").read_text()
    # starting it again is refused, naming the domain
    code, ans, _ = _agent(tmp_path, req, xl)
    assert code == 1 and "web1 already runs (domid 5)" in str(ans["error"])
    # cleanup: the --incoming leftover goes, the running web1 and its files stay
    code, ans, _ = _agent(tmp_path, {"version": 1, "action": "cleanup", "name": "web1"}, xl)
    assert ans["result"] == {"name": "web1", "removed": ["web1--incoming"], "running": True}
    code, ans, _ = _agent(tmp_path, {"version": 1, "action": "destroy", "name": "web1"}, xl)
    assert code == 0
    code, ans, _ = _agent(tmp_path, {"version": 1, "action": "cleanup", "name": "web1"}, xl)
    assert ans["result"] == {"name": "web1", "running": False,
                             "removed": [f"{tmp_path}/run/web1.cfg", str(seed)]}


def test_prepare_stages_a_migration_target_without_starting(tmp_path: Path) -> None:
    xl = _fake_xl(tmp_path)
    etherd = tmp_path / "etherd"
    etherd.mkdir()
    (etherd / "e1.5").write_text("")
    code, ans, err = _agent(tmp_path, {"version": 1, "action": "prepare", "domain": DOMAIN}, xl)
    assert code == 0, (ans, err)
    seed = tmp_path / "run" / "web1-seed.img"
    assert ans["result"] == {"name": "web1", "config": f"{tmp_path}/run/web1.cfg",
                             "seed": str(seed), "disk": f"{etherd}/e1.5"}
    meta = subprocess.run(["mtype", "-i", str(seed), "::meta-data"], capture_output=True,
                          text=True)
    assert meta.stdout == DOMAIN["seed"]["meta-data"]  # type: ignore[index]
    assert "create" not in (tmp_path / "calls").read_text()  # staged, not started
    # a host that does not see the volume refuses, naming it
    (etherd / "e1.5").unlink()
    code, ans, _ = _agent(tmp_path, {"version": 1, "action": "prepare", "domain": DOMAIN}, xl)
    assert code == 1 and "AoE target e1.5 not seen" in str(ans["error"])


def test_start_without_the_aoe_device_names_it(tmp_path: Path) -> None:
    code, ans, _ = _agent(tmp_path, {"version": 1, "action": "start", "domain": DOMAIN},
                          _fake_xl(tmp_path), args=())
    assert code == 1 and "AoE target e1.5 not seen" in str(ans["error"])


def test_answer_reader() -> None:
    assert parse_answer('{"version": 1, "ok": false, "action": "x", "error": "e"}').error == "e"
    with pytest.raises(ProtocolError, match=r"answer\.result"):
        parse_answer('{"version": 1, "ok": true, "action": "x"}')


def test_trust_source_from_the_kernel_command_line(tmp_path: Path) -> None:
    from homecloud.agents.hnode import Failed, trust_source
    cl = tmp_path / "cmdline"
    cl.write_text("console=hvc0 hc.server=http://198.51.100.1:8080/ hc.mac=52:54:00:4b:00:01\n")
    assert trust_source([], {"HC_CMDLINE": str(cl)}) == \
        "http://198.51.100.1:8080/trust/52:54:00:4b:00:01.json"
    assert trust_source(["/tmp/t.json"], {}) == "/tmp/t.json"
    cl.write_text("console=hvc0\n")
    with pytest.raises(Failed, match=r"no hc\.server/hc\.mac"):
        trust_source([], {"HC_CMDLINE": str(cl)})
    with pytest.raises(Refused, match="usage"):
        trust_source(["a", "b"], {})


# xl's output (sender and, through the SSH transport, receiver) for a guest that did not
# suspend in time, in libxl 4.17's words (libxl_dom_suspend.c, xl_migrate.c), with noise in the
# middle: the lines that say why must survive the tail
XL_MIGRATE_FAILED = """\
migration target: Ready to receive domain.
Saving to migration stream new xl format (info 0x3/0x0/1449)
Loading new save file <incoming migration stream> (new xl fmt info 0x3/0x0/1449)
 Savefile contains xl domain config in JSON format
Parsing config from <saved>
libxl: info: libxl_create.c:123:libxl__domain_build_info_setdefault: qemu-xen is unavailable
xc: info: Saving domain 1, type x86 HVM
libxl: error: libxl_dom_suspend.c:283:suspend_common_wait_guest_timeout: \
Domain 1:guest did not suspend, timed out
libxl: error: libxl_stream_write.c:350:libxl__xc_domain_save_done: Domain 1:\
saving domain: domain did not respond to suspend request: Invalid argument
migration sender: libxl_domain_suspend failed (rc=-8)
""" + "\n".join(f"xc: info: frame {i}" for i in range(60)) + """
libxl: error: libxl_domain.c:1137:domain_destroy_callback: Domain 1:Unable to destroy guest
migration target: Domain creation failed (code -3).
Migration failed, failed to suspend at sender.
"""


def test_a_failed_migration_keeps_the_lines_that_say_why() -> None:
    lines = migration_failure_lines(XL_MIGRATE_FAILED)
    assert any("guest did not suspend, timed out" in ln for ln in lines)
    assert any("libxl_domain_suspend failed (rc=-8)" in ln for ln in lines)
    assert lines[-1] == "Migration failed, failed to suspend at sender."
    assert not any("frame 10" in ln for ln in lines)
    assert len(migration_failure_lines(XL_MIGRATE_FAILED, 3)) == 3
    assert migration_failure_lines("") == ["no output"]


def test_the_guest_console_says_why_it_did_not_suspend(tmp_path: Path) -> None:
    log = tmp_path / "guest-web1.log"
    log.write_bytes(b"[    5.1] xen:balloon: Initialising balloon driver\n" + b"x" * 70000 + b"\n"
                    b"[  366.6] Freezing user space processes\n"
                    b"[  386.7] Freezing user space processes failed after 20.005 seconds "
                    b"(1 tasks refusing to freeze, wq_busy=0):\n"
                    b"[  386.7] task:jbd2/xvda1-8 state:D stack:0 pid:141\n"
                    b"[  386.8] OOM killer enabled.\n")
    lines = guest_suspend_lines(log)
    assert lines[0] == "[  366.6] Freezing user space processes"
    assert "1 tasks refusing to freeze" in lines[1] and len(lines) == 2
    assert guest_suspend_lines(tmp_path / "missing.log") == []


def test_trust_asks_again_until_the_config_node_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At boot the trust runs before the network is online: an unreachable config node is
    asked again (every TRUST_RETRY s, for HC_TRUST_WAIT s), a bad document is not."""
    from homecloud.agents import hnode
    from homecloud.agents.common import AgentError
    calls: list[str] = []
    answers: list[object] = [AgentError("GET x: [Errno 101] Network is unreachable"),
                             AgentError("GET x: timed out"), b"{not json"]

    def fake_get(url: str, timeout: float) -> bytes:
        calls.append(url)
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        assert isinstance(a, bytes)
        return a
    monkeypatch.setattr(hnode, "http_get", fake_get)
    monkeypatch.setattr(hnode, "TRUST_RETRY", 0.0)
    cfg = hnode.Config.from_env({"HC_HNODE_STATE": str(tmp_path / "state")})
    (tmp_path / "state").mkdir()
    env = {"HC_TRUST_WAIT": "60"}
    with pytest.raises(hnode.Failed, match=r"trust document http://cn/t\.json: .*JSON"):
        hnode.trust(cfg, ["http://cn/t.json"], env)
    assert len(calls) == 3                 # two failures asked again, the bad document not
    answers[:] = [AgentError("GET x: connection refused")] * 3
    with pytest.raises(hnode.Failed, match="connection refused"):
        hnode.trust(cfg, ["http://cn/t.json"], {"HC_TRUST_WAIT": "0"})


def test_queries_step_back_on_dom0s_cpu_and_actions_do_not(tmp_path: Path) -> None:
    """facts and list run at nice 10 (asked right after a migration, while dom0 wires up the
    guest's vif); an action such as cleanup keeps the priority it was started with.  The
    stand-in xl records the nice value it runs at (field 19 of /proc/self/stat)."""
    real = _fake_xl(tmp_path)
    xl = tmp_path / "xl-nice"
    xl.write_text(f"#!/bin/sh\ncut -d' ' -f19 /proc/$$/stat >> {tmp_path}/nice\n"
                  f"exec {real} \"$@\"\n")
    xl.chmod(0o755)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    for action, want in (("facts", min(base + hnode.QUERY_NICE, 19)),
                         ("list", min(base + hnode.QUERY_NICE, 19)),
                         ("cleanup", base)):
        (tmp_path / "nice").unlink(missing_ok=True)
        req: dict[str, object] = {"version": 1, "action": action}
        if action == "cleanup":
            req["name"] = "web9"
        code, ans, err = _agent(tmp_path, req, xl)
        assert code == 0 and ans["ok"] is True, (action, ans, err)
        seen = {int(x) for x in (tmp_path / "nice").read_text().split()}
        assert seen == {want}, (action, seen)

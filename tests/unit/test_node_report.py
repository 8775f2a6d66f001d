"""The node-report agent (homecloud.agents.report): what it reads from xl and /proc, and the
console lines it prints.  A dom0 cannot run here: ``xl`` is a stand-in script printing what
Xen 4.17's ``xl info`` / ``xl list`` print, and /proc/xen/capabilities a file (HC_XEN_CAPS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from homecloud.agents.report import (
    dom0_facts,
    meminfo_facts,
    parse_xl_info,
    parse_xl_list,
)
from tests.support.agents import agent_env

XL_INFO = """host                   : hn1
release                : 6.1.0-28-amd64
xen_major              : 4
xen_minor              : 17
xen_extra              : .5-pre
total_memory           : 4095
free_memory            : 3012
xen_commandline        : console=com1 dom0_mem=512M,max:512M
"""
XL_LIST = """Name                                        ID   Mem VCPUs	State	Time(s)
Domain-0                                     0   512     1     r-----      12.1
guest1                                       1   256     1     -b----       3.0
"""


def test_parse_xl_info_and_list() -> None:
    info = parse_xl_info(XL_INFO)
    assert info["xen_major"] == "4" and info["free_memory"] == "3012"
    assert info["xen_commandline"] == "console=com1 dom0_mem=512M,max:512M"
    assert parse_xl_list(XL_LIST) == ["Domain-0", "guest1"]
    assert dom0_facts(info, ["Domain-0", "guest1"]) == {
        "xen_version": "4.17", "total_memory_mb": 4095, "free_memory_mb": 3012,
        "domains": "Domain-0,guest1", "domain_count": 2}


def test_meminfo_facts() -> None:
    text = "MemTotal:        4026532 kB\nMemFree:  100 kB\nMemAvailable:    3145728 kB\n"
    assert meminfo_facts(text) == {"total_memory_mb": 3932, "free_memory_mb": 3072}


def _run(tmp_path: Path, caps: str, xl: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "cmdline").write_text("console=ttyS0 hc.role=hnode\n")   # no server: no POST
    (tmp_path / "caps").write_text(caps)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if xl is not None:
        (bindir / "xl").write_text(xl)
        (bindir / "xl").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", **agent_env(), "HC_CONSOLE": "none",
           "HC_CMDLINE": str(tmp_path / "cmdline"), "HC_XEN_CAPS": str(tmp_path / "caps"),
           "HC_NODE_REPORT_XL_WAIT": "2", "HC_XL": str(bindir / "xl")}
    return subprocess.run([sys.executable, "-m", "homecloud.agents.report"], env=env,
                          capture_output=True, text=True, timeout=60)


def test_dom0_lines(tmp_path: Path) -> None:
    xl = ("#!/bin/sh\ncase \"$1\" in info) cat <<'E'\n" + XL_INFO + "E\n;; list) cat <<'E'\n"
          + XL_LIST + "E\n;; esac\n")
    r = _run(tmp_path, "control_d\n", xl)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[:2] == ["hc-node: dom0 up (xen 4.17, 3012 MB free)",
                                         "hc-node: hnode ready"]
    assert "no hc.server/hc.mac on the kernel command line: not reporting" in r.stdout


def test_dom0_without_working_xl_fails(tmp_path: Path) -> None:
    r = _run(tmp_path, "control_d\n", "#!/bin/sh\necho 'xenstored not running' >&2; exit 1\n")
    assert r.returncode == 1
    assert "HC-ERROR: hc-node: xl info failed after 2s" in r.stdout
    assert f"{tmp_path}/bin/xl info: exit code 1: xenstored not running" in r.stdout


def test_not_a_dom0(tmp_path: Path) -> None:
    r = _run(tmp_path, "", None)
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == "hc-node: hnode ready"
    assert os.uname().release  # the detail it reports


def test_dom0_lines_come_before_a_hanging_xl_list(tmp_path: Path) -> None:
    """``xl list`` needs xenstored, ``xl info`` does not: the console lines (which the lab
    waits for) do not wait for it, and the domains fact is left empty."""
    xl = ("#!/bin/sh\ncase \"$1\" in info) cat <<'E'\n" + XL_INFO + "E\n;; list) exec sleep 60"
          "\n;; esac\n")
    r = _run(tmp_path, "control_d\n", xl)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["hc-node: dom0 up (xen 4.17, 3012 MB free)", "hc-node: hnode ready"]
    assert "xl list: exit code -1: " in lines[2] and "timed out after 5s" in r.stdout

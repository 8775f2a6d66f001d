"""The lab's per-node progress, read from serial-console text and reports."""

from __future__ import annotations

from pathlib import Path

from homecloud.lab import progress as P

HNODE_BOOT = """\
\x1b[01;01HiPXE (http://ipxe.org) 00:02.0 CA00 PCI2.10 PnP PMM+0EFD0F40+0EF30F40 CA00
Configuring (net0 52:54:00:aa:00:21)... ok
homecloud: 52:54:00:aa:00:21 boots hnode (20261124T080739Z-ea46890aed1b)
(XEN) Xen version 4.17.5-pre (Debian 4.17.5+72-g01140da4e8-1) (pkg-xen-devel@lists.alioth)
(XEN) *** LOADING DOMAIN 0 ***
[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)
hc: [2.10] init mode aoe-root, kernel 6.1.0-56-amd64
hc: [9.87] waiting for e1.0 on eth0
hc: switch_root to /newroot
[   14.2] systemd[1]: Detected virtualization xen.
Welcome to Debian GNU/Linux 12 (bookworm)!
[   41.0] hc-node-report[512]: hc-node: dom0 up (xl info: ok)
"""


def states(text: str, role: str) -> list[str]:
    st = P.scan(text, role)
    return st.drain()


def test_hnode_boot_moves_through_every_state_in_order() -> None:
    assert states(HNODE_BOOT, "hnode") == [
        "pxe", "loading", "xen", "kernel", "initramfs", "root mounted", "userland", "dom0 up"]
    st = P.scan(HNODE_BOOT, "hnode")
    assert st.state == "dom0 up" and st.final_seen
    assert P.combine(st, "hnode", None, vm_running=True) == "dom0 up"


def test_state_only_moves_forward_within_a_boot() -> None:
    st = P.scan("hc: switch_root to /newroot\nhc: [12.0] late message\n", "hnode")
    assert st.state == "root mounted"


def test_a_new_ipxe_banner_after_boot_is_a_reboot() -> None:
    st = P.scan(HNODE_BOOT + "iPXE (http://ipxe.org) 00:02.0\n", "hnode")
    assert st.state == "pxe"
    assert st.final_seen  # the node did reach dom0 up once
    # but unassigned -> pxe is the firmware retrying, not a new boot after a later state
    st2 = P.scan("iPXE (http://ipxe.org)\nNo filename or root path specified\n", "hnode")
    assert st2.state == "unassigned"


def test_errors_always_apply_and_keep_the_line() -> None:
    text = "iPXE (x)\nhc: [3.0] init\nHC-ERROR: root e1.0 did not appear within 60 s\n"
    st = P.scan(text, "hnode")
    assert st.state == "failed" and "e1.0 did not appear" in st.detail
    panic = P.scan("Linux version 6.1\nKernel panic - not syncing: VFS\n", "snode")
    assert panic.state == "failed"


def test_storage_node_final_state_and_reports() -> None:
    st = P.scan("iPXE (x)\nhc-storage: exports ready e1.0\n", "snode")
    assert st.state == "exports ready"
    assert P.combine(st, "snode", None, vm_running=True) == "exports ready"
    # a report of the final state wins over a console that lags behind
    early = P.scan("iPXE (x)\nLinux version 6.1\n", "snode")
    assert P.combine(early, "snode", {"state": "exports-ready"}, vm_running=True) == \
        "exports ready"
    assert P.combine(early, "snode", {"state": "storage-error"}, vm_running=True) == "failed"
    # a later report moves the shown state on; a stopped VM short of its goal is off
    assert P.combine(early, "snode", {"state": "bogus"}, vm_running=True) == "kernel"
    assert P.combine(early, "snode", None, vm_running=False) == "off"


def test_unknown_role_finishes_at_ready() -> None:
    st = P.scan("[   20.1] hc-node-report[1]: hc-node: domu ready\n", "domu")
    assert st.state == "ready" and P.final_state("domu") == "ready"


def test_follower_reads_only_what_was_appended_and_waits_for_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    f = P.Follower(str(log), "hnode")
    assert f.poll().state == "starting"  # no file yet
    log.write_bytes(b"iPXE (x)\nhomecloud: 52:54:00:aa:00:21 bo")
    assert f.poll().state == "pxe"  # the unfinished line is kept for the next poll
    with open(log, "ab") as fh:
        fh.write(b"ots hnode (b1)\n")
    assert f.poll().state == "loading"
    with open(log, "ab") as fh:
        fh.write(b"." * 5000)  # progress dots without a newline are scanned anyway
    assert f.poll().state == "loading" and f.tail == ""


def test_final_marker_after_a_login_prompt_on_the_same_line() -> None:
    """A getty prompt printed while the agent writes shares its line (seen in the real lab)."""
    text = ("Welcome to Debian GNU/Linux 12 (bookworm)!\n"
            "snode2 login: hc-storage: exports ready e1.0\n")
    st = P.scan(text, "snode")
    assert st.state == "exports ready" and st.final_seen


def test_a_later_report_does_not_hide_the_final_one() -> None:
    """The storage agent reports exports-ready, then hc-node-report reports ready: the node
    stays at its final state (it once went back to "ready" and `lab up` waited forever)."""
    early = P.scan("iPXE (x)\nLinux version 6.1\n", "snode")
    rep = {"state": "ready", "time": 200.0,
           "states": {"exports-ready": 190.0, "ready": 200.0}}
    assert P.combine(early, "snode", rep, vm_running=True, since=100.0) == "exports ready"
    # reports from before this boot do not count
    assert P.combine(early, "snode", rep, vm_running=True, since=195.0) == "ready"
    old = {"state": "exports-ready", "time": 50.0}
    assert P.combine(early, "snode", old, vm_running=True, since=100.0) == "kernel"


def test_reports_keep_every_state_with_its_time(tmp_path: Path) -> None:
    from homecloud.control.reports import Reports, read_reports

    r = Reports(tmp_path)
    mac = "52:54:00:4c:53:02"
    r.put(mac, {"state": "exports-ready", "detail": "e1.0"})
    r.put(mac, {"state": "ready", "detail": "6.1.0"})
    rec = read_reports(tmp_path)[mac]
    assert rec["state"] == "ready" and rec["detail"] == "6.1.0"
    assert set(rec["states"]) == {"exports-ready", "ready"}
    assert rec["states"]["ready"] >= rec["states"]["exports-ready"]


def test_reported_at_is_the_time_of_that_state_not_of_the_last_report() -> None:
    rep = {"state": "ready", "time": 150.0, "states": {"exports-ready": 190.0, "ready": 150.0}}
    assert P.reported_at(rep, "exports ready") == 190.0
    assert P.reported_at(rep, "ready") == 150.0
    assert P.reported_at(rep, "dom0 up") is None and P.reported_at(None, "ready") is None
    assert P.reported_at({"state": "dom0-up", "time": 12.5}, "dom0 up") == 12.5

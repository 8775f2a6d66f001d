"""DRBD 8.4 groundwork (issue 12): the resource file a replicated volume gets, checked by the
real parser (Debian's drbd-utils ``drbdadm-84 dump``: no kernel module needed), and the reader
of ``/proc/drbd`` on 8.4 status texts of the shapes the kernel prints."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from homecloud.agents.drbd import (
    DRBDADM,
    GLOBAL_CONF,
    DrbdError,
    DrbdStatus,
    Replica,
    ResourceSpec,
    Want,
    parse_proc_drbd,
    render,
    resolve_split_brain_steps,
    steps,
)

DRBDADM84 = Path("/usr/lib/drbd/drbdadm-84")  # drbd-utils (apt, .ci/run)

SPEC = ResourceSpec("v-web1-4db1f152", 10, 7810,
                    (Replica("snode1", "198.51.100.11", "/dev/hc/v-web1-4db1f152"),
                     Replica("snode2", "198.51.100.12", "/dev/hc/v-web1-4db1f152")))


def dump(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "drbd.conf"
    conf.write_text(text)
    return subprocess.run([str(DRBDADM84), "-c", str(conf), "dump"], capture_output=True,
                          text=True, timeout=60)


def test_resource_file_is_what_drbdadm_84_reads(tmp_path: Path) -> None:
    r = dump(tmp_path, GLOBAL_CONF + render(SPEC))
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "usage-count no;" in out
    assert "protocol C;" in out
    for policy in ("after-sb-0pri", "after-sb-1pri", "after-sb-2pri", "rr-conflict"):
        assert f"{policy} disconnect;" in out  # never an automatic discard
    assert "allow-two-primaries" not in out  # single primary
    assert "on snode1 { device /dev/drbd10 minor 10; disk /dev/hc/v-web1-4db1f152;" in out
    assert "address ipv4 198.51.100.12:7810;" in out
    assert "c-max-rate 40M;" in out and "on-io-error detach;" in out


def test_the_parser_check_can_fail(tmp_path: Path) -> None:
    """The dump check above is not hollow: drbdadm refuses a broken file."""
    r = dump(tmp_path, GLOBAL_CONF + render(SPEC).replace("protocol C;", "protocol Q;"))
    assert r.returncode != 0


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "Web_1"}, "name must be a lower-case letter"),
    ({"minor": -1}, "minor -1 not in"),
    ({"port": 80}, "port 80 not in 1024..65535"),
    ({"max_resync_mib": 0}, "max_resync_mib 0"),
    ({"replicas": (Replica("snode1", "198.51.100.11", "/dev/hc/v"),
                   Replica("snode1", "198.51.100.12", "/dev/hc/v"))}, "must be two snodes"),
    ({"replicas": (Replica("snode1", "198.51.100.300", "/dev/hc/v"),
                   Replica("snode2", "198.51.100.12", "/dev/hc/v"))},
     "replicas[0].address '198.51.100.300' is not an IPv4 address"),
    ({"replicas": (Replica("snode1", "198.51.100.11", "/dev/hc/v"),
                   Replica("snode2", "198.51.100.12", "/dev/../etc/passwd"))},
     "replicas[1].disk"),
    ({"replicas": (Replica("snode1", "198.51.100.11", "/dev/hc/v"),
                   Replica("snode2; }", "198.51.100.12", "/dev/hc/v"))},
     "replicas[1].host"),
])
def test_bad_specs_are_named(change: dict[str, object], message: str) -> None:
    spec = ResourceSpec(**{**SPEC.__dict__, **change})  # type: ignore[arg-type]
    with pytest.raises(DrbdError, match=None) as exc:
        render(spec)
    assert message in str(exc.value) and "resource" in str(exc.value)


PROC_DRBD = """\
version: 8.4.11 (api:1/proto:86-101)
srcversion: 211FB288A383ED945B83420
 10: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----
    ns:1048576 nr:0 dw:1048576 dr:2049 al:12 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0
 11: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----
    ns:160312 nr:0 dw:0 dr:161024 al:8 bm:0 lo:0 pe:3 ua:0 ap:0 ep:1 wo:f oos:888264
\t[==>.................] sync'ed: 15.3% (888264/1048576)K
\tfinish: 0:01:13 speed: 12,112 (12,112) K/sec
 12: cs:StandAlone ro:Primary/Unknown ds:UpToDate/DUnknown   r-----
    ns:0 nr:0 dw:4096 dr:0 al:1 bm:1 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:4096
 13: cs:Unconfigured
 14: cs:WFConnection ro:Secondary/Unknown ds:Diskless/DUnknown C r-----
    ns:0 nr:0 dw:0 dr:0 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0
"""


def test_proc_drbd_reader() -> None:
    st = parse_proc_drbd(PROC_DRBD)
    assert sorted(st) == [10, 11, 12, 13, 14]
    ok = st[10]
    assert (ok.connection, ok.role, ok.peer_role, ok.disk, ok.peer_disk, ok.protocol) == \
        ("Connected", "Primary", "Secondary", "UpToDate", "UpToDate", "C")
    assert not ok.degraded and not ok.syncing and ok.out_of_sync_kib == 0
    sync = st[11]
    assert sync.syncing and sync.degraded and sync.synced_percent == 15.3
    assert sync.out_of_sync_kib == 888264 and sync.peer_disk == "Inconsistent"
    lone = st[12]  # a split brain leaves both sides StandAlone
    assert (lone.connection, lone.peer_role, lone.peer_disk) == \
        ("StandAlone", "Unknown", "DUnknown")
    assert lone.degraded and lone.protocol == "" and lone.out_of_sync_kib == 4096
    assert not st[13].configured
    assert st[14].disk == "Diskless" and st[14].degraded


def test_proc_drbd_bad_line_is_named() -> None:
    with pytest.raises(DrbdError, match=r"/proc/drbd line 2: no ro:/ds: fields"):
        parse_proc_drbd("version: 8.4.11\n 3: cs:Connected garbage\n")


# ------------------------------------------------------------------ steps (what the agent runs)


def words(cmds: list[list[str]]) -> list[str]:
    """The drbdadm sub-commands, without the binary and its -c CONF."""
    for c in cmds:
        assert c[:3] == [DRBDADM, "-c", "/etc/drbd.conf"], c
    return [" ".join(c[3:]) for c in cmds]


def st(cs: str, ro: str = "Secondary/Secondary", ds: str = "UpToDate/UpToDate") -> DrbdStatus:
    role, peer_role = ro.split("/")
    disk, peer_disk = ds.split("/")
    return DrbdStatus(10, cs, role, peer_role, disk, peer_disk, "C")


N = SPEC.name


def test_a_new_resource_gets_metadata_then_comes_up() -> None:
    assert words(steps(Want(SPEC, primary=True), None, has_metadata=False)) == [
        f"create-md --force {N}", f"adjust {N}"]
    # the promotion waits for the state the device reports once up
    assert words(steps(Want(SPEC, primary=False), None, has_metadata=True)) == [f"adjust {N}"]


def test_identical_clones_start_without_a_full_sync() -> None:
    fresh = st("Connected", ds="Inconsistent/Inconsistent")
    assert words(steps(Want(SPEC, primary=True, identical=True), fresh, True)) == [
        f"adjust {N}", f"new-current-uuid --clear-bitmap {N}", f"primary {N}"]
    # the secondary side never clears the bitmap: one side starts the generation
    assert words(steps(Want(SPEC, primary=False, identical=True), fresh, True)) == [
        f"adjust {N}"]


def test_a_primary_is_promoted_only_from_up_to_date_data() -> None:
    assert words(steps(Want(SPEC, primary=True), st("Connected"), True)) == [
        f"adjust {N}", f"primary {N}"]
    # the peer is gone (its snode died): this side's data is current, it takes over
    lost = st("WFConnection", ds="UpToDate/DUnknown")
    assert words(steps(Want(SPEC, primary=True), lost, True))[-1] == f"primary {N}"
    for disk in ("Outdated", "Inconsistent", "Diskless"):
        with pytest.raises(DrbdError, match=rf"{N} \(minor 10\): will not become primary "
                           rf"with its disk {disk}"):
            steps(Want(SPEC, primary=True), st("WFConnection", ds=f"{disk}/DUnknown"), True)


def test_already_there_and_demotion() -> None:
    prim = st("Connected", ro="Primary/Secondary")
    assert words(steps(Want(SPEC, primary=True), prim, True)) == [f"adjust {N}"]
    assert words(steps(Want(SPEC, primary=False), prim, True)) == [
        f"adjust {N}", f"secondary {N}"]


def test_split_brain_is_left_alone_until_a_side_is_named() -> None:
    sb = st("StandAlone", ro="Primary/Unknown", ds="UpToDate/DUnknown")
    for primary in (True, False):
        with pytest.raises(DrbdError, match=r"StandAlone with its disk UpToDate: split brain"):
            steps(Want(SPEC, primary=primary), sb, True)
    assert words(resolve_split_brain_steps(SPEC, keep_here=True)) == [f"connect {N}"]
    # once a person named the side to keep, the plan says which this is
    assert words(steps(Want(SPEC, primary=True, resolve="keep"), sb, True)) == [f"connect {N}"]
    assert words(steps(Want(SPEC, primary=False, resolve="discard"), sb, True)) == [
        f"secondary {N}", f"connect --discard-my-data {N}"]
    assert words(resolve_split_brain_steps(SPEC, keep_here=False)) == [
        f"secondary {N}", f"connect --discard-my-data {N}"]


def test_external_metadata_keeps_the_volume_whole(tmp_path: Path) -> None:
    ext = ResourceSpec(SPEC.name, 10, 7810, tuple(  # type: ignore[arg-type]
        Replica(r.host, r.address, r.disk, meta=r.disk + "-md") for r in SPEC.replicas))
    r = dump(tmp_path, GLOBAL_CONF + render(ext))
    assert r.returncode == 0, r.stderr
    assert f"meta-disk {SPEC.replicas[0].disk}-md;" in " ".join(r.stdout.split())
    for bad in ("", "/dev/../etc/passwd", SPEC.replicas[0].disk, "internal; disk /dev/x"):
        spec = ResourceSpec(SPEC.name, 10, 7810, (Replica("snode1", "198.51.100.11",
                                                          SPEC.replicas[0].disk, meta=bad),
                                                  SPEC.replicas[1]))
        with pytest.raises(DrbdError, match=r"replicas\[0\]\.meta"):
            spec.check()

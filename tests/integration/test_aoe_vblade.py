"""hcboot aoe scan/verify against real vblade processes in network namespaces made here.

Topology (one Lab per module)::

    ns c (c0) ---+                        +--- ns s1 (eth0): vblade
    ns d (d0) ---+-- ns sw: bridge br0 ---+--- ns s2 (eth0): vblade

vblade listens on the far end of each veth (never on a bridge port: FIELD-NOTES).  ``c`` is the
initiator; ``d`` is a second initiator used for the ``-m`` allow-list test.  Each test starts its
vblades by PID and stops them by PID.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from homecloud.aoe import frames as F
from homecloud.aoe import io
from homecloud.aoe import reader as reader_mod
from homecloud.aoe.cli import aoe
from homecloud.aoe.frames import Target
from homecloud.aoe.io import AoESocket
from homecloud.aoe.reader import ReaderConfig
from homecloud.aoe.scan import discover, scan
from homecloud.aoe.verify import ContentMismatch, expected_from_role, verify
from homecloud.core.manifest import Artifact, BootInfo, Manifest
from tests.support.netns import Lab, Netns, wait_for

pytestmark = pytest.mark.skipif(shutil.which("vblade") is None, reason="vblade not installed")

IMAGE_MIB = 64
SECTORS = IMAGE_MIB * 2048
BUILD = "20261124T050000Z-aoe000000001"
T = Target(1, 2)
StartVblade = Callable[..., subprocess.Popen[bytes]]


@dataclass
class Net:
    lab: Lab
    c: Netns
    d: Netns
    s1: Netns
    s2: Netns
    mac_c: str
    mac_d: str
    mac_s1: str
    mac_s2: str


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with Lab() as lab:
        sw, c, d, s1, s2 = (lab.netns(n) for n in ("sw", "c", "d", "s1", "s2"))
        br = lab.bridge(sw)
        lab.port(sw, br, c, "c0")
        lab.port(sw, br, d, "d0")
        lab.port(sw, br, s1, "eth0")
        lab.port(sw, br, s2, "eth0")
        yield Net(lab, c, d, s1, s2, c.mac("c0"), d.mac("d0"), s1.mac("eth0"), s2.mac("eth0"))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("aoe") / "rootfs.img"
    with open(p, "wb") as f:
        for _ in range(IMAGE_MIB):
            f.write(os.urandom(1 << 20))
    return p


@pytest.fixture(scope="module")
def store(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image store whose role ``hnode`` has ``image`` as its rootfs artifact."""
    root = tmp_path_factory.mktemp("store")
    d = root / "hnode" / BUILD
    d.mkdir(parents=True)
    shutil.copyfile(image, d / "rootfs")
    (d / "kernel").write_bytes(b"not a kernel")
    arts = {n: Artifact(n, _sha(d / n), (d / n).stat().st_size) for n in ("kernel", "rootfs")}
    m = Manifest(role="hnode", build_id=BUILD, build_key="0" * 64,
                 created="2026-11-24T05:00:00Z", artifacts=arts, boot=BootInfo(root="aoe"))
    (d / "manifest.json").write_text(m.to_json())
    os.symlink(BUILD, root / "hnode" / "current")
    return root


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


@pytest.fixture
def vblades(net: Net, tmp_path: Path) -> Iterator[StartVblade]:
    """start(ns, file, *opts, target=T) starts a read-only vblade; all stopped by PID after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(ns: Netns, file: Path, *opts: str, target: Target = T) -> subprocess.Popen[bytes]:
        p = net.lab.popen(["vblade", "-r", *opts, str(target.shelf), str(target.slot), "eth0",
                           str(file)], ns=ns, log=tmp_path / f"vblade-{ns.name}.log")
        started.append(p)
        return p

    yield start
    for p in started:
        net.lab.stop(p)


def copy(src: Path, dst: Path, flip_at: int | None = None) -> Path:
    shutil.copyfile(src, dst)
    if flip_at is not None:
        with open(dst, "r+b") as f:
            f.seek(flip_at)
            b = f.read(1)
            f.seek(flip_at)
            f.write(bytes([b[0] ^ 0x5A]))
    return dst


def wait_paths(sock: AoESocket, n: int, target: Target = T) -> None:
    wait_for(lambda: len(io.query_config(sock, target, 0.2)) >= n, timeout=10,
             what=f"{n} path(s) of {target}")


def client(net: Net, which: str = "c") -> AoESocket:
    ns = net.c if which == "c" else net.d
    return AoESocket(f"{which}0", netns=ns.name)


# ---------------------------------------------------------------- scan


def test_scan_lists_both_paths_of_a_multipath_target(net: Net, vblades: StartVblade,
                                                     image: Path, tmp_path: Path) -> None:
    vblades(net.s1, copy(image, tmp_path / "a.img"))
    vblades(net.s2, copy(image, tmp_path / "b.img"))
    with client(net) as sock:
        wait_paths(sock, 2)
        found = scan(sock, timeout=0.5)
    assert [t.target for t in found] == [T]
    t = found[0]
    assert t.macs == sorted([net.mac_s1, net.mac_s2])
    assert t.sectors == SECTORS and t.size_bytes == IMAGE_MIB << 20
    assert t.identify is not None and t.identify.lba48
    assert t.firmware == 0x4019 and t.buffer_count == 16 and t.config == ""
    assert all(p.max_sectors == 2 for p in t.paths)  # MTU 1500

    r = CliRunner().invoke(aoe, ["scan", "-i", "c0", "--netns", net.c.name, "--json",
                                 "--timeout", "0.5"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc[0]["target"] == "e1.2" and doc[0]["macs"] == t.macs
    assert doc[0]["sectors"] == SECTORS and doc[0]["size_bytes"] == IMAGE_MIB << 20
    assert doc[0]["firmware"] == 0x4019 and doc[0]["buffer_count"] == 16
    text = CliRunner().invoke(aoe, ["scan", "-i", "c0", "--netns", net.c.name,
                                    "--timeout", "0.5"])
    assert text.exit_code == 0 and "e1.2" in text.output and net.mac_s1 in text.output


def test_scan_with_several_targets_and_nothing(net: Net, vblades: StartVblade,
                                               image: Path) -> None:
    with client(net) as sock:
        assert scan(sock, timeout=0.3) == []
    r = CliRunner().invoke(aoe, ["scan", "-i", "c0", "--netns", net.c.name, "--timeout", "0.3"])
    assert r.exit_code == 0 and "no AoE target answered" in r.output
    vblades(net.s1, image, target=Target(3, 0))
    vblades(net.s1, image, target=Target(3, 1))
    with client(net) as sock:
        wait_paths(sock, 1, Target(3, 1))
        wait_paths(sock, 1, Target(3, 0))
        found = scan(sock, timeout=0.5)
    assert [str(t.target) for t in found] == ["e3.0", "e3.1"]
    assert all(t.macs == [net.mac_s1] for t in found)


def test_mac_allow_list_hides_the_export_from_other_initiators(
        net: Net, vblades: StartVblade, image: Path, store: Path) -> None:
    vblades(net.s1, image, "-m", net.mac_c)
    with client(net, "c") as sock:
        wait_paths(sock, 1)  # the allowed initiator sees it
    with client(net, "d") as sock:
        assert scan(sock, timeout=0.5) == []
        with pytest.raises(F.TargetNotFound, match=r"e1\.2 not found on d0"):
            discover(sock, T, timeout=0.3)
        paths = (F.ConfigReply(net.mac_s1, T, 16, 0x4019, 2, 1, b""),)
        with pytest.raises(F.AoETimeout, match="IDENTIFY"):  # ATA frames are ignored too
            io.identify(sock, T, [p.mac for p in paths], timeout=0.05, retries=1)
    r = CliRunner().invoke(aoe, ["verify", "-i", "d0", "--netns", net.d.name, "--target",
                                 "e1.2", "--role", "hnode", "--images", str(store)])
    assert r.exit_code == 3 and "not found on d0" in r.output


# ---------------------------------------------------------------- verify


def test_verify_full_passes_on_the_right_image(net: Net, vblades: StartVblade,
                                               image: Path, store: Path, tmp_path: Path) -> None:
    vblades(net.s1, copy(image, tmp_path / "a.img"))
    vblades(net.s2, copy(image, tmp_path / "b.img"))
    with client(net) as sock:
        wait_paths(sock, 2)
        exp = expected_from_role(store, "hnode", "rootfs")
        seen: list[int] = []
        res = verify(sock, T, exp, progress=lambda done, total: seen.append(done))
    assert res.ok and res.sha256 == exp.sha256 and res.bytes_read == IMAGE_MIB << 20
    assert res.paths == sorted([net.mac_s1, net.mac_s2]) and res.dropped == []
    assert seen[-1] == IMAGE_MIB << 20 and len(seen) == IMAGE_MIB

    r = CliRunner().invoke(aoe, ["verify", "-i", "c0", "--netns", net.c.name, "--target", "e1.2",
                                 "--role", "hnode", "--images", str(store), "--json",
                                 "--progress"])
    assert r.exit_code == 0, r.output
    assert "MB/s" in r.stderr and "100.0%" in r.stderr  # progress goes to stderr only
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["sha256"] == exp.sha256 and doc["export_bytes"] == IMAGE_MIB << 20
    r = CliRunner().invoke(aoe, ["verify", "-i", "c0", "--netns", net.c.name, "--target", "e1.2",
                                 "--manifest", str(store / "hnode" / BUILD / "manifest.json"),
                                 "--sample", "200", "--seed", "7"])
    assert r.exit_code == 0, r.output
    assert "e1.2 OK: 200 sampled sectors" in r.output


def test_verify_names_the_lba_of_one_corrupted_byte(net: Net, vblades: StartVblade,
                                                    image: Path, store: Path,
                                                    tmp_path: Path) -> None:
    offset = 37 * 1048576 + 123457  # LBA 76017
    lba = offset // 512
    vblades(net.s1, copy(image, tmp_path / "bad.img", flip_at=offset))
    with client(net) as sock:
        wait_paths(sock, 1)
        with pytest.raises(ContentMismatch) as ei:
            verify(sock, T, expected_from_role(store, "hnode", "rootfs"))
    assert ei.value.lba == lba
    res = ei.value.result
    assert f"LBA {lba}" in str(ei.value) and res.sha256 != res.expected.sha256

    base = ["verify", "-i", "c0", "--netns", net.c.name, "--target", "e1.2"]
    r = CliRunner().invoke(aoe, [*base, "--role", "hnode", "--images", str(store)])
    assert r.exit_code == 1 and f"first differing sector is LBA {lba}" in r.output

    # only the manifest, no artifact file next to it: the hash mismatch is all that can be said
    lone = tmp_path / "only" / "manifest.json"
    lone.parent.mkdir()
    shutil.copyfile(store / "hnode" / BUILD / "manifest.json", lone)
    r = CliRunner().invoke(aoe, [*base, "--manifest", str(lone)])
    assert r.exit_code == 1 and "no LBA can be named" in r.output and "sha256" in r.output
    r = CliRunner().invoke(aoe, [*base, "--manifest", str(lone), "--sample", "8"])
    assert r.exit_code == 3 and "sample mode" in r.output


def test_verify_sample_finds_a_corrupted_last_sector(net: Net, vblades: StartVblade,
                                                     image: Path, store: Path,
                                                     tmp_path: Path) -> None:
    vblades(net.s1, copy(image, tmp_path / "bad.img", flip_at=(IMAGE_MIB << 20) - 3))
    r = CliRunner().invoke(aoe, ["verify", "-i", "c0", "--netns", net.c.name, "--target", "e1.2",
                                 "--role", "hnode", "--images", str(store), "--sample", "16"])
    assert r.exit_code == 1, r.output
    assert f"LBA {SECTORS - 1}" in r.output and "1 of 16 sampled sectors differ" in r.output


def test_verify_size_mismatch(net: Net, vblades: StartVblade, image: Path,
                              store: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.img"
    with open(image, "rb") as src, open(short, "wb") as dst:
        dst.write(src.read(32 << 20))
    vblades(net.s1, short)
    with client(net) as sock:
        wait_paths(sock, 1)
    r = CliRunner().invoke(aoe, ["verify", "-i", "c0", "--netns", net.c.name, "--target", "e1.2",
                                 "--role", "hnode", "--images", str(store)])
    assert r.exit_code == 1
    assert f"exports {32 << 20} bytes" in r.output and f"is {IMAGE_MIB << 20} bytes" in r.output


def test_verify_completes_when_one_of_two_vblades_dies(net: Net,
                                                       vblades: StartVblade,
                                                       image: Path, store: Path,
                                                       tmp_path: Path) -> None:
    vblades(net.s1, copy(image, tmp_path / "a.img"))
    victim = vblades(net.s2, copy(image, tmp_path / "b.img"))
    killed: list[int] = []

    def kill_at_quarter(done: int, total: int) -> None:
        if not killed and done >= total // 4:
            net.lab.stop(victim)
            killed.append(done)

    with client(net) as sock:
        wait_paths(sock, 2)
        res = verify(sock, T, expected_from_role(store, "hnode", "rootfs"),
                     progress=kill_at_quarter)
    assert killed and res.ok
    assert res.dropped == [net.mac_s2]
    assert res.retransmits > 0


def test_timeout_names_the_lba_when_the_only_path_dies(net: Net,
                                                       vblades: StartVblade,
                                                       image: Path, store: Path) -> None:
    victim = vblades(net.s1, image)
    killed: list[int] = []

    def kill(done: int, total: int) -> None:
        if not killed and done >= 8 << 20:
            net.lab.stop(victim)
            killed.append(done)

    with client(net) as sock:
        wait_paths(sock, 1)
        with pytest.raises(F.AoETimeout) as ei:
            verify(sock, T, expected_from_role(store, "hnode", "rootfs"),
                   config=ReaderConfig(timeout=0.05, retries=2), progress=kill)
    assert ei.value.lba is not None and ei.value.lba >= (8 << 20) // 512
    assert f"LBA {ei.value.lba}" in str(ei.value) and net.mac_s1 in str(ei.value)


def test_read_past_the_end_is_an_ata_error_naming_the_lba(
        net: Net, vblades: StartVblade, image: Path) -> None:
    vblades(net.s1, image)
    with client(net) as sock:
        wait_paths(sock, 1)
        paths = discover(sock, T)
        reader = reader_mod.Reader(sock, T, paths)
        data = list(reader.read([(SECTORS - 2, 2)]))
        with open(image, "rb") as f:
            f.seek((SECTORS - 2) * 512)
            assert data == [(SECTORS - 2, bytearray(f.read(1024)))]
        with pytest.raises(F.ATACommandError, match=f"LBA {SECTORS}") as ei:
            list(reader_mod.Reader(sock, T, paths).read([(SECTORS, 1)]))
        assert ei.value.mac == net.mac_s1 and ei.value.status & F.ATA_STATUS_ERR


def test_jumbo_frames_carry_17_sectors_per_request(image: Path, store: Path) -> None:
    """MTU 9000 on a direct veth: vblade offers 17 sectors per request and verify uses them."""
    with Lab() as lab:
        c, s = lab.netns("jc"), lab.netns("js")
        lab.veth(c, "c0", s, "eth0")
        c.run("ip", "link", "set", "c0", "mtu", "9000")
        s.run("ip", "link", "set", "eth0", "mtu", "9000")
        lab.popen(["vblade", "-r", "1", "2", "eth0", str(image)], ns=s)
        with AoESocket("c0", netns=c.name) as sock:
            assert sock.mtu == 9000 and sock.max_sectors == 17
            wait_paths(sock, 1)
            paths = discover(sock, T)
            assert paths[0].max_sectors == 17
            assert reader_mod.Reader(sock, T, paths).max_sectors == 17
            res = verify(sock, T, expected_from_role(store, "hnode", "rootfs"), paths=paths)
        assert res.ok and res.bytes_read == IMAGE_MIB << 20


def test_a_stalled_path_is_dropped_and_used_again_when_it_answers(
        net: Net, vblades: StartVblade, image: Path, store: Path, tmp_path: Path) -> None:
    """vblade on s2 is stopped (SIGSTOP) early in the read: its path is dropped; it is continued
    (SIGCONT) the moment that happens, answers the requests it had queued, and is revived."""
    vblades(net.s1, copy(image, tmp_path / "a.img"))
    stalled = vblades(net.s2, copy(image, tmp_path / "b.img"))
    events: list[str] = []

    class OnDrop(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            events.append(msg)
            if "dropping path" in msg:
                os.kill(stalled.pid, signal.SIGCONT)

    def stop_early(done: int, total: int) -> None:
        if not events and done == 1 << 20:
            events.append("stopped")
            os.kill(stalled.pid, signal.SIGSTOP)

    handler = OnDrop()
    logging.getLogger("homecloud.aoe").addHandler(handler)
    try:
        with client(net) as sock:
            wait_paths(sock, 2)
            res = verify(sock, T, expected_from_role(store, "hnode", "rootfs"),
                         config=ReaderConfig(path_dead_time=0.3), progress=stop_early)
    finally:
        logging.getLogger("homecloud.aoe").removeHandler(handler)
        os.kill(stalled.pid, signal.SIGCONT)
    assert res.ok
    assert res.dropped == [net.mac_s2] and res.revived == [net.mac_s2], events

"""verify.py and cli.py without a network: expected images from a store / manifest, sampling,
mismatch messages, CLI usage errors and exit codes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from homecloud.aoe import verify as V
from homecloud.aoe.cli import aoe
from homecloud.aoe.frames import Target
from homecloud.core.manifest import Artifact, BootInfo, Manifest

BUILD = "20261124T040000Z-0123456789ab"


def make_store(root: Path, role: str = "hnode", rootfs: bytes = b"x" * 4096) -> Path:
    """A store with one build of ``role`` (kernel + rootfs) and ``current`` pointing at it."""
    d = root / role / BUILD
    d.mkdir(parents=True)
    (d / "kernel").write_bytes(b"kernel")
    (d / "rootfs").write_bytes(rootfs)
    arts = {n: Artifact(n, hashlib.sha256((d / n).read_bytes()).hexdigest(), (d / n).stat().st_size)
            for n in ("kernel", "rootfs")}
    m = Manifest(role=role, build_id=BUILD, build_key="0" * 64, created="2026-11-24T04:00:00Z",
                 artifacts=arts, boot=BootInfo(root="aoe"))
    (d / "manifest.json").write_text(m.to_json())
    os.symlink(BUILD, root / role / "current")
    return d


def test_expected_from_role(tmp_path: Path) -> None:
    d = make_store(tmp_path)
    e = V.expected_from_role(tmp_path, "hnode", "rootfs")
    assert e.size == 4096 and e.local == d / "rootfs"
    assert e.sha256 == hashlib.sha256(b"x" * 4096).hexdigest()
    assert BUILD in e.source and "hnode" in e.source


def test_expected_missing_role_and_artifact(tmp_path: Path) -> None:
    make_store(tmp_path)
    with pytest.raises(V.ArtifactUnavailable, match="no current build of role 'snode'"):
        V.expected_from_role(tmp_path, "snode", "rootfs")
    with pytest.raises(V.ArtifactUnavailable, match=r"no artifact 'initrd'.*kernel, rootfs"):
        V.expected_from_role(tmp_path, "hnode", "initrd")


def test_expected_from_manifest_file_with_and_without_local_file(tmp_path: Path) -> None:
    d = make_store(tmp_path)
    e = V.expected_from_manifest_file(d / "manifest.json", "rootfs")
    assert e.local == d / "rootfs" and e.source == str(d / "manifest.json")
    lone = tmp_path / "elsewhere" / "m.json"
    lone.parent.mkdir()
    lone.write_text((d / "manifest.json").read_text())
    e2 = V.expected_from_manifest_file(lone, "rootfs")
    assert e2.local is None and e2.sha256 == e.sha256
    with pytest.raises(V.ArtifactUnavailable, match="cannot read"):
        V.expected_from_manifest_file(tmp_path / "nope.json", "rootfs")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(V.ArtifactUnavailable, match="not valid JSON"):
        V.expected_from_manifest_file(bad, "rootfs")


def test_sample_lbas_always_first_and_last() -> None:
    lbas = V.sample_lbas(131072, 64, seed=1)
    assert len(lbas) == 64 and lbas[0] == 0 and lbas[-1] == 131071
    assert lbas == sorted(set(lbas))
    assert lbas == V.sample_lbas(131072, 64, seed=1)
    assert V.sample_lbas(3, 100) == [0, 1, 2]
    assert V.sample_lbas(10, 1) == [0]
    assert V.sample_lbas(0, 5) == []


def test_first_diff_sector() -> None:
    a = bytes(4096)
    b = bytearray(a)
    b[3 * 512 + 7] = 1
    assert V._first_diff_sector(a, bytes(b)) == 3
    assert V._first_diff_sector(a, a[:1024]) == 2


def _expected(local: Path | None, size: int = 1 << 20) -> V.ExpectedImage:
    return V.ExpectedImage("rootfs", "a" * 64, size, local, "role hnode build X")


def test_mismatch_messages_name_the_lba_or_say_hash() -> None:
    t = Target(1, 2)
    r = V.VerifyResult(t, "full", _expected(Path("/s/rootfs")), ["02:00:00:00:00:02"], 1 << 20,
                       sha256="b" * 64, first_bad_lba=24112)
    msg = str(V.ContentMismatch(r))
    assert "e1.2" in msg and "LBA 24112" in msg and f"byte offset {24112 * 512}" in msg
    assert "b" * 64 in msg and "/s/rootfs" in msg
    r2 = V.VerifyResult(t, "full", _expected(None), [], 1 << 20, sha256="b" * 64)
    msg2 = str(V.ContentMismatch(r2))
    assert "no LBA can be named" in msg2 and "!= manifest " + "a" * 64 in msg2
    r3 = V.VerifyResult(t, "sample", _expected(Path("/s/rootfs")), [], 1 << 20, samples=64,
                        bad_samples=2, first_bad_lba=2047)
    assert not r3.ok and "2 of 64 sampled" in str(V.ContentMismatch(r3))
    size = str(V.SizeMismatch(t, 1 << 21, _expected(None, (1 << 20) + 100)))
    assert "2097152" in size and "1048676" in size and "whole number" in size


def test_sample_mode_needs_the_local_file() -> None:
    with pytest.raises(V.ArtifactUnavailable, match="sample mode"):
        V.verify(None, Target(1, 2), _expected(None), mode="sample")  # type: ignore[arg-type]


def test_cli_usage_errors() -> None:
    run = CliRunner().invoke
    base = ["verify", "-i", "lo", "--target", "e1.2"]
    r = run(aoe, base)
    assert r.exit_code == 2 and "exactly one of --role or --manifest" in r.output
    r = run(aoe, [*base, "--role", "a", "--manifest", "m.json"])
    assert r.exit_code == 2
    r = run(aoe, ["verify", "-i", "lo", "--target", "shelf1", "--role", "a"])
    assert r.exit_code == 2 and "eSHELF.SLOT" in r.output
    r = run(aoe, [*base, "--role", "a", "--full", "--sample", "4"])
    assert r.exit_code == 2 and "--full or --sample" in r.output


def test_cli_missing_role_exits_3_before_touching_the_network(tmp_path: Path) -> None:
    r = CliRunner().invoke(aoe, ["verify", "-i", "nonexistent0", "--target", "e1.2",
                                 "--role", "hnode", "--images", str(tmp_path)])
    assert r.exit_code == 3
    assert "no current build of role 'hnode'" in r.output

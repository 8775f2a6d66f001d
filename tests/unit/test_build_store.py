"""Image store write side with fake artifacts: publish, current, GC, lock, leftovers."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from builder.errors import LockBusyError, StoreError
from builder.store import RoleStore
from homecloud.core.manifest import (
    CURRENT,
    BootInfo,
    ImageStore,
    Manifest,
    artifact_for,
    load_manifest,
)


def fake_build(rs: RoleStore, build_id: str, key: str = "k" * 64) -> Path:
    tmp = rs.new_tmp_dir(build_id)
    (tmp / "kernel").write_bytes(b"kernel " + build_id.encode())
    (tmp / "initrd").write_bytes(b"initrd")
    m = Manifest(
        role=rs.role, build_id=build_id, build_key=key, created="2026-11-24T00:00:00Z",
        artifacts={n: artifact_for(tmp / n) for n in ("kernel", "initrd")},
        boot=BootInfo(kind="linux", loader="ipxe", root="ram", cmdline="console=ttyS0"),
    )
    (tmp / "manifest.json").write_text(m.to_json())
    return tmp


def publish(rs: RoleStore, build_id: str, key: str = "k" * 64) -> Path:
    return rs.publish(fake_build(rs, build_id, key), build_id)


def test_publish_flips_current_and_is_readable_by_hcboot(tmp_path: Path) -> None:
    rs = RoleStore(tmp_path, "snode")
    publish(rs, "20260101T000000Z-aaaa")
    assert rs.current_id() == "20260101T000000Z-aaaa"
    assert os.readlink(tmp_path / "snode" / CURRENT) == "20260101T000000Z-aaaa"
    publish(rs, "20260102T000000Z-bbbb")
    assert rs.current_id() == "20260102T000000Z-bbbb"
    m = ImageStore(tmp_path).manifest("snode")
    assert m is not None and m.build_id == "20260102T000000Z-bbbb"
    assert [p.name for p in (tmp_path / "snode").iterdir() if p.name.startswith(".tmp")] == []


def test_publish_refuses_without_manifest_and_duplicate_ids(tmp_path: Path) -> None:
    rs = RoleStore(tmp_path, "snode")
    tmp = rs.new_tmp_dir("x")
    with pytest.raises(StoreError, match="no manifest"):
        rs.publish(tmp, "x")
    publish(rs, "20260101T000000Z-aaaa")
    with pytest.raises(StoreError, match="already exists"):
        publish(rs, "20260101T000000Z-aaaa")
    assert rs.current_id() == "20260101T000000Z-aaaa"


def test_failed_build_leaves_current_untouched(tmp_path: Path) -> None:
    rs = RoleStore(tmp_path, "snode")
    publish(rs, "20260101T000000Z-aaaa")
    tmp = fake_build(rs, "20260102T000000Z-bbbb")
    (tmp / "kernel").unlink()  # a build that died before publishing
    assert rs.current_id() == "20260101T000000Z-aaaa"
    assert load_manifest(tmp_path / "snode" / "20260101T000000Z-aaaa").build_id.endswith("aaaa")


def test_leftovers_are_cleaned(tmp_path: Path) -> None:
    rs = RoleStore(tmp_path, "snode")
    publish(rs, "20260101T000000Z-aaaa")
    fake_build(rs, "20260102T000000Z-bbbb")                 # killed mid-build
    os.symlink("20260101T000000Z-aaaa", rs.dir / ".current-999999")  # killed mid-flip
    (rs.dir / ".tmp-gc-20250101T000000Z-old").mkdir()       # killed mid-GC
    with rs.lock():
        removed = rs.clean_leftovers()
    assert len(removed) == 3
    assert sorted(p.name for p in rs.dir.iterdir()) == [
        ".lock", "20260101T000000Z-aaaa", "current"]
    assert rs.current_id() == "20260101T000000Z-aaaa"


def test_gc_keeps_n_and_never_current(tmp_path: Path) -> None:
    rs = RoleStore(tmp_path, "snode")
    ids = [f"2026010{i}T000000Z-{i:04d}" for i in range(1, 6)]
    for bid in ids:
        publish(rs, bid)
    rs.set_current(ids[0])  # an older build is current (rollback)
    removed = rs.gc(2)
    assert rs.current_id() == ids[0]
    assert rs.build_ids() == [ids[0], ids[4]]
    assert removed == ids[1:4]
    assert rs.gc(1) == [ids[4]]
    assert rs.build_ids() == [ids[0]]
    with pytest.raises(StoreError):
        rs.gc(0)


def test_find_by_key_prefers_current(tmp_path: Path) -> None:
    rs = RoleStore(tmp_path, "snode")
    publish(rs, "20260101T000000Z-aaaa", key="a" * 64)
    publish(rs, "20260102T000000Z-bbbb", key="b" * 64)
    assert rs.find_by_key("b" * 64) == "20260102T000000Z-bbbb"
    assert rs.find_by_key("a" * 64) == "20260101T000000Z-aaaa"
    assert rs.find_by_key("c" * 64) is None


def _hold_lock(store: str, ready: multiprocessing.synchronize.Event,
               done: multiprocessing.synchronize.Event) -> None:
    with RoleStore(Path(store), "snode").lock():
        ready.set()
        done.wait(10)


def test_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, done))
    p.start()
    try:
        assert ready.wait(10)
        with pytest.raises(LockBusyError, match=r"snode/\.lock"), \
                RoleStore(tmp_path, "snode").lock(wait=0.3):
            pass
    finally:
        done.set()
        p.join(10)
    with RoleStore(tmp_path, "snode").lock():  # released when the holder exits
        pass


def test_lock_released_when_holder_is_killed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, done))
    p.start()
    assert ready.wait(10)
    assert p.pid is not None
    os.kill(p.pid, 9)
    p.join(10)
    with RoleStore(tmp_path, "snode").lock(wait=2):
        pass

"""The base-layer cache: save, find, use (kept from gc while in use), gc."""

from __future__ import annotations

import gzip
import os
import tarfile
import time
from pathlib import Path

from builder import cache

KEYS = [c * 64 for c in "abcd"]


def _tar(path: Path, payload: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def test_save_then_find(tmp_path: Path) -> None:
    lc = cache.LayerCache(tmp_path / "cache")
    assert lc.find(KEYS[0]) is None
    src = _tar(tmp_path / "work" / "layer.tar", b"layer one")
    saved = lc.save(KEYS[0], src)
    assert saved == lc.entry(KEYS[0]) / "layer.tar" and saved.read_bytes() == b"layer one"
    assert not src.exists()  # moved (same filesystem)
    assert lc.find(KEYS[0]) == saved
    # a second save of the same key (a concurrent build) keeps the first
    again = lc.save(KEYS[0], _tar(tmp_path / "work2" / "layer.tar", b"layer two"))
    assert again.read_bytes() == b"layer one"


def test_half_saved_layer_is_not_found(tmp_path: Path) -> None:
    lc = cache.LayerCache(tmp_path)
    e = lc.entry(KEYS[0])
    e.mkdir(parents=True)
    (e / "layer.tar").write_bytes(b"cut short")  # no .complete: a build killed while saving
    assert lc.find(KEYS[0]) is None
    assert lc.save(KEYS[0], _tar(tmp_path / "w" / "layer.tar", b"whole")).read_bytes() == b"whole"


def test_stand_in_is_an_empty_gzip_tar(tmp_path: Path) -> None:
    lc = cache.LayerCache(tmp_path)
    d = lc.image_cache_dir("bookworm", "amd64", stand_in=True)
    f = d / "debootstrap-debian-bookworm-amd64.tar.gz"
    with gzip.open(f) as g, tarfile.open(fileobj=g) as t:
        assert t.getmembers() == []
    assert (d / "apt").is_symlink() and os.readlink(d / "apt") == str(tmp_path / "apt")
    fresh = lc.image_cache_dir("bookworm", "amd64", stand_in=False)
    assert not (fresh / f.name).exists()  # DIB runs debootstrap


def test_gc_keeps_the_most_recently_used_and_those_in_use(tmp_path: Path) -> None:
    lc = cache.LayerCache(tmp_path)
    now = time.time()
    for i, k in enumerate(KEYS):
        lc.save(k, _tar(tmp_path / "w" / f"{i}.tar"))
        os.utime(lc.entry(k) / ".complete", (now - 100 * (4 - i),) * 2)  # d newest, a oldest
    (tmp_path / "base" / "old").mkdir(parents=True)  # hcbuild before layers
    with lc.use(KEYS[0]) as used:  # the oldest, in use by a build: touched and kept
        assert used == lc.entry(KEYS[0]) / "layer.tar"
        os.utime(lc.entry(KEYS[0]) / ".complete", (now - 1000,) * 2)
        removed = lc.gc(keep=2)
    assert sorted(removed) == sorted([str(tmp_path / "base"), KEYS[1]])
    assert [lc.find(k) is not None for k in KEYS] == [True, False, True, True]
    assert lc.gc(keep=2) == [KEYS[0]]  # no longer in use: the least recently used goes
    assert [lc.find(k) is not None for k in KEYS] == [False, False, True, True]


def test_use_records_the_last_use(tmp_path: Path) -> None:
    lc = cache.LayerCache(tmp_path)
    lc.save(KEYS[0], _tar(tmp_path / "w" / "l.tar"))
    os.utime(lc.entry(KEYS[0]) / ".complete", (1.0, 1.0))
    with lc.use(KEYS[0]) as found:
        assert found is not None
    assert (lc.entry(KEYS[0]) / ".complete").stat().st_mtime > 1000
    with lc.use(KEYS[1]) as missing:
        assert missing is None

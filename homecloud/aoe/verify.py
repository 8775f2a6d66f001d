"""Check an AoE export against the image store: the bytes served must be the artifact's bytes.

``full``: read the whole export, sha256 it and compare with the manifest; when the artifact file
is also on this machine, every chunk is compared with it as well so the first differing LBA can be
named.  ``sample``: read N sectors (always the first and the last, the rest at random) and compare
them with the local artifact file.  Either way the export's size (ATA IDENTIFY) must equal the
artifact's size.  Nothing here can write: only read commands are ever built (frames.py).
"""

from __future__ import annotations

import hashlib
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from homecloud.aoe import io
from homecloud.aoe import reader as reader_mod
from homecloud.aoe.frames import SECTOR, AoEError, ConfigReply, Target
from homecloud.aoe.io import AoESocket
from homecloud.aoe.reader import ReaderConfig
from homecloud.aoe.scan import discover
from homecloud.core.manifest import ImageStore, Manifest, ManifestError, parse_manifest

Progress = Callable[[int, int], None]  # (bytes done, bytes total)

CHUNK_SECTORS = 2048  # 1 MiB per extent handed to the hash


class VerifyError(AoEError):
    """Base class of verification failures (not I/O failures)."""


class ArtifactUnavailable(VerifyError):
    """The manifest, role, artifact or local artifact file needed is missing or unusable."""


class SizeMismatch(VerifyError):
    def __init__(self, target: Target, export_bytes: int, expected: ExpectedImage) -> None:
        self.target = target
        self.export_bytes = export_bytes
        self.expected = expected
        extra = ""
        if expected.size % SECTOR:
            extra = f" (the artifact is not a whole number of {SECTOR}-byte sectors)"
        super().__init__(f"{target} exports {export_bytes} bytes but artifact {expected.name}"
                         f" of {expected.source} is {expected.size} bytes{extra}")


class ContentMismatch(VerifyError):
    """The export's bytes differ from the artifact; ``lba`` is the first differing sector when
    it could be found (None when only the manifest hash was available)."""

    def __init__(self, result: VerifyResult) -> None:
        self.result = result
        self.target = result.target
        self.lba = result.first_bad_lba
        exp = result.expected
        if result.first_bad_lba is not None:
            what = (f"first differing sector is LBA {result.first_bad_lba}"
                    f" (byte offset {result.first_bad_lba * SECTOR}) against {exp.local}")
            if result.mode == "sample":
                what += f" ({result.bad_samples} of {result.samples} sampled sectors differ)"
        else:
            what = "the artifact file is not on this machine, so no LBA can be named"
        if result.sha256 is not None:
            what += f"; sha256 {result.sha256} != manifest {exp.sha256}"
        super().__init__(f"{result.target} does not match artifact {exp.name} of {exp.source}:"
                         f" {what}")


@dataclass(frozen=True)
class ExpectedImage:
    """What an export must contain: an artifact of a manifest, maybe with its local file."""

    name: str
    sha256: str
    size: int
    local: Path | None  # the artifact file, if readable on this machine
    source: str  # "role hnode build X" or the manifest path, for messages


def expected_from_manifest(manifest: Manifest, artifact: str, build_dir: Path | None,
                           source: str) -> ExpectedImage:
    art = manifest.artifacts.get(artifact)
    if art is None:
        for a in manifest.artifacts.values():
            if a.file == artifact:
                art = a
    if art is None:
        have = ", ".join(sorted(manifest.artifacts)) or "none"
        raise ArtifactUnavailable(f"{source}: no artifact {artifact!r} (has {have})")
    local = None
    if build_dir is not None:
        cand = build_dir / art.file
        if cand.is_file():
            local = cand
    return ExpectedImage(artifact, art.sha256, art.size, local, source)


def expected_from_role(store_root: Path, role: str, artifact: str) -> ExpectedImage:
    store = ImageStore(store_root)
    try:
        m = store.manifest(role)
    except ManifestError as exc:
        raise ArtifactUnavailable(str(exc)) from exc
    if m is None:
        raise ArtifactUnavailable(f"{store_root}: no current build of role {role!r}")
    return expected_from_manifest(m, artifact, store.build_dir(role, m.build_id),
                                  f"role {role} build {m.build_id}")


def expected_from_manifest_file(path: Path, artifact: str) -> ExpectedImage:
    try:
        m = parse_manifest(path.read_text(), path)
    except ManifestError as exc:
        raise ArtifactUnavailable(str(exc)) from exc
    except OSError as exc:
        raise ArtifactUnavailable(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return expected_from_manifest(m, artifact, path.parent, str(path))


@dataclass
class VerifyResult:
    target: Target
    mode: str  # "full" | "sample"
    expected: ExpectedImage
    paths: list[str]
    export_bytes: int
    bytes_read: int = 0
    seconds: float = 0.0
    sha256: str | None = None  # full mode: hash of the export
    samples: int = 0
    bad_samples: int = 0
    first_bad_lba: int | None = None
    local_differs_lba: int | None = None  # export == manifest but the local file differs here
    dropped: list[str] = field(default_factory=list)  # paths that stopped answering
    revived: list[str] = field(default_factory=list)  # dropped paths that answered again
    retransmits: int = 0

    @property
    def ok(self) -> bool:
        if self.mode == "full":
            return self.sha256 == self.expected.sha256
        return self.bad_samples == 0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_read / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": str(self.target), "mode": self.mode, "ok": self.ok,
            "artifact": self.expected.name, "source": self.expected.source,
            "expected_sha256": self.expected.sha256, "expected_size": self.expected.size,
            "local_file": str(self.expected.local) if self.expected.local else None,
            "paths": self.paths, "export_bytes": self.export_bytes,
            "bytes_read": self.bytes_read, "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.mb_per_s, 1), "sha256": self.sha256,
            "samples": self.samples, "bad_samples": self.bad_samples,
            "first_bad_lba": self.first_bad_lba, "local_differs_lba": self.local_differs_lba,
            "dropped_paths": self.dropped, "revived_paths": self.revived,
            "retransmits": self.retransmits,
        }


def _first_diff_sector(a: bytes | bytearray, b: bytes) -> int:
    for off in range(0, len(a), SECTOR):
        if a[off:off + SECTOR] != b[off:off + SECTOR]:
            return off // SECTOR
    return len(a) // SECTOR  # b is shorter


def _open_local(expected: ExpectedImage) -> BinaryIO | None:
    if expected.local is None:
        return None
    try:
        f = open(expected.local, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise ArtifactUnavailable(f"{expected.local}: cannot read: {exc.strerror}") from exc
    size = os.fstat(f.fileno()).st_size
    if size != expected.size:
        f.close()
        raise ArtifactUnavailable(f"{expected.local}: {size} bytes, but the manifest"
                                  f" ({expected.source}) says {expected.size}")
    return f


def verify(sock: AoESocket, target: Target, expected: ExpectedImage, *, mode: str = "full",
           samples: int = 64, seed: int | None = None, config: ReaderConfig | None = None,
           discover_timeout: float = 0.5, progress: Progress | None = None,
           paths: tuple[ConfigReply, ...] | None = None) -> VerifyResult:
    """Verify ``target`` against ``expected``; returns the result when the export matches and
    raises SizeMismatch / ContentMismatch when it does not (AoE errors propagate)."""
    if mode not in ("full", "sample"):
        raise ValueError(f"mode must be full or sample, not {mode!r}")
    if mode == "sample" and expected.local is None:
        raise ArtifactUnavailable(f"sample mode compares sectors with the local artifact file,"
                                  f" and {expected.source} has no readable file for"
                                  f" {expected.name}: use --full (manifest sha256)")
    if paths is None:
        paths = discover(sock, target, timeout=discover_timeout)
    ident, _ = io.identify(sock, target, [p.mac for p in paths])
    export_bytes = ident.sectors * SECTOR
    result = VerifyResult(target, mode, expected, [p.mac for p in paths], export_bytes)
    if export_bytes != expected.size:
        raise SizeMismatch(target, export_bytes, expected)
    reader = reader_mod.Reader(sock, target, paths, config)
    local = _open_local(expected)
    t0 = time.monotonic()
    try:
        if mode == "full":
            _full(reader, ident.sectors, local, result, progress)
        else:
            assert local is not None
            _sample(reader, ident.sectors, local, result, samples, seed, progress)
    finally:
        result.seconds = time.monotonic() - t0
        result.dropped = list(reader.stats.dropped)
        result.revived = list(reader.stats.revived)
        result.retransmits = reader.stats.retransmits
        if local is not None:
            local.close()
    if not result.ok:
        raise ContentMismatch(result)
    return result


class _Checker:
    """sha256 of the export and comparison with the local file, in order, on a second thread
    (hashlib and file reads release the GIL, so this overlaps with the packet loop)."""

    def __init__(self, local: BinaryIO | None) -> None:
        self.h = hashlib.sha256()
        self.local = local
        self.first_diff: int | None = None
        self.error: BaseException | None = None
        self.q: queue.Queue[tuple[int, bytearray] | None] = queue.Queue(maxsize=16)
        self.thread = threading.Thread(target=self._run, name="aoe-verify-hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while (item := self.q.get()) is not None:
                lba, data = item
                self.h.update(data)
                if self.local is not None and self.first_diff is None:
                    ref = self.local.read(len(data))
                    if ref != data:
                        self.first_diff = lba + _first_diff_sector(data, ref)
        except BaseException as exc:  # re-raised by finish() in the caller's thread
            self.error = exc
            while self.q.get() is not None:  # keep draining so put() never blocks forever
                pass

    def put(self, lba: int, data: bytearray) -> None:
        self.q.put((lba, data))

    def finish(self) -> str:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.h.hexdigest()


def _full(reader: reader_mod.Reader, sectors: int, local: BinaryIO | None, result: VerifyResult,
          progress: Progress | None) -> None:
    total = sectors * SECTOR
    checker = _Checker(local)
    try:
        for lba, data in reader.read(reader_mod.sector_extents(0, sectors, CHUNK_SECTORS)):
            checker.put(lba, data)
            result.bytes_read += len(data)
            if progress:
                progress(result.bytes_read, total)
    finally:
        digest = checker.finish()
    result.sha256 = digest
    if result.sha256 != result.expected.sha256:
        result.first_bad_lba = checker.first_diff
    elif checker.first_diff is not None:
        result.local_differs_lba = checker.first_diff  # the export is right, the local copy is not


def sample_lbas(sectors: int, n: int, seed: int | None = None) -> list[int]:
    """``n`` distinct LBAs in [0, sectors): the first, the last and n-2 at random, sorted."""
    if sectors <= 0:
        return []
    n = max(1, min(n, sectors))
    picked = {0, sectors - 1} if n >= 2 else {0}
    rng = random.Random(seed)
    if n - len(picked) > 0 and sectors > 2:
        for lba in rng.sample(range(1, sectors - 1), min(n - len(picked), sectors - 2)):
            picked.add(lba)
    return sorted(picked)


def _sample(reader: reader_mod.Reader, sectors: int, local: BinaryIO, result: VerifyResult, n: int,
            seed: int | None, progress: Progress | None) -> None:
    lbas = sample_lbas(sectors, n, seed)
    total = len(lbas) * SECTOR
    result.samples = len(lbas)
    for lba, data in reader.read((lba, 1) for lba in lbas):
        local.seek(lba * SECTOR)
        if local.read(SECTOR) != data:
            result.bad_samples += 1
            if result.first_bad_lba is None or lba < result.first_bad_lba:
                result.first_bad_lba = lba
        result.bytes_read += len(data)
        if progress:
            progress(result.bytes_read, total)

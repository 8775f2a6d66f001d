"""Publish a build into an image store for tests, in the exact format hcbuild writes
(homecloud.core.manifest), without running diskimage-builder."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from homecloud.core.manifest import CURRENT, MANIFEST_NAME, BootInfo, Manifest, artifact_for


def publish(store: Path, role: str, files: dict[str, Path | bytes], boot: BootInfo,
            build_id: str | None = None) -> Manifest:
    build_id = build_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid():x}"
    d = store / role / build_id
    d.mkdir(parents=True)
    arts = {}
    for name, src in files.items():
        dst = d / name
        if isinstance(src, bytes):
            dst.write_bytes(src)
        else:
            shutil.copyfile(src, dst)
        arts[name] = artifact_for(dst)
    m = Manifest(role=role, build_id=build_id, build_key="0" * 64,
                 created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 artifacts=arts, boot=boot, versions={"kernel": "test"})
    (d / MANIFEST_NAME).write_text(m.to_json())
    tmp = store / role / f".{CURRENT}.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(build_id, tmp)
    os.replace(tmp, store / role / CURRENT)
    return m

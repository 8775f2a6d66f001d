"""The image-store manifest: the one format hcbuild writes and hcboot reads.

Store layout (``<store>`` is ``--out`` of hcbuild and ``--images`` of hcboot)::

    <store>/<role>/<build-id>/manifest.json
    <store>/<role>/<build-id>/<artifact files>     kernel, initrd, xen, rootfs, ...
    <store>/<role>/current -> <build-id>            symlink, flipped atomically by rename

A build directory is immutable once ``current`` has pointed at it, so a node that fetched the
manifest of build X can fetch X's artifacts by build id while newer builds are published.

``manifest.json``::

    {
      "format": 1,
      "role": "hnode",
      "build_id": "20261124T040000Z-1a2b3c4d5e6f",
      "build_key": "<sha256 hex of every input>",
      "created": "2026-11-24T04:00:00Z",
      "artifacts": {"kernel": {"file": "kernel", "sha256": "...", "size": 123}, ...},
      "boot": {
        "kind": "linux" | "xen",     # xen: artifacts "xen" (gunzipped ELF), "kernel", "initrd"
        "loader": "ipxe" | "pxelinux",
        "root": "ram" | "aoe" | "disk",
        "cmdline": "console=ttyS0 ...",          # kernel (dom0 for xen) command line
        "xen_cmdline": "console=com1 ..."        # only for kind xen
      },
      "versions": {"kernel": "6.1.0-...", "xen": "4.17...", "dib": "3.43.0", ...},
      "packages": ["name=version", ...],
      "profile": {...}                           # the fully resolved profile, informational
    }

Artifact names are plain file names (no '/', no leading dot).  Readers must ignore unknown keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homecloud.core.errors import ManifestError

__all__ = ["ManifestError"]

FORMAT = 1
MANIFEST_NAME = "manifest.json"
CURRENT = "current"
BOOT_KINDS = ("linux", "xen")
LOADERS = ("ipxe", "pxelinux")
ROOT_KINDS = ("ram", "aoe", "disk")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Artifact:
    file: str
    sha256: str
    size: int


@dataclass(frozen=True)
class BootInfo:
    kind: str = "linux"
    loader: str = "ipxe"
    root: str = "ram"
    cmdline: str = ""
    xen_cmdline: str = ""

    def to_doc(self) -> dict[str, str]:
        return {"kind": self.kind, "loader": self.loader, "root": self.root,
                "cmdline": self.cmdline, "xen_cmdline": self.xen_cmdline}


@dataclass(frozen=True)
class Manifest:
    role: str
    build_id: str
    build_key: str
    created: str
    artifacts: Mapping[str, Artifact]
    boot: BootInfo
    versions: Mapping[str, str] = field(default_factory=dict)
    packages: tuple[str, ...] = ()
    profile: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "role": self.role,
            "build_id": self.build_id,
            "build_key": self.build_key,
            "created": self.created,
            "artifacts": {
                name: {"file": a.file, "sha256": a.sha256, "size": a.size}
                for name, a in sorted(self.artifacts.items())
            },
            "boot": self.boot.to_doc(),
            "versions": dict(sorted(self.versions.items())),
            "packages": list(self.packages),
            "profile": dict(self.profile),
        }
        return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def _req(doc: Mapping[str, Any], key: str, typ: type, path: Path) -> Any:
    if key not in doc:
        raise ManifestError(path, f"missing key {key!r}")
    value = doc[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ManifestError(path, f"key {key!r} must be {typ.__name__}, got {type(value).__name__}")
    return value


def parse_manifest(text: str, path: Path | str = "<manifest>") -> Manifest:
    p = Path(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(p, f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError(p, "top level must be an object")
    fmt = _req(doc, "format", int, p)
    if fmt != FORMAT:
        raise ManifestError(p, f"unsupported format {fmt} (this homecloud reads {FORMAT})")
    arts: dict[str, Artifact] = {}
    for name, a in _req(doc, "artifacts", dict, p).items():
        if not isinstance(a, dict):
            raise ManifestError(p, f"artifacts.{name} must be an object")
        file = _req(a, "file", str, p)
        if not _NAME_RE.match(name) or not _NAME_RE.match(file):
            raise ManifestError(p, f"artifacts.{name}: bad artifact name or file {file!r}")
        sha = _req(a, "sha256", str, p)
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ManifestError(p, f"artifacts.{name}.sha256 is not a sha256 hex digest")
        arts[name] = Artifact(file=file, sha256=sha, size=_req(a, "size", int, p))
    b = _req(doc, "boot", dict, p)
    boot = BootInfo(
        kind=str(b.get("kind", "linux")),
        loader=str(b.get("loader", "ipxe")),
        root=str(b.get("root", "ram")),
        cmdline=str(b.get("cmdline", "")),
        xen_cmdline=str(b.get("xen_cmdline", "")),
    )
    if boot.kind not in BOOT_KINDS:
        raise ManifestError(p, f"boot.kind {boot.kind!r} not one of {BOOT_KINDS}")
    if boot.loader not in LOADERS:
        raise ManifestError(p, f"boot.loader {boot.loader!r} not one of {LOADERS}")
    if boot.root not in ROOT_KINDS:
        raise ManifestError(p, f"boot.root {boot.root!r} not one of {ROOT_KINDS}")
    need = ("xen", "kernel") if boot.kind == "xen" else ("kernel",)
    for n in need:
        if n not in arts:
            raise ManifestError(p, f"boot.kind {boot.kind} needs artifact {n!r}")
    return Manifest(
        role=_req(doc, "role", str, p),
        build_id=_req(doc, "build_id", str, p),
        build_key=_req(doc, "build_key", str, p),
        created=_req(doc, "created", str, p),
        artifacts=arts,
        boot=boot,
        versions={str(k): str(v) for k, v in doc.get("versions", {}).items()},
        packages=tuple(str(x) for x in doc.get("packages", [])),
        profile=doc.get("profile", {}) or {},
    )


def load_manifest(build_dir: Path) -> Manifest:
    path = build_dir / MANIFEST_NAME
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(path, f"cannot read: {exc.strerror or exc}") from exc
    return parse_manifest(text, path)


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def artifact_for(path: Path) -> Artifact:
    return Artifact(file=path.name, sha256=sha256_file(path), size=path.stat().st_size)


class ImageStore:
    """Read side of the image store (hcboot, hcbuild's cache look-ups).  The write side (publish,
    gc) is builder.store."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def roles(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / CURRENT).exists())

    def current_id(self, role: str) -> str | None:
        if not _NAME_RE.match(role):
            return None
        link = self.root / role / CURRENT
        try:
            target = os.readlink(link)
        except OSError:
            return None
        name = Path(target).name
        return name if _NAME_RE.match(name) else None

    def build_dir(self, role: str, build_id: str) -> Path | None:
        if not (_NAME_RE.match(role) and _NAME_RE.match(build_id)) or build_id == CURRENT:
            return None
        d = self.root / role / build_id
        return d if (d / MANIFEST_NAME).is_file() else None

    def manifest(self, role: str, build_id: str | None = None) -> Manifest | None:
        """The manifest of ``build_id`` (default: current) of ``role``, or None if absent."""
        bid = build_id or self.current_id(role)
        if bid is None:
            return None
        d = self.build_dir(role, bid)
        return load_manifest(d) if d else None

    def artifact_path(self, role: str, build_id: str, name: str) -> Path | None:
        """The file of artifact ``name`` (or its file name) in a build, None if unknown."""
        d = self.build_dir(role, build_id)
        if d is None:
            return None
        m = load_manifest(d)
        for aname, art in m.artifacts.items():
            if name in (aname, art.file):
                return d / art.file
        return None

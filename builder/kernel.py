"""Kernel and Xen specs (``kernels/*.yaml``) and the kernel of a built root tree.

A spec is declarative: which package, which module sets the small initramfs needs, the default
command lines.  ``kernel_tree_from_root`` takes the kernel from a root tree that
diskimage-builder built (the test VMs fetch Debian's packages instead: tests/support/kernels.py).

Every failure is a typed exception: ``SpecError`` (file + key), ``KernelError`` (anything else
about a tree); a failed command (depmod) raises builder.run's ``CommandError``.
"""

from __future__ import annotations

import lzma
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder import paths
from builder.errors import BuildError
from builder.run import run

__all__ = [
    "KernelError",
    "KernelSpec",
    "KernelTree",
    "SpecError",
    "XenSpec",
    "kernel_tree_from_root",
    "load_kernel_spec",
    "load_spec",
    "load_xen_spec",
]

# ---------------------------------------------------------------- errors


class KernelError(BuildError):
    """Anything wrong with a kernel/Xen spec, package or tree."""


class SpecError(KernelError):
    def __init__(self, path: Path | str, key: str | None, message: str) -> None:
        self.path = Path(path)
        self.key = key
        self.message = message
        where = f"{self.path}: {key}" if key else str(self.path)
        super().__init__(f"{where}: {message}")


# ---------------------------------------------------------------- specs


@dataclass(frozen=True)
class KernelSpec:
    name: str
    package: str
    image_package: str
    version: str | None
    cmdline: str
    module_sets: Mapping[str, tuple[str, ...]]
    initramfs: Mapping[str, tuple[str, ...]]
    source: Path | None = None
    autoload: tuple[str, ...] = ()  # module sets loaded per PCI device, not all at boot
    # name -> regexes of module paths a profile may prune (builder/modprune.py)
    prune_sets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def modules_in(self, *sets: str) -> tuple[str, ...]:
        """The union of the named module sets, in order, without duplicates."""
        out: list[str] = []
        for s in sets:
            if s not in self.module_sets:
                raise SpecError(self.source or self.name, f"module_sets.{s}", "no such module set")
            for m in self.module_sets[s]:
                if m not in out:
                    out.append(m)
        return tuple(out)

    def modules_for(self, mode: str) -> tuple[str, ...]:
        """Module names the initramfs of ``mode`` (aoe-root, ram-root) needs."""
        if mode not in self.initramfs:
            raise SpecError(self.source or self.name, f"initramfs.{mode}", "no such initramfs mode")
        return self.modules_in(*self.initramfs[mode])

    def autoload_for(self, mode: str) -> tuple[str, ...]:
        """The modules of ``mode`` that the initramfs loads only for a PCI device they drive
        (from the ``autoload`` sets: NIC drivers), a subset of ``modules_for(mode)``."""
        sets = [s for s in self.initramfs.get(mode, ()) if s in self.autoload]
        return self.modules_in(*sets) if sets else ()


@dataclass(frozen=True)
class XenSpec:
    name: str
    package: str
    hypervisor: str
    version: str | None
    cmdline: str
    dom0_cmdline: str
    source: Path | None = None


_KERNEL_KEYS = {
    "kind": True, "name": True, "package": True, "image_package": False, "version": False,
    "cmdline": False, "module_sets": False, "initramfs": False, "autoload": False,
    "prune_sets": False,
}
_XEN_KEYS = {
    "kind": True, "name": True, "package": True, "hypervisor": True, "version": False,
    "cmdline": True, "dom0_cmdline": True,
}


def _resolve_spec_path(path_or_name: Path | str) -> Path:
    p = Path(path_or_name)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in str(path_or_name):
        return p
    return paths.kernels_dir() / f"{path_or_name}.yaml"


def _str(path: Path, key: str, value: Any, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SpecError(path, key, f"expected a string, got {type(value).__name__}")
    s = str(value).strip()
    if not s and not optional:
        raise SpecError(path, key, "must not be empty")
    if "\n" in s:
        raise SpecError(path, key, "must be one line")
    return s or None


def _req_str(path: Path, key: str, value: Any) -> str:
    s = _str(path, key, value)
    assert s is not None
    return s


def _name_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(path, key, f"expected a list, got {type(value).__name__}")
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise SpecError(path, f"{key}[{i}]", f"bad name {v!r}")
        out.append(v)
    return tuple(out)


def _name_map(path: Path, key: str, value: Any) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(path, key, f"expected a mapping, got {type(value).__name__}")
    return {str(k): _name_list(path, f"{key}.{k}", v) for k, v in value.items()}


def _regex_map(path: Path, key: str, value: Any) -> dict[str, tuple[str, ...]]:
    """{name: [regex, ...]}, every regex compiled once here so a bad one names its place."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(path, key, f"expected a mapping, got {type(value).__name__}")
    out: dict[str, tuple[str, ...]] = {}
    for name, pats in value.items():
        if not isinstance(pats, list) or not pats:
            raise SpecError(path, f"{key}.{name}", "expected a non-empty list of regexes")
        for i, p in enumerate(pats):
            if not isinstance(p, str):
                raise SpecError(path, f"{key}.{name}[{i}]", f"not a string: {p!r}")
            try:
                re.compile(p)
            except re.error as exc:
                raise SpecError(path, f"{key}.{name}[{i}]",
                                f"{p!r} is not a regular expression: {exc}") from None
        out[str(name)] = tuple(pats)
    return out


def _read_yaml(path: Path, table: Mapping[str, bool]) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(path, None, f"cannot read: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(path, None, f"invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise SpecError(path, None, "top level must be a mapping")
    for key in data:
        if key not in table:
            raise SpecError(path, str(key), f"unknown key (allowed: {', '.join(sorted(table))})")
    for key, required in table.items():
        if required and key not in data:
            raise SpecError(path, key, "missing required key")
    return data


def load_spec(path_or_name: Path | str) -> KernelSpec | XenSpec:
    """Load ``kernels/<name>.yaml`` (or a path); ``kind`` picks the dataclass."""
    path = _resolve_spec_path(path_or_name)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(path, None, f"cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise SpecError(path, None, f"invalid YAML: {e}") from e
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind == "kernel":
        return load_kernel_spec(path)
    if kind == "xen":
        return load_xen_spec(path)
    raise SpecError(path, "kind", f"must be 'kernel' or 'xen', got {kind!r}")


def load_kernel_spec(path_or_name: Path | str) -> KernelSpec:
    path = _resolve_spec_path(path_or_name)
    d = _read_yaml(path, _KERNEL_KEYS)
    if d["kind"] != "kernel":
        raise SpecError(path, "kind", f"expected 'kernel', got {d['kind']!r}")
    package = _req_str(path, "package", d["package"])
    module_sets = _name_map(path, "module_sets", d.get("module_sets"))
    initramfs = _name_map(path, "initramfs", d.get("initramfs"))
    for mode, sets in initramfs.items():
        for i, s in enumerate(sets):
            if s not in module_sets:
                raise SpecError(path, f"initramfs.{mode}[{i}]", f"unknown module set {s!r}")
    autoload = _name_list(path, "autoload", d.get("autoload") or [])
    for i, s in enumerate(autoload):
        if s not in module_sets:
            raise SpecError(path, f"autoload[{i}]", f"unknown module set {s!r}")
    return KernelSpec(
        name=_req_str(path, "name", d["name"]),
        package=package,
        image_package=_str(path, "image_package", d.get("image_package"), optional=True)
        or package,
        version=_str(path, "version", d.get("version"), optional=True),
        cmdline=_str(path, "cmdline", d.get("cmdline", ""), optional=True) or "",
        module_sets=module_sets,
        initramfs=initramfs,
        source=path,
        autoload=autoload,
        prune_sets=_regex_map(path, "prune_sets", d.get("prune_sets")),
    )


def load_xen_spec(path_or_name: Path | str) -> XenSpec:
    path = _resolve_spec_path(path_or_name)
    d = _read_yaml(path, _XEN_KEYS)
    if d["kind"] != "xen":
        raise SpecError(path, "kind", f"expected 'xen', got {d['kind']!r}")
    hyp = _req_str(path, "hypervisor", d["hypervisor"]).lstrip("/")
    if ".." in Path(hyp).parts:
        raise SpecError(path, "hypervisor", "must be a path inside the package")
    return XenSpec(
        name=_req_str(path, "name", d["name"]),
        package=_req_str(path, "package", d["package"]),
        hypervisor=hyp,
        version=_str(path, "version", d.get("version"), optional=True),
        cmdline=_req_str(path, "cmdline", d["cmdline"]),
        dom0_cmdline=_req_str(path, "dom0_cmdline", d["dom0_cmdline"]),
        source=path,
    )


# ---------------------------------------------------------------- trees


@dataclass(frozen=True)
class KernelTree:
    vmlinuz: Path
    modules_dir: Path
    version: str
    package: str = ""
    package_version: str = ""


def _modules_dir(root: Path, version: str) -> Path | None:
    for base in ("lib/modules", "usr/lib/modules"):
        if (root / base / version).is_dir():
            return root / base / version
    return None


def _depmod(root: Path, version: str) -> None:
    # The host has no kmod depmod; busybox's works on a foreign tree (-b BASEDIR).
    mods = _modules_dir(root, version)
    if mods is None:
        raise KernelError(f"{root}: no lib/modules/{version}")
    base = mods.parent.parent.parent  # BASEDIR of BASEDIR/lib/modules/VERSION
    run(["busybox", "depmod", "-b", str(base), version], what=f"depmod of {mods}")
    if not (mods / "modules.dep").is_file():
        raise KernelError(f"depmod wrote no modules.dep under {mods}")


def _version_key(v: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+~]", v)]


def _kernel_versions(root: Path) -> list[str]:
    """Versions that have both boot/vmlinuz-V and (usr/)lib/modules/V, oldest first."""
    boot = {p.name[len("vmlinuz-"):] for p in (root / "boot").glob("vmlinuz-*") if p.is_file()}
    mods: set[str] = set()
    for base in ("lib/modules", "usr/lib/modules"):
        d = root / base
        if d.is_dir():
            mods |= {p.name for p in d.iterdir() if p.is_dir()}
    return sorted(boot & mods, key=_version_key)


def kernel_tree_from_root(rootdir: Path, version: str | None = None) -> KernelTree:
    """The kernel of a root tree: ``boot/vmlinuz-V`` + ``lib/modules/V`` (newest V by default).

    Runs ``busybox depmod`` when the tree has no modules.dep yet."""
    root = Path(rootdir)
    vers = _kernel_versions(root)
    if not vers:
        raise KernelError(f"{root}: no boot/vmlinuz-VERSION with a matching lib/modules/VERSION")
    if version is None:
        version = vers[-1]
    elif version not in vers:
        raise KernelError(f"{root}: kernel {version} not found (have {', '.join(vers)})")
    mods = _modules_dir(root, version)
    assert mods is not None  # _kernel_versions only lists versions with a modules dir
    if not (mods / "modules.dep").is_file():
        _depmod(root, version)
    return KernelTree(vmlinuz=root / "boot" / f"vmlinuz-{version}", modules_dir=mods,
                      version=version)


# ---------------------------------------------------------------- the ELF inside a bzImage

#: a bzImage's payload compressions (arch/x86/boot/header.S; the payload's first bytes)
_GZIP, _XZ = b"\x1f\x8b", b"\xfd7zXZ\x00"


def bzimage_elf(data: bytes, where: str = "kernel") -> bytes:
    """The ELF ``vmlinux`` inside bzImage ``data`` (its gzip or xz payload, decompressed).

    The boot protocol's header (Documentation/arch/x86/boot.rst) places the payload at
    ``(setup_sects + 1) * 512 + payload_offset`` (``payload_offset``/``payload_length`` at
    0x248/0x24c, protocol 2.08+); the kernel's build appends 4 size bytes to an xz payload,
    left over here.  KernelError naming ``where`` for anything else: not a bzImage, an older
    protocol, another compression, or a payload that does not decompress to an ELF."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise KernelError(f"{where}: not a bzImage (no HdrS signature at 0x202)")
    (version,) = struct.unpack_from("<H", data, 0x206)
    if version < 0x208:
        raise KernelError(f"{where}: boot protocol {version >> 8}.{version & 0xff} has no "
                          "payload offset (2.08+ needed)")
    setup_sects = data[0x1f1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = data[start:start + length]
    if len(payload) != length or not length:
        raise KernelError(f"{where}: payload at {start} ({length} bytes) runs past the file")
    try:
        d: lzma.LZMADecompressor | zlib._Decompress
        if payload.startswith(_XZ):
            d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        elif payload.startswith(_GZIP):
            d = zlib.decompressobj(wbits=31)
        else:
            raise KernelError(f"{where}: payload compression {payload[:6].hex()} is neither "
                              "gzip nor xz")
        elf = d.decompress(payload)
        if not d.eof:
            raise KernelError(f"{where}: payload ends before its compressed stream does")
    except (lzma.LZMAError, zlib.error) as exc:
        raise KernelError(f"{where}: payload does not decompress: {exc}") from None
    if not elf.startswith(b"\x7fELF"):
        raise KernelError(f"{where}: payload is not an ELF image")
    return elf

"""Profiles: what a role image is made of.  ``profiles/<role>.yaml``, strict typed schema.

One table (``SETTINGS``) drives parsing, validation, defaults, ``hcbuild show`` and the help
text.  The parsed result is a frozen dataclass.  Unknown or misspelt keys and wrong types are
errors naming the file and the key (with the closest known key as a suggestion); every ``env``
key must be declared by one of the profile's elements (README environment table or an
environment.d default).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from builder import paths
from builder.elements import ElementLibrary
from builder.errors import ElementError, ProfileError
from builder.kernel import load_kernel_spec

ARTIFACTS = ("kernel", "initrd", "rootfs", "xen")
ROOTFS_FORMATS = ("ext4", "squashfs")
ROOT_KINDS = ("ram", "aoe", "disk")
LOADERS = ("ipxe", "pxelinux")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_ENV_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_PKG_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+:~-]+)?$")


@dataclass(frozen=True)
class Setting:
    key: str  # dotted for nested mappings ("boot.cmdline")
    kind: str  # "str", "int", "list", "map", "enum", "list-enum"
    default: Any
    help: str
    required: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None  # returns an error text or None

    @property
    def attr(self) -> str:
        return self.key.replace(".", "_")


def _name_check(v: Any) -> str | None:
    return None if _NAME_RE.match(v) else "must be lowercase letters, digits and '-'"


def _names_check(v: Any) -> str | None:
    bad = [x for x in v if not _NAME_RE.match(x)]
    return f"bad names {bad}" if bad else None


def _pkgs_check(v: Any) -> str | None:
    bad = [x for x in v if not _PKG_RE.match(x)]
    return f"bad Debian package names {bad}" if bad else None


def _env_check(v: Any) -> str | None:
    bad = [k for k in v if not _ENV_RE.match(k)]
    return f"bad variable names {bad}" if bad else None


def _regexes_check(v: Any) -> str | None:
    for i, p in enumerate(v):
        try:
            re.compile(p)
        except re.error as exc:
            return f"[{i}] {p!r} is not a regular expression: {exc}"
    return None


def _cmdline_check(v: Any) -> str | None:
    return "must be one line" if "\n" in v or "\r" in v else None


SETTINGS: tuple[Setting, ...] = (
    Setting("description", "str", "", "One line saying what the role is."),
    Setting("elements", "list", None, "homecloud/DIB elements of the image (deps added).",
            required=True, check=_names_check),
    Setting("base_elements", "list", ["hc-base"],
            "Elements of the shared base layer (built once, cached, reused by every role).",
            check=_names_check),
    Setting("kernel", "str", None, "Kernel spec: kernels/<name>.yaml.", required=True,
            check=_name_check),
    Setting("xen", "str", "", "Xen spec: kernels/<name>.yaml (empty: no Xen).",
            check=lambda v: None if v == "" else _name_check(v)),
    Setting("release", "str", "bookworm", "Debian release (DIB_RELEASE).", check=_name_check),
    Setting("arch", "enum", "amd64", "Architecture.", choices=("amd64",)),
    Setting("packages", "list", [], "Extra Debian packages for the role layer.",
            check=_pkgs_check),
    Setting("artifacts", "list-enum", None, "Files the build publishes.", required=True,
            choices=ARTIFACTS),
    Setting("root", "enum", None, "Where the root filesystem lives when booted.",
            required=True, choices=ROOT_KINDS),
    Setting("loader", "enum", "ipxe", "Boot loader the boot server renders for.",
            choices=LOADERS),
    Setting("boot.cmdline", "str", "", "Kernel (dom0) command line.", check=_cmdline_check),
    Setting("boot.xen_cmdline", "str", "", "Xen command line (needs xen).",
            check=_cmdline_check),
    Setting("rootfs.format", "enum", "ext4",
            "File system of the rootfs image: ext4 (writable clones, e.g. templates) or squashfs "
            "(zstd, read-only: a shared network root, a third of the bytes to fetch).",
            choices=ROOTFS_FORMATS),
    Setting("rootfs.free_mb", "int", 256, "Free space left in the ext4 rootfs image (MiB; "
            "ext4 only).",
            check=lambda v: None if 0 <= v <= 1 << 20 else "must be 0..1048576"),
    Setting("modules.prune", "list", [],
            "Prune sets of the kernel spec (prune_sets): kernel modules the role never loads, "
            "deleted from its tree (dependencies of kept modules and the initramfs sets stay).",
            check=_names_check),
    Setting("modules.keep", "list", [],
            "Regexes of module paths (e.g. kernel/sound/core/) kept although a prune set "
            "matches them.", check=_regexes_check),
    Setting("env", "map", {}, "Environment for DIB; every key declared by an element.",
            check=_env_check),
)
_BY_KEY = {s.key: s for s in SETTINGS}
_SECTIONS = sorted({s.key.split(".")[0] for s in SETTINGS if "." in s.key})


@dataclass(frozen=True)
class Profile:
    role: str
    path: Path
    description: str
    elements: tuple[str, ...]
    base_elements: tuple[str, ...]
    kernel: str
    xen: str
    release: str
    arch: str
    packages: tuple[str, ...]
    artifacts: tuple[str, ...]
    root: str
    loader: str
    boot_cmdline: str
    boot_xen_cmdline: str
    rootfs_format: str
    rootfs_free_mb: int
    modules_prune: tuple[str, ...]
    modules_keep: tuple[str, ...]
    env: Mapping[str, str]

    @property
    def boot_kind(self) -> str:
        return "xen" if self.xen else "linux"

    def kernel_spec(self) -> Path:
        return self.path.parent.parent / "kernels" / f"{self.kernel}.yaml"

    def xen_spec(self) -> Path | None:
        return self.path.parent.parent / "kernels" / f"{self.xen}.yaml" if self.xen else None

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain data, in the table's key layout (for show and the build key)."""
        out: dict[str, Any] = {"role": self.role}
        for s in SETTINGS:
            v = getattr(self, s.attr)
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Mapping):
                v = dict(sorted(v.items()))
            if "." in s.key:
                sec, sub = s.key.split(".", 1)
                out.setdefault(sec, {})[sub] = v
            else:
                out[s.key] = v
        return out


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _typed(path: Path, s: Setting, value: Any) -> Any:
    def fail(msg: str) -> ProfileError:
        return ProfileError(path, s.key, msg)

    if s.kind == "str" or s.kind == "enum":
        if not isinstance(value, str):
            raise fail(f"must be a string, got {type(value).__name__}")
        if s.kind == "enum" and value not in s.choices:
            raise fail(f"{value!r} is not one of {', '.join(s.choices)}")
        return value
    if s.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail(f"must be an integer, got {type(value).__name__}")
        return value
    if s.kind in ("list", "list-enum"):
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise fail(f"must be a list of strings, got {type(value).__name__}")
        if len(set(value)) != len(value):
            raise fail("has duplicates")
        if s.kind == "list-enum":
            for x in value:
                if x not in s.choices:
                    raise fail(f"{x!r} is not one of {', '.join(s.choices)}")
        return tuple(value)
    if s.kind == "map":
        if not isinstance(value, dict):
            raise fail(f"must be a mapping, got {type(value).__name__}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str) or isinstance(v, (dict, list)) or v is None:
                raise fail(f"entry {k!r} must map a name to a string")
            out[k] = v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
        return out
    raise AssertionError(s.kind)


def parse_profile(text: str, path: Path, role: str | None = None) -> Profile:
    """Parse and type-check one profile (no cross-file checks; see ``load_profile``)."""
    role = role or path.stem
    if not _NAME_RE.match(role):
        raise ProfileError(path, None, f"role name {role!r} must be lowercase letters/digits/-")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(path, None, f"not valid YAML: {exc}") from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ProfileError(path, None, "top level must be a mapping")
    flat: dict[str, Any] = {}
    top_known = sorted({s.key.split(".")[0] for s in SETTINGS})
    for key, value in doc.items():
        k = str(key)
        if k in _SECTIONS:
            if not isinstance(value, dict):
                raise ProfileError(path, k, f"must be a mapping, got {type(value).__name__}")
            subs = sorted(s.key.split(".", 1)[1] for s in SETTINGS if s.key.startswith(k + "."))
            for sk, sv in value.items():
                full = f"{k}.{sk}"
                if full not in _BY_KEY:
                    raise ProfileError(path, full, "unknown key" + _suggest(str(sk), subs))
                flat[full] = sv
        elif k in _BY_KEY:
            flat[k] = value
        else:
            dotted = [s.key for s in SETTINGS]
            raise ProfileError(path, k, "unknown key" + _suggest(k, top_known + dotted))
    values: dict[str, Any] = {}
    for s in SETTINGS:
        if s.key in flat and flat[s.key] is not None:
            v = _typed(path, s, flat[s.key])
        elif s.required:
            raise ProfileError(path, s.key, "required key is missing")
        else:
            v = _typed(path, s, s.default)
        if s.check is not None:
            err = s.check(v)
            if err:
                raise ProfileError(path, s.key, err)
        values[s.attr] = v
    prof = Profile(role=role, path=path, **values)
    _check_consistency(prof)
    return prof


def _check_consistency(p: Profile) -> None:
    arts = set(p.artifacts)
    if "kernel" not in arts:
        raise ProfileError(p.path, "artifacts", "every role publishes a 'kernel'")
    if p.xen and "xen" not in arts:
        raise ProfileError(p.path, "artifacts", "a profile with 'xen' must publish 'xen'")
    if "xen" in arts and not p.xen:
        raise ProfileError(p.path, "xen", "artifact 'xen' needs a xen spec")
    if p.boot_xen_cmdline and not p.xen:
        raise ProfileError(p.path, "boot.xen_cmdline", "set without 'xen'")
    if p.root in ("aoe", "disk") and "rootfs" not in arts:
        raise ProfileError(p.path, "artifacts", f"root {p.root} needs a 'rootfs' artifact")
    if p.rootfs_format == "squashfs" and p.root != "aoe":
        raise ProfileError(p.path, "rootfs.format", f"squashfs is read-only: only for root aoe "
                           f"(a shared root under a RAM overlay), not root {p.root}")
    if p.root == "ram" and "initrd" not in arts:
        raise ProfileError(p.path, "artifacts", "root ram needs an 'initrd' (the RAM root)")
    if p.root == "ram" and "hc-ram-root" not in p.elements:
        raise ProfileError(p.path, "elements", "root ram needs element hc-ram-root")
    if p.root == "aoe" and "hc-netroot-initramfs" not in p.elements:
        raise ProfileError(p.path, "elements", "root aoe needs element hc-netroot-initramfs")
    overlap = set(p.elements) & set(p.base_elements)
    if overlap:
        raise ProfileError(p.path, "elements", f"{sorted(overlap)} already in base_elements")


def profile_path(role: str, profiles_dir: Path | None = None) -> Path:
    return (profiles_dir or paths.profiles_dir()) / f"{role}.yaml"


def list_roles(profiles_dir: Path | None = None) -> list[str]:
    d = profiles_dir or paths.profiles_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def load_profile(
    role: str, profiles_dir: Path | None = None, library: ElementLibrary | None = None
) -> Profile:
    """Load, type-check and cross-check a profile (elements exist, env keys are declared,
    kernel/xen specs exist)."""
    path = profile_path(role, profiles_dir)
    if not path.is_file():
        known = list_roles(profiles_dir)
        raise ProfileError(path, None, f"no profile for role {role!r}" + _suggest(role, known)
                           + (f"; known roles: {', '.join(known)}" if known else ""))
    prof = parse_profile(path.read_text(), path, role)
    lib = library or ElementLibrary(root=path.parent.parent / "elements")
    try:
        closure = lib.closure((*prof.base_elements, *prof.elements))
    except ElementError as exc:
        raise ProfileError(path, "elements", str(exc)) from exc
    declared: set[str] = set()
    for el in closure:
        declared |= el.env_keys
    for key in prof.env:
        if key not in declared:
            raise ProfileError(path, f"env.{key}",
                               "not declared by any element of this profile"
                               + _suggest(key, sorted(declared)))
    for attr, spec in (("kernel", prof.kernel_spec()), ("xen", prof.xen_spec())):
        if spec is not None and not spec.is_file():
            raise ProfileError(path, attr, f"no spec {spec}")
    if prof.modules_prune:
        sets = load_kernel_spec(prof.kernel_spec()).prune_sets
        for i, name in enumerate(prof.modules_prune):
            if name not in sets:
                raise ProfileError(path, f"modules.prune[{i}]",
                                   f"no prune set {name!r} in {prof.kernel_spec()}"
                                   + (f" (it has: {', '.join(sorted(sets))})" if sets
                                      else " (it has none)"))
    return prof


def settings_help() -> str:
    rows = []
    for s in SETTINGS:
        kind = f"{s.kind}[{'|'.join(s.choices)}]" if s.choices else s.kind
        req = "required" if s.required else f"default {s.default!r}"
        rows.append(f"{s.key:20} {kind:28} {req:24} {s.help}")
    return "\n".join(rows)



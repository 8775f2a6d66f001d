"""The small busybox initramfs: aoe-root (hnode), ram-root (snode).

Contents: the static busybox with its applet symlinks, the dependency closure of the requested
kernel modules (from modules.dep; compressed modules are decompressed, busybox insmod may not
read them), an ``/init`` rendered from ``builder/init/init.sh.j2`` (or from a template that
extends it, for a mode of the caller's own), busybox udhcpc's event script
and any extra files.  The archive is a newc cpio written here, deterministically: sorted entries,
fixed mtime (0 or ``SOURCE_DATE_EPOCH``), uid/gid 0, inode numbers in order, gzip mtime 0.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import re
import shlex
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import jinja2

from builder.errors import BuildError
from builder.kernel import KernelTree
from builder.run import run, run_bytes
from homecloud.core.files import atomic_write

__all__ = [
    "INIT_MODES",
    "CpioEntry",
    "InitramfsError",
    "InitramfsResult",
    "ModuleMissing",
    "ModuleRef",
    "build_initramfs",
    "module_closure",
    "read_newc",
    "render_init",
    "write_newc",
]

INIT_MODES = ("aoe-root", "ram-root")
INIT_DIR = Path(__file__).resolve().parent / "init"
Compression = Literal["gzip", "zstd", "none"]
_MOD_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz", ".ko")


class InitramfsError(BuildError):
    """Anything that prevents building an initramfs."""


class ModuleMissing(InitramfsError):
    def __init__(self, module: str, modules_dir: Path, needed_by: str | None = None) -> None:
        self.module = module
        self.modules_dir = modules_dir
        by = f" (needed by {needed_by})" if needed_by else ""
        super().__init__(f"module {module}{by} not in {modules_dir}/modules.dep "
                         "and not built in")


# ---------------------------------------------------------------- modules


@dataclass(frozen=True)
class ModuleRef:
    name: str          # normalised: '-' -> '_'
    relpath: str       # as in modules.dep, e.g. kernel/fs/ext4/ext4.ko
    deps: tuple[str, ...]  # names of direct + indirect dependencies (from modules.dep)

    @property
    def plain_relpath(self) -> str:
        """The path inside the initramfs: compressed modules are stored decompressed."""
        for suf in _MOD_SUFFIXES[:-1]:
            if self.relpath.endswith(suf):
                return self.relpath[: -len(suf)] + ".ko"
        return self.relpath


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suf in _MOD_SUFFIXES:
        if base.endswith(suf):
            base = base[: -len(suf)]
            break
    return base.replace("-", "_")


def _read_modules_dep(modules_dir: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    dep = modules_dir / "modules.dep"
    try:
        text = dep.read_text()
    except OSError as e:
        raise InitramfsError(f"{dep}: cannot read ({e.strerror}); run depmod first") from e
    table: dict[str, tuple[str, tuple[str, ...]]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise InitramfsError(f"{dep}:{n}: no ':' in {line!r}")
        mod, _, rest = line.partition(":")
        mod = mod.strip()
        # kmod writes paths relative to modules_dir; some depmods write absolute ones.
        rel = mod.split(f"/{modules_dir.name}/", 1)[-1] if mod.startswith("/") else mod
        deps = tuple(module_name(d) for d in rest.split())
        table[module_name(rel)] = (rel, deps)
    return table


_PCI_ALIAS_RE = re.compile(r"^alias pci:v0000([0-9A-F]{4})d0000([0-9A-F]{4})\S* (\S+)$")


def pci_driver_table(modules_dir: Path, names: Iterable[str]) -> str:
    """``vendor device module`` lines (lowercase hex, as in /sys/bus/pci/devices/*/vendor
    without ``0x``) for every modules.alias entry of ``names`` that names one vendor and one
    device; subsystem and class parts are ignored (a driver that does not support the exact
    card refuses it at probe time)."""
    want = {n.replace("-", "_") for n in names}
    p = modules_dir / "modules.alias"
    try:
        text = p.read_text()
    except OSError as e:
        raise InitramfsError(f"{p}: cannot read ({e.strerror}); run depmod first") from e
    lines: list[str] = []
    for line in text.splitlines():
        m = _PCI_ALIAS_RE.match(line)
        if m and m.group(3).replace("-", "_") in want:
            entry = f"{m.group(1).lower()} {m.group(2).lower()} {m.group(3).replace('-', '_')}\n"
            if entry not in lines:
                lines.append(entry)
    return "".join(lines)


def _builtin(modules_dir: Path) -> set[str]:
    p = modules_dir / "modules.builtin"
    if not p.is_file():
        return set()
    return {module_name(line.strip()) for line in p.read_text().splitlines() if line.strip()}


def module_closure(modules_dir: Path, names: Sequence[str]) -> list[ModuleRef]:
    """The modules to ship for ``names``, dependencies first (insmod order).

    Built-in modules are skipped; a name that is neither built in nor in modules.dep raises
    ``ModuleMissing``."""
    modules_dir = Path(modules_dir)
    table = _read_modules_dep(modules_dir)
    builtin = _builtin(modules_dir)
    order: list[ModuleRef] = []
    seen: set[str] = set()

    def visit(name: str, needed_by: str | None, stack: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in stack:
            raise InitramfsError(f"dependency cycle in {modules_dir}/modules.dep: "
                                 f"{' -> '.join((*stack, name))}")
        if name not in table:
            if name in builtin:
                seen.add(name)
                return
            raise ModuleMissing(name, modules_dir, needed_by)
        rel, deps = table[name]
        # modules.dep lists the whole closure, last entry deepest: visit in reverse so that
        # the load order follows the dependency order even without recursion.
        for d in reversed(deps):
            visit(d, name, (*stack, name))
        seen.add(name)
        order.append(ModuleRef(name, rel, deps))

    for n in names:
        visit(n.replace("-", "_"), None, ())
    return order


def _module_bytes(modules_dir: Path, ref: ModuleRef) -> bytes:
    src = modules_dir / ref.relpath
    data = src.read_bytes()
    if ref.relpath.endswith(".ko.xz"):
        return lzma.decompress(data)
    if ref.relpath.endswith(".ko.gz"):
        return gzip.decompress(data)
    if ref.relpath.endswith(".ko.zst"):
        return run_bytes(["zstd", "-d", "-q", "-c"], what=f"decompress {src}", input=data).stdout
    return data


# ---------------------------------------------------------------- cpio (newc)


@dataclass(frozen=True)
class CpioEntry:
    path: str                      # inside the archive, no leading '/'
    kind: Literal["file", "dir", "symlink", "char", "block"] = "file"
    mode: int = 0o644              # permission bits only
    data: bytes = b""              # file content, or the symlink target
    rdev: tuple[int, int] = (0, 0)

    def type_bits(self) -> int:
        return {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
                "char": stat.S_IFCHR, "block": stat.S_IFBLK}[self.kind]


def _norm(path: str) -> str:
    p = path.strip("/")
    if not p or any(part in ("", ".", "..") for part in p.split("/")):
        raise InitramfsError(f"bad archive path {path!r}")
    return p


def _complete(entries: Iterable[CpioEntry]) -> list[CpioEntry]:
    """Sorted entries with every parent directory present; a path given twice is an error."""
    by_path: dict[str, CpioEntry] = {}
    for e in entries:
        p = _norm(e.path)
        if p in by_path and not (e.kind == "dir" and by_path[p].kind == "dir"):
            raise InitramfsError(f"archive path {p} given twice")
        by_path[p] = CpioEntry(p, e.kind, e.mode, e.data, e.rdev)
    for p in list(by_path):
        parts = p.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in by_path:
                by_path[d] = CpioEntry(d, "dir", 0o755)
            elif by_path[d].kind != "dir":
                raise InitramfsError(f"{d} is a {by_path[d].kind} but {p} is below it")
    return [by_path[p] for p in sorted(by_path)]


def _newc_header(ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int],
                 namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def write_newc(entries: Iterable[CpioEntry], out: BinaryIO, mtime: int = 0) -> None:
    """Write a newc ("070701") archive of ``entries`` (sorted, parents added) to ``out``."""
    for ino, e in enumerate(_complete(entries), 1):
        name = e.path.encode() + b"\0"
        data = e.data if e.kind in ("file", "symlink") else b""
        hdr = _newc_header(ino, e.type_bits() | (e.mode & 0o7777), 2 if e.kind == "dir" else 1,
                           mtime, len(data), e.rdev, len(name))
        out.write(hdr + name + _pad4(len(hdr) + len(name)))
        out.write(data + _pad4(len(data)))
    name = b"TRAILER!!!\0"
    hdr = _newc_header(0, 0, 1, 0, 0, (0, 0), len(name))
    out.write(hdr + name + _pad4(len(hdr) + len(name)))


def read_newc(data: bytes) -> list[CpioEntry]:
    """Parse an uncompressed newc archive (for tests and inspection)."""
    out: list[CpioEntry] = []
    pos = 0
    while True:
        if data[pos:pos + 6] not in (b"070701", b"070702"):
            raise InitramfsError(f"bad newc magic at offset {pos}")
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize + (-(110 + namesize) % 4)
        body = data[pos:pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        kinds = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
                 stat.S_IFCHR: "char", stat.S_IFBLK: "block"}
        kind = kinds.get(stat.S_IFMT(mode))
        if kind is None:
            raise InitramfsError(f"{name}: unsupported file type {oct(mode)}")
        out.append(CpioEntry(name, kind, mode & 0o7777, body, (f[9], f[10])))  # type: ignore[arg-type]


# ---------------------------------------------------------------- /init


_PARAM_KEY = re.compile(r"[a-z0-9_]+")


def _env(modes_dir: Path | None = None) -> jinja2.Environment:
    # the product's templates first: a mode of one's own cannot shadow init.sh.j2
    dirs = [str(INIT_DIR)] if modes_dir is None else [str(INIT_DIR), str(modes_dir)]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(dirs),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shquote"] = lambda v: shlex.quote(str(v))
    return env


def render_init(mode: str, params: Mapping[str, str] | None = None,
                modes_dir: Path | None = None) -> str:
    """The /init script for ``mode``; ``params`` become built-in defaults of ``hc.KEY``.

    A mode of the caller's own is ``<modes_dir>/<mode>.sh.j2``: a template that extends
    ``init.sh.j2`` and fills its block ``mode`` (what follows the common start)."""
    own = modes_dir / f"{mode}.sh.j2" if modes_dir is not None and mode != "init" else None
    if mode not in INIT_MODES and (own is None or not own.is_file()):
        known = ", ".join(INIT_MODES)
        where = f" and no {own}" if own is not None else ""
        raise InitramfsError(f"unknown init mode {mode!r} (known: {known}{where})")
    items = []
    for k, v in sorted((params or {}).items()):
        if not _PARAM_KEY.fullmatch(k):
            raise InitramfsError(f"init parameter {k!r}: keys are [a-z0-9_]+ (hc.KEY without hc.)")
        v = str(v)
        if "\n" in v or "\0" in v:
            raise InitramfsError(f"init parameter {k}: value must be one line")
        items.append((k, v))
    template = f"{mode}.sh.j2" if own is not None and own.is_file() else "init.sh.j2"
    return _env(modes_dir).get_template(template).render(mode=mode, params=items)


# ---------------------------------------------------------------- build


@dataclass(frozen=True)
class InitramfsResult:
    path: Path
    mode: str
    size: int
    sha256: str
    modules: tuple[str, ...]       # load order
    compression: str


def _busybox_entries(busybox: Path) -> list[CpioEntry]:
    if not busybox.is_file():
        raise InitramfsError(f"{busybox}: no such file (install busybox-static)")
    r = run([str(busybox), "--list-full"], what=f"list the applets of {busybox}")
    entries = [CpioEntry("bin/busybox", "file", 0o755, busybox.read_bytes())]
    for applet in sorted(set(r.stdout.split())):
        p = _norm(applet)
        if p == "bin/busybox":
            continue
        depth = p.count("/")
        entries.append(CpioEntry(p, "symlink", 0o777, ("../" * depth + "bin/busybox").encode()))
    return entries


def _extra_entry(path: str, src: Path | bytes | str) -> CpioEntry:
    if isinstance(src, bytes | str):
        data = src.encode() if isinstance(src, str) else src
        return CpioEntry(path, "file", 0o755 if data.startswith(b"#!") else 0o644, data)
    try:
        st = src.stat()
    except OSError as e:
        raise InitramfsError(f"extra file {path}: {src}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise InitramfsError(f"extra file {path}: {src} is not a regular file")
    return CpioEntry(path, "file", stat.S_IMODE(st.st_mode), src.read_bytes())


def _compress(raw: bytes, compression: str) -> bytes:
    if compression == "none":
        return raw
    if compression == "gzip":
        # level 6: 0.5 s for 12 MB of cpio; level 9 takes 4.5 s for 0.9 % less (measured)
        return gzip.compress(raw, compresslevel=6, mtime=0)
    if compression == "zstd":
        return run_bytes(["zstd", "-q", "-19", "-c", "--no-progress"],
                         what="compress the initramfs", input=raw).stdout
    raise InitramfsError(f"unknown compression {compression!r} (gzip, zstd, none)")


def build_initramfs(
    out: Path,
    *,
    mode: str,
    kernel: KernelTree | None = None,
    modules: Sequence[str] = (),
    autoload: Sequence[str] = (),
    params: Mapping[str, str] | None = None,
    extra_files: Mapping[str, Path | bytes | str] | None = None,
    compression: str = "gzip",
    busybox: Path = Path("/bin/busybox"),
    modes_dir: Path | None = None,
) -> InitramfsResult:
    """Build the initramfs of ``mode`` at ``out`` (written atomically); ``modes_dir``: where a
    mode of the caller's own is (``render_init``).

    ``modules`` are loaded by the init at boot, in dependency order.  Those also named in
    ``autoload`` (NIC drivers), and the dependencies only they need, are shipped but loaded
    only for a PCI device that one of them drives (``etc/hc/pci-drivers``)."""
    init = render_init(mode, params, modes_dir)
    if modules and kernel is None:
        raise InitramfsError("modules requested but no kernel tree given")
    entries: list[CpioEntry] = [
        CpioEntry("init", "file", 0o755, init.encode()),
        CpioEntry("dev", "dir", 0o755),
        CpioEntry("dev/console", "char", 0o600, rdev=(5, 1)),
        CpioEntry("dev/null", "char", 0o666, rdev=(1, 3)),
        *(CpioEntry(d, "dir", 0o755) for d in ("proc", "sys", "run", "newroot", "etc/hc")),
        CpioEntry("tmp", "dir", 0o1777),
        CpioEntry("usr/share/udhcpc/default.script", "file", 0o755,
                  (INIT_DIR / "udhcpc.script").read_bytes()),
        *_busybox_entries(busybox),
    ]
    refs: list[ModuleRef] = []
    if kernel is not None:
        refs = module_closure(kernel.modules_dir, modules)
        auto_names = {a.replace("-", "_") for a in autoload}
        explicit = {r.name for r in module_closure(
            kernel.modules_dir, [m for m in modules if m.replace("-", "_") not in auto_names])}
        base = f"lib/modules/{kernel.version}"
        listing, dep = [], []
        for ref in refs:
            entries.append(CpioEntry(f"{base}/{ref.plain_relpath}", "file", 0o644,
                                     _module_bytes(kernel.modules_dir, ref)))
            flag = "" if ref.name in explicit else " auto"
            listing.append(f"{ref.name} {ref.plain_relpath}{flag}\n")
        if auto_names:
            table = pci_driver_table(kernel.modules_dir,
                                     [r.name for r in refs if r.name in auto_names])
            entries.append(CpioEntry("etc/hc/pci-drivers", "file", 0o644, table.encode()))
        by_name = {r.name: r for r in refs}
        for ref in refs:
            deps = " ".join(by_name[d].plain_relpath for d in ref.deps if d in by_name)
            dep.append(f"{ref.plain_relpath}:{' ' + deps if deps else ''}\n")
        entries.append(CpioEntry("etc/hc/modules", "file", 0o644, "".join(listing).encode()))
        # A modules.dep of just the shipped modules, so busybox modprobe works for the kernel's
        # request_module() calls too.
        entries.append(CpioEntry(f"{base}/modules.dep", "file", 0o644, "".join(dep).encode()))
    for path, src in sorted((extra_files or {}).items()):
        entries.append(_extra_entry(path, src))

    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    buf = io.BytesIO()
    write_newc(entries, buf, mtime=mtime)
    blob = _compress(buf.getvalue(), compression)
    out = Path(out)
    atomic_write(out, blob)
    return InitramfsResult(out, mode, len(blob), hashlib.sha256(blob).hexdigest(),
                           tuple(r.name for r in refs), compression)

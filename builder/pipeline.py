"""The build of one role as a flat list of small steps.

``Build`` is the context: inputs, derived paths and what earlier steps produced.  Each step
takes it and returns early when it has nothing to do.  ``build_role`` runs the steps under the
role's store lock; only ``store.publish`` makes the result visible.

Steps: plan (profile, elements, lint, mirrors, keys) -> reuse (same key published: done) ->
dib: one diskimage-builder run with every element plus hc-build-layers, which either starts
from the base layer of this base key in the layer cache or runs debootstrap and takes the layer
checkpoint in passing (see elements/hc-build-layers; a thread keeps it in the cache), and hands
the finished tree over instead of making an image (elements/hc-tree-output) -> tree
-> artifacts (kernel / xen / initrd beside the rootfs pack) -> manifest -> publish -> gc.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gzip
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from builder import cache, paths, pysrc
from builder.dib import DibProcess, DibRun
from builder.elements import Element, ElementLibrary, lint_element, lint_image, lint_layers
from builder.errors import BuildError, CommandError, ElementError
from builder.kernel import KernelSpec, kernel_tree_from_root, load_kernel_spec, load_xen_spec
from builder.manifest import Artifact, BootInfo, Manifest, artifact_for
from builder.mirrors import Mirrors, resolve_mirrors
from builder.profile import Profile, load_profile
from builder.progress import Progress
from builder.store import RoleStore, safe_rmtree

DISTRO_ELEMENT = "debian-minimal"
ROOTFS_LABEL = "hc-root"


@dataclass
class Options:
    store: Path
    cache_dir: Path
    profiles_dir: Path | None = None
    elements_dir: Path | None = None
    force: bool = False
    keep: int = 3
    mirror: str | None = None
    security_mirror: str | None = None
    lock_wait: float = 0.0


@dataclass
class Build:
    """Context of one build.  Paths derive from the store, the cache and the build id."""

    role: str
    opts: Options
    progress: Progress
    profile: Profile | None = None
    library: ElementLibrary | None = None
    base_closure: list[Element] = field(default_factory=list)  # with hc-build-layers
    closure: list[Element] = field(default_factory=list)
    mirrors: Mirrors | None = None
    base_key: str = ""
    key: str = ""
    build_id: str = ""
    reused: bool = False
    tmp: Path | None = None
    layer_from: Path | None = None  # the cached base layer this build starts from
    dib: DibProcess | None = None  # DIB while it is still running
    root: Path | None = None  # the finished tree DIB handed over
    kernel_version: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    packages: tuple[str, ...] = ()
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    log_paths: list[Path] = field(default_factory=list)

    @property
    def store(self) -> RoleStore:
        return RoleStore(self.opts.store, self.role)

    @property
    def work(self) -> Path:
        assert self.tmp is not None
        return self.tmp / ".work"

    @property
    def log_dir(self) -> Path:
        return self.opts.cache_dir / "logs" / self.role

    def need(self) -> Profile:
        assert self.profile is not None
        return self.profile


def run(cmd: Sequence[str], what: str, cwd: Path | None = None) -> str:
    """Run a command; CommandError with the command and its output tail on failure."""
    try:
        r = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise CommandError(cmd, 127, f"{what}: {cmd[0]} not found") from exc
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).splitlines()[-30:]
        raise CommandError(cmd, r.returncode, f"{what} failed", tail=lines)
    return r.stdout


# ------------------------------------------------------------------------------------ plan
def step_plan(b: Build) -> None:
    o = b.opts
    edir = o.elements_dir or (
        o.profiles_dir.parent / "elements" if o.profiles_dir else paths.elements_dir()
    )
    b.library = ElementLibrary(root=edir)
    b.profile = p = load_profile(b.role, o.profiles_dir, b.library)
    b.base_closure = b.library.closure((*p.base_elements, cache.LAYER_ELEMENT))
    b.closure = b.library.closure((*p.base_elements, *p.elements, *cache.BUILD_ELEMENTS))
    issues = [i for el in b.closure for i in lint_element(el)] + lint_image(b.closure)
    issues += lint_layers(b.base_closure, b.closure)
    if issues:
        raise ElementError(issues[0].element, "; ".join(str(i) for i in issues), issues[0].path)
    b.mirrors = resolve_mirrors(o.mirror, o.security_mirror)
    base_vars = {k for el in b.base_closure for k in el.env_keys}
    base_names = {el.name for el in b.base_closure}
    b.base_key = cache.digest(
        cache.base_inputs(
            base_elements=b.base_closure,
            release=p.release,
            arch=p.arch,
            kernel_spec=p.kernel_spec(),
            mirrors=b.mirrors,
            env={k: v for k, v in p.env.items() if k in base_vars},
            also=[el.name for el in b.closure
                  if el.external and el.name not in base_names
                  and (el.path / "environment.d").is_dir()],
        )
    )
    b.key = cache.digest(
        cache.role_inputs(
            profile=resolved_profile(p, b.closure),
            elements=b.closure,
            kernel_spec=p.kernel_spec(),
            xen_spec=p.xen_spec(),
            mirrors=b.mirrors,
            arch=p.arch,
            base_key=b.base_key,
            python=pysrc.digests() if _wants_python(b.closure) else None,
        )
    )


def _wants_python(closure: Sequence[Element]) -> bool:
    """The image installs the Python agents (element hc-agents-python): hcbuild stages them."""
    return any(el.name == pysrc.ELEMENT for el in closure)


def resolved_profile(p: Profile, closure: Sequence[Element] = ()) -> dict[str, object]:
    """The profile with its defaults and derived values filled in (``hcbuild show``)."""
    d: dict[str, object] = p.to_dict()
    ks = load_kernel_spec(p.kernel_spec())
    xs = load_xen_spec(p.xen_spec()) if p.xen_spec() else None  # type: ignore[arg-type]
    cmdline = p.boot_cmdline or (xs.dom0_cmdline if xs else ks.cmdline)
    d["resolved"] = {
        "kernel_spec": f"kernels/{p.kernel}.yaml",
        "kernel_package": ks.package,
        "xen_spec": f"kernels/{p.xen}.yaml" if xs else "",
        "boot": {
            "kind": p.boot_kind,
            "loader": p.loader,
            "root": p.root,
            "cmdline": cmdline,
            "xen_cmdline": (p.boot_xen_cmdline or xs.cmdline) if xs else "",
        },
        "element_closure": [e.name for e in closure],
        "distro_element": DISTRO_ELEMENT,
    }
    return d


# ----------------------------------------------------------------------------------- reuse
def step_reuse(b: Build) -> None:
    if b.opts.force:
        return
    found = b.store.find_by_key(b.key)
    if found is None:
        return
    if b.store.current_id() != found:
        b.store.set_current(found)
    b.build_id = found
    b.reused = True


# ------------------------------------------------------------------------------------- dib
def step_dib(b: Build) -> None:
    p = b.need()
    ks = load_kernel_spec(p.kernel_spec())
    lc = cache.LayerCache(b.opts.cache_dir)
    with contextlib.ExitStack() as held:
        # a layer in use is kept from gc; without one, this build saves it (and locks it then)
        b.layer_from = held.enter_context(lc.use(b.base_key))
        if b.layer_from is None:
            held.close()
            b.progress.info(f"base layer {b.base_key[:12]}: not cached, one pass from "
                            "debootstrap (the layer checkpoint is taken on the way)")
        else:
            b.progress.info(f"base layer {b.base_key[:12]}: cached, the build starts from it")
        _run_dib(b, p, ks, lc)
    removed = lc.gc()
    if removed:
        b.progress.info(f"layer cache: removed {', '.join(x[:12] for x in removed)}")


def _run_dib(b: Build, p: Profile, ks: KernelSpec, lc: cache.LayerCache) -> None:
    assert b.mirrors is not None and b.library is not None
    b.tmp = b.store.new_tmp_dir(b.build_id)
    b.work.mkdir()
    log = b.log_dir / f"{b.build_id}.log"
    b.log_paths.append(log)
    b.progress.info(f"DIB log: {log}")
    dib_dir = b.work / "dib"
    dib_dir.mkdir()
    in_ram = mount_scratch_tmpfs(dib_dir)
    (dib_dir / "tmp").mkdir()
    layer_dir = dib_dir / "layer"
    env = {
        **p.env,
        # DIB's tmp dirs (and its tmpfs mounts) below the build, found by clean_leftovers
        "TMPDIR": str(dib_dir / "tmp"),
        "TMP_DIR": str(dib_dir / "tmp"),
        **cache.layer_env(
            kernel_package=f"{ks.package}={ks.version}" if ks.version else ks.package,
            layer_from=b.layer_from,
            layer_save=None if b.layer_from else layer_dir,
            image_cache=lc.image_cache_dir(p.release, p.arch, stand_in=b.layer_from is not None),
        ),
    }
    # DIB makes no block device and no image (elements/hc-tree-output): the size it would
    # give one is not used, so DIB's `du` of the whole tree is skipped
    env["DIB_IMAGE_SIZE"] = "1"
    if in_ram:
        # DIB's tree and everything it writes in hcbuild's tmpfs; the tree is handed over
        # by a rename and never written to disk
        env["DIB_NO_TMPFS"] = "1"
    elements_path, staged = [b.library.root], []
    if _wants_python(b.closure):
        elements_path.append(pysrc.stage(b.work / "py-element"))
        staged.append(pysrc.STAGED)
    dr = DibRun(
        elements=[DISTRO_ELEMENT, *p.base_elements, *p.elements, *staged,
                  *cache.BUILD_ELEMENTS],
        output=dib_dir / "image",
        log_path=log,
        elements_path=elements_path,
        mirrors=b.mirrors,
        release=p.release,
        arch=p.arch,
        packages=list(p.packages),
        env=env,
        image_type="raw",
        root_label=ROOTFS_LABEL,
        tree_out=dib_dir / "tree",
    )
    what = "from the cached base layer" if b.layer_from else "one pass from debootstrap"
    keeper = None
    if b.layer_from is None:
        # the checkpoint is taken a third into the run: it goes to the cache meanwhile
        keeper = LayerKeeper(lc, b.base_key, layer_dir / "layer.tar")
        keeper.start()
    try:
        with b.progress.step(f"diskimage-builder, {what}"):
            # on to the artifacts as soon as DIB has logged its success (it then sleeps a
            # second before it exits); its exit status is checked before the manifest
            b.dib = DibProcess(dr, b.closure)
            b.dib.wait_done()
    finally:
        if keeper is not None:
            keeper.finish()
    b.root = dr.result
    if not dr.made:
        b.dib.finish()  # raises: DIB's log tail, with the failing script if there is one
    stop_chroot_processes(b.root, b.progress)
    if keeper is not None:
        if keeper.error is not None:
            raise keeper.error
        if keeper.saved is None:
            raise BuildError(f"{layer_dir}: hc-build-layers took no layer checkpoint")
        b.progress.info(f"base layer {b.base_key[:12]}: kept in {keeper.saved.parent} "
                        f"({keeper.saved.stat().st_size >> 20} MiB, during the run)")


class LayerKeeper(threading.Thread):
    """Moves the layer checkpoint into the layer cache as soon as hc-build-layers has taken
    it, while DIB goes on with the role-level elements."""

    def __init__(self, lc: cache.LayerCache, key: str, tar: Path) -> None:
        super().__init__(name="layer-keeper", daemon=True)
        self.lc, self.key, self.tar = lc, key, tar
        self.stop = threading.Event()
        self.saved: Path | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            if self.tar.is_file():  # renamed into place once complete
                try:
                    self.saved = self.lc.save(self.key, self.tar)
                except BaseException as exc:  # handed to the build thread
                    self.error = exc
                return
            if self.stop.wait(0.5):
                return

    def finish(self) -> None:
        self.stop.set()
        self.join()


SCRATCH_MIN_RAM = 8 << 30  # hcbuild's tmpfs for DIB only on machines with this much RAM


def mount_scratch_tmpfs(d: Path) -> bool:
    """A tmpfs on ``d`` for DIB's work (tree, image, output) when the machine has the RAM;
    False (``d`` stays on disk, DIB uses its own tmpfs rules) otherwise."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return False
    if total < SCRATCH_MIN_RAM:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=50%,mode=0755", "hcbuild-dib",
                        str(d)], capture_output=True, text=True)
    return r.returncode == 0


def chroot_processes(tree: Path) -> list[int]:
    """PIDs of the processes whose root directory is ``tree`` or below it."""
    real = os.path.realpath(tree)
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            root = os.readlink(d / "root")
        except OSError:  # gone, or a kernel thread
            continue
        if root == real or root.startswith(real + "/"):
            pids.append(int(d.name))
    return pids


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def stop_chroot_processes(tree: Path, progress: Progress, grace: float = 5.0) -> None:
    """Stops what an element left running in the tree (DIB does this for its own build
    directory, which the tree has left: elements/hc-tree-output): SIGTERM, then SIGKILL."""
    if not tree.is_dir():
        return
    pids = chroot_processes(tree)
    if not pids:
        return
    names = []
    for pid in pids:
        try:
            names.append(f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
        except OSError:
            names.append(str(pid))
    progress.info(f"stopping processes left running in the image tree: {', '.join(names)}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [x for x in pids if _alive(x)]
            if not pids:
                return
            time.sleep(0.1)
    raise BuildError(f"{tree}: processes {pids} left running in the image tree do not stop")


def step_tree(b: Build) -> None:
    """The finished tree DIB handed over (elements/hc-tree-output): the package list."""
    if b.root is None or not b.root.is_dir():
        raise BuildError(f"{b.root}: diskimage-builder handed over no image tree")
    b.packages = dpkg_packages(b.root)


def dpkg_packages(root: Path) -> tuple[str, ...]:
    status = root / "var/lib/dpkg/status"
    if not status.is_file():
        return ()
    out: list[str] = []
    for stanza in status.read_text(errors="replace").split("\n\n"):
        f = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, flags=re.M))
        if f.get("Package") and "installed" in f.get("Status", "").split():
            out.append(f"{f['Package']}={f.get('Version', '')}")
    return tuple(sorted(out))


def _pkg_version(b: Build, name: str) -> str:
    for entry in b.packages:
        n, _, v = entry.partition("=")
        if n == name:
            return v
    return ""


def step_kernel(b: Build) -> None:
    assert b.root is not None and b.tmp is not None
    tree = kernel_tree_from_root(b.root)
    shutil.copyfile(tree.vmlinuz, b.tmp / "kernel")
    b.kernel_version = tree.version
    b.versions["kernel"] = tree.version
    b.versions["kernel_package"] = _pkg_version(b, f"linux-image-{tree.version}")


def step_xen(b: Build) -> None:
    p = b.need()
    if not p.xen:
        return
    assert b.root is not None and b.tmp is not None
    xs = load_xen_spec(p.xen_spec())  # type: ignore[arg-type]
    src = b.root / xs.hypervisor.lstrip("/")
    if not src.is_file():
        raise BuildError(f"{src}: hypervisor of {xs.name} not in the image (element hc-xen-dom0?)")
    with gzip.open(src, "rb") as fin, open(b.tmp / "xen", "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    b.versions["xen"] = _pkg_version(b, xs.package) or xs.version or ""


def _has(b: Build, element: str) -> bool:
    return any(e.name == element for e in b.closure)


def step_initrd(b: Build) -> None:
    p = b.need()
    if "initrd" not in p.artifacts:
        return
    assert b.root is not None and b.tmp is not None
    out = b.tmp / "initrd"
    if p.root == "ram":
        with b.progress.step("initrd: pack RAM root"):
            pack_ram_root(b.root, out)
        return
    if _has(b, "hc-netroot-initramfs"):
        from builder.initramfs import build_initramfs

        ks = load_kernel_spec(p.kernel_spec())
        extra = p.env.get("HC_NETROOT_EXTRA_MODULES", "").split()
        with b.progress.step("initrd: busybox network-root initramfs"):
            res = build_initramfs(
                out,
                mode="aoe-root",
                kernel=kernel_tree_from_root(b.root),
                modules=(*ks.modules_for("aoe-root"), *extra),
                autoload=ks.autoload_for("aoe-root"),
            )
        b.versions["initramfs_modules"] = " ".join(res.modules)
        return
    cands = sorted((b.root / "boot").glob(f"initrd.img-{b.kernel_version}"))
    if not cands:
        raise BuildError(f"{b.root}/boot: no initrd.img-{b.kernel_version} in the image")
    shutil.copyfile(cands[0], out)


RAM_ROOT_EXCLUDE = (
    "./boot/vmlinuz-*", "./boot/initrd.img-*", "./tmp/*", "./var/cache/apt/*", "./lost+found",
)


def pack_ram_root(root: Path, out: Path) -> None:
    """The whole root tree as a zstd-compressed newc cpio (the kernel unpacks it into its
    tmpfs rootfs and runs /init)."""
    if not (root / "init").exists() and not (root / "init").is_symlink():
        raise BuildError(f"{root}: no /init (element hc-ram-root sets it)")
    find = subprocess.Popen(
        ["find", ".", "-mindepth", "1", "(", *_prune_args(), ")", "-prune", "-o", "-print0"],
        cwd=root,
        stdout=subprocess.PIPE,
    )
    with open(out, "wb") as fout:
        cpio = subprocess.Popen(
            ["cpio", "--null", "--quiet", "-o", "-H", "newc", "--reproducible"],
            cwd=root,
            stdin=find.stdout,
            stdout=subprocess.PIPE,
        )
        assert find.stdout is not None and cpio.stdout is not None
        find.stdout.close()
        z = subprocess.run(["zstd", "-q", "-3", "-T0", "-c"], stdin=cpio.stdout, stdout=fout)
        cpio.stdout.close()
    rc = (find.wait(), cpio.wait(), z.returncode)
    if any(rc):
        raise CommandError(["find|cpio|zstd", str(root)], max(rc), "pack RAM root")


def _prune_args() -> list[str]:
    args: list[str] = []
    for pat in RAM_ROOT_EXCLUDE:
        if args:
            args.append("-o")
        args += ["-path", pat]
    return args


def _fsck(image: Path) -> None:
    fsck = ["e2fsck", "-f", "-n", str(image)]
    r = subprocess.run(fsck, capture_output=True, text=True)
    if r.returncode != 0:
        raise CommandError(fsck, r.returncode, "check rootfs",
                           tail=(r.stdout + r.stderr).splitlines()[-30:])


def tree_usage(root: Path) -> tuple[int, int]:
    """(bytes of allocated blocks, inodes) of the tree at ``root``, hard links counted once,
    other filesystems (mount points) not entered."""
    dev = root.lstat().st_dev
    seen: set[int] = set()
    used, inodes = 0, 0
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if st.st_dev != dev:
                    continue
                if st.st_nlink > 1 and not e.is_dir(follow_symlinks=False):
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                used += st.st_blocks * 512
                inodes += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
    return used, inodes


JOURNAL_MB = 16
BLOCK = 4096


def ext4_geometry(used: int, inodes: int, free_mb: int) -> tuple[int, int]:
    """(image bytes, inode count) for an ext4 that holds a tree of ``used`` bytes and ``inodes``
    inodes with ``free_mb`` MiB (and inodes for it, one per 16 KiB) to spare."""
    n = int(inodes * 1.25) + 1024 + free_mb * 64
    size = int(used * 1.04) + n * 256 + (JOURNAL_MB + 16 + free_mb) * 2**20
    return -(-size // BLOCK) * BLOCK, n


def pack_ext4(tree: Path, out: Path, label: str, free_mb: int = 0) -> None:
    """A fresh ext4 image of ``tree`` (mke2fs -d), sized to the tree plus ``free_mb``.

    DIB would make its ext4 for images that get resized later: one inode per 4 KiB, a 64 MiB
    journal and 40 % slack (hnode: 1.6 GiB for 0.8 GiB of files).  The rootfs is downloaded by
    storage nodes and read over AoE, so it is packed at its size instead (0.9 GiB).  mke2fs -d keeps
    owners, modes, hard links, device nodes, symlinks and xattrs (file capabilities); timestamps
    keep whole seconds."""
    if not tree.is_dir():
        raise BuildError(f"{tree}: no root tree to pack into the rootfs")
    used, inodes = tree_usage(tree)
    size, n = ext4_geometry(used, inodes, free_mb)
    for _attempt in range(4):
        out.unlink(missing_ok=True)
        with open(out, "wb") as f:
            f.truncate(size)
        cmd = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-m", "0", "-N", str(n),
               "-J", f"size={JOURNAL_MB}", "-L", label, "-d", str(tree), str(out)]
        rc, text = _run_writing_back(cmd, out)
        if rc == 0:
            return
        if not any(w in text.lower() for w in ("could not allocate", "too small", "too big",
                                               "no space")):
            raise CommandError(cmd, rc, "pack rootfs", tail=text.splitlines()[-30:])
        size, n = -(-int(size * 1.5) // BLOCK) * BLOCK, int(n * 1.5)  # estimate too tight
    raise CommandError(cmd, rc, "pack rootfs: the tree does not fit",
                       tail=text.splitlines()[-30:])


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def _start_writeback(path: Path) -> None:
    """Start writing ``path``'s dirty pages to disk without waiting (sync_file_range)."""
    libc = _libc()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        if libc is not None:
            libc.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0),
                                 ctypes.c_uint(_SYNC_FILE_RANGE_WRITE))
    finally:
        os.close(fd)


def _run_writing_back(cmd: Sequence[str], out: Path, every: float = 0.25) -> tuple[int, str]:
    """Run ``cmd`` (which writes ``out``) and keep the disk busy meanwhile: mke2fs fsyncs the
    whole image when it ends (0.9 GB: 2.7 s at this machine's 330 MB/s), and the publish
    fsyncs it again, so its pages are sent to disk while it still writes."""
    with subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        while True:
            try:
                text, _ = proc.communicate(timeout=every)
                break
            except subprocess.TimeoutExpired:
                if out.exists():
                    _start_writeback(out)
    return proc.returncode, text or ""


def step_rootfs(b: Build) -> None:
    p = b.need()
    if "rootfs" not in p.artifacts:
        return
    assert b.tmp is not None and b.root is not None
    out = b.tmp / "rootfs"
    with b.progress.step("rootfs: pack ext4 at its size"
                         + (f" + {p.rootfs_free_mb} MiB free" if p.rootfs_free_mb else "")):
        pack_ext4(b.root, out, ROOTFS_LABEL, p.rootfs_free_mb)
        _fsck(out)


def step_artifacts(b: Build) -> None:
    """kernel, xen and initrd in one thread, the rootfs in another (the rootfs pack is the
    long one, and mke2fs uses one core); the tree goes with the work directory at publish."""

    def small() -> None:
        for step in (step_kernel, step_xen, step_initrd):
            step(b)

    b.progress.parallel(small, lambda: step_rootfs(b))
    if b.dib is not None:
        b.dib.finish()  # DIB has exited, successfully, before anything is published
        b.dib = None


def step_manifest(b: Build) -> None:
    p = b.need()
    assert b.tmp is not None
    rp = resolved_profile(p, b.closure)
    boot = rp["resolved"]["boot"]  # type: ignore[index]
    for name in p.artifacts:
        f = b.tmp / name
        if not f.is_file():
            raise BuildError(f"{f}: artifact {name!r} was not produced")
        b.artifacts[name] = artifact_for(f)
    b.versions["dib"] = cache.dib_version()
    b.versions["builder"] = cache.code_version()
    b.versions["base_layer"] = b.base_key
    rp["build"] = {
        "seconds": round(time.monotonic() - b.started, 1),
        "logs": [str(x) for x in b.log_paths],
        "mirrors": {"main": b.mirrors.main, "security": b.mirrors.security} if b.mirrors else {},
    }
    m = Manifest(
        role=b.role,
        build_id=b.build_id,
        build_key=b.key,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        artifacts=b.artifacts,
        boot=BootInfo(
            kind=boot["kind"],
            loader=boot["loader"],
            root=boot["root"],
            cmdline=boot["cmdline"],
            xen_cmdline=boot["xen_cmdline"],
        ),
        versions=b.versions,
        packages=b.packages,
        profile=rp,
    )
    (b.tmp / "manifest.json").write_text(m.to_json())


def step_publish(b: Build) -> None:
    assert b.tmp is not None
    safe_rmtree(b.work)
    with b.progress.step("publish"):
        b.store.publish(b.tmp, b.build_id)
    b.tmp = None


STEPS: tuple[Callable[[Build], None], ...] = (
    step_dib,
    step_tree,
    step_artifacts,
    step_manifest,
    step_publish,
)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class Result:
    role: str
    build_id: str
    path: Path
    reused: bool
    seconds: float
    build_key: str
    removed: tuple[str, ...] = ()


def build_role(role: str, opts: Options, progress: Progress | None = None) -> Result:
    prog = progress or Progress()
    b = Build(role=role, opts=opts, progress=prog)
    with prog.step(f"{role}: plan"):
        step_plan(b)
    with b.store.lock(opts.lock_wait):
        left = b.store.clean_leftovers()
        if left:
            prog.info(f"{role}: removed leftovers of killed builds: {[x.name for x in left]}")
        step_reuse(b)
        if b.reused:
            prog.info(f"{role}: inputs unchanged, build {b.build_id} (key {b.key[:12]})")
            return Result(role, b.build_id, b.store.dir / b.build_id, True,
                          time.monotonic() - b.started, b.key)
        b.build_id = f"{_stamp()}-{b.key[:12]}"
        try:
            for step in STEPS:
                name = step.__name__.removeprefix("step_")
                with prog.step(f"{role}: {name}"):
                    step(b)
        finally:
            if b.dib is not None:
                b.dib.abort()
            if b.tmp is not None:  # failed: current is untouched, drop the half build
                safe_rmtree(b.tmp)
        removed = tuple(b.store.gc(opts.keep))
    return Result(role, b.build_id, b.store.dir / b.build_id, False,
                  time.monotonic() - b.started, b.key, removed)

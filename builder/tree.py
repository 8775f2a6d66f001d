"""The root tree of a build: one diskimage-builder run, and what is read from the tree.

``step_dib`` runs DIB with every element plus hc-build-layers, which either starts from the base
layer of this base key in the layer cache or runs debootstrap and takes the layer checkpoint in
passing (elements/hc-build-layers; ``LayerKeeper`` moves it into the cache while DIB goes on).
DIB makes no image: it hands the finished tree over (elements/hc-tree-output), and the build
goes on to the artifacts as soon as DIB has logged its success; its exit status is checked
before the publish.  What an element left running in the tree is stopped by PID.
``step_tree`` reads the package list of the tree.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from pathlib import Path

from builder import cache, pysrc
from builder.context import DISTRO_ELEMENT, ROOTFS_LABEL, Build
from builder.dib import DibProcess, DibRun
from builder.errors import BuildError
from builder.kernel import load_kernel_spec
from builder.modprune import compile_patterns, find_depmod, plan_prune, prune_tree, read_dep
from builder.progress import Progress
from builder.run import run


def step_dib(b: Build) -> None:
    lc = cache.LayerCache(b.opts.cache_dir)
    with contextlib.ExitStack() as held:
        # a layer in use is kept from gc; without one, this build saves it (and locks it then)
        layer_from = held.enter_context(lc.use(b.plan.base_key))
        if layer_from is None:
            held.close()
            b.progress.info(f"base layer {b.plan.base_key[:12]}: not cached, one pass from "
                            "debootstrap (the layer checkpoint is taken on the way)")
        else:
            b.progress.info(f"base layer {b.plan.base_key[:12]}: cached, the build starts "
                            "from it")
        _run_dib(b, lc, layer_from)
    removed = lc.gc()
    if removed:
        b.progress.info(f"layer cache: removed {', '.join(x[:12] for x in removed)}")


def _run_dib(b: Build, lc: cache.LayerCache, layer_from: Path | None) -> None:
    p, ks = b.profile, b.resolved.kernel
    b.progress.info(f"DIB log: {b.log}")
    b.dib_dir.mkdir()
    in_ram = mount_scratch_tmpfs(b.dib_dir)
    b.dib_tmp.mkdir()
    env = {
        **p.env,
        # DIB's tmp dirs (and its tmpfs mounts) below the build, found by clean_leftovers
        "TMPDIR": str(b.dib_tmp),
        "TMP_DIR": str(b.dib_tmp),
        **cache.layer_env(
            kernel_package=f"{ks.package}={ks.version}" if ks.version else ks.package,
            layer_from=layer_from,
            layer_save=None if layer_from else b.layer_dir,
            image_cache=lc.image_cache_dir(p.release, p.arch, stand_in=layer_from is not None),
        ),
    }
    # DIB makes no block device and no image (elements/hc-tree-output): the size it would
    # give one is not used, so DIB's `du` of the whole tree is skipped
    env["DIB_IMAGE_SIZE"] = "1"
    if in_ram:
        # DIB's tree and everything it writes in hcbuild's tmpfs; the tree is handed over
        # by a rename and never written to disk
        env["DIB_NO_TMPFS"] = "1"
    # the Python agents' sources, staged as a generated element (builder/pysrc.py)
    elements_path, staged = [b.plan.library.root], []
    if b.plan.has(pysrc.ELEMENT):
        elements_path.append(pysrc.stage(b.work / "py-element"))
        staged.append(pysrc.STAGED)
    dr = DibRun(
        elements=[DISTRO_ELEMENT, *p.base_elements, *p.elements, *staged,
                  *cache.BUILD_ELEMENTS],
        output=b.dib_dir / "image",
        log_path=b.log,
        elements_path=elements_path,
        mirrors=b.plan.mirrors,
        release=p.release,
        arch=p.arch,
        packages=list(p.packages),
        env=env,
        image_type="raw",
        root_label=ROOTFS_LABEL,
        tree_out=b.tree,
    )
    what = "from the cached base layer" if layer_from else "one pass from debootstrap"
    keeper = None
    if layer_from is None:
        # the checkpoint is taken a third into the run: it goes to the cache meanwhile
        keeper = LayerKeeper(lc, b.plan.base_key, b.layer_dir / "layer.tar")
        keeper.start()
    try:
        with b.progress.step(f"diskimage-builder, {what}"):
            # on to the artifacts as soon as DIB has logged its success (it then sleeps a
            # second before it exits); its exit status is checked before the manifest
            dib = DibProcess(dr, b.plan.closure)
            b.cleanup.callback(dib.abort)  # a failed build stops it
            dib.wait_done()
    finally:
        if keeper is not None:
            keeper.finish()
    if not dr.made:
        dib.finish()  # raises: DIB's log tail, with the failing script if there is one
    b.before_publish.append(dib.finish)
    stop_chroot_processes(b.tree, b.progress)
    if keeper is not None:
        if keeper.error is not None:
            raise keeper.error
        if keeper.saved is None:
            raise BuildError(f"{b.layer_dir}: hc-build-layers took no layer checkpoint")
        b.progress.info(f"base layer {b.plan.base_key[:12]}: kept in {keeper.saved.parent} "
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
    return run(["mount", "-t", "tmpfs", "-o", "size=50%,mode=0755", "hcbuild-dib", str(d)],
               what="mount hcbuild's scratch tmpfs", check=False).ok


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
    """The finished tree DIB handed over (elements/hc-tree-output): the package list; the
    kernel modules the profile prunes (builder/modprune.py)."""
    if not b.tree.is_dir():
        raise BuildError(f"{b.tree}: diskimage-builder handed over no image tree")
    b.packages = dpkg_packages(b.tree)
    if b.profile.modules_prune:
        prune_modules(b)


def prune_modules(b: Build) -> None:
    p = b.profile
    spec = load_kernel_spec(p.kernel_spec())
    patterns = [x for name in p.modules_prune for x in spec.prune_sets[name]]
    kt = b.kernel_tree
    plan = plan_prune(read_dep(kt.modules_dir),
                      compile_patterns(patterns, f"{spec.source}: prune_sets"),
                      compile_patterns(p.modules_keep, f"{p.path}: modules.keep"),
                      [m for ms in spec.module_sets.values() for m in ms])
    depmod = find_depmod(b.tree)
    with b.progress.step(f"modules: prune {', '.join(p.modules_prune)}"):
        def rebuild_indexes() -> None:
            run(["chroot", str(b.tree), depmod, "-a", kt.version],
                what=f"depmod in {b.tree} after pruning modules")

        done = prune_tree(kt.modules_dir, plan, rebuild_indexes)
    b.versions["modules_pruned"] = f"{done.removed} of {done.total}"
    b.progress.info(f"modules: pruned {done.removed} of {done.total} "
                    f"({done.bytes / (1 << 20):.0f} MiB); {len(done.needed)} matched but kept "
                    "(dependencies of kept modules, initramfs sets, modules.keep)")


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


def package_version(packages: tuple[str, ...], name: str) -> str:
    for entry in packages:
        n, _, v = entry.partition("=")
        if n == name:
            return v
    return ""

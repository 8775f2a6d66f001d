"""The context of one build: what the plan resolved (typed) and the paths that derive from it.

``Options`` are the caller's settings, ``Resolved`` the profile with every default and derived
value filled in, ``Plan`` what a build of a role is made of (resolved profile, element closures,
mirrors, keys).  ``Build`` is one build of a plan: its paths are properties of a few roots
(the store, the cache, the build's temporary directory), so no step waits for another to set
them; the steps add what they produce (packages, versions, artifacts).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder.elements import Element, ElementLibrary
from builder.kernel import KernelSpec, KernelTree, XenSpec, kernel_tree_from_root
from builder.mirrors import Mirrors
from builder.profile import Profile
from builder.progress import Progress
from builder.store import RoleStore
from homecloud.core.manifest import Artifact, BootInfo

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


@dataclass(frozen=True)
class Resolved:
    """A profile with its defaults and derived values filled in (``hcbuild show``, the build
    key and the manifest's ``profile``)."""

    profile: Profile
    kernel: KernelSpec
    xen: XenSpec | None  # None: the role boots no hypervisor
    boot: BootInfo
    closure: tuple[str, ...]  # names of every element of the image, dependencies first

    def to_dict(self) -> dict[str, object]:
        p = self.profile
        d: dict[str, object] = p.to_dict()
        d["resolved"] = {
            "kernel_spec": f"kernels/{p.kernel}.yaml",
            "kernel_package": self.kernel.package,
            "xen_spec": f"kernels/{p.xen}.yaml" if self.xen else "",
            "boot": self.boot.to_doc(),
            "element_closure": list(self.closure),
            "distro_element": DISTRO_ELEMENT,
        }
        return d


@dataclass(frozen=True)
class Plan:
    """Everything a build of ``role`` is made of, checked, and its keys."""

    role: str
    resolved: Resolved
    library: ElementLibrary
    base_closure: tuple[Element, ...]  # with hc-build-layers
    closure: tuple[Element, ...]
    mirrors: Mirrors
    base_key: str
    key: str

    @property
    def profile(self) -> Profile:
        return self.resolved.profile

    def has(self, element: str) -> bool:
        return any(e.name == element for e in self.closure)


@dataclass
class Build:
    """One build of ``plan`` into the temporary directory ``tmp`` of the role's store.

    Paths derive from the store, the cache and ``tmp``; the steps fill in ``packages``,
    ``versions`` and ``artifacts``.  ``before_publish`` holds checks that must pass before the
    build is published (DIB's exit status), ``cleanup`` what undoes a failed build (stopping
    DIB)."""

    plan: Plan
    opts: Options
    progress: Progress
    build_id: str
    tmp: Path
    started: float = field(default_factory=time.monotonic)
    packages: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    before_publish: list[Callable[[], object]] = field(default_factory=list)
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    published: bool = False

    @property
    def role(self) -> str:
        return self.plan.role

    @property
    def profile(self) -> Profile:
        return self.plan.resolved.profile

    @property
    def resolved(self) -> Resolved:
        return self.plan.resolved

    @property
    def store(self) -> RoleStore:
        return RoleStore(self.opts.store, self.role)

    @property
    def log_dir(self) -> Path:
        return self.opts.cache_dir / "logs" / self.role

    @property
    def log(self) -> Path:
        """DIB's whole output."""
        return self.log_dir / f"{self.build_id}.log"

    @property
    def work(self) -> Path:
        """Scratch space of the build, removed before the publish."""
        return self.tmp / ".work"

    @property
    def dib_dir(self) -> Path:
        """DIB's own work (hcbuild's scratch tmpfs when the machine has the RAM)."""
        return self.work / "dib"

    @property
    def dib_tmp(self) -> Path:
        return self.dib_dir / "tmp"

    @property
    def layer_dir(self) -> Path:
        """Where hc-build-layers leaves the base layer checkpoint (``layer.tar``)."""
        return self.dib_dir / "layer"

    @property
    def tree(self) -> Path:
        """The finished root tree DIB hands over (elements/hc-tree-output)."""
        return self.dib_dir / "tree"

    def artifact(self, name: str) -> Path:
        return self.tmp / name

    @functools.cached_property
    def kernel_tree(self) -> KernelTree:
        """The kernel of the finished tree (read once DIB has handed the tree over)."""
        return kernel_tree_from_root(self.tree)

    def settle(self) -> None:
        """Run the checks that must pass before the publish."""
        while self.before_publish:
            self.before_publish.pop(0)()

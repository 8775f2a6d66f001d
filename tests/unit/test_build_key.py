"""The build key changes when, and only when, an input changes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from builder import cache, paths
from builder.context import Options
from builder.mirrors import Mirrors
from builder.plan import make_plan

MIRRORS = ("http://mirror.invalid/debian", "http://mirror.invalid/debian-security")


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    for name in ("elements", "profiles", "kernels"):
        shutil.copytree(paths.data_root() / name, tmp_path / name, symlinks=True)
    return tmp_path


def keys(data: Path, role: str = "hnode", mirrors: tuple[str, str] = MIRRORS) -> tuple[str, str]:
    opts = Options(store=data / "store", cache_dir=data / "cache", profiles_dir=data / "profiles",
                   mirror=mirrors[0], security_mirror=mirrors[1])
    plan = make_plan(role, opts)
    return plan.base_key, plan.key


def _append(rel: str, text: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        p = d / rel
        p.write_text(p.read_text() + text)
    return f


def _replace(rel: str, old: str, new: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        p = d / rel
        assert old in p.read_text(), (rel, old)
        p.write_text(p.read_text().replace(old, new))
    return f


def _chmod_x(rel: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        (d / rel).chmod(0o755)
    return f


def _new_file(rel: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        (d / rel).write_text("x")
    return f


# (what, mutation, base key changes, role key changes)
MUTATIONS: list[tuple[str, Callable[[Path], None], bool, bool]] = [
    ("profile package", _replace("profiles/hnode.yaml", "[aoetools]", "[aoetools, vim]"),
     False, True),
    ("profile cmdline", _replace("profiles/hnode.yaml", 'console=hvc0', 'console=ttyS0'),
     False, True),
    ("profile env", _append("profiles/hnode.yaml", "env: {HC_XEN_AUTOBALLOON: 'on'}\n"),
     False, True),
    ("role element script", _append("elements/hc-xen-dom0/install.d/55-hc-xen-dom0-settings",
                                    "# comment\n"), False, True),
    ("role element readme", _append("elements/hc-xen-dom0/README.md", "\nmore\n"), False, True),
    ("role element mode", _chmod_x("elements/hc-xen-dom0/README.md"),
     False, True),
    ("role element new file", _new_file("elements/hc-xen-dom0/extra"), False, True),
    ("base element script", _append("elements/hc-base/install.d/30-hc-diskless", "true\n"),
     True, True),
    ("base element packages", _append("elements/hc-base/package-installs.yaml", "less:\n"),
     True, True),
    ("kernel spec", _append("kernels/debian-6.1.yaml", "# pinned later\n"), True, True),
    ("layer element", _append("elements/hc-build-layers/root.d/07-hc-layer-restore", "true\n"),
     True, True),
    ("base variable in profile",
     _append("profiles/hnode.yaml", "env: {HC_JOURNAL_STORAGE: auto}\n"), True, True),
    ("xen spec", _append("kernels/xen-4.17.yaml", "# x\n"), False, True),
    ("unused element", _append("elements/hc-storage-node/README.md", "\nx\n"), False, False),
    ("other profile", _append("profiles/snode.yaml", "# x\n"), False, False),
    ("comment in profile", _append("profiles/hnode.yaml", "# only a comment\n"), False, False),
    ("key order in profile", _replace("profiles/hnode.yaml", "loader: ipxe\n", ""), False, False),
]


@pytest.mark.parametrize(("what", "mutate", "base_changes", "role_changes"), MUTATIONS,
                         ids=[m[0] for m in MUTATIONS])
def test_key_mutations(data: Path, what: str, mutate: Callable[[Path], None],
                       base_changes: bool, role_changes: bool) -> None:
    base0, key0 = keys(data)
    mutate(data)
    base1, key1 = keys(data)
    assert (base1 != base0) == base_changes, what
    assert (key1 != key0) == role_changes, what


def test_key_is_stable_and_location_independent(data: Path, tmp_path: Path) -> None:
    k = keys(data)
    assert keys(data) == k
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved, symlinks=True)
    assert keys(moved) == k


def test_mirrors_arch_dib_and_code_are_inputs(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base0, key0 = keys(data)
    b1, k1 = keys(data, mirrors=("http://other.invalid/debian", MIRRORS[1]))
    assert b1 != base0 and k1 != key0
    b2, k2 = keys(data, mirrors=(MIRRORS[0], "http://other.invalid/sec"))
    assert b2 != base0 and k2 != key0
    cache.dib_version.cache_clear()
    monkeypatch.setattr(cache.metadata, "version", lambda name: "9.9.9")
    b3, k3 = keys(data)
    assert b3 != base0 and k3 != key0
    cache.dib_version.cache_clear()
    monkeypatch.undo()
    cache.dib_version.cache_clear()
    monkeypatch.setattr(cache, "code_version", lambda names=None: "other")
    b4, k4 = keys(data)
    assert b4 != base0 and k4 != key0


def test_roles_share_the_base_layer(data: Path) -> None:
    bases = {keys(data, r)[0] for r in ("hnode", "snode", "domu")}
    assert len(bases) == 1
    assert len({keys(data, r)[1] for r in ("hnode", "snode", "domu")}) == 3


def test_code_version_covers_builder_files() -> None:
    files = {p.name for p in cache.code_files()}
    assert {"pipeline.py", "plan.py", "context.py", "tree.py", "pack.py", "artifacts.py",
            "run.py", "dib.py", "cache.py", "profile.py"} <= files
    assert cache.code_version() == cache.code_version()
    assert os.path.basename(cache.LayerCache.stand_in_name("bookworm", "amd64")) == (
        "debootstrap-debian-bookworm-amd64.tar.gz"
    )
    assert Mirrors("a", "b").dib_env() == {
        "DIB_DISTRIBUTION_MIRROR": "a", "DIB_DEBIAN_SECURITY_MIRROR": "b"}

"""Anatomy lint of every element, and the lint itself on broken elements."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder import paths
from builder.cache import BUILD_ELEMENTS
from builder.elements import (
    ElementLibrary,
    lint_element,
    lint_image,
    lint_layers,
    load_element,
    parse_env_table,
)
from builder.errors import ElementError
from builder.profile import list_roles, load_profile

LIB = ElementLibrary()
OWN = LIB.names()
HEADER = (
    '#!/bin/bash\n# what\n\nif [ "${DIB_DEBUG_TRACE:-0}" -gt 0 ]; then\n    set -x\nfi\n'
    "set -eu -o pipefail\n\n"
)


def test_required_elements_exist() -> None:
    for name in ("hc-base", "hc-ram-root", "hc-netroot-initramfs", "hc-xen-dom0",
                 "hc-storage-node", "hc-xen-guest"):
        assert name in OWN


@pytest.mark.parametrize("name", OWN)
def test_element_anatomy(name: str) -> None:
    issues = lint_element(LIB.get(name))
    assert issues == [], "\n".join(map(str, issues))


@pytest.mark.parametrize("role", list_roles())
def test_image_of_each_profile(role: str) -> None:
    p = load_profile(role)
    closure = LIB.closure((*p.base_elements, *p.elements, *BUILD_ELEMENTS))
    issues = lint_image(closure)
    assert issues == [], "\n".join(map(str, issues))
    issues = lint_layers(LIB.closure((*p.base_elements, "hc-build-layers")), closure)
    assert issues == [], "\n".join(map(str, issues))
    names = [e.name for e in closure]
    for el in closure:  # dependencies first
        for dep in el.deps:
            if not el.external:
                assert names.index(dep) < names.index(el.name)


def test_env_defaults_are_documented() -> None:
    for name in OWN:
        el = LIB.get(name)
        for var in el.env_defaults:
            assert var in el.env_documented, f"{name}: {var}"


def _script(d: Path, phase: str, name: str, body: str) -> None:
    """An executable script ``phase/name`` of element ``d``: the anatomy header, then ``body``."""
    (d / phase).mkdir(exist_ok=True)
    s = d / phase / name
    s.write_text(HEADER + body)
    s.chmod(0o755)


def _element(root: Path, name: str = "hc-thing") -> Path:
    d = root / name
    (d / "install.d").mkdir(parents=True)
    (d / "environment.d").mkdir()
    (d / "README.md").write_text(
        "# x\n\n| Variable | Default | Description |\n|---|---|---|\n| `HC_X` | `1` | x |\n"
    )
    (d / "environment.d" / "10-hc-thing").write_text("export HC_X=${HC_X:-1}\n")
    (d / "element-deps").write_text("hc-a\nhc-b\n")
    _script(d, "install.d", "10-hc-thing", "true\n")
    return d


def _msgs(d: Path) -> list[str]:
    return [i.message for i in lint_element(load_element(d))]


def test_good_synthetic_element_is_clean(tmp_path: Path) -> None:
    assert _msgs(_element(tmp_path)) == []


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: (d / "element-deps").write_text("hc-b\nhc-a\n"), "not sorted"),
        (lambda d: (d / "element-deps").write_text("hc-a\nhc-a\n"), "duplicates"),
        (lambda d: (d / "README.md").write_text("# x\nno table\n"), "environment table"),
        (lambda d: (d / "README.md").unlink(), "no README"),
        (lambda d: (d / "environment.d" / "10-hc-thing").write_text(
            "export HC_X=${HC_X:-1}\nif true; then export Y=2; fi\n"), "only 'export"),
        (lambda d: (d / "environment.d" / "10-hc-thing").write_text(
            "export HC_X=${HC_X:-1}\nexport HC_Y=${HC_Y:-2}\n"), "HC_Y (environment.d) missing"),
        (lambda d: (d / "install.d" / "10-hc-thing").write_text("#!/bin/bash\nset -e\n"),
         "xtrace idiom"),
        (lambda d: (d / "install.d" / "10-hc-thing").write_text(HEADER.replace(
            "set -eu -o pipefail", "set -e")), "set -eu -o pipefail"),
        (lambda d: (d / "install.d" / "10-hc-thing").chmod(0o644), "not executable"),
        (lambda d: (d / "install.d" / "10-hc-thing").rename(d / "install.d" / "thing"),
         "NN-lowercase"),
        (lambda d: (d / "install.d" / "10-hc-thing").write_text(HEADER + "apt-get -y install x\n"),
         "package-installs.yaml"),
        (lambda d: (d / "package-installs.yaml").write_text("- a\n"), "must be a mapping"),
    ],
)
def test_lint_catches(tmp_path: Path, mutate: object, needle: str) -> None:
    d = _element(tmp_path)
    mutate(d)  # type: ignore[operator]
    msgs = _msgs(d)
    assert any(needle in m for m in msgs), msgs


def test_lint_role_names_and_prefix(tmp_path: Path) -> None:
    assert any("named for a role" in m for m in _msgs(_element(tmp_path, "hc-hnode-things")))
    assert any("start with 'hc-'" in m for m in _msgs(_element(tmp_path, "thing")))


def test_duplicate_script_name_across_phases(tmp_path: Path) -> None:
    d = _element(tmp_path)
    (d / "post-install.d").mkdir()
    shutil.copy2(d / "install.d" / "10-hc-thing", d / "post-install.d" / "10-hc-thing")
    assert any("more than one phase" in m for m in _msgs(d))
    # and across two elements of one image
    e = _element(tmp_path, "hc-other")
    shutil.copy2(d / "install.d" / "10-hc-thing", e / "install.d" / "10-hc-thing")
    issues = lint_image([load_element(d), load_element(e)])
    assert any("also used by hc-thing" in i.message for i in issues)


def test_dependency_cycle(tmp_path: Path) -> None:
    for n, deps in (("hc-a", "hc-b"), ("hc-b", "hc-c"), ("hc-c", "hc-a")):
        d = _element(tmp_path, n)
        (d / "element-deps").write_text(deps + "\n")
    lib = ElementLibrary(root=tmp_path, dib_root=None)
    with pytest.raises(ElementError, match="cycle: hc-a -> hc-b -> hc-c -> hc-a"):
        lib.closure(["hc-a"])


def test_missing_dependency_names_who_wants_it(tmp_path: Path) -> None:
    _element(tmp_path, "hc-a").joinpath("element-deps").write_text("hc-zzz\n")
    with pytest.raises(ElementError, match="wanted by hc-a"):
        ElementLibrary(root=tmp_path, dib_root=None).closure(["hc-a"])


def test_dib_elements_resolve_as_external() -> None:
    el = LIB.get("package-installs")
    assert el.external
    assert lint_element(el) == []


def test_env_table_parser() -> None:
    t = "| Variable | Default | Description |\n|---|---|---|\n| `A_B` | `x` | d |\n| (none) | | |\n"
    assert parse_env_table(t) == {"A_B": "x"}
    assert parse_env_table("nothing") is None
    assert paths.elements_dir().is_dir()


def _layers(tmp_path: Path, role_el: Path) -> list[str]:
    base = _element(tmp_path, "hc-a")
    layer = LIB.get("hc-build-layers")
    return [i.message for i in lint_layers([load_element(base), layer],
                                           [load_element(base), layer, load_element(role_el)])]


def test_layer_lint_clean_role_element(tmp_path: Path) -> None:
    assert _layers(tmp_path, _element(tmp_path, "hc-thing")) == []


@pytest.mark.parametrize("phase", ["root.d", "extra-data.d", "pre-install.d"])
def test_layer_lint_role_element_acting_before_the_checkpoint(tmp_path: Path, phase: str) -> None:
    d = _element(tmp_path, "hc-thing")
    (d / phase).mkdir()
    shutil.copy2(d / "install.d" / "10-hc-thing", d / phase / "20-hc-early")
    msgs = _layers(tmp_path, d)
    assert len(msgs) == 1 and f"script in {phase}" in msgs[0], msgs


def test_layer_lint_role_packages_before_the_checkpoint(tmp_path: Path) -> None:
    d = _element(tmp_path, "hc-thing")
    (d / "package-installs.yaml").write_text(
        "vim:\nless:\n  phase: pre-install.d\ncurl:\n  - phase: install.d\n  - phase: root.d\n")
    msgs = _layers(tmp_path, d)
    assert sorted(msgs) == [
        "package curl in phase root.d: role-level elements act from install.d on (the base layer"
        " is taken there)",
        "package less in phase pre-install.d: role-level elements act from install.d on (the base"
        " layer is taken there)"]


def test_layer_lint_role_element_exporting_dib_variables(tmp_path: Path) -> None:
    d = _element(tmp_path, "hc-thing")
    (d / "environment.d" / "10-hc-thing").write_text(
        "export HC_X=${HC_X:-1}\nexport DIB_RELEASE=${DIB_RELEASE:-trixie}\n")
    msgs = _layers(tmp_path, d)
    assert len(msgs) == 1 and "exports DIB_RELEASE" in msgs[0], msgs


def test_layer_lint_script_before_the_checkpoint(tmp_path: Path) -> None:
    d = _element(tmp_path, "hc-thing")
    (d / "install.d" / "10-hc-thing").rename(d / "install.d" / "00-0-aaa")
    msgs = _layers(tmp_path, d)
    assert any("sorts before the layer checkpoint" in m for m in msgs), msgs


def _tree_output(d: Path) -> list[str]:
    closure = [load_element(d), *LIB.closure(BUILD_ELEMENTS)]
    return [i.message for i in lint_image(closure)]


def test_tree_output_lint_clean(tmp_path: Path) -> None:
    assert _tree_output(_element(tmp_path, "hc-thing")) == []


def test_tree_output_lint_block_device_user(tmp_path: Path) -> None:
    """A bootloader-like element reads IMAGE_BLOCK_DEVICE: DIB gives it none any more."""
    d = _element(tmp_path, "hc-thing")
    _script(d, "finalise.d", "50-hc-boot", 'grub-install "$IMAGE_BLOCK_DEVICE"\n')
    msgs = _tree_output(d)
    assert len(msgs) == 1 and "block device" in msgs[0] and "hc-tree-output" in msgs[0], msgs
    # DIB's own bootloader element is caught the same way
    msgs = [i.message for i in lint_image(LIB.closure(("bootloader", *BUILD_ELEMENTS)))]
    assert any("block device" in m for m in msgs), msgs


def test_tree_output_lint_other_block_device_hook(tmp_path: Path) -> None:
    d = _element(tmp_path, "hc-thing")
    _script(d, "block-device.d", "10-hc-disk", "echo IMAGE_BLOCK=x\n")
    msgs = _tree_output(d)
    assert len(msgs) == 1 and "block device" in msgs[0], msgs

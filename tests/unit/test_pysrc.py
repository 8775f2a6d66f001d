"""hcbuild carries the agents' Python sources into images (builder/pysrc.py): what it stages,
that they change the build key of the images that install them only, and that they (and the
builder) keep to their imports."""

from __future__ import annotations

import ast
from pathlib import Path

from builder import cache, pysrc
from builder.elements import ElementLibrary
from builder.mirrors import Mirrors

ROOT = Path(__file__).resolve().parents[2]


def test_stage_copies_the_shipped_packages(tmp_path: Path) -> None:
    dest = pysrc.stage(tmp_path / "el")
    top = dest / pysrc.STAGED / pysrc.STAGED_DIR / "homecloud"
    staged = sorted(str(p.relative_to(top.parent)) for p in top.rglob("*.py"))
    assert staged == sorted(pysrc.digests())
    assert "homecloud/agents/storage.py" in staged and "homecloud/core/ids.py" in staged
    assert (top / "agents" / "protocol.py").read_bytes() == \
        (ROOT / "homecloud" / "agents" / "protocol.py").read_bytes()
    assert not list(top.rglob("__pycache__"))
    install = (ElementLibrary().get(pysrc.ELEMENT).path / "install.d" /
               "50-hc-agents-python").read_text()
    assert f"../{pysrc.STAGED_DIR}" in install


def test_sources_are_in_the_key_of_images_that_install_them() -> None:
    kw = {"profile": {}, "elements": [], "kernel_spec": None, "xen_spec": None,
          "mirrors": Mirrors("http://192.0.2.1/debian", "http://192.0.2.1/security"),
          "arch": "amd64", "base_key": "b"}
    plain = cache.role_inputs(**kw)  # type: ignore[arg-type]
    assert "python" not in plain
    with_py = cache.role_inputs(**kw, python=pysrc.digests())  # type: ignore[arg-type]
    changed = cache.role_inputs(**kw, python={  # type: ignore[arg-type]
        **pysrc.digests(), "homecloud/agents/storage.py": "0" * 64})
    assert len({cache.digest(plain), cache.digest(with_py), cache.digest(changed)}) == 3
    lib = ElementLibrary()
    for role_element in ("hc-aoe-target", "hc-node-report"):
        assert pysrc.ELEMENT in [e.name for e in lib.closure([role_element])]


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_shipped_code_imports_only_the_standard_library_and_itself() -> None:
    import sys

    for p in pysrc.files():
        for mod in _imports(p):
            top = mod.split(".")[0]
            assert top == "homecloud" or top in sys.stdlib_module_names, (p, mod)
            if top == "homecloud":
                assert mod.startswith(("homecloud.core", "homecloud.agents")), (p, mod)


def test_builder_imports_nothing_of_ours_but_the_core() -> None:
    for p in sorted((ROOT / "builder").glob("*.py")):
        for mod in _imports(p):
            assert not mod.startswith(("bootserver", "homecloud.agents")), (p, mod)
            if mod.startswith("homecloud"):
                assert mod == "homecloud.core" or mod.startswith("homecloud.core."), (p, mod)

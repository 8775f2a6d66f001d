"""diskimage-builder elements: discovery, dependency closure and the anatomy lint.

Every homecloud element (``elements/hc-*``) has one anatomy:

- ``README.md`` with an ``Environment`` table (``| Variable | Default | Description |``) that
  documents every variable the element reads; ``| (none) | | |`` when it reads none;
- ``element-deps`` sorted, one element per line (DIB's own elements are allowed as deps);
- ``environment.d/NN-name`` holding only ``export X=${X:-default}`` lines (defaults, no logic);
- scripts ``<phase>.d/NN-name`` that start (after the shebang and DIB's xtrace idiom) with
  ``set -eu -o pipefail`` and are executable;
- packages in ``package-installs.yaml``.

``lint_element`` checks one element, ``lint_image`` the elements of one image (duplicate script
names across phases, dependency cycles).  The unit tests run both over every element.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from builder import paths
from builder.errors import ElementError

PHASES = (
    "root.d",
    "extra-data.d",
    "pre-install.d",
    "install.d",
    "post-install.d",
    "post-root.d",
    "block-device.d",
    "finalise.d",
    "cleanup.d",
)
ROLE_NAMES = ("cnode", "snode", "hnode", "domu")
# the base layer checkpoint (elements/hc-build-layers): the first install.d script of a build.
# Before it: debootstrap and the base elements; role-level elements act from install.d on.
EARLY_PHASES = ("root.d", "extra-data.d", "pre-install.d")
CHECKPOINT = "00-0-hc-layer-checkpoint"
# DIB hands the finished tree over instead of making a block device (elements/hc-tree-output)
TREE_OUTPUT = "hc-tree-output"
_SCRIPT_RE = re.compile(r"^[0-9]{2}-[a-z0-9][a-z0-9-]*$")
_ENV_LINE_RE = re.compile(r"^export ([A-Z_][A-Z0-9_]*)=\"?\$\{\1:-([^}]*)\}\"?$")
_TABLE_ROW_RE = re.compile(r"^\|\s*`?([A-Z_][A-Z0-9_]*|\(none\))`?\s*\|([^|]*)\|([^|]*)\|\s*$")
XTRACE_IDIOM = ('if [ "${DIB_DEBUG_TRACE:-0}" -gt 0 ]; then', "    set -x", "fi")
STRICT_LINE = "set -eu -o pipefail"


@dataclass(frozen=True)
class Element:
    name: str
    path: Path
    deps: tuple[str, ...]
    env_defaults: Mapping[str, str]  # from environment.d
    env_documented: Mapping[str, str]  # README table: variable -> default text
    scripts: Mapping[str, tuple[str, ...]]  # phase -> script names
    packages: tuple[str, ...]
    external: bool = False  # an element of diskimage-builder itself

    @property
    def env_keys(self) -> frozenset[str]:
        return frozenset(self.env_defaults) | frozenset(self.env_documented)

    def files(self) -> list[Path]:
        """Every file of the element, sorted (for the build key)."""
        return sorted(
            p for p in self.path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )


@dataclass
class LintIssue:
    element: str
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.element}: {self.message}"


def dib_elements_dir() -> Path | None:
    spec = importlib.util.find_spec("diskimage_builder")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "elements"
    return d if d.is_dir() else None


def _readme(path: Path) -> Path | None:
    for name in ("README.md", "README.rst"):
        if (path / name).is_file():
            return path / name
    return None


def parse_env_table(text: str) -> dict[str, str] | None:
    """Variables of the README's environment table; None when the README has no table."""
    rows: dict[str, str] = {}
    in_table = False
    found = False
    for line in text.splitlines():
        s = line.strip()
        if re.match(r"^\|\s*Variable\s*\|\s*Default\s*\|\s*Description\s*\|$", s):
            in_table = found = True
            continue
        if in_table:
            if re.match(r"^\|[\s:|-]+\|$", s):
                continue
            m = _TABLE_ROW_RE.match(s)
            if not m:
                in_table = False
                continue
            if m.group(1) != "(none)":
                rows[m.group(1)] = m.group(2).strip().strip("`")
    return rows if found else None


def parse_environment_d(path: Path) -> tuple[dict[str, str], list[str]]:
    """(defaults, bad lines) of one environment.d file."""
    defaults: dict[str, str] = {}
    bad: list[str] = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = _ENV_LINE_RE.match(s)
        if m:
            defaults[m.group(1)] = m.group(2)
        else:
            bad.append(s)
    return defaults, bad


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [x.strip() for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]


def _package_installs(path: Path) -> dict[object, object]:
    """The element's package-installs.yaml as a mapping ({} when it has none)."""
    f = path / "package-installs.yaml"
    if not f.is_file():
        return {}
    try:
        doc = yaml.safe_load(f.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ElementError(path.name, f"package-installs.yaml is not YAML: {exc}", f) from exc
    if not isinstance(doc, dict):
        raise ElementError(path.name, "package-installs.yaml must be a mapping", f)
    return doc


def _packages(path: Path) -> tuple[str, ...]:
    return tuple(sorted(str(k) for k in _package_installs(path)))


def package_phases(path: Path) -> dict[str, set[str]]:
    """package -> the DIB phases package-installs.yaml installs it in (default install.d)."""
    try:
        doc = _package_installs(path)
    except ElementError:
        return {}  # reported by lint_element
    out: dict[str, set[str]] = {}
    for pkg, spec in doc.items():
        specs = spec if isinstance(spec, list) else [spec]
        out[str(pkg)] = {
            str(x.get("phase", "install.d")) if isinstance(x, dict) else "install.d"
            for x in specs
        }
    return out


def _packages_or_none(path: Path) -> tuple[str, ...]:
    try:
        return _packages(path)
    except ElementError:
        return ()  # reported by lint_element


def load_element(path: Path, external: bool = False) -> Element:
    env_defaults: dict[str, str] = {}
    envd = path / "environment.d"
    if envd.is_dir() and not external:
        for f in sorted(envd.iterdir()):
            if f.is_file():
                env_defaults.update(parse_environment_d(f)[0])
    readme = _readme(path)
    documented = (parse_env_table(readme.read_text()) if readme else None) or {}
    scripts = {
        ph: tuple(sorted(p.name for p in (path / ph).iterdir() if p.is_file()))
        for ph in PHASES
        if (path / ph).is_dir()
    }
    return Element(
        name=path.name,
        path=path,
        deps=tuple(_read_lines(path / "element-deps")),
        env_defaults=env_defaults,
        env_documented=documented,
        scripts=scripts,
        packages=_packages_or_none(path) if not external else (),
        external=external,
    )


@dataclass
class ElementLibrary:
    """The elements homecloud can use: its own (``elements/``) and diskimage-builder's."""

    root: Path = field(default_factory=paths.elements_dir)
    dib_root: Path | None = field(default_factory=dib_elements_dir)
    _cache: dict[str, Element] = field(default_factory=dict)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def get(self, name: str, wanted_by: str | None = None) -> Element:
        if name in self._cache:
            return self._cache[name]
        own = self.root / name
        if own.is_dir():
            el = load_element(own)
        elif self.dib_root is not None and (self.dib_root / name).is_dir():
            el = load_element(self.dib_root / name, external=True)
        else:
            by = f" (wanted by {wanted_by})" if wanted_by else ""
            raise ElementError(name, f"no such element in {self.root} or diskimage-builder{by}")
        self._cache[name] = el
        return el

    def closure(self, names: Iterable[str]) -> list[Element]:
        """The elements and all their dependencies, dependencies first; cycles are errors.

        DIB's own elements are resolved by DIB itself: they end the walk (their own deps are
        not followed), so a cycle is only searched among homecloud elements.
        """
        order: list[Element] = []
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done

        def visit(name: str, chain: tuple[str, ...], wanted_by: str | None) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join((*chain[chain.index(name) :], name))
                raise ElementError(name, f"dependency cycle: {cycle}", self.root / name)
            el = self.get(name, wanted_by)
            state[name] = 1
            if not el.external:
                for dep in el.deps:
                    visit(dep, (*chain, name), name)
            state[name] = 2
            order.append(el)

        for n in names:
            visit(n, (), None)
        return order


def _script_issues(el: Element, script: Path) -> list[str]:
    out: list[str] = []
    if not _SCRIPT_RE.match(script.name):
        out.append(f"script {script.parent.name}/{script.name}: name must be NN-lowercase-words")
    if not script.stat().st_mode & 0o111:
        out.append(f"script {script.parent.name}/{script.name}: not executable")
    lines = [x.rstrip() for x in script.read_text(errors="replace").splitlines()]
    if not lines or not lines[0].startswith("#!"):
        out.append(f"script {script.parent.name}/{script.name}: no shebang")
        return out
    body = [x for x in lines[1:] if x.strip() and not x.lstrip().startswith("#")]
    if lines[0] not in ("#!/bin/bash", "#!/usr/bin/env bash"):
        return out  # not a shell script (python etc.): the shell rules do not apply
    if tuple(body[:3]) == XTRACE_IDIOM:
        body = body[3:]
    else:
        out.append(
            f"script {script.parent.name}/{script.name}: must start with DIB's xtrace idiom "
            f"({XTRACE_IDIOM[0]!r} ...)"
        )
    if not body or body[0].strip() != STRICT_LINE:
        out.append(f"script {script.parent.name}/{script.name}: first command must be "
                   f"{STRICT_LINE!r}")
    return out


def lint_element(el: Element) -> list[LintIssue]:
    """Anatomy issues of one homecloud element (empty list = clean)."""
    issues: list[LintIssue] = []

    def bad(path: Path, msg: str) -> None:
        issues.append(LintIssue(el.name, path, msg))

    if el.external:
        return issues
    if not el.name.startswith("hc-"):
        bad(el.path, "homecloud element names start with 'hc-'")
    words = el.name.split("-")
    for role in ROLE_NAMES:
        if role in words:
            bad(el.path, f"named for a role ({role}); name elements for what they do")
    readme = _readme(el.path)
    if readme is None:
        bad(el.path, "no README.md / README.rst")
        table: dict[str, str] | None = None
    else:
        table = parse_env_table(readme.read_text())
        if table is None:
            bad(readme, "README has no '| Variable | Default | Description |' environment table")
    deps_file = el.path / "element-deps"
    if deps_file.is_file():
        deps = list(el.deps)
        if deps != sorted(deps):
            bad(deps_file, f"element-deps not sorted: {deps}")
        if len(set(deps)) != len(deps):
            bad(deps_file, "element-deps has duplicates")
        if el.name in deps:
            bad(deps_file, "element depends on itself")
    envd = el.path / "environment.d"
    if envd.is_dir():
        for f in sorted(envd.iterdir()):
            if not _SCRIPT_RE.match(f.name.removesuffix(".bash")):
                bad(f, "environment.d file name must be NN-name")
            for line in parse_environment_d(f)[1]:
                bad(f, f"environment.d holds only 'export X=${{X:-default}}' lines, got {line!r}")
    if table is not None:
        for var in el.env_defaults:
            if var not in table:
                bad(readme or el.path, f"variable {var} (environment.d) missing from README table")
    for phase in el.scripts:
        for name in el.scripts[phase]:
            for msg in _script_issues(el, el.path / phase / name):
                bad(el.path / phase / name, msg)
    names = [n for ph in el.scripts for n in el.scripts[ph]]
    for n in sorted({n for n in names if names.count(n) > 1}):
        bad(el.path, f"script name {n} used in more than one phase")
    pkg = el.path / "package-installs.yaml"
    if pkg.is_file():
        try:
            _packages(el.path)
        except ElementError as exc:
            bad(pkg, exc.message)
    for ph in ("install.d", "pre-install.d", "post-install.d"):
        for name in el.scripts.get(ph, ()):
            text = (el.path / ph / name).read_text(errors="replace")
            if re.search(r"\bapt-get\s+(-\S+\s+)*install\b", text):
                bad(el.path / ph / name, "install packages through package-installs.yaml")
    return issues


def lint_image(elements: Iterable[Element]) -> list[LintIssue]:
    """Issues across the elements of one image: the same script name twice (DIB runs each
    phase's scripts from one merged folder, so a duplicate silently replaces another); with
    hc-tree-output, any element that needs DIB's block device."""
    elements = list(elements)
    issues: list[LintIssue] = lint_tree_output(elements)
    seen: dict[str, str] = {}
    for el in elements:
        if el.external:
            continue
        for phase, names in el.scripts.items():
            for n in names:
                key = n
                if key in seen and seen[key] != f"{el.name}/{phase}":
                    issues.append(
                        LintIssue(
                            el.name,
                            el.path / phase / n,
                            f"script name {n} also used by {seen[key]}",
                        )
                    )
                seen.setdefault(key, f"{el.name}/{phase}")
    return issues


def lint_tree_output(elements: Sequence[Element]) -> list[LintIssue]:
    """With hc-tree-output (DIB hands the tree over and makes no block device), no other
    element may have block-device.d scripts or read IMAGE_BLOCK_DEVICE (a bootloader does)."""
    if not any(el.name == TREE_OUTPUT for el in elements):
        return []
    issues: list[LintIssue] = []
    for el in elements:
        if el.name == TREE_OUTPUT:
            continue
        for phase, names in sorted(el.scripts.items()):
            for n in names:
                path = el.path / phase / n
                if phase == "block-device.d" or "IMAGE_BLOCK_DEVICE" in path.read_text(
                        errors="replace"):
                    issues.append(LintIssue(
                        el.name, path, f"needs diskimage-builder's block device, which "
                        f"{TREE_OUTPUT} replaces (homecloud images are a tree: no block "
                        "device, no bootloader)"))
    return issues


def lint_layers(base: Iterable[Element], closure: Iterable[Element]) -> list[LintIssue]:
    """The base layer is taken at the start of install.d, and shared by every role with the
    same base: role-level elements (in ``closure``, not in ``base``) may not act before it
    (no root.d, extra-data.d or pre-install.d scripts or packages), and export only HC_
    variables (DIB's variables change what the base elements do)."""
    base_names = {el.name for el in base}
    issues: list[LintIssue] = []
    why = "role-level elements act from install.d on (the base layer is taken there)"
    elements = list(closure)
    for el in elements:
        if el.name in base_names:
            continue
        for ph in EARLY_PHASES:
            for n in el.scripts.get(ph, ()):
                issues.append(LintIssue(el.name, el.path / ph / n,
                                        f"script in {ph}: {why}; or make it a base element"))
        for pkg, phases in sorted(package_phases(el.path).items()):
            for ph in sorted(phases & set(EARLY_PHASES)):
                issues.append(LintIssue(el.name, el.path / "package-installs.yaml",
                                        f"package {pkg} in phase {ph}: {why}"))
        if not el.external:
            for var in sorted(el.env_defaults):
                if not var.startswith("HC_"):
                    issues.append(LintIssue(
                        el.name, el.path / "environment.d",
                        f"exports {var}: role-level elements export only HC_ variables "
                        "(the base elements see every element's environment)"))
    installs = sorted(n for el in elements for n in el.scripts.get("install.d", ()))
    if CHECKPOINT in installs and installs[0] != CHECKPOINT:
        owner = next(el for el in elements if installs[0] in el.scripts.get("install.d", ()))
        issues.append(LintIssue(owner.name, owner.path / "install.d" / installs[0],
                                f"sorts before the layer checkpoint install.d/{CHECKPOINT}"))
    return issues

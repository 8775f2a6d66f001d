"""The CI entry points and the lock they install from: shell scripts shellcheck-clean, every
dependency pyproject.toml names (runtime and test extras) pinned exactly in
requirements/lock.txt, the linters and type checker among them."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support.ci_skips import in_ci

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
SCRIPTS = [ROOT / ".ci" / n for n in ("run", "setup", "try-latest")]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, line in enumerate(LOCK.read_text().splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        name, sep, version = s.partition("==")
        assert sep and _NAME.fullmatch(name) and re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), \
            f"{LOCK}:{n}: {s!r} is not an exact NAME==VERSION pin"
        assert _norm(name) not in pins, f"{LOCK}:{n}: {name} pinned twice"
        pins[_norm(name)] = version
    return pins


def test_lock_pins_every_declared_dependency_exactly() -> None:
    pins = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    for req in declared:
        m = _NAME.match(req)
        assert m, req
        assert _norm(m.group(0)) in pins, f"{req} (pyproject.toml) is not pinned in {LOCK}"
    for tool in ("ruff", "mypy", "types-pyyaml", "pytest", "hypothesis", "import-linter",
                 "click", "hatchling", "editables"):
        assert tool in pins, f"{tool} is not pinned in {LOCK}"
    assert "pip" not in pins and "homecloud" not in pins


def test_lock_names_no_index_or_host() -> None:
    text = LOCK.read_text()
    assert not re.search(r"^\s*-", text, re.M), "options (indexes, find-links) do not belong here"
    assert "://" not in text


def test_ci_scripts_are_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        if in_ci():
            pytest.fail("shellcheck not installed (.ci/run installs it)")
        pytest.skip("shellcheck not installed")
    r = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ci_installs_from_the_lock_into_a_venv() -> None:
    run = (ROOT / ".ci" / "run").read_text()
    assert "-r requirements/lock.txt" in run and "--no-build-isolation" in run
    assert '-m venv "$VENV"' in run and '. "$VENV/bin/activate"' in run
    assert "shellcheck" in run.split("APT_PACKAGES=(", 1)[1].split("\n)", 1)[0]

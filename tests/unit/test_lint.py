"""Lint, types and layers are tests: ruff, mypy and import-linter over the whole tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_clean() -> None:
    r = _run(sys.executable, "-m", "ruff", "check", "builder", "bootserver", "homecloud", "tests",
             "bench")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_clean() -> None:
    r = _run(sys.executable, "-m", "mypy", "--no-error-summary",
             "-p", "builder", "-p", "bootserver", "-p", "homecloud")
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_layers() -> None:
    """The layer rules of docs/DEVELOPING.md ([tool.importlinter] in pyproject.toml)."""
    r = _run(sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 7 kept, 0 broken." in r.stdout, r.stdout

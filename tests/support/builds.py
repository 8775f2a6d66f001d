"""Real ``hcbuild image --all`` once per test session, shared by every test that needs the
built images (tests/integration/test_build*.py, tests/e2e/test_lab.py).

``HC_TEST_BUILD_CACHE`` (build cache) and ``HC_TEST_BUILD_STORE`` (image store) make the builds
persist across sessions: .ci/run sets both, so an unchanged tree rebuilds nothing (the build key
hashes every input, so reuse is safe).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def hcbuild(*args: str, env: dict[str, str] | None = None, timeout: float = 1800,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder.cli", *args],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )


_SESSION: dict[str, tuple[Path, Path, dict[str, str], str]] = {}


def session_cache(factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("HC_TEST_BUILD_CACHE")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env)
    return factory.getbasetemp() / "hc-build-cache"


def ensure_built_all(factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str], str]:
    """``hcbuild image --all`` once per test session (shared by test_build_boot.py):
    (store, cache, {role: build id}, hcbuild's stderr)."""
    if "all" not in _SESSION:
        cache = session_cache(factory)
        # HC_TEST_BUILD_STORE: reuse a store across sessions (unchanged roles are not rebuilt)
        given = os.environ.get("HC_TEST_BUILD_STORE")
        store = Path(given) if given else factory.mktemp("images")
        r = hcbuild("image", "--all", "--out", str(store), "--cache", str(cache))
        assert r.returncode == 0, r.stdout + r.stderr
        ids: dict[str, str] = {}
        for line in r.stdout.splitlines():
            role, bid, _path, state, _secs = line.split()
            assert state == "built" or (given and state == "unchanged")
            ids[role] = bid
        _SESSION["all"] = (store, cache, ids, r.stderr)
    return _SESSION["all"]



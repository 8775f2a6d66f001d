"""Under CI (``CI=true``) a skipped integration or e2e test fails the run.

A skip there means a tool is missing, the run is not root, or a test gave up: a run in which
every integration and e2e test skipped would otherwise be green and prove nothing.  A test may
still skip in CI when ``tests/skips_allowed.txt`` lists it with a reason, one per line::

    NODEID-PATTERN | REASON

``NODEID-PATTERN`` is an fnmatch pattern over the pytest node id
(``tests/e2e/test_x.py::test_y[param]``; ``tests/e2e/test_x.py::*`` allows a whole file).  A
line without a reason is a usage error.  Unit tests are not affected.  The hook turns the skip
report into a failure, so it shows in the terminal summary and in pytest's exit code.
tests/conftest.py imports the hooks; tests/unit/test_ci_skips.py runs pytest on a scratch
project to prove them.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Generator
from pathlib import Path

import pytest

ALLOW_FILE = Path("tests") / "skips_allowed.txt"
STRICT_TIERS = ("integration", "e2e")
_KEY = pytest.StashKey[list[tuple[str, str]]]()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def load_allowed(path: Path) -> list[tuple[str, str]]:
    """(pattern, reason) pairs of the allow-list; a missing file allows nothing."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out: list[tuple[str, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        pattern, sep, reason = (x.strip() for x in s.partition("|"))
        if not sep or not pattern or not reason:
            raise pytest.UsageError(
                f"{path}:{n}: {s!r}: an allowed skip needs 'NODEID-PATTERN | REASON'")
        out.append((pattern, reason))
    return out


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_KEY] = load_allowed(config.rootpath / ALLOW_FILE)


def _strict_tier(item: pytest.Item) -> bool:
    try:
        parts = item.path.relative_to(item.config.rootpath).parts
    except ValueError:
        parts = item.path.parts
    return any(t in parts[:-1] for t in STRICT_TIERS)


def allowed(config: pytest.Config, nodeid: str) -> str | None:
    """The reason ``nodeid`` may skip in CI, or None."""
    for pattern, reason in config.stash.get(_KEY, []):
        if fnmatch.fnmatchcase(nodeid, pattern):
            return reason
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
        item: pytest.Item,
        call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if not rep.skipped or hasattr(rep, "wasxfail") or not in_ci() or not _strict_tier(item):
        return rep
    if allowed(item.config, item.nodeid) is not None:
        return rep
    lr = rep.longrepr
    why = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    rep.outcome = "failed"
    rep.longrepr = (f"{item.nodeid} skipped under CI=true ({why}); a skipped "
                    f"{'/'.join(STRICT_TIERS)} test fails in CI unless {ALLOW_FILE} allows it "
                    "with a reason")
    return rep

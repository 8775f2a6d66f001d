"""Test tiers: tests/unit (no root, no network), tests/integration (netns, real sockets, vblade,
diskimage-builder), tests/e2e (QEMU TCG boots).  The tier marker is applied from the folder, so
``pytest -m unit`` is the fast tier and plain ``pytest`` runs everything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# under CI=true a skipped integration/e2e test fails unless tests/skips_allowed.txt allows it
from tests.support.ci_skips import pytest_configure, pytest_runtest_makereport  # noqa: F401

_TIERS = ("unit", "integration", "e2e")


def _tier(item: pytest.Item) -> int:
    parts = Path(str(item.fspath)).parts
    return next((i for i, t in enumerate(_TIERS) if t in parts), len(_TIERS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # fast tier first, then integration (which builds the images), then e2e (which boots them)
    items.sort(key=_tier)
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
        if ("integration" in parts or "e2e" in parts) and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root (network namespaces, QEMU taps)"))

"""How tests run the Python node agents on this host: the launcher that the images install
(elements/hc-aoe-target/static/...), with this checkout's ``homecloud`` package on the path."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ELEMENTS = ROOT / "elements"
STORAGE_LAUNCHER = ELEMENTS / "hc-aoe-target" / "static" / "usr" / "local" / "sbin" / \
    "hc-storage-agent"


def storage_agent_argv() -> list[str]:
    """The storage agent as the image starts it (its launcher), run by this interpreter."""
    return [sys.executable, str(STORAGE_LAUNCHER)]


def agent_env() -> dict[str, str]:
    """PYTHONPATH for the launcher (the image has the package in /usr/local/lib/homecloud)."""
    return {"PYTHONPATH": str(ROOT)}

"""The config node's data and state paths (shared by hcbuild and hcboot)."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """The config node's state directory: ``$HC_STATE_DIR`` or ``/var/lib/homecloud``."""
    return Path(os.environ.get("HC_STATE_DIR", "/var/lib/homecloud"))


def default_image_store() -> Path:
    """The image store shared by hcbuild and hcboot: ``$HC_IMAGE_STORE`` or ``<state>/images``."""
    env = os.environ.get("HC_IMAGE_STORE")
    return Path(env) if env else default_state_dir() / "images"


def default_cache_dir() -> Path:
    """Build cache (kernel .debs, base layers): ``$HC_CACHE_DIR`` or ``/var/cache/homecloud``."""
    return Path(os.environ.get("HC_CACHE_DIR", "/var/cache/homecloud"))

"""Where the declarative inputs (elements/, profiles/, kernels/) live.

In a checkout or an editable install they are the top-level folders of the repository; in a
wheel they are shipped as ``builder/_data/<name>``.  ``HC_DATA_DIR`` overrides both (a folder
holding ``elements``, ``profiles`` and ``kernels``).
"""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_root() -> Path:
    env = os.environ.get("HC_DATA_DIR")
    if env:
        return Path(env)
    shipped = _PKG / "_data"
    if (shipped / "profiles").is_dir():
        return shipped
    return _PKG.parent


def elements_dir() -> Path:
    return data_root() / "elements"


def profiles_dir() -> Path:
    return data_root() / "profiles"


def kernels_dir() -> Path:
    return data_root() / "kernels"


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

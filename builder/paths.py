"""Where the declarative inputs (elements/, profiles/, kernels/) live.  (The config node's state,
image store and cache paths are ``homecloud.core.paths``.)

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

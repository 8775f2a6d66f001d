"""A static-file app for the HTTP server's tests and benches (not part of the product)."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Mapping
from pathlib import Path

from bootserver.http import Response


class StaticApp:
    """Serves the regular files under ``root`` for GET/HEAD.

    The path's query is ignored; directories, symlinks leading out of ``root`` and anything
    missing are 404 (None)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))

    def handle(self, method: str, path: str, client_ip: str, headers: Mapping[str, str],
               body: bytes) -> Response | None:
        if method not in ("GET", "HEAD"):
            return None
        rel = path.split("?", 1)[0].lstrip("/")
        if not rel:
            return None
        target = Path(os.path.realpath(self.root / rel))
        if not target.is_relative_to(self.root) or not target.is_file():
            return None
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return Response(content_type=ctype, file=target)

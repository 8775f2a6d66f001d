"""Typed errors of the boot server; only bootserver/cli.py turns them into exit codes."""

from __future__ import annotations

from pathlib import Path


class HcbootError(Exception):
    """Base class: every error the CLI reports as a message (not a traceback)."""


class InventoryError(HcbootError):
    """The inventory file is malformed; names the file and the entry at fault."""

    def __init__(self, path: Path | str, entry: str, message: str) -> None:
        self.path = Path(path)
        self.entry = entry
        super().__init__(f"{path}: {entry}: {message}" if entry else f"{path}: {message}")


class ServeError(HcbootError):
    """`hcboot serve` cannot start (interface, address, missing boot binaries...)."""

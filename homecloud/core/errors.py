"""The one error root: every typed error of homecloud derives from :class:`HomecloudError`.

Errors carry the file, key, MAC, node, packet or command they concern; only the command lines
(``builder.cli``, ``homecloud.cli``) turn them into messages and exit codes."""

from __future__ import annotations

from pathlib import Path


class HomecloudError(Exception):
    """Base class of every error homecloud reports as a message (not a traceback)."""

    exit_code = 1


class FileError(HomecloudError):
    """A file is missing, unreadable or malformed; names the file (and the entry, if any)."""

    def __init__(self, path: Path | str, message: str, entry: str = "") -> None:
        self.path = Path(path)
        self.entry = entry
        self.message = message
        super().__init__(f"{path}: {entry}: {message}" if entry else f"{path}: {message}")


class ManifestError(FileError):
    """A manifest is missing, unreadable or malformed; carries the path at fault."""

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(path, message)


class InventoryError(FileError):
    """The inventory is malformed or an edit would make it so; names the file and the entry."""

    def __init__(self, path: Path | str, entry: str, message: str) -> None:
        super().__init__(path, message, entry)


class RevisionConflict(HomecloudError):
    """A compare-and-set update lost a race: the inventory changed since it was read."""

    def __init__(self, where: str, expected: str, found: str) -> None:
        self.expected = expected
        self.found = found
        super().__init__(f"{where}: changed since it was read (revision {expected[:12]}, now "
                         f"{found[:12]}); read it again and retry")


class NotFound(HomecloudError):
    """A named thing (node, MAC, export) does not exist."""

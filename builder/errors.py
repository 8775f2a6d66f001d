"""Typed errors of hcbuild.  Each carries the file, key, element or command it concerns.

Only ``builder.cli`` turns them into messages and exit codes (``exit_code`` below).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from homecloud.core.errors import HomecloudError


class BuildError(HomecloudError):
    """Base class of every error hcbuild reports to the user."""

    exit_code = 1


class ProfileError(BuildError):
    """A profile file is malformed: names the file and the key at fault."""

    exit_code = 2

    def __init__(self, path: Path | str, key: str | None, message: str) -> None:
        where = f"{path}: {key}" if key else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.key = key
        self.message = message


class ElementError(BuildError):
    """An element is missing, malformed or part of a dependency cycle."""

    exit_code = 2

    def __init__(self, element: str, message: str, path: Path | str | None = None) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{where}element {element}: {message}")
        self.element = element
        self.path = Path(path) if path else None
        self.message = message


class MirrorError(BuildError):
    """No usable Debian mirror could be found or one given is malformed."""

    exit_code = 2


class StoreError(BuildError):
    """The image store cannot be written, locked or read."""

    exit_code = 3

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


class LockBusyError(StoreError):
    """Another hcbuild holds the store lock of this role."""


class CommandError(BuildError):
    """An external command failed (raised by the funnel, builder.run).  ``cmd`` is the argv,
    shown with shlex.join; ``tail`` the last lines of its output or log."""

    exit_code = 4

    def __init__(
        self,
        cmd: Sequence[str],
        returncode: int,
        message: str = "",
        log_path: Path | None = None,
        tail: Sequence[str] = (),
    ) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.log_path = log_path
        self.tail = list(tail)
        text = message or f"command failed with exit code {returncode}"
        super().__init__(f"{text}: {shlex.join(self.cmd)}")


class DibError(CommandError):
    """disk-image-create failed; names the failing element/script when DIB's log tells."""

    exit_code = 5

    def __init__(
        self,
        cmd: Sequence[str],
        returncode: int,
        log_path: Path,
        tail: Sequence[str],
        element: str | None = None,
        script: str | None = None,
        phase: str | None = None,
    ) -> None:
        self.element = element
        self.script = script
        self.phase = phase
        where = ""
        if script:
            where = f" in {phase + '/' if phase else ''}{script}"
            if element:
                where += f" (element {element})"
        super().__init__(
            cmd,
            returncode,
            f"diskimage-builder failed with exit code {returncode}{where}",
            log_path=log_path,
            tail=tail,
        )

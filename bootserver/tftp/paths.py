"""Request names and the TFTP root: one path rule (``normalize_tftp_path``) and an open that
never leaves the root (``open_confined``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bootserver.tftp.codec import MAX_NAME
from homecloud.core.errors import HomecloudError


class TftpPathError(HomecloudError, ValueError):
    """A requested TFTP name that is refused (traversal, bad characters); names the path."""


class TftpNotFound(HomecloudError, FileNotFoundError):
    """The requested name maps to nothing servable."""


def normalize_tftp_path(raw: str) -> str:
    """The relative path under the root that a requested TFTP name means (see module doc).

    Raises TftpPathError for names that are refused."""
    if not raw:
        raise TftpPathError("empty file name")
    if len(raw) > MAX_NAME:
        raise TftpPathError(f"file name longer than {MAX_NAME}: {raw[:40]!r}...")
    for ch in raw:
        if ch == "\\":
            raise TftpPathError(f"backslash in file name {raw!r}")
        if not " " <= ch <= "~":
            raise TftpPathError(f"NUL, control or non-ASCII character in file name {raw!r}")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TftpPathError(f"'..' in file name {raw!r}")
    if not parts:
        raise TftpPathError(f"file name {raw!r} names the root itself")
    return "/".join(parts)


def open_confined(root: Path, rel: str) -> int:
    """Open ``root/rel`` read-only without leaving ``root``; returns an fd of a regular file.

    ``root`` must already be resolved (``os.path.realpath``).  Raises TftpPathError when a
    symlink leads outside, TftpNotFound when nothing (or no regular file) is there."""
    rel = normalize_tftp_path(rel)
    target = Path(os.path.realpath(os.path.join(root, rel)))
    if target == root or not target.is_relative_to(root):
        raise TftpPathError(f"{rel!r} resolves to {str(target)!r}, outside the root {str(root)!r}")
    parts = target.relative_to(root).parts
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for comp in parts[:-1]:
            nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dfd)
    except FileNotFoundError as e:
        raise TftpNotFound(f"{rel!r}: no such file under {str(root)!r}") from e
    except NotADirectoryError as e:
        raise TftpNotFound(f"{rel!r}: a parent is not a directory") from e
    except OSError as e:  # ELOOP: a symlink appeared after the check; EACCES...
        raise TftpPathError(f"{rel!r}: {e.strerror}") from e
    finally:
        os.close(dfd)
    return _regular_or_close(fd, rel)


def _regular_or_close(fd: int, what: str) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise TftpNotFound(f"{what!r} is not a regular file")
    return fd


# -- codec ---------------------------------------------------------------------------------------

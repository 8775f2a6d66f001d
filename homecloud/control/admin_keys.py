"""Admin SSH keys: public keys that get a root shell on the hardware nodes.

One plain file, ``STATE/admin_keys``: one OpenSSH public key line a line (``TYPE BASE64
[COMMENT]``), ``#`` comments and blank lines allowed.  The config node delivers these lines to
the hnodes (through their plan, by the hnode agent); the lab adds its own lab key here.  The
reader is strict: a line that is not a public key is an error naming the file and line, never
silently skipped (a typo must not lock the admin out without a word).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from homecloud.core.errors import FileError
from homecloud.core.files import atomic_write, locked

ADMIN_KEYS = "admin_keys"
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
             "sk-ecdsa-sha2-nistp256@openssh.com")


class AdminKeyError(FileError):
    """``STATE/admin_keys`` or a key given to add is not an OpenSSH public key line."""


def parse_key_line(line: str, path: Path, entry: str) -> str:
    """The normalised key line (single spaces), or AdminKeyError naming ``path`` and ``entry``."""
    parts = line.split()
    if len(parts) < 2:
        raise AdminKeyError(path, f"not 'TYPE BASE64 [COMMENT]': {line[:60]!r}", entry)
    kind, blob = parts[0], parts[1]
    if kind not in KEY_TYPES:
        raise AdminKeyError(path, f"unknown key type {kind[:40]!r} (one of {', '.join(KEY_TYPES)};"
                            " options before the type are not allowed)", entry)
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise AdminKeyError(path, f"the key of type {kind} is not base64", entry) from None
    # the blob starts with its own type as an SSH string: uint32 length + name
    n = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if raw[4:4 + n].decode(errors="replace") != kind:
        raise AdminKeyError(path, f"the key blob is not a {kind} key", entry)
    return " ".join(parts)


def read_admin_keys(state_dir: Path) -> tuple[str, ...]:
    """The admin key lines of ``STATE/admin_keys`` (none if the file does not exist)."""
    path = Path(state_dir) / ADMIN_KEYS
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminKeyError(path, f"unreadable: {exc}") from None
    out: list[str] = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            key = parse_key_line(line, path, f"line {i}")
            if key not in out:
                out.append(key)
    return tuple(out)


def add_admin_key(state_dir: Path, line: str) -> bool:
    """Append one public key line to ``STATE/admin_keys`` (atomically, under the file's lock);
    False if the same key (type and blob) is already there."""
    path = Path(state_dir) / ADMIN_KEYS
    key = parse_key_line(line.strip(), path, "the key to add")
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.with_name(f".{ADMIN_KEYS}.lock")):
        keys = read_admin_keys(state_dir)
        if any(k.split()[:2] == key.split()[:2] for k in keys):
            return False
        atomic_write(path, "".join(k + "\n" for k in (*keys, key)))
    return True

"""The running lab's context: what a newcomer's hcboot command needs to talk to it.

``lab up`` writes ``LAB/context.json`` (the lab's hcboot state dir and image store, the network
namespace every SSH, ping or AoE command must run in, the addresses, the lab SSH key) and points
``/run/homecloud/lab-current.json`` (``$HC_LAB_CURRENT``) at that lab.  Then:

- ``hcboot lab env`` prints it as shell exports (``eval "$(hcboot lab env)"``: every hcboot
  command uses the lab's state and images, ``HC_SSH_PREFIX`` is the argv prefix for SSH);
- ``hcboot --lab COMMAND`` runs one command against the current lab;
- ``hcboot lab ssh NODE`` logs in with the lab key.

``lab down`` removes the pointer when it names that lab.  Pure data and files: no processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from homecloud.core.files import atomic_write
from homecloud.lab.errors import LabError

CONTEXT_NAME = "context.json"
FORMAT = 1


def current_pointer() -> Path:
    """Where the pointer to the current lab lives (``$HC_LAB_CURRENT`` overrides it)."""
    return Path(os.environ.get("HC_LAB_CURRENT", "/run/homecloud/lab-current.json"))


@dataclass(frozen=True)
class LabContext:
    lab_dir: str
    state_dir: str          # hcboot --state-dir of the lab (inventory, leases, admin_keys)
    images: str             # hcboot --images
    netns: str              # every command that talks to a node runs in it
    bridge: str             # provisioning/storage bridge (AoE, PXE)
    server_ip: str          # the config node on the provisioning network
    inst_bridge: str        # instance network bridge
    inst_ip: str            # the config node on the instance network
    ssh_key: str            # the lab's private key (its .pub is an admin key)
    known_hosts: str        # the lab's own known_hosts (fresh at every lab up)

    def exec_prefix(self) -> list[str]:
        """The argv prefix that runs a command inside the lab's namespace."""
        return ["ip", "netns", "exec", self.netns]

    def ssh_argv(self, host: str, *command: str, user: str = "root",
                 tty: bool = False) -> list[str]:
        """``ip netns exec NS ssh ...`` to ``user@host`` with the lab key (batch mode: never a
        password prompt)."""
        argv = [*self.exec_prefix(), "ssh", "-i", self.ssh_key, "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "HashKnownHosts=no",
                "-o", "ConnectTimeout=10"]
        if tty:
            argv.append("-t")
        return [*argv, f"{user}@{host}", *command]

    def env(self) -> dict[str, str]:
        """The environment that points hcboot (and the lab commands) at this lab."""
        return {"HC_STATE_DIR": self.state_dir, "HC_IMAGE_STORE": self.images,
                "HC_LAB_DIR": self.lab_dir, "HC_LAB_NETNS": self.netns,
                "HC_SSH_PREFIX": shlex.join(self.exec_prefix()),
                "HC_LAB_SSH_KEY": self.ssh_key}

    def shell_exports(self) -> str:
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env().items())

    def to_doc(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_doc(cls, doc: Any, where: Path) -> LabContext:
        if not isinstance(doc, dict):
            raise LabError(f"{where}: not a JSON object")
        if doc.get("format") != FORMAT:
            raise LabError(f"{where}: format {doc.get('format')!r}, expected {FORMAT}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if not isinstance(doc.get(n), str) or not doc[n]]
        if missing:
            raise LabError(f"{where}: missing or not a string: {', '.join(missing)}")
        extra = sorted(set(doc) - set(names) - {"format"})
        if extra:
            raise LabError(f"{where}: unknown keys: {', '.join(extra)}")
        return cls(**{n: doc[n] for n in names})


def write_context(ctx: LabContext) -> Path:
    """``LAB/context.json`` and the current-lab pointer; returns the context file."""
    path = Path(ctx.lab_dir) / CONTEXT_NAME
    atomic_write(path, json.dumps(ctx.to_doc(), indent=1, sort_keys=True) + "\n")
    ptr = current_pointer()
    try:
        ptr.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(ptr, json.dumps({"lab_dir": ctx.lab_dir}) + "\n")
    except OSError as exc:
        raise LabError(f"cannot write the current-lab pointer {ptr}: {exc}") from None
    return path


def read_context(lab_dir: Path) -> LabContext:
    path = Path(lab_dir) / CONTEXT_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab context in {lab_dir} ({CONTEXT_NAME} missing): is a lab up "
                       "there? (hcboot lab up)") from None
    except (OSError, ValueError) as exc:
        raise LabError(f"{path}: unreadable ({exc})") from None
    return LabContext.from_doc(doc, path)


def current_lab_dir() -> Path | None:
    """The lab directory the current-lab pointer names, if there is one."""
    ptr = current_pointer()
    try:
        doc = json.loads(ptr.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"{ptr}: unreadable ({exc}); remove it or run hcboot lab up") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("lab_dir"), str):
        raise LabError(f"{ptr}: no lab_dir in it; remove it or run hcboot lab up")
    return Path(doc["lab_dir"])


def current_context() -> LabContext:
    d = current_lab_dir()
    if d is None:
        raise LabError(f"no current lab ({current_pointer()} missing): hcboot lab up, or give "
                       "--state-dir")
    return read_context(d)


def clear_context(lab_dir: Path) -> None:
    """Remove ``LAB/context.json`` and the pointer if it names ``lab_dir`` (lab down)."""
    with contextlib.suppress(FileNotFoundError):
        (Path(lab_dir) / CONTEXT_NAME).unlink()
    try:
        cur = current_lab_dir()
    except LabError:
        cur = None
    if cur is not None and Path(cur).resolve() == Path(lab_dir).resolve():
        with contextlib.suppress(FileNotFoundError):
            current_pointer().unlink()

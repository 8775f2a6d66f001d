"""Run the real ``hcboot serve`` (as a subprocess, inside a test namespace) for tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from homecloud.core.model import Export
from homecloud.inventory.protocol import update
from homecloud.inventory.yamlfile import YamlFileStore
from tests.support.netns import Lab, Netns


def hcboot_argv(state: Path, images: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "homecloud", "--state-dir", str(state), "--images",
            str(images), *args]


def hcboot(state: Path, images: Path, *args: str, check: bool = True) -> str:
    r = subprocess.run(hcboot_argv(state, images, *args), capture_output=True, text=True,
                       timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"hcboot {' '.join(args)} -> {r.returncode}\n{r.stdout}{r.stderr}")
    return r.stdout


@dataclass
class Served:
    lab: Lab
    ns: Netns
    proc: subprocess.Popen[bytes]
    state: Path
    images: Path
    log: Path
    server_ip: str

    def cli(self, *args: str, check: bool = True) -> str:
        return hcboot(self.state, self.images, *args, check=check)

    def set_exports(self, *exports: Export) -> None:
        set_exports(self.state, *exports)

    def unassigned(self) -> list[str]:
        return [d["mac"] for d in json.loads(self.cli("nodes", "--unassigned", "--json"))]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def set_exports(state: Path, *exports: Export) -> None:
    """Replace the inventory's exports (the running server picks the change up)."""
    store = YamlFileStore(state)
    update(store, lambda inv: inv.with_exports(tuple(exports)))


def start_hcboot(lab: Lab, ns: Netns, iface: str, server_ip: str, state: Path, images: Path,
                 *extra: str, mode: str = "full", http_port: int = 80,
                 log: Path | None = None) -> Served:
    log = log or state / "hcboot.log"
    state.mkdir(parents=True, exist_ok=True)
    argv = hcboot_argv(state, images, "-v", "serve", "--interface", iface, "--mode", mode,
                       "--http-port", str(http_port), *extra)
    proc = lab.popen(argv, ns=ns, log=log)
    deadline = time.monotonic() + 20
    url = f"http://{server_ip}:{http_port}/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hcboot serve exited {proc.returncode}:\n{log.read_text()}")
        r = ns.run("curl", "-sf", "--max-time", "1", url, check=False)
        if r.returncode == 0 and "hcboot serving" in log.read_text(errors="replace"):
            return Served(lab, ns, proc, state, images, log, server_ip)
        time.sleep(0.2)
    raise AssertionError(f"hcboot serve did not come up:\n{log.read_text()}")

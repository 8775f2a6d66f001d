"""The boot routes the HTTP and TFTP servers serve: per-node boot scripts, artifacts, first stages.

(The control plane's routes -- plans, reports, the node list -- are ``homecloud.control.http``;
``hcboot serve`` chains both apps on one HTTP server.)

Routes (HTTP):
    GET  /boot/<mac>.ipxe                   per-node iPXE script (unassigned: wait-and-retry)
    GET  /boot/<mac>.pxelinux               the pxelinux config the node would get (debugging)
    GET  /images/<role>/<build-id>/<file>   an artifact from the image store ("current" allowed)
    GET  /firststage/<name>                 first-stage binary (ipxe.efi for UEFI HTTP boot)
    GET  /healthz                           "ok"
TFTP (dynamic names, tried before the TFTP root):
    pxelinux.cfg/01-<mac>                   rendered pxelinux config (unassigned: not found)
    images/<role>/<build-id>/<file>         artifact from the image store
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from bootserver.clientlog import for_mac
from bootserver.firststage import SOURCES
from bootserver.http import Response
from bootserver.machine import BadMac, Machine, normalize_mac
from bootserver.policy import Policy, RenderError
from homecloud.core.manifest import CURRENT, ManifestError

log = logging.getLogger("homecloud.boot")

_BOOT = re.compile(r"^/boot/([^/]+)\.(ipxe|pxelinux)$")
_IMAGE = re.compile(r"^/?images/([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+)$")
_FIRST = re.compile(r"^/firststage/([A-Za-z0-9._-]+)$")
_PXECFG = re.compile(r"^/?pxelinux\.cfg/01-([0-9a-fA-F-]{17})$")


def _text(body: str, ctype: str = "text/plain; charset=utf-8", status: int = 200) -> Response:
    return Response(status=status, content_type=ctype, body=body.encode())


class BootApp:
    def __init__(self, policy: Policy, state_dir: Path,
                 vouches: Callable[[str, str], bool] | None = None) -> None:
        """``vouches(mac, client_ip)``: whether a request from ``client_ip`` speaks for machine
        ``mac`` (it holds that MAC's address, or it is the admin).  An unassigned machine's
        script request is recorded as seen only then, so no host plants machines for the
        operator to assign.  None: every request is believed (unit tests)."""
        self.policy = policy
        self.state_dir = Path(state_dir)
        self.vouches = vouches

    # ------------------------------------------------------------------ shared
    def artifact(self, role: str, build: str, name: str) -> Path | None:
        store = self.policy.store
        bid = store.current_id(role) if build == CURRENT else build
        if bid is None:
            return None
        try:
            return store.artifact_path(role, bid, name)
        except ManifestError as exc:
            log.error("image store: %s", exc)
            return None

    # ------------------------------------------------------------------ HTTP
    def handle(self, method: str, path: str, client_ip: str, headers: Mapping[str, str],
               body: bytes) -> Response | None:
        # the HTTP layer has percent-decoded the path once; decoding again would turn a
        # literal "%2e%2e" (sent as %252e%252e) into ".." after the layer's check
        path = path.split("?", 1)[0]
        if method in ("GET", "HEAD"):
            return self._get(path, client_ip)
        return None

    def _get(self, path: str, client_ip: str) -> Response | None:
        if path == "/healthz":
            return _text("ok\n")
        m = _BOOT.match(path)
        if m:
            try:
                mac = normalize_mac(m.group(1))
            except BadMac:
                return None
            try:
                if m.group(2) == "ipxe":
                    if self.policy.resolve(mac) is None and (
                            self.vouches is None or self.vouches(mac, client_ip)):
                        self.policy.record_seen(Machine(mac=mac, user_class="iPXE",
                                                        ip=client_ip))
                    script = self.policy.ipxe_script(mac)
                    for_mac(log, mac).info("iPXE script served to %s", client_ip)
                    return _text(script)
                cfg = self.policy.pxelinux_config(mac)
                return _text(cfg) if cfg is not None else None
            except RenderError as exc:
                for_mac(log, mac).error("cannot render boot script: %s", exc)
                return _text(f"#!ipxe\necho homecloud: {exc}\nsleep 30\nreboot\n", status=500)
        m = _FIRST.match(path)
        if m and m.group(1) in SOURCES:
            first = self.state_dir / "tftp" / m.group(1)
            return Response(status=200, content_type="application/efi", file=first) \
                if first.is_file() else None
        m = _IMAGE.match(path)
        if m:
            f = self.artifact(*m.groups())
            if f is None:
                return None
            ctype = "application/json" if f.name.endswith(".json") else "application/octet-stream"
            return Response(status=200, content_type=ctype, file=f)
        return None

    # ------------------------------------------------------------------ TFTP
    def tftp_resolve(self, path: str, client_ip: str) -> bytes | Path | None:
        m = _PXECFG.match(path)
        if m:
            try:
                mac = normalize_mac("01-" + m.group(1))
            except BadMac:
                return None
            cfg = self.policy.pxelinux_config(mac)
            if cfg is not None:
                for_mac(log, mac).info("pxelinux config served to %s", client_ip)
            return cfg.encode() if cfg is not None else None
        m = _IMAGE.match(path)
        if m:
            return self.artifact(*m.groups())
        return None

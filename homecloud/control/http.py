"""The control plane's HTTP routes on the config node (beside the boot routes of
``bootserver.bootapp``; ``hcboot serve`` chains both apps on one server).

Routes, and who may use them (nobody is trusted by default):
    GET  /plan/<mac>.json        a storage node's export plan: only to the node that holds <mac>
                                 (its lease, static address or the neighbour table says the
                                 requesting address is <mac>'s) and to the admin
    GET  /trust/<mac>.json       an hnode's SSH trust (public keys: config node, admins, peer
                                 hnodes' host and migration keys; control/trust.py): as the plan
    POST /report/<mac>           a node reports its state: accepted only from the address <mac>
                                 holds, or from the admin
    POST /fence/<mac>            a storage node's DRBD lost its peer while primary ({"minor":
                                 N}); the arbiter's answer (control/failover.py): as the report
    GET  /nodes.json             assigned nodes, seen machines and reports: the admin only

The admin is the config node itself (a request from one of its own addresses or loopback) or a
client that sends ``Authorization: Bearer <token>`` with the token in ``<state>/admin.token``.
A refusal is a 403 that says why, and a warning in the log naming the address and the MAC.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from bootserver.clientlog import for_mac
from bootserver.http import Response
from homecloud.agents.protocol import ProtocolError, parse_report, plan_json, report_doc
from homecloud.control.admin_keys import AdminKeyError
from homecloud.control.contracts import HostError
from homecloud.control.exports import plan_for
from homecloud.control.failover import FenceRefused, Liveness, failovers, fence
from homecloud.control.reports import Reports, read_reports
from homecloud.control.seen import read_seen
from homecloud.control.trust import trust_doc_json
from homecloud.core.ids import BadMac, normalize_mac
from homecloud.core.manifest import ImageStore
from homecloud.core.model import STORAGE_ROLE, Inventory, VolumeExport
from homecloud.inventory.protocol import InventoryError, InventoryStore, update

log = logging.getLogger("homecloud.control")

_PLAN = re.compile(r"^/plan/([^/]+)\.json$")
_REPORT = re.compile(r"^/report/([^/]+)$")
_TRUST = re.compile(r"^/trust/([^/]+)\.json$")
_FENCE = re.compile(r"^/fence/([^/]+)$")
MAX_REPORT = 64 * 1024


def _text(body: str, ctype: str = "text/plain; charset=utf-8", status: int = 200) -> Response:
    return Response(status=status, content_type=ctype, body=body.encode())


MacOf = Callable[[str], "str | None"]
IsAdmin = Callable[[str, Mapping[str, str]], bool]


class ControlApp:
    def __init__(self, inventory: InventoryStore, store: ImageStore, state_dir: Path,
                 http_base: Callable[[], str], mac_of: MacOf, is_admin: IsAdmin) -> None:
        """``mac_of(ip)``: the MAC that holds address ``ip`` (None if unknown);
        ``is_admin(ip, headers)``: whether the request comes from the admin."""
        self.inventory = inventory
        self.store = store
        self.state_dir = Path(state_dir)
        self.http_base = http_base
        self.mac_of = mac_of
        self.is_admin = is_admin
        self.reports = Reports(self.state_dir)
        self.liveness = Liveness()
        self._arbiter = threading.Lock()

    def _allowed(self, mac: str, what: str, client_ip: str,
                 headers: Mapping[str, str]) -> Response | None:
        """None if ``client_ip`` may act for ``mac``, else the 403 to send."""
        if self.is_admin(client_ip, headers):
            return None
        holder = self.mac_of(client_ip)
        if holder == mac:
            return None
        why = (f"{client_ip} is {holder}, not {mac}" if holder else
               f"{client_ip} holds no lease or static address of {mac}")
        for_mac(log, mac).warning("%s refused: %s", what, why)
        return _text(f"forbidden: {what} for {mac}: {why}\n", status=403)

    def handle(self, method: str, path: str, client_ip: str, headers: Mapping[str, str],
               body: bytes) -> Response | None:
        path = path.split("?", 1)[0]
        if method in ("GET", "HEAD"):
            m = _PLAN.match(path)
            if m:
                return self._plan(m.group(1), client_ip, headers)
            m = _TRUST.match(path)
            if m:
                return self._trust(m.group(1), client_ip, headers)
            if path == "/nodes.json":
                if not self.is_admin(client_ip, headers):
                    log.warning("/nodes.json refused to %s (admin only)", client_ip)
                    return _text("forbidden: /nodes.json is for the admin only\n", status=403)
                return _text(json.dumps(self.nodes_doc(), indent=1) + "\n", "application/json")
        if method == "POST":
            m = _REPORT.match(path)
            if m:
                return self._report(m.group(1), body, client_ip, headers)
            m = _FENCE.match(path)
            if m:
                return self._fence(m.group(1), body, client_ip, headers)
        return None

    def _plan(self, raw_mac: str, client_ip: str,
              headers: Mapping[str, str]) -> Response | None:
        try:
            mac = normalize_mac(raw_mac)
        except BadMac:
            return None
        refused = self._allowed(mac, "plan", client_ip, headers)
        if refused is not None:
            return refused
        self.liveness.saw(mac)
        self.arbitrate()
        plan = plan_for(mac, self.inventory.snapshot().inventory, self.store, self.http_base())
        if plan is None:
            for_mac(log, mac).warning("asked for a storage plan but is not a storage node")
            return None
        return _text(plan_json(plan), "application/json")

    def _trust(self, raw_mac: str, client_ip: str,
               headers: Mapping[str, str]) -> Response | None:
        try:
            mac = normalize_mac(raw_mac)
        except BadMac:
            return None
        refused = self._allowed(mac, "trust", client_ip, headers)
        if refused is not None:
            return refused
        try:
            doc = trust_doc_json(mac, self.inventory.snapshot().inventory,
                                 read_reports(self.state_dir), self.state_dir)
        except (ProtocolError, HostError, AdminKeyError) as exc:   # the config node's key files
            for_mac(log, mac).error("cannot make its SSH trust: %s", exc)
            return _text(f"cannot make the SSH trust: {exc}\n", status=500)
        if doc is None:
            for_mac(log, mac).warning("asked for SSH trust but is not an hnode")
            return None
        return _text(doc, "application/json")

    def _report(self, raw_mac: str, body: bytes, client_ip: str,
                headers: Mapping[str, str]) -> Response | None:
        try:
            mac = normalize_mac(raw_mac)
        except BadMac:
            return None
        refused = self._allowed(mac, "report", client_ip, headers)
        if refused is not None:
            return refused
        if len(body) > MAX_REPORT:
            return _text("report too large\n", status=413)
        try:
            rep = parse_report(body)
            if rep.node != mac:
                raise ProtocolError("report.node", f"{rep.node} is not the MAC of the URL ({mac})")
        except ProtocolError as exc:
            for_mac(log, mac).warning("malformed report from %s: %s", client_ip, exc)
            return _text(f"bad report: {exc}\n", status=400)
        self.reports.put(mac, report_doc(rep))
        for_mac(log, mac).info("reports state %s (%s)", rep.state, rep.detail)
        if rep.state == "leaving":
            # a storage node going down cleanly: the replicas of its volumes are promoted at
            # their next plan fetch instead of DEAD_AFTER seconds after its last one
            self.liveness.left(mac)
        return _text("ok\n")

    def _fence(self, raw_mac: str, body: bytes, client_ip: str,
               headers: Mapping[str, str]) -> Response | None:
        try:
            mac = normalize_mac(raw_mac)
        except BadMac:
            return None
        refused = self._allowed(mac, "fence", client_ip, headers)
        if refused is not None:
            return refused
        try:
            doc = json.loads(body[:4096])
            minor = doc["minor"]
            if not isinstance(minor, int) or isinstance(minor, bool) or minor < 0:
                raise ValueError(f"minor {minor!r} is not a DRBD minor")
        except (ValueError, KeyError, TypeError) as exc:
            for_mac(log, mac).warning("bad fence request from %s: %s", client_ip, exc)
            return _text(f"bad fence request: {exc} (expected {{\"minor\": N}})\n",
                         status=400)
        node = self.inventory.snapshot().inventory.node(mac)
        if node is None or node.role != STORAGE_ROLE:
            return _text(f"forbidden: {mac} is not a storage node\n", status=403)
        said: list[str] = []

        def change(inv: Inventory) -> Inventory:
            # fence() decides on the inventory being changed (another fence or a promotion
            # may have rewritten it since the snapshot above) and knows the asker by name
            new, text = fence(inv, node, minor)
            said[:] = [text]
            return new

        try:
            with self._arbiter:
                update(self.inventory, change)
        except FenceRefused as exc:
            for_mac(log, mac).error("fence-peer of DRBD minor %s refused: %s", minor, exc)
            return _text(f"refused: {exc}\n", status=409)
        except InventoryError as exc:
            for_mac(log, mac).error("fence-peer of DRBD minor %s: inventory not written: %s",
                                    minor, exc)
            return _text(f"the inventory could not be written: {exc}\n", status=503)
        for_mac(log, mac).warning("fence-peer: %s", said[0])
        return _text(json.dumps({"verdict": "outdated", "why": said[0]}) + "\n",
                     "application/json")

    def arbitrate(self) -> None:
        """Promote the replica of a replicated volume whose primary is gone; clear the
        outdated mark of a side in step again (control/failover.py)."""
        if not any(isinstance(e, VolumeExport) and e.drbd_minor is not None
                   for e in self.inventory.snapshot().inventory.exports):
            return
        reports = read_reports(self.state_dir)
        said: list[str] = []

        def change(inv: Inventory) -> Inventory:
            new, changes = failovers(inv, reports, self.liveness.reachable)
            said[:] = [c.text for c in changes]
            return new

        if not self._arbiter.acquire(blocking=False):
            return               # another request is deciding right now
        try:
            snap = self.inventory.snapshot()
            if not failovers(snap.inventory, reports, self.liveness.reachable)[1]:
                return
            update(self.inventory, change)
        except InventoryError as exc:
            log.error("replicated volumes: failover not written: %s", exc)
            return
        finally:
            self._arbiter.release()
        for text in said:
            log.warning("%s", text)

    def nodes_doc(self) -> dict[str, object]:
        inv = self.inventory.snapshot().inventory
        return {
            "nodes": [{"name": n.name, "role": n.role, "mac": n.mac, "ip": n.ip}
                      for n in inv.nodes],
            "seen": [s.__dict__ for s in read_seen(self.state_dir)],
            "reports": read_reports(self.state_dir),
        }

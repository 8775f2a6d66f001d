"""The storage-node agent (a POSIX shell script shipped by the element ``hc-aoe-target``).

The agent runs on storage nodes, which have no Python: this package only locates the script for
tests and tooling and names the contract it shares with ``homecloud.control.exports.plan_text``.
"""

from __future__ import annotations

from pathlib import Path

ELEMENT = "hc-aoe-target"
SCRIPT_IN_IMAGE = "/usr/local/sbin/hc-storage-agent"
UNIT_IN_IMAGE = "/etc/systemd/system/hc-storage-agent.service"
#: the fields of one plan line, in the order the agent reads them
PLAN_FIELDS = ("target", "shelf", "slot", "mode", "kind", "size", "sha256", "source", "allow")
READY_PREFIX = "hc-storage: exports ready "


def element_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "elements" / ELEMENT


def agent_script() -> Path:
    """The agent script as it is installed into images (``static/`` of the element)."""
    return element_dir() / "static" / SCRIPT_IN_IMAGE.lstrip("/")


def unit_file() -> Path:
    return element_dir() / "static" / UNIT_IN_IMAGE.lstrip("/")

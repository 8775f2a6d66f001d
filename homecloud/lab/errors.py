"""Errors of the virtual lab (reported as messages by bootserver/lab/cli.py)."""

from __future__ import annotations

from homecloud.core.errors import HomecloudError


class LabError(HomecloudError):
    """The lab cannot do what was asked (names the node, file or command at fault)."""

"""The node agents and their wire protocol (stdlib only: they ship into node images)."""

"""The control plane: the control service (what the CLI and, later, the REST API call),
export plans, reports, machines seen, and their HTTP routes."""

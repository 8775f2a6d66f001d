"""DHCP / ProxyDHCP for PXE clients.

``codec`` (pure packet codec) and ``options`` (option codes and value helpers) have no I/O;
``leases`` and ``pool`` hold address state; ``server`` is the socket server and defines the
``DhcpPolicy`` protocol it asks.  Import the server from ``bootserver.dhcp.server``.
"""

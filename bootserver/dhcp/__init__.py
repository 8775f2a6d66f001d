"""DHCP / ProxyDHCP for PXE clients.

``codec`` (pure packet codec) and ``options`` (option codes and value helpers) have no I/O;
``leases`` and ``pool`` hold address state; ``config`` is the configuration and the
``DhcpPolicy`` protocol the server asks; ``protocol`` is the RFC 2131 state machine (no socket,
no thread) and ``fit`` fits its replies to the client's size limit; ``server`` is the socket
loop.  Import the server from ``bootserver.dhcp.server``.
"""

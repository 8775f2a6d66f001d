"""ATA over Ethernet, initiator side: ``hcboot aoe scan|verify``.

Layers (each imports only those before it): ``frames`` (scapy-built templates, struct patching,
parsing by offset, typed errors) <- ``io`` (raw AF_PACKET socket, Query Config, IDENTIFY, the
windowed multipath :class:`~homecloud.aoe.reader_mod.Reader`) <- ``scan`` / ``verify`` <- ``cli``.
Nothing here builds an ATA write command.
"""

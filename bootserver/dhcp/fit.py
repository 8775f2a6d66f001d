"""Making a DHCP reply fit the client's maximum message size (option 57).

A reply larger than the client accepts (option 57, at least 576 and at most one Ethernet frame)
is not lost: the codec overloads ``file`` then ``sname`` (option 52) when they are unused, then
optional options are dropped in :func:`drop_order`, the echoed option 61 last; a reply that
cannot fit even then is logged and not sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from bootserver.clientlog import Log
from bootserver.dhcp import codec
from bootserver.dhcp import options as o
from bootserver.dhcp.codec import DhcpPacket

# Never dropped to make a reply fit: the message type and server identifier (RFC 2131 table 3
# MUST), the lease time of an OFFER/ACK (MUST), and the relay agent information (RFC 3046 §2.2:
# the relay needs it to forward the reply).
_KEEP = frozenset((o.MESSAGE_TYPE, o.SERVER_ID, o.LEASE_TIME, o.RELAY_AGENT_INFO))
# What a PXE client needs to boot: dropped after every other optional option.
_BOOT = (o.TFTP_SERVER_NAME, o.BOOTFILE_NAME, o.VENDOR_SPECIFIC, o.VENDOR_CLASS)


def drop_order(r: DhcpPacket, requested: Sequence[int] = ()) -> list[int]:
    """The options of reply ``r`` in the order they are given up when it does not fit the
    client's maximum message size even with option overload:

    1. copies: option 67 equal to the ``file`` field, option 66 equal to ``siaddr``;
    2. options the client did not ask for (option 55), last-added first;
    3. options it asked for, its least wanted (last in option 55) first;
    4. the boot information (66, 67, 43, 60);
    5. the echoed client identifier (option 61, RFC 6842) last of all.
    Never: 53, 54, 51 and 82 (``_KEEP``)."""
    opts = r.options
    first: list[int] = []
    if opts.get(o.BOOTFILE_NAME) and opts[o.BOOTFILE_NAME] == r.file:
        first.append(o.BOOTFILE_NAME)
    if opts.get(o.TFTP_SERVER_NAME) == r.siaddr.encode() and r.siaddr != codec.ZERO_IP:
        first.append(o.TFTP_SERVER_NAME)
    late = set(_KEEP) | set(_BOOT) | {o.CLIENT_ID} | set(first)
    asked = [c for c in dict.fromkeys(requested) if c in opts and c not in late]
    unasked = [c for c in reversed(list(opts)) if c not in late and c not in asked]
    boot = [c for c in _BOOT if c in opts and c not in first]
    tail = [o.CLIENT_ID] if o.CLIENT_ID in opts else []
    return first + unasked + list(reversed(asked)) + boot + tail


def encode_fitting(r: DhcpPacket, size: int, requested: Sequence[int], xid: int,
                   log: Log) -> bytes | None:
    """``r`` encoded in at most ``size`` bytes, giving up options in :func:`drop_order` when
    even option overload is not enough (logged on ``log``, the client's logger); None (logged)
    when it cannot fit at all."""
    try:  # the codec overloads file/sname (option 52) when they are unused
        return codec.encode(r, max_size=size, requested=requested)
    except codec.OptionsTooLarge as e:
        too_large = e
    dropped: list[int] = []
    saved = dict(r.options)
    for code in drop_order(r, requested):
        del r.options[code]
        dropped.append(code)
        try:
            data = codec.encode(r, max_size=size, requested=requested)
        except codec.OptionsTooLarge:
            continue
        # the last drop may have made room for some dropped before it: take back what fits,
        # the most important first
        for back in reversed(dropped[:-1]):
            r.options[back] = saved[back]
            try:
                data = codec.encode(r, max_size=size, requested=requested)
                dropped.remove(back)
            except codec.OptionsTooLarge:
                del r.options[back]
        log.warning("dhcp: reply to %s (xid %#x) does not fit the client's %d-byte limit even"
                    " with option overload (%s): dropped option(s) %s", r.mac, xid, size,
                    too_large, ", ".join(map(str, dropped)))
        return data
    log.error("dhcp: reply to %s (xid %#x) does not fit the client's %d-byte limit even"
              " without options %s (echoed option 61 included): not sent (%s)", r.mac, xid,
              size, ", ".join(map(str, dropped)), too_large)
    return None

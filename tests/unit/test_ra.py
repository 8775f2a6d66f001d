import struct

from bootserver.ra import ICMPV6_RA, build_ra, is_router_solicitation


def test_ra_is_a_no_op_advertisement() -> None:
    ra = build_ra("52:54:00:aa:bb:cc")
    typ, code, _csum, hop, flags, lifetime, reach, retrans = struct.unpack("!BBHBBHII", ra[:16])
    assert (typ, code) == (ICMPV6_RA, 0)
    assert flags == 0  # neither Managed nor Other: iPXE ends IPv6 autoconfiguration
    assert lifetime == 0  # not a default router (RFC 4861 §4.2)
    assert (hop, reach, retrans) == (0, 0, 0)
    assert ra[16:] == bytes([1, 1, 0x52, 0x54, 0, 0xAA, 0xBB, 0xCC])  # source link-layer option


def test_router_solicitation_detection() -> None:
    assert is_router_solicitation(bytes([133, 0, 0, 0, 0, 0, 0, 0]))
    assert not is_router_solicitation(bytes([134, 0, 0, 0, 0, 0, 0, 0]))
    assert not is_router_solicitation(bytes([133, 0]))

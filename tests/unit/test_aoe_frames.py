"""AoE codec: templates built by scapy, struct patching, reply parsing from frames captured from
vblade 25 (Debian 12) over a veth, IDENTIFY parsing and the scapy 2.8 bug workarounds."""

from __future__ import annotations

import struct

import pytest
from scapy.contrib.aoe import AOE, IssueATACommand
from scapy.layers.l2 import Ether
from scapy.packet import Padding

from homecloud.aoe import frames as F
from homecloud.aoe.frames import Target

ME = "02:00:00:00:00:01"
VBLADE = "02:00:00:00:00:02"

# Captured from `vblade -r 3 7 s0 img` (16384 sectors) answering requests from 02:..:01.
QC_REPLY = bytes.fromhex("02000000000102000000000288a2180000030701010203040010401902100000")
READ_REPLY_HEAD = bytes.fromhex(  # READ SECTORS EXT, LBA 0x1234, 2 sectors, tag 0x11
    "02000000000102000000000288a218000003070000000011400000403412000000000000")
PAST_END_REPLY = bytes.fromhex(  # READ at LBA 16384 (one past the end), tag 0x12
    "02000000000102000000000288a218000003070000000012401002410040000000000000")
BAD_CMD_REPLY = bytes.fromhex(  # AoE command 9: error flag + error 1 (unrecognized command)
    "02000000000102000000000288a21c010003070900000014400001240000000000000000")
IDENTIFY_HEAD = bytes.fromhex(
    "02000000000102000000000288a21800000307000a0b0c0d000000400000000000000000")
IDENTIFY_DATA = bytes.fromhex(
    "00000000000000000000000000000000000000002e333a376d76202020202020"
    "202020202020202000000000000032562035202020206f436172646945206874"
    "72657244766920656276616c6564202020202020202020202020202020200080"
    "0000000200400000000000000000000000000000000000000040000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000540040000000140040000000000000000000000b4000000000"
    "00000000000000000040").ljust(512, b"\0")


def test_layout_constants() -> None:
    assert F.DATA_OFFSET == 36 == 14 + 10 + 12
    assert (F.OFF_TAG, F.OFF_SECTORS, F.OFF_CMDSTAT, F.OFF_LBA) == (20, 26, 27, 28)


def test_target_parse_and_str() -> None:
    assert Target.parse("e1.2") == Target(1, 2)
    assert Target.parse(" 65534.254 ") == Target(65534, 254)
    assert str(Target(7, 0)) == "e7.0"
    for bad in ("e1", "x1.2", "e1.2.3", "e65535.0", "e1.255", ""):
        with pytest.raises(ValueError):
            Target.parse(bad)


def test_query_config_template_bytes() -> None:
    frame = F.build_query_config(ME, tag=0x01020304)
    assert len(frame) == F.MIN_FRAME
    assert frame[:32] == bytes.fromhex(
        "ffffffffffff02000000000188a2"  # broadcast, us, 0x88a2
        "1000ffffff0101020304"  # version 1, no flags, shelf 0xffff, slot 0xff, QC, tag
        "0000000000000000")  # buffer count, firmware, sectors, aoe/ccmd read, config len 0
    assert frame[32:] == bytes(28)
    one = F.build_query_config(ME, dst=VBLADE, shelf=3, slot=7, tag=5)
    assert one[0:6] == F.mac_bytes(VBLADE) and one[16:20] == b"\x00\x03\x07\x01"


def test_ata_template_bytes_and_lba48_flag() -> None:
    frame = F.build_ata_request(ME, VBLADE, Target(3, 7), sectors=2, lba=0x1234, tag=0x11)
    assert len(frame) == F.MIN_FRAME
    assert bytes(frame[:36]) == bytes.fromhex(
        "02000000000202000000000188a2"  # to vblade, from us, 0x88a2
        "10000003070000000011"  # version 1, shelf 3, slot 7, ATA command, tag 0x11
        "40000224341200000000" "0000")  # E, 2 sectors, READ SECTORS EXT, LBA 0x1234
    # E (LBA48) is 0x40 numerically; the write bit 0x01 is never set
    assert frame[F.OFF_AFLAGS] == F.ATA_EXTENDED == 0x40
    assert not frame[F.OFF_AFLAGS] & F.ATA_WRITE
    ident = F.build_ata_request(ME, VBLADE, Target(3, 7), command=F.ATA_IDENTIFY)
    assert ident[F.OFF_AFLAGS] == 0 and ident[F.OFF_CMDSTAT] == 0xEC and ident[F.OFF_SECTORS] == 1


def test_ata_template_matches_scapy_dissection() -> None:
    frame = F.build_ata_request(ME, VBLADE, Target(513, 9), sectors=17, lba=0xABCDEF012345,
                                tag=0xDEADBEEF)
    pkt = Ether(bytes(frame))
    assert pkt[AOE].major == 513 and pkt[AOE].minor == 9 and pkt[AOE].tag == 0xDEADBEEF
    ata = pkt[AOE].i_ata_cmd
    assert ata.cmd_status == 0x24 and ata.sector_count == 17
    lba = [ata.lba0, ata.lba1, ata.lba2, ata.lba3, ata.lba4, ata.lba5]
    assert lba == [0x45, 0x23, 0x01, 0xEF, 0xCD, 0xAB]


def test_write_commands_are_never_built() -> None:
    for cmd in (0x30, 0x34, 0xCA, 0x35, 0x25, 0xE7):
        with pytest.raises(ValueError, match="not a read command"):
            F.build_ata_request(ME, VBLADE, Target(1, 0), command=cmd)
    assert not F.READ_ONLY_COMMANDS & {0x30, 0x31, 0x34, 0x35, 0x3D, 0xCA, 0xCB, 0xCC}


def test_patch_request_tag_lba48_count() -> None:
    frame = F.build_ata_request(ME, VBLADE, Target(1, 2), sectors=2)
    before = bytes(frame)
    F.patch_request(frame, tag=0xFFFFFFFF, lba=(1 << 48) - 1, sectors=17)
    assert frame[20:24] == b"\xff\xff\xff\xff"
    assert frame[F.OFF_SECTORS] == 17
    assert frame[28:34] == b"\xff" * 6 and frame[34:36] == b"\0\0"  # reserved untouched
    assert F.request_lba(frame) == (1 << 48) - 1
    F.patch_request(frame, tag=0x11, lba=0x0102030405, sectors=2)
    assert frame[28:34] == bytes([0x05, 0x04, 0x03, 0x02, 0x01, 0x00])  # lba0 first
    assert frame[:20] == before[:20] and frame[36:] == before[36:]
    with pytest.raises(ValueError):
        F.patch_request(frame, tag=1, lba=1 << 48, sectors=1)
    F.patch_dst(frame, "aa:bb:cc:dd:ee:ff")
    assert frame[:6] == bytes.fromhex("aabbccddeeff")


def test_parse_captured_query_config_reply() -> None:
    h = F.parse_header(QC_REPLY)
    assert h.is_response and not h.is_error and h.tag == 0x01020304
    rep = F.parse_config_reply(QC_REPLY)
    assert rep == F.ConfigReply(mac=VBLADE, target=Target(3, 7), buffer_count=16,
                                firmware=0x4019, max_sectors=2, aoe_version=1, config=b"")


def test_config_string_is_parsed() -> None:
    frame = QC_REPLY[:30] + struct.pack("!H", 5) + b"hello" + bytes(20)
    assert F.parse_config_reply(frame).config == b"hello"


def test_flag_names_are_bit_reversed_in_scapy_so_integers_are_tested() -> None:
    pkt = Ether(QC_REPLY)
    # scapy calls the response bit 0x8 "r2" (its list maps names from the low bit up)
    assert int(pkt[AOE].flags) == 0x8
    assert "r2" in str(pkt[AOE].flags) and "Response" not in str(pkt[AOE].flags)
    assert F.parse_header(QC_REPLY).flags == F.AOE_RESPONSE == 0x8
    err = F.parse_header(BAD_CMD_REPLY)
    assert err.is_response and err.is_error and err.flags == 0xC and err.error == 1
    assert "Error" not in str(Ether(BAD_CMD_REPLY)[AOE].flags)


def test_ata_flag_names_are_bit_reversed_in_scapy() -> None:
    frame = F.build_ata_request(ME, VBLADE, Target(1, 2))
    ata = Ether(bytes(frame))[AOE].i_ata_cmd
    assert int(ata.flags) == 0x40
    assert str(ata.flags) == "a"  # scapy's name for the E bit; "w" would be 0x80 to scapy
    named_w = IssueATACommand(flags="w")
    assert int(named_w.flags) == 0x80  # so setting "w" by name would set bit 7, not W (0x01)


def test_vblade_reply_data_lands_in_padding_and_is_sliced() -> None:
    data = bytes(range(256)) * 4
    frame = READ_REPLY_HEAD + data
    pkt = Ether(frame)
    ata = pkt[AOE].i_ata_cmd
    assert ata.sector_count == 0 and ata.data == b""  # vblade answers with sector count 0
    assert bytes(pkt[Padding].load) == data  # the data went to Padding
    assert F.reply_data(frame, 2) == data
    rep = F.parse_ata_reply(frame)
    assert rep.header.tag == 0x11 and rep.status == 0x40 and not rep.failed
    assert rep.lba == 0x1234 and rep.sectors == 0
    with pytest.raises(F.BadFrame):
        F.reply_data(frame[:-1], 2)


def test_scapy_answers_matches_any_aoe_frame() -> None:
    req = Ether(bytes(F.build_ata_request(ME, VBLADE, Target(3, 7), tag=0x99)))
    other = Ether(QC_REPLY)  # a different command and tag
    assert other[AOE].answers(req[AOE])  # why replies are matched on the tag here
    assert F.parse_header(QC_REPLY).tag != 0x99


def test_scapy_stacking_duplicates_the_ata_header() -> None:
    stacked = Ether() / AOE(cmd=0) / IssueATACommand(flags=0x40, sector_count=1, cmd_status=0x24)
    assert len(bytes(stacked)) == 14 + 10 + 12 + 12  # hence i_ata_cmd= in build_ata_request
    assert len(bytes(F.build_ata_request(ME, VBLADE, Target(1, 2)))[:36]) == 36


def test_past_end_reply_is_an_ata_error() -> None:
    rep = F.parse_ata_reply(PAST_END_REPLY)
    assert rep.failed and rep.status == 0x41 and rep.error == 0x10 and rep.lba == 16384


def test_parse_header_rejects_non_aoe() -> None:
    with pytest.raises(F.BadFrame):
        F.parse_header(b"\0" * 12 + b"\x08\x00" + bytes(20))
    with pytest.raises(F.BadFrame):
        F.parse_header(QC_REPLY[:20])
    with pytest.raises(F.BadFrame):
        F.parse_config_reply(READ_REPLY_HEAD)


def test_identify_captured_from_vblade() -> None:
    assert IDENTIFY_HEAD[20:24] == bytes.fromhex("0a0b0c0d")
    ident = F.parse_identify(IDENTIFY_DATA)
    assert ident.sectors == 16384 and ident.lba48
    assert ident.size_bytes == 16384 * 512
    assert ident.model == "Coraid EtherDrive vblade"
    assert ident.serial == "3.7:vm"
    assert ident.firmware_rev == "V25"


def _identify(words: dict[int, int]) -> bytes:
    w = [0] * 256
    for k, v in words.items():
        w[k] = v
    return struct.pack("<256H", *w)


def test_identify_lba48_words_100_to_103() -> None:
    n = 0x0001_0002_0003_0004
    data = _identify({83: 1 << 10, 60: 0xFFFF, 61: 0x0FFF, 100: 0x0004, 101: 0x0003,
                      102: 0x0002, 103: 0x0001})
    assert F.parse_identify(data).sectors == n


def test_identify_falls_back_to_words_60_61() -> None:
    data = _identify({60: 0x5678, 61: 0x0123})
    ident = F.parse_identify(data)
    assert ident.sectors == 0x01235678 and not ident.lba48
    with pytest.raises(F.BadFrame):
        F.parse_identify(data[:100])


def test_errors_name_target_lba_and_mac() -> None:
    t = Target(1, 2)
    assert "e1.2" in str(F.AoETimeout(t, 4096, [VBLADE], tries=7))
    assert "LBA 4096" in str(F.AoETimeout(t, 4096, [VBLADE]))
    msg = str(F.AoEReplyError(t, 10, VBLADE, 3))
    assert "device unavailable" in msg and VBLADE in msg and "LBA 10" in msg
    msg = str(F.ATACommandError(t, 16384, VBLADE, 0x41, 0x10))
    assert "0x41" in msg and "LBA 16384" in msg
    assert "e1.2" in str(F.TargetNotFound(t, "eth0", 0.5))


def test_mac_helpers() -> None:
    assert F.mac_bytes("02-00-00-00-00-01") == b"\x02\0\0\0\0\x01"
    assert F.mac_str(b"\x02\0\0\0\0\x01") == ME
    with pytest.raises(ValueError):
        F.mac_bytes("02:00")

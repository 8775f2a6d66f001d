"""AoE frame codec: templates built once with scapy, patched with struct, replies parsed by offset.

Frame layout (AoE r11, all multi-byte AoE fields big-endian)::

    0  Ethernet dst(6) src(6) type 0x88a2(2)
    14 AoE   ver<<4|flags(1) error(1) major=shelf(2) minor=slot(1) command(1) tag(4)
    24 ATA   aflags(1) err/feature(1) sector count(1) cmd/status(1) lba0..lba5(6) reserved(2)
    36 ATA data (sector count * 512)
    24 QC    buffer count(2) firmware(2) sector count(1) aoe<<4|ccmd(1) config length(2)
    32 QC    config string

scapy 2.8's ``scapy.contrib.aoe`` builds these frames, but has bugs this module works around
(each covered by tests/unit/test_aoe_frames.py):

* the AoE flag names are bit-reversed (the response bit 0x8 is named ``r2``): flags are tested
  as integers (:data:`AOE_RESPONSE`, :data:`AOE_ERROR`), never by name;
* the ATA flag names are bit-reversed too (0x40, LBA48 "E", is named ``a``): they are set
  numerically (:data:`ATA_EXTENDED`); the write bit 0x01 is never set;
* vblade answers with sector count 0, so scapy puts the reply data in ``Padding``: replies are
  parsed by slicing the raw frame at :data:`DATA_OFFSET`;
* ``AOE.answers()`` matches any AoE frame: replies are matched on the tag here;
* ``AOE()/IssueATACommand()`` serialises the ATA header twice (the AOE layer also has a
  conditional ``i_ata_cmd`` field): the ATA header is passed as ``i_ata_cmd=`` instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from homecloud.core.errors import HomecloudError
from homecloud.core.ids import Target, mac_bytes, mac_str

ETH_P_AOE = 0x88A2
BROADCAST = b"\xff" * 6
SECTOR = 512
MIN_FRAME = 60  # Ethernet minimum without FCS: short templates are zero-padded to it

ETH_LEN = 14
AOE_HDR_LEN = 10
ATA_HDR_LEN = 12
DATA_OFFSET = ETH_LEN + AOE_HDR_LEN + ATA_HDR_LEN  # 36

# byte offsets in a frame
OFF_VERFLAGS = 14
OFF_ERROR = 15
OFF_MAJOR = 16
OFF_MINOR = 18
OFF_CMD = 19
OFF_TAG = 20
OFF_AFLAGS = 24
OFF_ERRFEAT = 25
OFF_SECTORS = 26
OFF_CMDSTAT = 27
OFF_LBA = 28
OFF_QC_BUFCNT = 24
OFF_QC_FIRMWARE = 26
OFF_QC_SECTORS = 28
OFF_QC_VERCCMD = 29
OFF_QC_CFGLEN = 30
OFF_QC_CONFIG = 32

AOE_VERSION = 1
AOE_RESPONSE = 0x08  # scapy names this bit "r2"
AOE_ERROR = 0x04  # scapy names this bit "r1"

CMD_ATA = 0
CMD_QUERY_CONFIG = 1

ATA_EXTENDED = 0x40  # LBA48 ("E"); scapy names this bit "a"
ATA_DEVICE = 0x10  # "D"
ATA_ASYNC = 0x02  # "A"
ATA_WRITE = 0x01  # "W": never set by this module

ATA_READ_SECTORS = 0x20
ATA_READ_SECTORS_EXT = 0x24
ATA_IDENTIFY = 0xEC
#: the only ATA commands this module builds: nothing here can write to an export
READ_ONLY_COMMANDS = frozenset({ATA_READ_SECTORS, ATA_READ_SECTORS_EXT, ATA_IDENTIFY})

ATA_STATUS_ERR = 0x01
ATA_STATUS_DF = 0x20
ATA_STATUS_DRDY = 0x40
ATA_STATUS_BSY = 0x80

MAX_LBA48 = (1 << 48) - 1

AOE_ERRORS = {
    1: "unrecognized command code",
    2: "bad argument parameter",
    3: "device unavailable",
    4: "config string present",
    5: "unsupported version",
    6: "target is reserved",
}

_HDR = struct.Struct("!BBHBBI")  # ver/flags, error, major, minor, command, tag at offset 14
_QC = struct.Struct("!HHBBH")  # buffer count, firmware, sector count, aoe/ccmd, config length
_LBA_QWORD = struct.Struct("<Q")  # lba0..lba5 + the two reserved bytes, little-endian
_TAG = struct.Struct("!I")


# ---------------------------------------------------------------- errors


class AoEError(HomecloudError):
    """Base class of every AoE failure (scan, read, verify)."""


class TargetNotFound(AoEError):
    """No reply to a Query Config for the target on the interface."""

    def __init__(self, target: Target, interface: str, timeout: float) -> None:
        self.target = target
        self.interface = interface
        super().__init__(f"AoE target {target} not found on {interface}"
                         f" (no Query Config reply within {timeout:g}s)")


class AoETimeout(AoEError):
    """A request went unanswered after every retry (on every path still alive)."""

    def __init__(self, target: Target, lba: int | None, macs: list[str], what: str = "read",
                 tries: int = 0) -> None:
        self.target = target
        self.lba = lba
        self.macs = macs
        where = f" at LBA {lba}" if lba is not None else ""
        super().__init__(f"AoE {what} of {target}{where} timed out after {tries} tries"
                         f" (paths {', '.join(macs) or 'none'})")


class AoEReplyError(AoEError):
    """A target answered with the AoE error flag set."""

    def __init__(self, target: Target, lba: int | None, mac: str, code: int) -> None:
        self.target = target
        self.lba = lba
        self.mac = mac
        self.code = code
        where = f" at LBA {lba}" if lba is not None else ""
        super().__init__(f"AoE error {code} ({AOE_ERRORS.get(code, 'unknown')}) from {mac}"
                         f" for {target}{where}")


class ATACommandError(AoEError):
    """The ATA status of a reply has ERR or DF set (e.g. a read past the end)."""

    def __init__(self, target: Target, lba: int | None, mac: str, status: int,
                 error: int) -> None:
        self.target = target
        self.lba = lba
        self.mac = mac
        self.status = status
        self.error = error
        where = f" at LBA {lba}" if lba is not None else ""
        super().__init__(f"ATA error from {mac} for {target}{where}:"
                         f" status 0x{status:02x} error 0x{error:02x}")


class BadFrame(AoEError):
    """A frame too short or malformed to parse."""


# ---------------------------------------------------------------- addresses


# Target, mac_bytes and mac_str: homecloud.core.ids (one parsing rule each)


# ---------------------------------------------------------------- building (scapy, once)


def _pad(frame: bytes) -> bytearray:
    out = bytearray(frame)
    if len(out) < MIN_FRAME:
        out.extend(bytes(MIN_FRAME - len(out)))
    return out


def build_query_config(src: str | bytes, *, dst: str | bytes = BROADCAST, shelf: int = 0xFFFF,
                       slot: int = 0xFF, tag: int = 0) -> bytearray:
    """A Query Config (read config string) request; broadcast to every target by default."""
    from scapy.contrib.aoe import AOE, QueryConfigInformation
    from scapy.layers.l2 import Ether

    pkt = Ether(dst=mac_str(mac_bytes(dst)), src=mac_str(mac_bytes(src)), type=ETH_P_AOE) / AOE(
        version=AOE_VERSION, flags=0, error=0, major=shelf, minor=slot, cmd=CMD_QUERY_CONFIG,
        tag=tag, q_conf_info=QueryConfigInformation(ccmd=0, config=b""))
    return _pad(bytes(pkt))


def build_ata_request(src: str | bytes, dst: str | bytes, target: Target, *,
                      command: int = ATA_READ_SECTORS_EXT, sectors: int = 1, lba: int = 0,
                      tag: int = 0) -> bytearray:
    """An ATA request frame (a template: patch it with :func:`patch_request`).

    Only read commands (:data:`READ_ONLY_COMMANDS`) can be built; the write flag is never set.
    """
    if command not in READ_ONLY_COMMANDS:
        raise ValueError(f"ATA command 0x{command:02x} is not a read command: refusing to build")
    if not 0 <= sectors <= 255:
        raise ValueError(f"sector count {sectors} out of range 0-255")
    from scapy.contrib.aoe import AOE, IssueATACommand
    from scapy.layers.l2 import Ether

    aflags = ATA_EXTENDED if command == ATA_READ_SECTORS_EXT else 0
    ata = IssueATACommand(flags=aflags, err_feature=0, sector_count=sectors, cmd_status=command,
                          data=b"")
    # i_ata_cmd=, not "/": AOE()/IssueATACommand() serialises the ATA header twice in scapy 2.8
    pkt = Ether(dst=mac_str(mac_bytes(dst)), src=mac_str(mac_bytes(src)), type=ETH_P_AOE) / AOE(
        version=AOE_VERSION, flags=0, error=0, major=target.shelf, minor=target.slot,
        cmd=CMD_ATA, tag=tag, i_ata_cmd=ata)
    frame = _pad(bytes(pkt))
    patch_request(frame, tag, lba, sectors)
    return frame


def patch_request(frame: bytearray, tag: int, lba: int, sectors: int) -> None:
    """Set tag, LBA (48 bits, lba0 first) and sector count of an ATA request in place."""
    if not 0 <= lba <= MAX_LBA48:
        raise ValueError(f"LBA {lba} out of the 48-bit range")
    _TAG.pack_into(frame, OFF_TAG, tag & 0xFFFFFFFF)
    frame[OFF_SECTORS] = sectors
    _LBA_QWORD.pack_into(frame, OFF_LBA, lba)  # lba0..lba5, then the reserved 2 bytes stay 0


def patch_dst(frame: bytearray, mac: str | bytes) -> None:
    frame[0:6] = mac_bytes(mac)


def request_lba(frame: bytes | bytearray) -> int:
    return int(_LBA_QWORD.unpack_from(frame, OFF_LBA)[0]) & MAX_LBA48


# ---------------------------------------------------------------- parsing (by offset)


@dataclass(frozen=True)
class Header:
    dst: bytes
    src: bytes
    version: int
    flags: int
    error: int
    shelf: int
    slot: int
    command: int
    tag: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & AOE_RESPONSE)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & AOE_ERROR)


def parse_header(frame: bytes | bytearray | memoryview) -> Header:
    if len(frame) < ETH_LEN + AOE_HDR_LEN:
        raise BadFrame(f"AoE frame of {len(frame)} bytes is shorter than its headers")
    if frame[12:14] != b"\x88\xa2":
        raise BadFrame(f"not an AoE frame (ethertype 0x{bytes(frame[12:14]).hex()})")
    vf, err, major, minor, cmd, tag = _HDR.unpack_from(frame, ETH_LEN)
    return Header(bytes(frame[0:6]), bytes(frame[6:12]), vf >> 4, vf & 0x0F, err, major, minor,
                  cmd, tag)


@dataclass(frozen=True)
class ConfigReply:
    """A Query Config reply: one path (MAC) serving one target."""

    mac: str
    target: Target
    buffer_count: int
    firmware: int
    max_sectors: int  # sectors per ATA request the target accepts
    aoe_version: int
    config: bytes


def parse_config_reply(frame: bytes | bytearray | memoryview) -> ConfigReply:
    h = parse_header(frame)
    if h.command != CMD_QUERY_CONFIG or not h.is_response:
        raise BadFrame(f"frame from {mac_str(h.src)} is not a Query Config reply")
    if len(frame) < OFF_QC_CONFIG:
        raise BadFrame(f"Query Config reply from {mac_str(h.src)} too short ({len(frame)} B)")
    bufcnt, fw, scnt, verccmd, cfglen = _QC.unpack_from(frame, OFF_QC_BUFCNT)
    config = bytes(frame[OFF_QC_CONFIG:OFF_QC_CONFIG + cfglen])
    return ConfigReply(mac=mac_str(h.src), target=Target(h.shelf, h.slot), buffer_count=bufcnt,
                       firmware=fw, max_sectors=scnt, aoe_version=verccmd >> 4, config=config)


@dataclass(frozen=True)
class AtaReply:
    header: Header
    aflags: int
    error: int
    sectors: int  # as sent by the target (vblade: 0)
    status: int
    lba: int

    @property
    def failed(self) -> bool:
        return bool(self.status & (ATA_STATUS_ERR | ATA_STATUS_DF))


def parse_ata_reply(frame: bytes | bytearray | memoryview) -> AtaReply:
    h = parse_header(frame)
    if len(frame) < DATA_OFFSET:
        raise BadFrame(f"ATA reply from {mac_str(h.src)} too short ({len(frame)} B)")
    lba = int(_LBA_QWORD.unpack_from(frame, OFF_LBA)[0]) & MAX_LBA48
    return AtaReply(h, frame[OFF_AFLAGS], frame[OFF_ERRFEAT], frame[OFF_SECTORS],
                    frame[OFF_CMDSTAT], lba)


def reply_data(frame: bytes | bytearray | memoryview, sectors: int) -> bytes:
    """The data of an ATA reply for a request of ``sectors`` sectors, sliced from the raw frame
    (scapy would leave it in Padding because vblade answers with sector count 0)."""
    end = DATA_OFFSET + sectors * SECTOR
    if len(frame) < end:
        raise BadFrame(f"ATA reply has {len(frame) - DATA_OFFSET} data bytes,"
                       f" {sectors * SECTOR} expected")
    return bytes(frame[DATA_OFFSET:end])


# ---------------------------------------------------------------- IDENTIFY DEVICE


@dataclass(frozen=True)
class Identify:
    sectors: int
    lba48: bool
    model: str
    serial: str
    firmware_rev: str

    @property
    def size_bytes(self) -> int:
        return self.sectors * SECTOR


def _ata_string(words: tuple[int, ...], first: int, last: int) -> str:
    raw = b"".join(w.to_bytes(2, "big") for w in words[first:last + 1])  # bytes swapped per word
    return raw.decode("ascii", "replace").strip(" \x00")


def parse_identify(data: bytes | bytearray | memoryview) -> Identify:
    """ATA IDENTIFY DEVICE data: size from words 100-103 (LBA48, if word 83 bit 10 says so or
    the words are non-zero) else words 60-61 (LBA28)."""
    if len(data) < SECTOR:
        raise BadFrame(f"IDENTIFY data is {len(data)} bytes, 512 expected")
    words = struct.unpack_from("<256H", data, 0)
    lba28 = words[60] | (words[61] << 16)
    lba48_sectors = words[100] | (words[101] << 16) | (words[102] << 32) | (words[103] << 48)
    lba48 = bool(words[83] & (1 << 10)) and words[83] != 0xFFFF
    sectors = lba48_sectors if (lba48 or lba28 == 0) and lba48_sectors else lba28
    return Identify(sectors=sectors, lba48=lba48, model=_ata_string(words, 27, 46),
                    serial=_ata_string(words, 10, 19), firmware_rev=_ata_string(words, 23, 26))

"""builder.kernel.bzimage_elf: the ELF vmlinux inside a bzImage (a Xen role's dom0 kernel is
published as it, elements/../builder/artifacts.py).  Synthetic bzImages per the x86 boot
protocol: header fields at their documented offsets, an xz or gzip payload."""

from __future__ import annotations

import gzip
import lzma
import struct

import pytest

from builder.kernel import KernelError, bzimage_elf

pytestmark = pytest.mark.unit

ELF = b"\x7fELF\x02\x01\x01" + bytes(57) + b"kernel text" * 100


def bzimage(payload: bytes, *, setup_sects: int = 3, offset: int = 0x40,
            version: int = 0x20F, magic: bytes = b"HdrS") -> bytes:
    """A boot sector + ``setup_sects`` setup sectors, then the protected-mode part whose
    ``payload`` starts ``offset`` bytes in (Documentation/arch/x86/boot.rst)."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<II", setup, 0x248, offset, len(payload))
    return bytes(setup) + bytes(offset) + payload + b"\x00" * 64


def test_xz_payload_with_the_kernels_size_trailer() -> None:
    # the kernel's build appends the uncompressed size (4 bytes, LE) to an xz payload
    xz = lzma.compress(ELF, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    assert bzimage_elf(bzimage(xz + struct.pack("<I", len(ELF)))) == ELF


def test_gzip_payload_and_setup_sects_zero_meaning_four() -> None:
    data = bzimage(gzip.compress(ELF), setup_sects=4)
    data = data[:0x1F1] + b"\x00" + data[0x1F2:]      # 0 means 4 (the protocol's rule)
    assert bzimage_elf(data) == ELF


@pytest.mark.parametrize(("data", "words"), [
    (b"MZ" + bytes(0x300), "not a bzImage"),
    (bzimage(lzma.compress(ELF), version=0x206), "boot protocol 2.6"),
    (bzimage(b"\x28\xb5\x2f\xfd" + bytes(32)), "neither gzip nor xz"),
    (bzimage(lzma.compress(b"#!/bin/sh\n" * 20, format=lzma.FORMAT_XZ)), "not an ELF"),
    (bzimage(b"\xfd7zXZ\x00" + b"garbage" * 10), "does not decompress"),
])
def test_refusals_name_the_file(data: bytes, words: str) -> None:
    with pytest.raises(KernelError) as e:
        bzimage_elf(data, where="/boot/vmlinuz-6.1")
    assert "/boot/vmlinuz-6.1" in str(e.value) and words in str(e.value)


def test_payload_past_the_end_is_refused() -> None:
    data = bzimage(gzip.compress(ELF))
    cut = data[:len(data) - 200]
    with pytest.raises(KernelError, match="runs past the file"):
        bzimage_elf(cut, where="k")


def test_truncated_stream_is_refused() -> None:
    xz = lzma.compress(ELF * 50, format=lzma.FORMAT_XZ)
    with pytest.raises(KernelError, match="ends before its compressed stream"):
        bzimage_elf(bzimage(xz[:len(xz) // 2]), where="k")

"""A zip whose central directory puts a member's local header past the end of the file, from a fuzzing review
(thirty-first session): the search for members the directory leaves out moved one byte per read of nothing up
to that offset, so 113 bytes held a milter thread at full CPU for half an hour (2**32) or days (ZIP64).  What
is asserted is how much of the file is read, not the time."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import Any

import pytest

from milterd.content.archives import Limits, list_archive


def lying_zip(offset: int) -> bytes:
    """A zip of a.txt whose directory says its local header is at *offset* (ZIP64's extra field past 2**32 - 1)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("a.txt", b"hello")
    data = bytearray(buf.getvalue())
    entry = data.find(b"PK\x01\x02")
    if offset < 0xFFFFFFFF:
        struct.pack_into("<I", data, entry + 42, offset)
        return bytes(data)
    name_length, extra_length = struct.unpack_from("<HH", data, entry + 28)
    struct.pack_into("<I", data, entry + 42, 0xFFFFFFFF)
    extra = struct.pack("<HHQ", 1, 8, offset)
    data[entry + 46 + name_length:entry + 46 + name_length] = extra
    struct.pack_into("<H", data, entry + 30, extra_length + len(extra))
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<I", data, end + 12, struct.unpack_from("<I", data, end + 12)[0] + len(extra))
    return bytes(data)


class CountingReads(io.BytesIO):
    reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)


@pytest.mark.parametrize("offset", [1 << 20, 0xFFFFFFFE, 1 << 40], ids=["1MiB", "2**32", "zip64-1TiB"])
def test_an_offset_past_the_end_is_searched_no_further_than_the_file(offset: int) -> None:
    data = CountingReads(lying_zip(offset))
    assert zipfile.ZipFile(io.BytesIO(data.getvalue())).infolist()[0].header_offset == offset
    listing = list_archive("a.zip", data, "zip", Limits(child=False))
    assert data.reads < 100, data.reads
    assert "a.zip/a.txt" in [entry.path for entry in listing.entries]  # by the directory, and by its local header


class Unseekable(io.RawIOBase):
    """A stream zipfile cannot seek back in: it writes each member's sizes in a data descriptor (flag 0x8)."""

    def __init__(self) -> None:
        self.written = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.written += data
        return len(data)


def test_members_with_data_descriptors_are_listed_once() -> None:
    stream = Unseekable()
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as archive:
        for n in range(3):
            archive.writestr(f"part{n}.txt", b"words " * 500 + b"PK\x03\x04" * (n == 1))
    data = bytes(stream.written)
    assert all(info.flag_bits & 0x8 for info in zipfile.ZipFile(io.BytesIO(data)).infolist())
    assert [entry.path for entry in list_archive("a.zip", io.BytesIO(data), "zip", Limits(child=False)).entries] == \
        ["a.zip/part0.txt", "a.zip/part1.txt", "a.zip/part2.txt"]


def overstating_zip() -> bytes:
    """A zip of a.txt (sizes in a data descriptor) and an evil.exe only its local header names, the directory
    overstating a.txt's size up to itself."""
    text = b"hello world\n" * 10
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0x8, 0, 0, 0, 0, 0, 0, 5, 0) + b"a.txt" + text
    local += struct.pack("<IIII", 0x08074B50, zlib.crc32(text), len(text), len(text))
    evil = b"MZ\x90\x00" + b"\0" * 60
    hidden = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, zlib.crc32(evil), len(evil), len(evil), 8, 0) + b"evil.exe" + evil
    directory_at = len(local) + len(hidden)
    entry = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0x8, 0, 0, 0, zlib.crc32(text), directory_at - 35, len(text),
                        5, 0, 0, 0, 0, 0, 0) + b"a.txt"  # its size overstated to reach the directory
    return local + hidden + entry + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(entry), directory_at, 0)


def test_a_directory_overstating_a_described_members_size_hides_no_member() -> None:
    """A second look: a member with a data descriptor took the size the directory gave it, so a directory
    that overstated it hid the local header of an evil.exe after it (which 7-Zip and WinRAR open)."""
    paths = [e.path for e in list_archive("x.zip", io.BytesIO(overstating_zip()), "zip", Limits(child=False)).entries]
    assert "x.zip/evil.exe" in paths


def test_a_zip64_member_is_listed_once() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("big.txt", "w", force_zip64=True) as member:
            member.write(b"x" * 1000 + b"PK\x03\x04")
        archive.writestr("b.txt", b"y" * 100)
    paths = [e.path for e in list_archive("a.zip", io.BytesIO(buf.getvalue()), "zip", Limits(child=False)).entries]
    assert paths == ["a.zip/big.txt", "a.zip/b.txt"]

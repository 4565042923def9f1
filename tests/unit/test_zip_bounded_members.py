"""Zip members compressed with bzip2 or LZMA are read as zipfile reads them, but decompressed only as far as read:
zipfile decompresses a whole 4 KB read of these methods (a gigabyte of zeros for a member's 512-byte head)."""

from __future__ import annotations

import bz2
import functools
import io
import lzma
import struct
import zipfile
import zlib
from typing import Any

import pytest

from milterd.content.archives import Limits, list_archive

#: A member of this many zeros: under 200 bytes of bzip2, which zipfile decompressed whole for a 512-byte head.
BOMB = 64 << 20


class Counted:
    """A decompressor of bz2 or lzma (zipfile's and milterd's both make theirs through the module) counting its output."""

    made: list[Counted] = []

    def __init__(self, real: Any) -> None:
        self.real, self.out = real, 0
        Counted.made.append(self)

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        out: bytes = self.real.decompress(data, max_length)
        self.out += len(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def decompressed(monkeypatch: pytest.MonkeyPatch) -> list[Counted]:
    """Every bz2 and lzma decompressor made while a test runs, with the bytes it gave."""
    Counted.made = []
    real_bz2, real_lzma = bz2.BZ2Decompressor, lzma.LZMADecompressor
    monkeypatch.setattr(bz2, "BZ2Decompressor", lambda *a, **k: Counted(real_bz2(*a, **k)))
    monkeypatch.setattr(lzma, "LZMADecompressor", lambda *a, **k: Counted(real_lzma(*a, **k)))
    return Counted.made


def zipped(members: list[tuple[str, bytes]], method: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return out.getvalue()


def stored_member(name: str, method: int, packed: bytes, size: int, crc: int) -> bytes:
    """A zip of one member whose compressed data is *packed* (made without holding the member in memory)."""
    encoded = name.encode()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 46 if method == zipfile.ZIP_LZMA else 20, 0, method, 0, 0, crc, len(packed), size, len(encoded), 0)
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 46, 46, 0, method, 0, 0, crc, len(packed), size, len(encoded), 0, 0, 0, 0, 0, 0)
    directory = central + encoded
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(directory), len(local) + len(encoded) + len(packed), 0)
    return local + encoded + packed + directory + end


@functools.cache
def zeros_bz2() -> tuple[bytes, int]:
    """*BOMB* zeros in bzip2, and their CRC-32."""
    zeros = bytes(BOMB)
    return bz2.compress(zeros, 9), zlib.crc32(zeros)


def listed(data: bytes, limits: Limits | None = None) -> tuple[list[str], list[str], list[str]]:
    listing = list_archive("a.zip", io.BytesIO(data), "zip", limits or Limits())
    return [e.path for e in listing.entries], listing.limits, listing.errors


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_members_of_either_method_are_judged_as_before(method: int) -> None:
    inner = zipped([("evil.exe", b"MZ" + bytes(5000))], method)
    data = zipped([("readme.txt", b"hello " * 1000), ("inner.zip", inner), ("notes.eml", b"Subject: x\r\n\r\nhi\r\n")], method)
    listing = list_archive("a.zip", io.BytesIO(data), "zip", Limits())
    heads = {e.path: e.head for e in listing.entries}
    assert heads["a.zip/readme.txt"] == (b"hello " * 1000)[:512]
    assert heads["a.zip/inner.zip/evil.exe"][:2] == b"MZ"  # the nested zip copied whole, then listed
    assert [path for path, _ in listing.messages] == ["a.zip/notes.eml"]
    assert (listing.limits, listing.errors) == ([], [])
    for _, copy in listing.messages:
        assert copy.read() == b"Subject: x\r\n\r\nhi\r\n"
        copy.close()


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_bad_crc_is_an_unreadable_member(method: int) -> None:
    inner = zipped([("evil.exe", b"MZ")], zipfile.ZIP_STORED)
    data = bytearray(zipped([("inner.zip", inner)], method))
    crc_at = data.rfind(b"PK\x01\x02") + 16
    data[crc_at:crc_at + 4] = b"\0\0\0\0"  # the directory's CRC, which zipfile and this reader check
    paths, limits, _ = listed(bytes(data))
    assert paths == ["a.zip/inner.zip"]
    assert limits and "a.zip/inner.zip: unreadable member (BadZipFile: Bad CRC-32" in limits[0]


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_damaged_stream_is_an_unreadable_member(method: int) -> None:
    data = bytearray(zipped([("inner.zip", bytes(range(256)) * 40)], method))
    start = 30 + len("inner.zip")
    data[start + 12:start + 40] = b"\xff" * 28
    paths, limits, errors = listed(bytes(data))
    assert paths == ["a.zip/inner.zip"]
    assert len(limits) == 1 and "a.zip/inner.zip: unreadable member" in limits[0], (limits, errors)


def test_fix_a_bzip2_bomb_s_head_is_read_without_decompressing_it(decompressed: list[Counted]) -> None:
    packed, crc = zeros_bz2()
    data = stored_member("report.txt", zipfile.ZIP_BZIP2, packed, BOMB, crc)
    assert len(data) < 500
    paths, limits, errors = listed(data)
    assert paths == ["a.zip/report.txt"] and (limits, errors) == ([], [])
    # zipfile decompressed its first read whole: 64 MB for the 512 bytes of the member's head (1 GB from a 1 KB zip).
    assert sum(d.out for d in decompressed) == 512


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_fix_a_nested_bomb_stops_at_the_size_limit(method: int, decompressed: list[Counted]) -> None:
    if method == zipfile.ZIP_BZIP2:
        packed, crc = zeros_bz2()
    else:
        # zipfile's LZMA member: its header (version, properties' size, properties), then raw LZMA1.
        packer = zipfile.LZMACompressor()  # type: ignore[attr-defined]
        zeros = bytes(BOMB)
        packed, crc = packer.compress(zeros) + packer.flush(), zlib.crc32(zeros)
    data = stored_member("inner.zip", method, packed, BOMB, crc)
    paths, found, _ = listed(data, Limits(max_size=1 << 20))
    assert paths == ["a.zip/inner.zip"]
    assert found == [f"a.zip/inner.zip: would decompress past {1 << 20} bytes"]
    # The head (512 bytes), then the copy up to the limit and the byte that passes it, in reads of 64 KB.
    assert sum(d.out for d in decompressed) <= 512 + (1 << 20) + 65536


def test_fix_an_lzma_header_asking_for_a_huge_dictionary_is_read() -> None:
    # 5 bytes of properties (lc=3 lp=0 pb=2, a 4 GB - 1 dictionary) before a raw LZMA1 stream: liblzma would
    # allocate the dictionary first; the member is 11 bytes, so the reader gives it a small one.
    body = b"MZ evil!!!!"
    raw = lzma.compress(body, lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 16, "lc": 3, "lp": 0, "pb": 2}])
    packed = struct.pack("<BBH", 9, 20, 5) + struct.pack("<BI", 3 + 2 * 45, 0xFFFFFFFF) + raw
    data = stored_member("evil.exe", zipfile.ZIP_LZMA, packed, len(body), zlib.crc32(body))
    listing = list_archive("a.zip", io.BytesIO(data), "zip", Limits())
    assert [(e.path, e.head) for e in listing.entries] == [("a.zip/evil.exe", body)]
    assert (listing.limits, listing.errors) == ([], [])

"""A zip whose central directory puts a member's local header past the end of the file, from a fuzzing review
(thirty-first session): the search for members the directory leaves out moved one byte per read of nothing up
to that offset, so 113 bytes held a milter thread at full CPU for half an hour (2**32) or days (ZIP64).  What
is asserted is how much of the file is read, not the time."""

from __future__ import annotations

import io
import struct
import zipfile

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

"""Zip members the central directory leaves out (7-Zip and WinRAR open them from their local headers), and the
compressed tars and files 7-Zip opens besides gzip, bzip2 and xz (zstd, lzma, compress, lzip, lz4): the twenty-fifth
session's review of the attachment policy.  Through Postfix: tests/integration/test_attachments.py."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest

from milterd.content import archives
from milterd.content.archives import Limits, list_archive
from tests.harness.messages import zipped

PE = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 500


def _paths(data: bytes, name: str = "docs.zip", kind: str = "zip") -> list[str]:
    return [entry.path for entry in list_archive(name, io.BytesIO(data), kind, Limits()).entries]


def _without_directory_entry(data: bytes, left_out: str) -> bytes:
    """*data* (a zip) with the central directory entry of *left_out* removed, the end record counting one fewer."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    start = archive.start_dir
    directory, end = data[start:data.rfind(b"PK\x05\x06")], data[data.rfind(b"PK\x05\x06"):]
    kept, at = b"", 0
    while at < len(directory):
        name_length, extra_length, comment_length = struct.unpack_from("<3H", directory, at + 28)
        size = 46 + name_length + extra_length + comment_length
        if directory[at + 46:at + 46 + name_length].decode() != left_out:
            kept += directory[at:at + size]
        at += size
    entries = struct.unpack_from("<H", end, 10)[0] - 1
    end = end[:8] + struct.pack("<2H2L", entries, entries, len(kept), start) + end[20:]
    return data[:start] + kept + end


def test_a_member_the_directory_leaves_out_is_judged() -> None:
    data = _without_directory_entry(zipped({"evil.exe": PE, "readme.txt": b"hello"}), "evil.exe")
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["readme.txt"]
    listing = list_archive("docs.zip", io.BytesIO(data), "zip", Limits())
    assert {(e.path, e.head[:2]) for e in listing.entries} == {("docs.zip/readme.txt", b"he"), ("docs.zip/evil.exe", b"MZ")}


def test_the_first_of_two_zips_end_to_end_is_judged() -> None:
    assert set(_paths(zipped({"evil.exe": PE}) + zipped({"readme.txt": b"hello"}))) == {"docs.zip/evil.exe", "docs.zip/readme.txt"}


def test_an_archive_hidden_so_is_a_limit_not_opened() -> None:
    listing = list_archive("docs.zip", io.BytesIO(zipped({"inner.zip": zipped({"evil.exe": PE})}) + zipped({"a.txt": b"x"})), "zip", Limits())
    assert "docs.zip/inner.zip: a member the zip's directory leaves out, not opened" in listing.limits


def test_a_stored_zip_inside_a_zip_makes_no_hidden_member() -> None:
    # The signature inside a member's own data (a stored zip, an Office document) is that member's, not one hidden.
    inner = zipped({"evil.exe": PE})
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", zipfile.ZIP_STORED) as outer:
        outer.writestr("inner.zip", inner)
        outer.writestr("notes.txt", b"x")
    listing = list_archive("docs.zip", io.BytesIO(data.getvalue()), "zip", Limits())
    assert [e.path for e in listing.entries] == ["docs.zip/inner.zip", "docs.zip/inner.zip/evil.exe", "docs.zip/notes.txt"]
    assert not listing.limits


def test_a_prefix_of_signatures_costs_a_bounded_search() -> None:
    listing = list_archive("docs.zip", io.BytesIO(b"PK\x03\x04" * 1_000_000 + zipped({"a.txt": b"x"})), "zip", Limits())
    assert any("searched for members zip directories leave out" in note for note in listing.limits)
    assert len(listing.entries) <= Limits().max_members + 1


@pytest.mark.skipif(archives.libarchive is None, reason="needs libarchive-c and Debian's libarchive13")
@pytest.mark.parametrize(("name", "filter_name", "format_name"), [
    ("docs.tar.zst", "zstd", "ustar"), ("docs.tzst", "zstd", "ustar"), ("docs.tar.lzma", "lzma", "ustar"),
    ("docs.tar.Z", "compress", "ustar"), ("docs.tar.lz", "lzip", "ustar"), ("docs.tar.lz4", "lz4", "ustar"),
    ("evil.exe.zst", "zstd", "raw"),
])
def test_tars_and_files_compressed_as_7zip_opens_them_are_listed(name: str, filter_name: str, format_name: str) -> None:
    lib = archives.libarchive
    buffer = io.BytesIO()
    with lib.custom_writer(buffer.write, format_name, filter_name=filter_name) as archive:
        archive.add_file_from_memory("evil.exe", len(PE), PE)
    data = buffer.getvalue()
    kind = archives.archive_kind(name, data[:512])
    assert kind in archives.COMPRESSED_KINDS
    assert f"{name}/evil.exe" in _paths(data, name, kind)


def test_a_directory_overstating_a_member_s_size_hides_no_local_header() -> None:
    # The last directory names readme.txt at offset 0 with a size spanning the whole first zip: the scan skipped
    # that span, and evil.exe's local header inside it (the first zip's) was never judged.
    first = io.BytesIO()
    with zipfile.ZipFile(first, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("readme.txt", b"hello")
        archive.writestr("evil.exe", PE)
    data, name = first.getvalue(), b"readme.txt"
    span = data[30 + len(name):]
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, zlib.crc32(span), len(span), len(span),
                          len(name), 0, 0, 0, 0, 0, 0) + name
    lying = data + central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(data), 0)
    assert zipfile.ZipFile(io.BytesIO(lying)).namelist() == ["readme.txt"]
    assert "docs.zip/evil.exe" in _paths(lying)


def test_the_search_is_bounded_for_the_whole_attachment_and_said_once() -> None:
    # Each of 700 nested zips searched 2,000 planted headers anew: 8 s of a worker's CPU for 273 KB.
    planted = b"".join(b"PK\x03\x04" + struct.pack("<2B4HL2L2H", 20, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0) + b"a.txt" for _ in range(2000))
    inner = planted + zipped({"a.txt": b""})
    outer = zipped({f"part{n}.zip": inner for n in range(60)})
    listing = list_archive("docs.zip", io.BytesIO(outer), "zip", Limits())
    notes = [note for note in listing.limits if "searched for members zip directories leave out" in note]
    assert len(notes) == 1


@pytest.mark.parametrize("head", [
    b"LZIP notes from the meeting\n", b"BZh, the team\n", b"\x1f\x9d\x00 table", b"\x04\x22\x4d\x18\x00 readings",
])
def test_text_or_data_that_starts_like_a_compressed_stream_is_no_archive(head: bytes) -> None:
    # Only the magic was matched: such a note was listed as an archive, read as itself to the nesting bound, and held.
    assert archives.archive_kind("notes.txt", head + b"x" * 100) is None


@pytest.mark.skipif(archives.libarchive is None, reason="needs libarchive-c and Debian's libarchive13")
def test_a_file_named_lzma_that_is_not_is_listed_as_nothing() -> None:
    # Raw LZMA has no magic: a file so named is opened by its name, and read by no filter it held only itself,
    # opened again and again to the nesting bound (ATTACH_ARCHIVE_LIMIT).
    listing = list_archive("notes.lzma", io.BytesIO(b"just some text\n" * 20), "lzma", Limits())
    assert listing.entries == [] and listing.limits == []

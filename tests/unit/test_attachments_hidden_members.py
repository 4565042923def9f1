"""Zip members the central directory leaves out (7-Zip and WinRAR open them from their local headers), and the
compressed tars and files 7-Zip opens besides gzip, bzip2 and xz (zstd, lzma, compress, lzip, lz4): the twenty-fifth
session's review of the attachment policy.  Through Postfix: tests/integration/test_attachments.py."""

from __future__ import annotations

import io
import struct
import zipfile

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
    assert any("searched for members its directory leaves out" in note for note in listing.limits)
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

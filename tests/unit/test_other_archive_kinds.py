"""LZH, cpio and xar archives are listed as 7z and rar are (7-Zip opens every one of them, and LZH carries malware by
mail); ARJ and ACE, which 7-Zip or WinRAR open and nothing here lists, are a limit: never passed unjudged.  ar files
are not opened: Debian packages, static libraries and Windows import libraries (.lib, whose members are named .dll)."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest

from milterd.content import archives
from milterd.content.archives import Limits, list_archive
from milterd.content.filetypes import sniff

PE = b"MZ\x90\x00" + bytes(300)
needs_libarchive = pytest.mark.skipif(not archives.supported("7z"), reason="libarchive-c is not installed")


def lha(name: bytes = b"invoice.exe", data: bytes = PE) -> bytes:
    """An LHA archive of one stored file (a level-0 header, method -lh0-)."""
    body = struct.pack("<5sIIIBB", b"-lh0-", len(data), len(data), 0, 0x20, 0) + bytes([len(name)]) + name + struct.pack("<H", 0)
    return bytes([len(body), sum(body) & 0xFF]) + body + data + b"\x00"


def binary_cpio(name: bytes = b"invoice.exe", data: bytes = PE, order: str = "<") -> bytes:
    """An old binary cpio archive of one file, and its trailer."""
    def entry(path: bytes, content: bytes) -> bytes:
        path += b"\0"
        header = struct.pack(order + "13H", 0o070707, 0, 1, 0o100644, 0, 0, 1, 0, 0, 0, len(path), len(content) >> 16, len(content) & 0xFFFF)
        pad = b"\0" if len(path) % 2 else b""
        return header + path + pad + content + (b"\0" if len(content) % 2 else b"")
    return entry(name, data) + entry(b"TRAILER!!!", b"")


def written(form: str) -> bytes:
    import libarchive  # type: ignore[import-untyped,import-not-found,unused-ignore]

    out = io.BytesIO()
    with libarchive.custom_writer(out.write, form) as archive:
        archive.add_file_from_memory("invoice.exe", len(PE), PE)
    return out.getvalue()


def arj() -> bytes:
    """The start of an ARJ archive: its main header (file type 2) after the 0x60 0xEA id."""
    header = bytes([30, 11, 1, 0, 0, 0, 2]) + bytes(23)  # first header's size, versions, host, flags, security, file type 2 …
    return b"\x60\xea" + struct.pack("<H", len(header)) + header + b"invoice.arj\0\0" + bytes(8)


def ace() -> bytes:
    """The start of an ACE archive: a header's CRC, size and type before ``**ACE**``."""
    return b"\x00\x00\x31\x00\x00\x00\x00**ACE**" + bytes(40)


@needs_libarchive
@pytest.mark.parametrize(("name", "kind", "maker"), [
    ("invoice.lzh", "lzh", lambda: lha()),
    ("invoice.cpio", "cpio", lambda: written("cpio")),
    ("invoice.cpio", "cpio", lambda: written("cpio_newc")),
    ("invoice.cpio", "cpio", lambda: binary_cpio(order="<")),
    ("invoice.cpio", "cpio", lambda: binary_cpio(order=">")),
    ("invoice.xar", "xar", lambda: written("xar")),
])
def test_fix_each_kind_is_told_by_its_first_bytes_and_listed(name: str, kind: str, maker: object) -> None:
    data = maker()  # type: ignore[operator]
    assert sniff(data[:512]) == kind
    # The old code knew none of these kinds: the file was judged by its own name only, the .exe in it delivered.
    for named in (name, "renamed.dat"):
        listing = list_archive(named, io.BytesIO(data), kind, Limits())
        assert [e.path for e in listing.entries] == [f"{named}/invoice.exe"], (listing.limits, listing.errors)
        assert listing.entries[0].head[:2] == b"MZ"


@needs_libarchive
def test_fix_an_lzh_in_a_zip_is_opened() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("docs/invoice.lzh", lha())
    listing = list_archive("docs.zip", io.BytesIO(out.getvalue()), "zip", Limits())
    assert "docs.zip/docs/invoice.lzh/invoice.exe" in [e.path for e in listing.entries]


@pytest.mark.parametrize(("kind", "data"), [("arj", arj()), ("ace", ace())])
def test_fix_archives_nothing_here_lists_are_a_limit(kind: str, data: bytes) -> None:
    assert sniff(data) == kind
    assert archives.archive_kind(f"invoice.{kind}", data) == kind
    assert archives.archive_kind("renamed.dat", data) == kind
    listing = list_archive(f"invoice.{kind}", io.BytesIO(data), kind, Limits())
    assert listing.entries == [] and listing.errors == []
    assert listing.limits == [f"invoice.{kind}: {kind} archives cannot be listed here (7-Zip or WinRAR opens it)"]


@needs_libarchive
@pytest.mark.parametrize("form", ["ar_bsd", "ar_svr4"])
def test_ar_files_are_not_opened(form: str) -> None:
    data = written(form)  # a .deb, a .a, an import library: ordinary files whose members are no attachments
    assert sniff(data[:512]) is None and archives.archive_kind("mylib.lib", data[:512]) is None


@pytest.mark.parametrize("text", [
    b"070701 is the code of our branch office\r\n",  # a note starting as a cpio magic
    b"\xc7\x71 some binary data" + bytes(40),
    b"ab-lh5 is no method\r\n",
    b"xar! said the pirate\r\n",
    b"\x60\xea" + bytes(20),
])
def test_data_that_merely_starts_alike_is_no_archive(text: str) -> None:
    assert sniff(text) is None  # type: ignore[arg-type]

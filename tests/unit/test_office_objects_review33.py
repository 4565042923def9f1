"""Thirty-third review: four ways an executable in an Office or RTF object escaped ATTACH_BANNED.

1. RTF object data read otherwise than Word reads it (``\\binN`` bytes, ``\\'hh``, control words past 32 letters
   or parameters past 10 digits, a destination nested in it), a file starting ``{\\rt`` not taken for RTF, and
   object data that is then no OLE1 object passed over in silence;
2. a Packager object's Unicode names dropped wherever one equalled the source path's file name;
3. an object holding a whole document (an OOXML ``Package`` stream, ODF's ``EmbeddedOdf``) never opened;
4. storages nested deeper than olefile's recursion reads filed as unreadable (a score) instead of as a limit."""

from __future__ import annotations

import io
import struct

import pytest

from milterd.checks.attachments import BANNED, LIMIT, UNREADABLE
from milterd.content import rtf as rtf_reader
from milterd.content.archives import Limits, list_archive
from milterd.content.filetypes import sniff
from milterd.content.outlookmsg import package
from tests.harness.messages import zipped
from tests.harness.outlookmsg import compound_file, ole10native

from .test_attachments_msg import check, hits_of
from .test_office_packages import PE, message, ole1, ole_object, ooxml, packager, rtf

__all__ = ["check"]  # the fixture

#: A Packager object carrying evil.exe, as an RTF object's OLE1 data, and that data in hex.
OBJECT = ole1("Package", ole10native("evil.exe", "C:\\x\\evil.exe", PE + b"{}\\")[4:])
DIGITS = OBJECT.hex().encode()


def document(objdata: bytes, magic: bytes = b"{\\rtf1") -> bytes:
    """An RTF document whose one object's data is *objdata*, as written (hex digits and whatever comes among them)."""
    return (magic + b"\\ansi\\pard Invoice\\par{\\object\\objemb{\\*\\objclass Package}\\objw1280\\objh800{\\*\\objdata "
            + objdata + b"}}\\par}")


def native(label: str, source: str, temporary: str, data: bytes, unicode: list[str]) -> bytes:
    """A Packager object's ``\\x01Ole10Native`` stream with the names again in UTF-16 after the file (*unicode*)."""
    body = (struct.pack("<H", 2) + label.encode() + b"\0" + source.encode() + b"\0" + struct.pack("<2H", 0, 3)
            + struct.pack("<L", len(temporary) + 1) + temporary.encode() + b"\0" + struct.pack("<L", len(data)) + data)
    body += b"".join(struct.pack("<L", len(name)) + name.encode("utf-16-le") for name in unicode)
    return struct.pack("<L", len(body)) + body


# --- 1. RTF object data as Word reads it ----------------------------------------------------------------------------
@pytest.mark.parametrize("objdata", [
    pytest.param(b"\\bin8 " + OBJECT[:8] + DIGITS[16:], id="bin-bytes"),
    pytest.param(b"\\bin%d " % len(OBJECT) + OBJECT, id="bin-with-braces"),
    pytest.param(DIGITS[:10] + b"\\" + b"x" * 32 + b"abcdef " + DIGITS[10:], id="long-control-word"),
    pytest.param(DIGITS[:10] + b"\\foo" + b"1" * 12 + b" " + DIGITS[10:], id="long-parameter"),
    pytest.param(DIGITS[:11] + b"\\'ab" + DIGITS[10:], id="quote-after-odd-digits"),
    pytest.param(DIGITS[:10] + b"\\'}{" + DIGITS[10:], id="quote-swallows-braces"),
    pytest.param(DIGITS[:10] + b"{\\*\\objclass ab}" + DIGITS[10:], id="nested-destination"),
])
def test_rtf_object_data_is_read_as_word_reads_it(check: object, objdata: bytes) -> None:
    hits = hits_of(check, message(document(objdata), "invoice.rtf"))
    assert hits[BANNED].detail == "invoice.rtf/Package/evil.exe: banned extension .exe"


def test_a_file_starting_rt_is_rtf(check: object) -> None:
    # Word opens it as RTF (oletools' RTF_MAGIC is "{\rt"), whatever its name.
    assert sniff(b"{\\rtx1\\ansi") == "rtf"
    hits = hits_of(check, message(document(DIGITS, magic=b"{\\rtx1"), "invoice.doc"))
    assert hits[BANNED].detail == "invoice.doc/Package/evil.exe: banned extension .exe"


@pytest.mark.parametrize("objdata", [b"0105000002", bytes(range(256)).hex().encode()])
def test_object_data_that_is_no_ole1_object_is_a_limit(check: object, objdata: bytes) -> None:
    hits = hits_of(check, message(document(objdata), "invoice.rtf"))
    assert hits.keys() == {LIMIT}
    assert hits[LIMIT].detail.startswith("invoice.rtf: object data at byte ")


def test_a_starred_group_word_may_read_is_read_both_ways(check: object) -> None:
    # Whether Word skips "{\*\x …}" (an ignorable destination) or reads its text (oletools does) is not known:
    # the reading that makes the object finds it; the other, no object, is a limit.
    hits = hits_of(check, message(document(DIGITS[:10] + b"{\\*\\x " + DIGITS[10:20] + b"}" + DIGITS[20:]), "invoice.rtf"))
    assert hits[BANNED].detail == "invoice.rtf/Package/evil.exe: banned extension .exe"


# --- 2. a Packager object's Unicode names -----------------------------------------------------------------------------
def test_a_unicode_name_equal_to_the_source_path_s_file_name_is_judged(check: object) -> None:
    stream = native("doc.pdf", "C:\\x\\evil.js", "C:\\Temp\\doc.pdf", b"WScript.Echo(1)", ["C:\\Temp\\evil.js", "evil.js", "C:\\x\\evil.js"])
    assert package(stream)[0] == ["doc.pdf", "evil.js"]
    hits = hits_of(check, message(rtf(ole1("Package", stream[4:])), "invoice.rtf"))
    assert hits[BANNED].detail == "invoice.rtf/Package/evil.js: banned extension .js"
    # The source path itself, by its place, is still left out (an icon's source: SHELL32.DLL beside a PDF).
    icon = native("a.pdf", "C:\\WINNT\\SHELL32.DLL", "C:\\Temp\\a.pdf", b"%PDF-1.4", ["C:\\Temp\\a.pdf", "a.pdf", "C:\\WINNT\\SHELL32.DLL"])
    assert package(icon)[0] == ["a.pdf"]


# --- 3. a document an object holds ----------------------------------------------------------------------------------
INNER = ooxml("word", ole_object("evil.exe", PE))
HOLDING = {"Package": INNER, "\x01CompObj": b"\0" * 20}


@pytest.mark.parametrize(("name", "data", "path"), [
    ("invoice.rtf", rtf(ole1("Word.Document.12", compound_file(HOLDING)), "Word.Document.12"), "invoice.rtf/Word.Document.12/Package"),
    ("invoice.doc", compound_file({"WordDocument": b"\0" * 100, "ObjectPool": {"_1234": HOLDING}}), "invoice.doc/ObjectPool/_1234/Package"),
    ("invoice.docx", ooxml("word", compound_file(HOLDING)), "invoice.docx/word/embeddings/oleObject1.bin/Package"),
], ids=["rtf", "doc", "docx"])
def test_an_ooxml_document_in_an_object_s_package_stream_is_opened(check: object, name: str, data: bytes, path: str) -> None:
    hits = hits_of(check, message(data, name))
    assert hits[BANNED].detail == f"{path}/word/embeddings/oleObject1.bin/evil.exe: banned extension .exe"


def test_an_odf_document_in_an_object_and_the_depth_limit() -> None:
    odf = zipped({"mimetype": b"application/vnd.oasis.opendocument.text", "content.xml": b"<office/>", "evil.exe": PE})
    doc = compound_file({"WordDocument": b"\0" * 100, "ObjectPool": {"_7": {"EmbeddedOdf": odf}}})
    listing = list_archive("a.doc", io.BytesIO(doc), "ole", Limits())
    assert "a.doc/ObjectPool/_7/EmbeddedOdf/evil.exe" in [entry.path for entry in listing.entries]
    # The document is a level of depth, its own objects one more.
    word = compound_file({"WordDocument": b"\0" * 100, "ObjectPool": {"_1234": HOLDING}})
    assert list_archive("a.doc", io.BytesIO(word), "ole", Limits(max_depth=1)).limits == [
        "a.doc/ObjectPool/_1234/Package: archive nested deeper than 1"]
    assert list_archive("a.doc", io.BytesIO(word), "ole", Limits(max_depth=2)).limits == [
        "a.doc/ObjectPool/_1234/Package/word/embeddings/oleObject1.bin: embedded object nested deeper than 2"]


# --- 4. storages deeper than olefile reads ------------------------------------------------------------------------------
def test_a_compound_file_deeper_than_olefile_reads_is_a_limit(check: object) -> None:
    # olefile walks a storage's entries recursively: a chain of 3,000 (or storages 600 deep) is a RecursionError,
    # though Word opens the file and runs its Packager object.
    deep = compound_file({"WordDocument": b"\0" * 100, "ObjectPool": {"_1234": packager("evil.exe", PE)},
                          "Data": {f"x{number}": b"" for number in range(3000)}})
    listing = list_archive("invoice.doc", io.BytesIO(deep), "ole", Limits())
    assert listing.limits == ["invoice.doc: storages or entries nested deeper than olefile reads, not looked at"]
    assert not listing.errors
    hits = hits_of(check, message(deep, "invoice.doc"))
    assert LIMIT in hits and UNREADABLE not in hits
    assert hits[LIMIT].action is not None  # held as limit_action says (quarantine), not only scored


# --- a second look: the nested reading's cost, and text that only names \objdata ---------------------------------------
def test_nested_object_data_is_not_read_again_without_bound() -> None:
    """Each \\objdata nested in another read the rest of the outer group again, a run of hex being one token:
    600 of them around 10 MB cost 7 s of CPU.  Text is charged by its length: past four readings, a limit."""
    nested = b"{\\rtf1" + b"{\\*\\objdata " * 600 + b"41" * 500_000 + b"}" * 600
    found = rtf_reader.embedded_objects(nested, 64 << 20)
    assert any("past the RTF tokens read" in note for note in found.unread)


@pytest.mark.parametrize("text", [
    b"{\\rtf1\\ansi Write \\\\objdata then the hex of the object, e.g. 0105 and cafe.\\par}",
    b"{\\rtf1 C:\\\\objdata\\\\2024\\par}",
])
def test_an_escaped_backslash_before_objdata_is_text(text: bytes) -> None:
    """"\\\\objdata" is a backslash, then the word: taken for object data, a how-to about RTF was quarantined."""
    assert rtf_reader.embedded_objects(text, 1 << 20) == rtf_reader.EmbeddedObjects()

"""A Packager object (an "embedded file") in an Office document is judged as an archive's member: Word writes its
file out and runs it on a double click.  In an OOXML document's ``oleObject1.bin``
(``invoice.docx/word/embeddings/oleObject1.bin/evil.exe``), in a Word or Excel 97 document's object storages
(``invoice.doc/ObjectPool/_1234/evil.exe``) and in an RTF document's ``\\objdata``
(``invoice.rtf/Package/evil.exe``); a harmless one passes, a damaged one is no crash."""

from __future__ import annotations

import io
import struct

import pytest

from milterd.checks.attachments import BANNED, ERROR, LIMIT, UNREADABLE
from milterd.content.archives import Limits, archive_kind_of, list_archive
from tests.harness.messages import zipped
from tests.harness.outlookmsg import Tree, compound_file, ole10native

from .test_attachments_msg import check, hits_of
from .test_attachments_msg import message as attached

__all__ = ["check"]  # the fixture

PE = b"MZ\x90\x00" + b"\x00" * 300
TEXT = b"Minutes of the meeting.\r\n"
#: The parts an OOXML document has besides its embedded objects, by the folder its application keeps them in.
_PARTS = {"word": "word/document.xml", "xl": "xl/workbook.xml", "ppt": "ppt/presentation.xml"}


def message(data: bytes, filename: str) -> bytes:
    return attached(data, filename.encode(), b"application/octet-stream")


def packager(name: str, data: bytes) -> Tree:
    """A Packager object's storage carrying *data* as the file *name*."""
    return {"\x01Ole10Native": ole10native(name, f"C:\\Users\\x\\{name}", data), "\x01CompObj": b"\0" * 20}


def ole_object(name: str, data: bytes) -> bytes:
    """An OOXML document's ``oleObject1.bin``: a Packager object's storage as a Compound File."""
    return compound_file(packager(name, data))


def ooxml(folder: str, embedded: bytes) -> bytes:
    """An OOXML document (Word's, Excel's or PowerPoint's by *folder*) embedding *embedded* as ``oleObject1.bin``."""
    return zipped({"[Content_Types].xml": b"<Types/>", _PARTS[folder]: b"<document/>", f"{folder}/embeddings/oleObject1.bin": embedded})


def word97(name: str, data: bytes) -> bytes:
    """A Word 97 document with a Packager object in its ObjectPool."""
    return compound_file({"WordDocument": b"\0" * 100, "ObjectPool": {"_1234": packager(name, data)}})


def ole1(class_name: str, native: bytes) -> bytes:
    """An embedded OLE1 object (MS-OLEDS 2.2.4) of *class_name*, then a presentation object as Word writes one."""
    def names(*texts: str) -> bytes:
        return b"".join(struct.pack("<L", len(text) + 1) + text.encode() + b"\0" for text in texts)
    return struct.pack("<2L", 0x0501, 2) + names(class_name, "", "") + struct.pack("<L", len(native)) + native + struct.pack("<2L", 0x0501, 5)


def rtf(objdata: bytes, class_name: str = "Package", spaced: bool = False) -> bytes:
    """An RTF document embedding *objdata* (an OLE1 object) in hex, in lines of 64 digits, with blanks and a control
    word among them when *spaced* (Word skips them)."""
    digits = objdata.hex().encode()
    lines = [digits[i:i + 64] for i in range(0, len(digits), 64)]
    if spaced:
        lines = [b" ".join(line[i:i + 8] for i in range(0, len(line), 8)) for line in lines]
        lines.insert(1, b"\\par ")
    return (b"{\\rtf1\\ansi{\\fonttbl{\\f0 Arial;}}\\pard Invoice\\par{\\object\\objemb{\\*\\objclass " + class_name.encode()
            + b"}\\objw1280\\objh800{\\*\\objdata\r\n" + b"\r\n".join(lines) + b"\r\n}{\\result{\\pict\\wmetafile8 0100}}}\\par}")


def package_rtf(name: str, data: bytes, spaced: bool = False) -> bytes:
    """An RTF document embedding a Packager object that carries *data* as the file *name*."""
    return rtf(ole1("Package", ole10native(name, f"C:\\Users\\x\\{name}", data)[4:]), spaced=spaced)


# --- an executable in an embedded object is banned, named by its path ---------------------------------------------
@pytest.mark.parametrize(("filename", "folder"), [("invoice.docx", "word"), ("budget.xlsx", "xl"), ("deck.pptx", "ppt")])
def test_an_exe_in_an_ooxml_document_s_ole_object_is_banned(check: object, filename: str, folder: str) -> None:
    hits = hits_of(check, message(ooxml(folder, ole_object("evil.exe", PE)), filename))
    assert hits[BANNED].detail == f"{filename}/{folder}/embeddings/oleObject1.bin/evil.exe: banned extension .exe"
    assert ERROR not in hits and LIMIT not in hits


def test_an_exe_in_a_word_97_document_s_object_pool_is_banned(check: object) -> None:
    hits = hits_of(check, message(word97("evil.exe", PE), "invoice.doc"))
    assert hits[BANNED].detail == "invoice.doc/ObjectPool/_1234/evil.exe: banned extension .exe"
    assert ERROR not in hits and LIMIT not in hits


def test_an_exe_in_an_excel_97_workbook_s_object_storage_is_banned(check: object) -> None:
    workbook = compound_file({"Workbook": b"\0" * 100, "MBD0012AB34": packager("run.js", b"WScript.Echo(1)")})
    assert hits_of(check, message(workbook, "budget.xls"))[BANNED].detail == "budget.xls/MBD0012AB34/run.js: banned extension .js"


@pytest.mark.parametrize("spaced", [False, True])
def test_an_exe_in_an_rtf_document_s_package_object_is_banned(check: object, spaced: bool) -> None:
    hits = hits_of(check, message(package_rtf("evil.exe", PE, spaced), "invoice.rtf"))
    assert hits[BANNED].detail == "invoice.rtf/Package/evil.exe: banned extension .exe"
    assert ERROR not in hits and LIMIT not in hits


def test_an_rtf_named_doc_and_an_rtf_object_holding_a_compound_file_are_read(check: object) -> None:
    # Word opens an RTF file named .doc; an embedded Word 97 document's own objects are one level further.
    assert hits_of(check, message(package_rtf("evil.exe", PE), "invoice.doc"))[BANNED].detail == "invoice.doc/Package/evil.exe: banned extension .exe"
    document = rtf(ole1("Word.Document.8", word97("evil.exe", PE)), "Word.Document.8")
    hits = hits_of(check, message(document, "report.rtf"))
    assert hits[BANNED].detail == "report.rtf/Word.Document.8/ObjectPool/_1234/evil.exe: banned extension .exe"


def test_an_office_document_with_a_package_in_a_zip_is_found(check: object) -> None:
    hits = hits_of(check, message(zipped({"invoice.docx": ooxml("word", ole_object("evil.exe", PE))}), "docs.zip"))
    assert hits[BANNED].detail == "docs.zip/invoice.docx/word/embeddings/oleObject1.bin/evil.exe: banned extension .exe"


# --- a harmless embedded file passes ----------------------------------------------------------------------------
def test_a_packaged_text_file_gives_no_finding(check: object) -> None:
    assert hits_of(check, message(ooxml("word", ole_object("minutes.txt", TEXT)), "invoice.docx")) == {}
    assert hits_of(check, message(word97("minutes.txt", TEXT), "invoice.doc")) == {}
    assert hits_of(check, message(package_rtf("minutes.txt", TEXT), "invoice.rtf")) == {}
    listing = list_archive("invoice.docx", io.BytesIO(ooxml("word", ole_object("minutes.txt", TEXT))), "zip", Limits())
    assert ("invoice.docx/word/embeddings/oleObject1.bin/minutes.txt", TEXT) in [(e.path, e.head) for e in listing.entries]


def test_documents_without_a_package_are_listed_without_a_finding(check: object) -> None:
    plain = compound_file({"WordDocument": b"\0" * 100, "ObjectPool": {"_99": {"\x01CompObj": b"\0" * 20, "CONTENTS": b"x"}}})
    assert archive_kind_of(["report.doc"], plain[:512]) == "ole"
    assert hits_of(check, message(plain, "report.doc")) == {}
    assert hits_of(check, message(rtf(ole1("Equation.3", b"\0" * 40), "Equation.3"), "formula.rtf")) == {}
    assert hits_of(check, message(b"{\\rtf1\\ansi Hello\\par}", "letter.rtf")) == {}


# --- damaged objects: no crash ------------------------------------------------------------------------------------
def test_a_truncated_ole_object_is_unreadable_not_a_crash(check: object) -> None:
    damaged = ole_object("evil.exe", PE * 20)[:1200]
    hits = hits_of(check, message(ooxml("word", damaged), "invoice.docx"))
    assert hits.keys() == {UNREADABLE}
    assert hits[UNREADABLE].detail.startswith("invoice.docx/word/embeddings/oleObject1.bin: unreadable embedded object (")


def test_a_packaged_file_cut_short_is_unreadable_and_the_other_objects_are_judged(check: object) -> None:
    cut: Tree = {"\x01Ole10Native": ole10native("evil.exe", "C:\\evil.exe", PE)[:60]}
    document = compound_file({"WordDocument": b"\0" * 100, "ObjectPool": {"_1": cut, "_2": packager("evil.js", b"x")}})
    hits = hits_of(check, message(document, "invoice.doc"))
    assert hits[BANNED].detail == "invoice.doc/ObjectPool/_2/evil.js: banned extension .js"
    assert hits[UNREADABLE].detail.startswith("invoice.doc/ObjectPool/_1: unreadable embedded object (a packaged file")


@pytest.mark.parametrize("objdata", [b"", b"\x01\x05\x00\x00\x02\x00", bytes(range(256)) * 4])
def test_malformed_rtf_object_data_is_no_crash(check: object, objdata: bytes) -> None:
    # A header cut short, or another format than an embedded object's: no object, and a limit (Word may read one
    # there); empty data is nothing.
    hits = hits_of(check, message(rtf(objdata) + b"{\\object{\\*\\objdata 0105zz", "invoice.rtf"))
    assert hits.keys() == {LIMIT}
    assert hits_of(check, message(rtf(b""), "invoice.rtf")) == {}


def test_an_rtf_package_cut_short_is_unreadable(check: object) -> None:
    hits = hits_of(check, message(rtf(ole1("Package", b"\x02\x00evil.exe")), "invoice.rtf"))
    assert hits.keys() == {UNREADABLE}
    assert hits[UNREADABLE].detail == "invoice.rtf/Package: unreadable embedded object (a packaged file's name without its NUL)"


def test_random_bytes_after_a_compound_file_signature_are_no_crash(check: object) -> None:
    hits = hits_of(check, message(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)) * 8, "report.doc"))
    assert hits.keys() == {UNREADABLE}


# --- the limits -----------------------------------------------------------------------------------------------------
def test_an_embedded_object_counts_as_a_level_of_depth() -> None:
    docx = ooxml("word", ole_object("evil.exe", PE))
    shallow = list_archive("invoice.docx", io.BytesIO(docx), "zip", Limits(max_depth=1))
    assert shallow.limits == ["invoice.docx/word/embeddings/oleObject1.bin: embedded object nested deeper than 1"]
    assert list_archive("invoice.docx", io.BytesIO(docx), "zip", Limits(max_depth=2)).limits == []
    # A Compound File without a Packager object (a VBA project) is no limit, however deep.
    project: Tree = {"dir": b"\0" * 10}
    macros = zipped({"[Content_Types].xml": b"<Types/>", "word/vbaProject.bin": compound_file({"VBA": project})})
    assert list_archive("invoice.docm", io.BytesIO(macros), "zip", Limits(max_depth=1)).limits == []
    rtf_in_zip = list_archive("docs.zip", io.BytesIO(zipped({"a.rtf": package_rtf("evil.exe", PE)})), "zip", Limits(max_depth=1))
    assert rtf_in_zip.limits == ["docs.zip/a.rtf: embedded object nested deeper than 1"]


def test_the_size_and_member_limits_apply() -> None:
    big = word97("big.txt", b"x" * 20000)
    assert list_archive("a.doc", io.BytesIO(big), "ole", Limits(max_size=10000)).limits == ["a.doc/ObjectPool/_1234: would decompress past 10000 bytes"]
    assert list_archive("a.rtf", io.BytesIO(package_rtf("big.txt", b"x" * 20000)), "rtf", Limits(max_size=10000)).limits == [
        "a.rtf: would decode past 10000 bytes, the rest not looked at"]
    many = compound_file({"WordDocument": b"\0", "ObjectPool": {f"_{n}": packager(f"f{n}.txt", b"x") for n in range(5)}})
    listing = list_archive("a.doc", io.BytesIO(many), "ole", Limits(max_members=3))
    assert [e.path for e in listing.entries] == [f"a.doc/ObjectPool/_{n}/f{n}.txt" for n in range(3)]
    assert listing.limits == ["a.doc/ObjectPool/_3: past 3 members, the rest not looked at"]


def test_rtf_object_data_is_read_past_control_words_and_within_its_group() -> None:
    from milterd.content.rtf import embedded_objects  # here: the other tests run on a tree without it
    data = ole1("Package", b"\x02\x00a\0b\0")
    document = b"{\\rtf1{\\*\\objdata " + data.hex()[:10].encode() + b"\\par\r\n {\\*\\x}" + data.hex()[10:].encode() + b"}0102}"
    found = embedded_objects(document, 1000)
    assert [(o.class_name, o.native) for o in found.objects] == [("Package", b"\x02\x00a\0b\0")]
    assert found.decoded == len(data) and found.whole and not found.unread
    cut = embedded_objects(document, 10)
    assert (cut.objects, cut.decoded, cut.whole) == ([], 0, False)

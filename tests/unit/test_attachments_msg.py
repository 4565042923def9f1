"""Outlook message files (``.msg``) are listed as archives: the files they carry, their attached messages' files and
the file a Packager object carries are judged by the same rules, named ``invoice.msg/evil.exe``; a file that cannot
be read is a limit finding, quickly."""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import olefile
import pytest

from milterd.checks.attachments import BANNED, DOUBLE, LIMIT, MISMATCH
from milterd.content.archives import Limits, archive_kind, list_archive
from milterd.message.model import Action, Hit, Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of, zipped
from tests.harness.outlookmsg import attachment, compound_file, msg_file, msg_tree, ole10native, unicode

PE = b"MZ\x90\x00" + bytes(56) + (64).to_bytes(4, "little") + b"PE\x00\x00" + bytes(236)  # e_lfanew at 0x3C points at "PE\0\0"
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"


def message(data: bytes, filename: bytes = b"invoice.msg", content_type: bytes = b"application/vnd.ms-outlook") -> bytes:
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--zz\r\nContent-Type: " + content_type + b"\r\nContent-Disposition: attachment; filename=\"" + filename
            + b"\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--zz--\r\n")


@pytest.fixture
def check(tmp_path: Path) -> object:
    return attachment_check(tmp_path, "archive_process = false\n")  # unit tests fork no listing child


def hits_of(check: object, raw: bytes) -> dict[str, Hit]:
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))  # type: ignore[attr-defined]
    return {hit.symbol: hit for hit in hits}


def listed(data: bytes, limits: Limits | None = None, name: str = "invoice.msg") -> object:
    return list_archive(name, io.BytesIO(data), "msg", limits or Limits())


# --- the writer writes what olefile reads ---------------------------------------------------------------------
def test_the_test_writer_writes_what_olefile_reads_strictly() -> None:
    big = bytes(range(256)) * 40  # past the mini stream's cutoff: in the file's own sectors
    data = msg_file("Invoice", attachment("a.txt", b"hi"), attachment("big.bin", big))
    ole = olefile.OleFileIO(data, raise_defects=olefile.DEFECT_INCORRECT)
    assert ole.openstream("__attach_version1.0_#00000000/__substg1.0_37010102").read() == b"hi"
    assert ole.openstream("__attach_version1.0_#00000001/__substg1.0_37010102").read() == big
    assert ole.openstream("__attach_version1.0_#00000001/__substg1.0_3707001F").read().decode("utf-16-le") == "big.bin\x00"


# --- the rules on what a message file carries -------------------------------------------------------------
def test_an_exe_in_a_msg_file_is_banned_and_the_reject_names_it(check: object) -> None:
    hits = hits_of(check, message(msg_file("Invoice", attachment("evil.exe", PE, short_name="EVIL.EXE"))))
    assert hits[BANNED].detail == "invoice.msg/evil.exe: banned extension .exe; invoice.msg/EVIL.EXE: banned extension .exe"
    assert hits[BANNED].action == Action.REJECT
    assert str(hits[BANNED].reply) == "550 5.7.1 Attachment rejected: invoice.msg/evil.exe: banned extension .exe"
    assert LIMIT not in hits


def test_a_clean_pdf_in_a_msg_file_passes_and_its_names_are_the_members(check: object) -> None:
    data = msg_file("Invoice", attachment("invoice.pdf", PDF, short_name="INVOIC~1.PDF"))
    assert hits_of(check, message(data)) == {}
    listing = listed(data)
    assert [(e.path, e.head) for e in listing.entries] == [("invoice.msg/invoice.pdf", PDF), ("invoice.msg/INVOIC~1.PDF", b"")]
    assert not listing.limits and not listing.errors


def test_a_msg_file_is_told_by_its_name_and_its_compound_file_signature() -> None:
    data = msg_file("Invoice", attachment("a.txt", b"hi"))
    assert archive_kind("fwd.msg", data[:512]) == "msg"
    assert archive_kind("template.OFT", data[:512]) == "msg"
    assert archive_kind("report.doc", data[:512]) is None  # a Word 97 document is no message
    assert archive_kind("notes.msg", b"From: a@example.org\r\n") is None  # not a Compound File: Outlook does not open it


def test_a_msg_file_under_the_name_its_content_type_gives_is_listed(check: object) -> None:
    raw = message(msg_file("Invoice", attachment("invoice.pdf.exe", PE)), b"attachment.bin", b'application/vnd.ms-outlook; name="fwd.msg"')
    hits = hits_of(check, raw)
    assert hits[BANNED].detail == "attachment.bin/invoice.pdf.exe: banned extension .exe"
    assert hits[DOUBLE].detail == "attachment.bin/invoice.pdf.exe: double extension .pdf.exe"


def test_an_executable_called_pdf_in_a_msg_file_is_a_type_mismatch(check: object) -> None:
    hits = hits_of(check, message(msg_file("Invoice", attachment("invoice.pdf", PE))))
    assert hits[MISMATCH].detail == "invoice.msg/invoice.pdf: declared .pdf, content is a Windows executable (PE)"


def test_an_exe_in_an_attached_message_is_found_under_its_subject(check: object) -> None:
    inner = msg_tree("Re: the invoice", attachment("evil.exe", PE))
    hits = hits_of(check, message(msg_file("Fwd", attachment(None, message=inner, display_name="Re: the invoice"))))
    assert hits[BANNED].detail == "invoice.msg/Re: the invoice/evil.exe: banned extension .exe"


def test_a_file_a_packager_object_carries_is_judged_by_its_own_name(check: object) -> None:
    obj = {"\x01Ole10Native": ole10native("evil.exe", "C:\\Users\\x\\evil.exe", PE), "\x01CompObj": b"\0" * 20}
    hits = hits_of(check, message(msg_file("Invoice", attachment(None, obj=obj, display_name="Picture (Device Independent Bitmap)"))))
    assert hits[BANNED].detail == "invoice.msg/evil.exe: banned extension .exe"
    listing = listed(msg_file("Invoice", attachment(None, obj=obj, display_name="Picture")))
    assert [(e.path, e.head) for e in listing.entries] == [("invoice.msg/evil.exe", PE), ("invoice.msg/Picture", b"")]


def test_an_exe_in_a_zip_in_a_msg_file_and_a_msg_file_in_a_zip_are_found(check: object) -> None:
    hits = hits_of(check, message(msg_file("Invoice", attachment("docs.zip", zipped({"evil.exe": PE})))))
    assert hits[BANNED].detail == "invoice.msg/docs.zip/evil.exe: banned extension .exe"
    raw = message(zipped({"fwd.msg": msg_file("Invoice", attachment("evil.exe", PE))}), b"mails.zip", b"application/zip")
    assert hits_of(check, raw)[BANNED].detail == "mails.zip/fwd.msg/evil.exe: banned extension .exe"


def test_a_saved_message_in_a_msg_file_is_opened(check: object) -> None:
    eml = (b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; filename=evil.exe\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.b64encode(PE) + b"\r\n--b--\r\n")
    hits = hits_of(check, message(msg_file("Fwd", attachment("fwd.eml", eml))))
    assert "invoice.msg/fwd.eml/evil.exe: banned extension .exe" in hits[BANNED].detail


def test_an_attachment_by_reference_is_judged_by_its_name() -> None:
    listing = listed(msg_file("Invoice", attachment("run.exe")))
    assert [e.path for e in listing.entries] == ["invoice.msg/run.exe"]


# --- limits and hostile files ----------------------------------------------------------------------------
def test_members_depth_and_size_limits_apply() -> None:
    many = msg_file("Many", *(attachment(f"f{i}.txt", b"x") for i in range(8)))
    assert listed(many, Limits(max_members=5)).limits == ["invoice.msg/f5.txt: past 5 members, the rest not looked at"]
    nested = msg_tree("level 0", attachment("evil.exe", PE))
    for level in range(1, 4):
        nested = msg_tree(f"level {level}", attachment(None, message=nested, display_name=f"level {level - 1}"))
    deep = listed(compound_file(nested), Limits(max_depth=3))
    assert deep.limits == ["invoice.msg/level 2/level 1/level 0: attached message nested deeper than 3"]
    big = listed(msg_file("Big", attachment("big.bin", b"\0" * 300_000), attachment("evil.exe", PE)), Limits(max_size=100_000))
    assert big.limits == ["invoice.msg/big.bin: would decode past 100000 bytes"]


def test_a_name_longer_than_any_name_is_a_limit_not_read() -> None:
    node = attachment("a.txt", b"hi")
    node["__substg1.0_3704001F"] = ("x" * 5000 + ".exe").encode("utf-16-le")
    listing = listed(msg_file("Invoice", node))
    assert listing.limits == ["invoice.msg/a.txt: unreadable name (a name of 10008 bytes (__substg1.0_3704001F))"]


def test_a_packaged_file_cut_short_is_a_limit() -> None:
    obj = {"\x01Ole10Native": ole10native("evil.exe", "evil.exe", PE)[:60]}
    listing = listed(msg_file("Invoice", attachment(None, obj=obj, display_name="Package")))
    assert listing.limits == ["invoice.msg/Package: unreadable embedded file (a packaged file of 304 bytes in a stream of 60)"]


def test_a_damaged_msg_file_is_a_limit_finding_and_never_read_past_its_size(check: object) -> None:
    good = msg_file("Invoice", attachment("big.bin", bytes(5000)), attachment("evil.exe", PE))
    cut = good[:len(good) // 2]
    assert hits_of(check, message(cut))[LIMIT].detail.startswith("invoice.msg: unreadable msg archive (")
    # A data stream declared larger than its file: olefile would follow its chain (a loop) for all of it.
    looped = _declared_size(good, "__substg1.0_37010102", 100_000)
    assert listed(looped).limits == ["invoice.msg: unreadable msg archive (OleFileError: malformed OLE document, stream too large)"]
    # Declared past the budget: refused before it is opened.
    huge = listed(_declared_size(good, "__substg1.0_37010102", 0xFFFFFF00))
    assert huge.limits == ["invoice.msg/big.bin: would decode past 52428800 bytes"] and huge.decompressed == 0


def test_random_bytes_after_the_signature_are_a_limit_finding(check: object) -> None:
    data = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)) * 20
    assert hits_of(check, message(data))[LIMIT].detail.startswith("invoice.msg: unreadable msg archive (")


# --- found by review: names and layouts Outlook reads that the walker did not --------------------------
VBS = b'CreateObject("WScript.Shell").Run "calc"\r\n'


def test_a_nul_inside_a_name_is_judged_where_windows_ends_it(check: object) -> None:
    node = attachment(None, VBS)
    node["__substg1.0_3707001F"] = unicode("invoice.vbs\0.txt")  # was read as invoice.vbs.txt: no finding
    assert hits_of(check, message(msg_file("Invoice", node)))[BANNED].detail == "invoice.msg/invoice.vbs\\x00.txt: banned extension .vbs"
    node = attachment(None, VBS)
    node["__substg1.0_3707001E"] = b"invoice.vbs\0.txt\0"
    assert hits_of(check, message(msg_file("Invoice", node)))[BANNED].detail == "invoice.msg/invoice.vbs\\x00.txt: banned extension .vbs"


def test_names_in_the_compound_file_compare_without_case(check: object) -> None:
    tree = msg_tree("Invoice")
    tree["__ATTACH_VERSION1.0_#00000000"] = attachment("evil.exe", PE)
    assert hits_of(check, message(compound_file(tree)))[BANNED].detail == "invoice.msg/evil.exe: banned extension .exe"
    obj = {"\x01OLE10NATIVE": ole10native("evil.exe", "C:\\evil.exe", PE)}
    assert "invoice.msg/evil.exe: banned extension .exe" in hits_of(check, message(msg_file("I", attachment(None, obj=obj, display_name="P"))))[BANNED].detail
    inner = {"__PROPERTIES_VERSION1.0": b"\0" * 24, "__SUBSTG1.0_0037001F": unicode("Re"), "__attach_version1.0_#00000000": attachment("evil.exe", PE)}
    hits = hits_of(check, message(msg_file("Fwd", attachment(None, message=inner, display_name="Re"))))
    assert hits[BANNED].detail == "invoice.msg/Re/evil.exe: banned extension .exe"


def test_an_ole_object_laid_out_like_a_message_still_has_its_packaged_file_judged(check: object) -> None:
    obj = {"\x01Ole10Native": ole10native("evil.exe", "C:\\evil.exe", PE), "__properties_version1.0": b"\0" * 24}
    assert "invoice.msg/evil.exe: banned extension .exe" in hits_of(check, message(msg_file("I", attachment(None, obj=obj, display_name="P"))))[BANNED].detail


def test_the_attach_method_makes_a_storage_an_attached_message() -> None:
    node = attachment(None, message={"__attach_version1.0_#00000000": attachment("evil.exe", PE)}, display_name="Re")
    node["__properties_version1.0"] = b"\0" * 8 + struct.pack("<2HLLL", 0x0003, 0x3705, 0, 5, 0)
    listing = listed(msg_file("Fwd", node))
    assert "invoice.msg/Re/evil.exe" in [e.path for e in listing.entries]


def test_every_name_packager_gives_the_file_is_judged(check: object) -> None:
    # The temporary path is where Packager writes the file out and opens it; newer ones add the names in UTF-16.
    temporary = b"C:\\Temp\\run.vbs\0"
    body = (struct.pack("<H", 2) + b"readme.txt\0C:\\readme.txt\0" + struct.pack("<2H", 0, 3) + struct.pack("<L", len(temporary)) + temporary
            + struct.pack("<L", len(VBS)) + VBS + b"".join(struct.pack("<L", len(n)) + n.encode("utf-16-le") for n in ("a.txt", "b.js", "c.txt")))
    obj = {"\x01Ole10Native": struct.pack("<L", len(body)) + body}
    detail = hits_of(check, message(msg_file("I", attachment(None, obj=obj, display_name="readme.txt"))))[BANNED].detail
    assert "invoice.msg/run.vbs: banned extension .vbs" in detail and "invoice.msg/b.js: banned extension .js" in detail


def test_an_attachment_by_reference_is_judged_by_its_paths_file_name(check: object) -> None:
    node = attachment("report.txt")
    node["__substg1.0_370D001F"] = unicode("\\\\server\\share\\report.exe")
    assert hits_of(check, message(msg_file("I", node)))[BANNED].detail == "invoice.msg/report.exe: banned extension .exe"


def test_sector_counts_past_the_file_are_refused_before_olefile_reads_them() -> None:
    # olefile joins its sector table one sector at a time: 16,000 FAT sectors claimed in 2 KB took 28 s.
    header = struct.pack("<8s16s5H6s9L", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"\0" * 16, 0x3E, 3, 0xFFFE, 9, 6, b"\0" * 6,
                         0, 16000, 2, 0, 4096, 0xFFFFFFFE, 0, 0, 126)
    data = header + struct.pack("<109L", *[1] * 109) + struct.pack("<128L", *[1] * 127 + [0]) + struct.pack("<128L", *[0xFFFFFFFD] * 128) + b"\0" * 512
    assert listed(data).limits == ["invoice.msg: unreadable msg archive (ValueError: a header counting 16000 FAT, 126 DIFAT and 0 MiniFAT sectors in 4)"]


def test_names_are_read_only_for_the_members_listed_and_streams_opened_from_their_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    from milterd.content import outlookmsg

    read = []
    original = outlookmsg._attachment
    monkeypatch.setattr(outlookmsg, "_attachment", lambda ole, storage: read.append(storage) or original(ole, storage))

    def by_path(*_args: object) -> None:
        raise AssertionError("openstream's lookup is linear in a storage's entries")

    monkeypatch.setattr(olefile.OleFileIO, "openstream", by_path)
    listing = listed(msg_file("Many", *(attachment(f"f{i}.txt", b"x") for i in range(40))), Limits(max_members=5))
    assert listing.limits == ["invoice.msg/f5.txt: past 5 members, the rest not looked at"] and len(read) == 6


def test_a_directory_past_its_bound_is_refused_and_streams_referenced_twice_still_are(monkeypatch: pytest.MonkeyPatch) -> None:
    from milterd.content import outlookmsg

    # olefile loads every entry when it opens the file (20,500 entries took 1.1 s, its check of streams quadratic).
    monkeypatch.setattr(outlookmsg, "MAX_ENTRIES", 30)
    many = msg_file("Many", *(attachment(f"f{i}.txt", b"x") for i in range(10)))
    assert listed(many).limits == ["invoice.msg: unreadable msg archive (ValueError: more than 30 directory entries)"]
    monkeypatch.setattr(outlookmsg, "MAX_ENTRIES", 20_000)
    twice = msg_file("Twice", attachment("a.bin", b"a" * 5000), attachment("b.bin", b"b" * 5000))
    start_of_a = struct.unpack_from("<L", twice, _entry_at(twice, "__substg1.0_37010102") + 116)[0]
    shared = bytearray(twice)
    second = _entry_at(twice, "__substg1.0_37010102", after=_entry_at(twice, "__substg1.0_37010102") + 128)
    struct.pack_into("<L", shared, second + 116, start_of_a)
    assert listed(bytes(shared)).limits == ["invoice.msg: unreadable msg archive (OleFileError: Stream referenced twice)"]


def _entry_at(data: bytes, name: str, after: int = 0) -> int:
    at = data.find((name + "\0").encode("utf-16-le").ljust(64, b"\0"), after)
    assert at > 0 and at % 128 == 0
    return at


def _declared_size(data: bytes, name: str, size: int) -> bytes:
    """*data* with the first directory entry called *name* declaring *size* bytes."""
    encoded = (name + "\0").encode("utf-16-le").ljust(64, b"\0")
    at = data.find(encoded)
    assert at > 0 and at % 128 == 0  # a directory entry's start
    patched = bytearray(data)
    struct.pack_into("<L", patched, at + 120, size)
    return bytes(patched)


def test_an_empty_file_name_leaves_the_display_name_to_judge(check: object) -> None:
    # An empty long file name kept the display name from being read: "(attachment 1 without a name)", no finding.
    for empty in ("", "\0", "   "):
        node = attachment(empty, VBS, display_name="invoice.vbs")
        assert hits_of(check, message(msg_file("I", node)))[BANNED].detail == "invoice.msg/invoice.vbs: banned extension .vbs", repr(empty)


# --- fifth review: a Packager object kept as a Compound File, the attach method read first ----------------------
def packager_file(name: str, data: bytes) -> bytes:
    """A Packager object's storage serialized as a Compound File (an OLE attachment's data)."""
    return compound_file({"\x01Ole10Native": ole10native(name, f"C:\\{name}", data), "\x01CompObj": b"\0" * 20})


def test_a_packager_object_kept_as_a_compound_file_is_opened(check: object) -> None:
    # As a .msg attachment's data (attach method 6) and as TNEF's attachment data after an IStorage id: no finding.
    node = attachment(None, packager_file("evil.exe", PE), display_name="Package")
    node["__properties_version1.0"] = b"\0" * 8 + struct.pack("<2HLLL", 0x0003, 0x3705, 0, 6, 0)
    assert hits_of(check, message(msg_file("I", node)))[BANNED].detail == "invoice.msg/Package/evil.exe: banned extension .exe"
    from tests.unit.test_attachments_tnef import file_attachment, tnef
    from tests.unit.test_attachments_tnef import message as tnef_message
    storage = bytes.fromhex("0b00000000000000c000000000000046") + packager_file("evil.js", b"WScript.Echo(1)")
    hits = hits_of(check, tnef_message(tnef(file_attachment("Package", storage))))
    assert "winmail.dat/Package/evil.js: banned extension .js" in hits[BANNED].detail


def test_a_compound_file_without_a_packager_stream_is_only_a_member(check: object) -> None:
    doc = compound_file({"WordDocument": b"\0" * 100, "\x01CompObj": b"\0" * 20})
    listing = listed(msg_file("I", attachment("report.doc", doc)))
    assert [e.path for e in listing.entries] == ["invoice.msg/report.doc"] and not listing.limits


def test_the_attach_method_is_read_whatever_the_order_of_the_entries() -> None:
    # An upper-case object storage sorts before __properties_version1.0: the method was not read yet when it was met.
    node = {"__properties_version1.0": b"\0" * 8 + struct.pack("<2HLLL", 0x0003, 0x3705, 0, 5, 0), "__substg1.0_3001001F": unicode("Re"),
            "__SUBSTG1.0_3701000D": {"__attach_version1.0_#00000000": attachment("evil.exe", PE)}}
    assert "invoice.msg/Re/evil.exe" in [e.path for e in listed(msg_file("Fwd", node)).entries]


def test_an_office_97_document_olefile_cannot_read_is_noted_not_held() -> None:
    # Every Compound File a .msg or winmail.dat carries is probed for a Packager stream: a legitimate .doc with a
    # defect olefile reads strictly must not quarantine the message; one named otherwise may be a Packager object.
    damaged = compound_file({"WordDocument": b"\0" * 5000})[:1200]
    doc = listed(msg_file("I", attachment("report.doc", damaged)))
    assert not doc.limits and doc.errors[0].startswith("invoice.msg/report.doc: unreadable embedded object (")
    other = listed(msg_file("I", attachment("Package", damaged)))
    assert other.limits[0].startswith("invoice.msg/Package: unreadable embedded object (")


# --- sixth review: false positives, and the object leniency --------------------------------------------------------
def test_a_packager_object_s_source_path_is_not_judged(check: object) -> None:
    # tnefparse's MAPI_OBJECT.tnef: a PDF packaged with SHELL32.DLL (its icon's source) as its source path was rejected.
    temporary = b"C:\\TEMP\\Temp\\ASNEWS~1.PDF\0"
    body = (struct.pack("<H", 2) + b"ASNEWS.PDF\0C:\\WINNT\\system32\\SHELL32.DLL\0" + struct.pack("<2H", 0, 3)
            + struct.pack("<L", len(temporary)) + temporary + struct.pack("<L", len(PDF)) + PDF
            + b"".join(struct.pack("<L", len(n)) + n.encode("utf-16-le") for n in ("ASNEWS.PDF", "C:\\TEMP\\Temp\\ASNEWS~1.PDF", "SHELL32.DLL")))
    obj = {"\x01Ole10Native": struct.pack("<L", len(body)) + body}
    listing = listed(msg_file("I", attachment(None, obj=obj, display_name="Untitled Attachment")))
    assert sorted(e.path for e in listing.entries) == ["invoice.msg/ASNEWS.PDF", "invoice.msg/ASNEWS~1.PDF", "invoice.msg/Untitled Attachment"]
    assert hits_of(check, message(msg_file("I", attachment(None, obj=obj, display_name="Untitled Attachment")))) == {}


def test_a_small_compound_file_with_more_fat_sectors_than_it_needs_is_read(check: object) -> None:
    # An encrypted 14 KB workbook has three FAT sectors where one maps it: it was held as unreadable.
    encrypted = compound_file({"EncryptionInfo": b"\0" * 200, "EncryptedPackage": b"\0" * 9000}, extra_fat=2)
    listing = listed(msg_file("I", attachment("budget.xlsx", encrypted)))
    assert not listing.limits and not listing.errors
    assert hits_of(check, message(msg_file("I", attachment("budget.xlsx", encrypted)))).keys() <= {MISMATCH}


def test_an_ole_object_named_as_a_document_that_cannot_be_read_is_still_held() -> None:
    damaged = packager_file("evil.exe", PE)[:1200]
    node = attachment("report.doc", damaged)
    node["__properties_version1.0"] = b"\0" * 8 + struct.pack("<2HLLL", 0x0003, 0x3705, 0, 6, 0)
    assert listed(msg_file("I", node)).limits[0].startswith("invoice.msg/report.doc: unreadable embedded object (")
    from tests.unit.test_attachments_tnef import file_attachment, tnef
    storage = bytes.fromhex("0b00000000000000c000000000000046") + damaged
    tnef_listing = list_archive("winmail.dat", io.BytesIO(tnef(file_attachment("report.doc", storage))), "tnef", Limits())
    assert any(note.startswith("winmail.dat/report.doc: unreadable embedded object (") for note in tnef_listing.limits)

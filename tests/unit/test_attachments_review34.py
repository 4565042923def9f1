"""Review 34: uuencoded files as archives, objects past an Office document's parts, more banned extensions,
encrypted archives in archives, unnamed script parts, and text that starts "MZ"."""

from __future__ import annotations

import base64
import binascii
import io
import re
import zipfile
from pathlib import Path

import pytest

from milterd.checks.attachments import BANNED, ENCRYPTED, LIMIT, MISMATCH, TYPE_EXTENSIONS, AttachmentChecks, AttachmentPolicy
from milterd.content.archives import Limits, archive_kind, archive_kind_of, list_archive
from milterd.content.filetypes import sniff
from milterd.content.mimeparts import SCRIPT_TEXT_TYPES, attachments
from milterd.content.uuencode import encoded_head
from milterd.message.model import Action, Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of, zipped
from tests.harness.outlookmsg import compound_file, ole10native

#: A minimal PE start: a DOS header whose e_lfanew (0x3C) points at "PE\0\0".
PE = b"MZ\x90\x00" + bytes(56) + (64).to_bytes(4, "little") + b"PE\x00\x00" + bytes(236)
DOCX = b"application/vnd.openxmlformats-officedocument.wordprocessingml.document"


@pytest.fixture
def check(tmp_path: Path) -> AttachmentPolicy:
    return attachment_check(tmp_path, "archive_max_members = 20\n")


def judged(check: AttachmentPolicy, *parts: bytes) -> dict[str, tuple[Action | None, str]]:
    raw = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhi\r\n')
    raw += b"".join(b"--zz\r\n" + part + b"\r\n" for part in parts) + b"--zz--\r\n"
    return {h.symbol: (h.action, h.detail) for h in check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))}


def attached(name: str, data: bytes, ctype: bytes = b"application/octet-stream") -> bytes:
    return (b"Content-Type: " + ctype + b'\r\nContent-Disposition: attachment; filename="' + name.encode()
            + b'"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + base64.encodebytes(data))


def uu(name: bytes, data: bytes) -> bytes:
    lines = [binascii.b2a_uu(data[i:i + 45]) for i in range(0, len(data), 45)]
    return b"begin 644 " + name + b"\r\n" + b"".join(lines).replace(b"\n", b"\r\n") + b"`\r\nend\r\n"


def docx_with_packager(parts: int, objects: int = 1) -> bytes:
    obj = compound_file({"\x01Ole10Native": ole10native("evil.exe", "C:\\Users\\x\\evil.exe", PE), "\x01CompObj": b"\0" * 20})
    files = {"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"}
    files.update({f"word/media/image{i}.png": b"\x89PNG\r\n\x1a\n" for i in range(parts)})
    files.update({f"word/embeddings/oleObject{i + 1}.bin": obj for i in range(objects)})
    return zipped(files)


def encrypted_zip(files: dict[str, bytes]) -> bytes:
    """A stored zip of *files* each flagged encrypted (zipfile writes no encryption: the flag bit set afterwards)."""
    data = bytearray(zipped(files, zipfile.ZIP_STORED))
    for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        for found in re.finditer(re.escape(signature), bytes(data)):
            data[found.start() + flags] |= 1
    return bytes(data)


# --- 1: a uuencoded file is an archive of the files it holds ----------------------------------------------------------

@pytest.mark.parametrize("name", ["invoice.uue", "files.uu", "INVOICE.XXE", "notes.txt"])
def test_a_uuencoded_attachment_is_judged_by_the_files_it_holds(check: AttachmentPolicy, name: str) -> None:
    found = judged(check, attached(name, uu(b"invoice.exe", PE)))
    assert found[BANNED] == (Action.REJECT, f"{name}/invoice.exe: banned extension .exe")


def test_a_uuencoded_zip_member_is_judged_by_the_files_it_holds(check: AttachmentPolicy) -> None:
    found = judged(check, attached("a.zip", zipped({"files.uue": uu(b"invoice.exe", PE)}), b"application/zip"))
    assert found[BANNED] == (Action.REJECT, "a.zip/files.uue/invoice.exe: banned extension .exe")


def test_a_uuencoded_file_is_an_archive_by_its_name_or_first_line() -> None:
    assert archive_kind("invoice.uue", b"") == archive_kind("a.UU", b"") == archive_kind("a.xxe", b"") == "uue"
    assert archive_kind_of(["notes.txt"], b"Files:\r\nbegin 644 invoice.exe\r\nM") == "uue"
    assert archive_kind_of(["notes.txt"], b"we begin 644 reports tomorrow") is None
    assert archive_kind_of(["a.zip"], b"begin 644 x.txt\r\n") == "zip"  # a zip by its name stays one
    assert encoded_head(b"=ybegin line=128 size=3 name=a.exe\r\n") and not encoded_head(b"hello")


def test_a_uuencoded_file_lists_its_files_and_the_archives_they_are() -> None:
    data = uu(b"readme.txt", b"hello") + uu(b"inner.zip", zipped({"evil.scr": PE}))
    listing = list_archive("files.uue", io.BytesIO(data), "uue", Limits())
    assert [e.path for e in listing.entries] == ["files.uue/readme.txt", "files.uue/inner.zip", "files.uue/inner.zip/evil.scr"]
    assert listing.limits == [] and listing.entries[-1].head == PE


# --- 2: objects past an Office document's parts budget ----------------------------------------------------------------

def test_a_packager_object_past_the_parts_budget_is_still_opened(check: AttachmentPolicy) -> None:
    found = judged(check, attached("report.docx", docx_with_packager(30), DOCX))
    assert found[BANNED] == (Action.REJECT, "report.docx/word/embeddings/oleObject1.bin/evil.exe: banned extension .exe")


def test_objects_past_what_is_opened_past_the_parts_budget_are_a_limit() -> None:
    listing = list_archive("report.docx", io.BytesIO(docx_with_packager(10, objects=10)), "zip", Limits(max_members=5))
    assert "report.docx/word/embeddings/oleObject1.bin/evil.exe" in [e.path for e in listing.entries]
    assert listing.limits and all("past the 5 objects opened past the parts' budget" in note for note in listing.limits)


# --- 3: more banned extensions by default -----------------------------------------------------------------------------

@pytest.mark.parametrize("extension", ["msc", "xll", "settingcontent-ms", "wsc", "appref-ms", "library-ms", "searchConnector-ms",
                                       "appinstaller", "hlp", "diagcab"])
def test_windows_launchers_are_banned_by_default(check: AttachmentPolicy, extension: str) -> None:
    assert extension.lower() in AttachmentChecks().banned_extensions
    found = judged(check, attached(f"invoice.{extension}", b"<x/>"))
    assert found[BANNED] == (Action.REJECT, f"invoice.{extension}: banned extension .{extension.lower()}")


# --- 4: an encrypted archive in an archive is a limit -----------------------------------------------------------------

@pytest.mark.parametrize("padding", [b"", bytes(70_000)])  # after 64 KB zipfile finds no directory: libarchive lists it
def test_an_encrypted_archive_or_message_member_is_a_limit(padding: bytes) -> None:
    data = encrypted_zip({"inner.zip": b"x" * 20, "notes.txt": b"x", "fwd.eml": b"y"}) + padding
    listing = list_archive("a.zip", io.BytesIO(data), "zip", Limits())
    assert listing.encrypted == ["a.zip/inner.zip", "a.zip/notes.txt", "a.zip/fwd.eml"]
    assert listing.limits == ["a.zip/inner.zip: an encrypted archive or message, never looked into",
                              "a.zip/fwd.eml: an encrypted archive or message, never looked into"]


def test_an_encrypted_archive_member_is_held(check: AttachmentPolicy) -> None:
    found = judged(check, attached("invoice.zip", encrypted_zip({"inner.zip": b"x" * 20}), b"application/zip"))
    assert found[LIMIT][0] == Action.QUARANTINE and found[ENCRYPTED] == (None, "invoice.zip/inner.zip: encrypted")


# --- 5: an unnamed script part ----------------------------------------------------------------------------------------

def test_the_script_text_types_are_those_a_client_names_by_type() -> None:
    assert {ctype for ctype in TYPE_EXTENSIONS if ctype.startswith("text/")} <= SCRIPT_TEXT_TYPES


@pytest.mark.parametrize("ctype", [b"text/javascript", b"text/vbscript"])
def test_an_unnamed_script_part_is_judged(check: AttachmentPolicy, ctype: bytes) -> None:
    part = b"Content-Type: " + ctype + b"\r\nContent-Disposition: attachment\r\n\r\nWScript.Echo(1)\r\n"
    found = judged(check, part)
    assert found[BANNED][0] == Action.REJECT and f"unnamed {ctype.decode()} part" in found[BANNED][1]


def test_unnamed_text_parts_are_still_bodies() -> None:
    raw = (b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\n'
           b"hi\r\n--zz\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--zz\r\nContent-Type: text/javascript\r\n\r\nx()\r\n--zz--\r\n")
    assert [(a.filename, a.content_type) for a in attachments([raw])] == [("", "text/javascript")]


# --- 6: "MZ" alone is no executable -----------------------------------------------------------------------------------

def test_text_that_starts_mz_is_no_executable(check: AttachmentPolicy) -> None:
    assert sniff(b"MZ,Mozambique,1\r\nZA,South Africa,2\r\n") is None
    assert sniff(b"MZ\r\nDE\r\nFR\r\n" + b"GB\r\n" * 200) is None  # 800 bytes: e_lfanew is text, past what Windows reads
    assert MISMATCH not in judged(check, attached("data.csv", b"MZ,Mozambique,1\r\nZA,South Africa,2\r\n", b"text/csv"))


def test_an_executable_is_still_one() -> None:
    assert sniff(PE) == "pe" and sniff(PE[:64] + bytes(448)) is None  # no "PE\0\0" where it points
    far = bytearray(b"MZ" + bytes(510))
    far[0x3C:0x40] = (0x1000).to_bytes(4, "little")  # a long DOS stub: the signature past the head read
    assert sniff(bytes(far)) == "pe" and sniff(bytes(far[:200])) is None  # a whole file of 200 bytes holds none
    tiny = bytearray(PE[:64])
    tiny[0x3C:0x40], tiny[4:8] = (4).to_bytes(4, "little"), b"PE\x00\x00"  # headers overlapping the DOS header
    assert sniff(bytes(tiny)) == "pe"

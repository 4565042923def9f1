"""A second look at review 34: a uuencoded file compressed (``files.uue.gz``), objects past an Office document's
parts named as pictures, uuencoded files of short lines, xxencoded files, executables whose PE header is 16 MB on or
more, encrypted Outlook messages and split volumes in archives, and the late objects' limit's wording."""

from __future__ import annotations

import binascii
import bz2
import gzip
import io
import lzma
from pathlib import Path
from typing import Callable

import pytest

from milterd.checks.attachments import BANNED, LIMIT, MISMATCH, UNREADABLE, AttachmentPolicy
from milterd.content import archives
from milterd.content.archives import Limits, list_archive
from milterd.content.filetypes import sniff
from milterd.content.uuencode import encoded_files, uudecode_line, xxdecode_line
from milterd.message.model import Action
from tests.harness.attachments import attachment_check
from tests.harness.messages import zipped
from tests.harness.outlookmsg import compound_file, ole10native

from .test_attachments_review34 import attached, encrypted_zip, judged, uu
from .test_office_packages import ole1, rtf

#: A minimal PE start: a DOS header whose e_lfanew (0x3C) points at "PE\0\0".
PE = b"MZ\x90\x00" + bytes(56) + (64).to_bytes(4, "little") + b"PE\x00\x00" + bytes(236)
JS = b'var s = new ActiveXObject("WScript.Shell"); s.Run("calc.exe");\r\n'
DOCX = b"application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XX = b"+-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

needs_libarchive = pytest.mark.skipif(archives.libarchive is None, reason="libarchive-c is not installed")


@pytest.fixture
def check(tmp_path: Path) -> AttachmentPolicy:
    return attachment_check(tmp_path, "archive_max_members = 20\narchive_process = false\n")  # unit tests fork no listing child


def xx_line(data: bytes) -> bytes:
    """One xxencoded line of *data* (45 bytes at most): its length, then each 3 bytes as 4 characters of :data:`XX`."""
    padded = data + bytes(-len(data) % 3)
    values = (int.from_bytes(padded[i:i + 3], "big") for i in range(0, len(padded), 3))
    return bytes([XX[len(data)]]) + b"".join(bytes(XX[(value >> shift) & 63] for shift in (18, 12, 6, 0)) for value in values)


def xx(name: bytes, data: bytes) -> bytes:
    lines = [xx_line(data[i:i + 45]) for i in range(0, len(data), 45)]
    return b"\r\n".join([b"begin 644 " + name, *lines, b"+", b"end", b""])


def padded_docx(name: str, data: bytes, parts: int = 30) -> bytes:
    """A .docx of *parts* pictures, then the part *name* holding *data*."""
    files = {"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"}
    files.update({f"word/media/image{i}.png": b"\x89PNG\r\n\x1a\n" for i in range(parts)})
    files[name] = data
    return zipped(files)


PACKAGER = compound_file({"\x01Ole10Native": ole10native("evil.exe", "C:\\Users\\x\\evil.exe", PE), "\x01CompObj": b"\0" * 20})


# --- 1: a uuencoded file compressed is read as the uuencoded file it is -----------------------------------------------

@needs_libarchive
@pytest.mark.parametrize(("suffix", "compress"), [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)])
def test_a_compressed_uuencoded_file_is_judged_by_the_files_it_holds(check: AttachmentPolicy, suffix: str,
                                                                    compress: Callable[[bytes], bytes]) -> None:
    found = judged(check, attached(f"files.uue{suffix}", compress(uu(b"invoice.js", JS))))
    assert found[BANNED] == (Action.REJECT, f"files.uue{suffix}/files.uue/invoice.js: banned extension .js")


@needs_libarchive
def test_a_gzip_file_is_decompressed_once_not_uudecoded_too() -> None:
    listing = list_archive("notes.txt.gz", io.BytesIO(gzip.compress(uu(b"invoice.exe", PE))), "gzip", Limits())
    assert [e.path for e in listing.entries] == ["notes.txt.gz/notes.txt", "notes.txt.gz/notes.txt/invoice.exe"]
    assert listing.entries[0].head.startswith(b"begin 644 invoice.exe") and listing.entries[1].head == PE


# --- 2: an object past the parts' budget, by its first bytes ----------------------------------------------------------

@pytest.mark.parametrize("name", ["word/media/image999.png", "word/media/obj.bin", "word/activeX/activeX1.bin"])
def test_an_object_past_the_parts_budget_is_opened_whatever_its_name(check: AttachmentPolicy, name: str) -> None:
    found = judged(check, attached("report.docx", padded_docx(name, PACKAGER), DOCX))
    assert found[BANNED] == (Action.REJECT, f"report.docx/{name}/evil.exe: banned extension .exe")


def test_a_zip_or_rtf_past_the_parts_budget_is_opened_whatever_its_name() -> None:
    docx = padded_docx("word/media/image998.png", zipped({"evil.scr": PE}))
    listing = list_archive("report.docx", io.BytesIO(docx), "zip", Limits(max_members=5))
    assert "report.docx/word/media/image998.png/evil.scr" in [e.path for e in listing.entries]
    obj = rtf(ole1("Package", ole10native("evil.exe", "C:\\x\\evil.exe", PE)[4:]))
    listing = list_archive("report.docx", io.BytesIO(padded_docx("word/media/image997.png", obj)), "zip", Limits(max_members=5))
    assert "report.docx/word/media/image997.png/Package/evil.exe" in [e.path for e in listing.entries]


def test_pictures_past_the_parts_budget_stay_a_note(check: AttachmentPolicy) -> None:
    found = judged(check, attached("report.docx", padded_docx("word/media/last.png", b"\x89PNG\r\n\x1a\n"), DOCX))
    assert found.keys() == {UNREADABLE}


# --- 3: a uuencoded file's lines are charged, however short -----------------------------------------------------------

def test_short_lines_of_a_uuencoded_file_are_charged_to_the_budget() -> None:
    data = b"begin 644 x.bin\n" + b"a\n" * 100_000  # 200 KB decoding to 100 KB of NULs: 100,000 steps of Python
    listing = list_archive("files.uue", io.BytesIO(data), "uue", Limits(max_size=1024 * 1024))
    assert listing.limits == [f"files.uue: would decompress past {1024 * 1024} bytes, the rest not looked at"]


def test_full_lines_of_a_uuencoded_file_cost_what_they_decode_to() -> None:
    payload = bytes(range(256)) * 2000  # 512 KB: 11,378 lines
    listing = list_archive("files.uue", io.BytesIO(uu(b"x.bin", payload)), "uue", Limits(max_size=1024 * 1024))
    assert listing.limits == [] and [e.path for e in listing.entries] == ["files.uue/x.bin"]
    assert listing.decompressed < len(payload) * 1.05


@pytest.mark.parametrize("line", [b"M" + b"a" * 60 + b"\r\n", b"#86)Cxx\n", b"M\x00\x01\r\n", b"a\n"])
def test_a_line_no_uuencoder_wrote_is_read_as_uudecode_reads_it(line: bytes) -> None:
    cut = line.rstrip(b"\r\n")[:(((line[0] - 32) & 63) * 4 + 5) // 3]
    try:
        expected = binascii.a2b_uu(cut)
    except binascii.Error:
        expected = b""
    assert uudecode_line(line) == expected


# --- 4: xxencoded files -------------------------------------------------------------------------------------------------

def test_an_xxencoded_line_is_decoded() -> None:
    assert xxdecode_line(xx_line(b"hello world") + b"\r\n") == b"hello world"
    assert xxdecode_line(b"+\r\n") == b"" and xxdecode_line(b"h!!!\r\n") == b""


@pytest.mark.parametrize("name", ["invoice.xxe", "invoice.uue"])
def test_an_xxencoded_zip_is_judged_by_what_it_holds(check: AttachmentPolicy, name: str) -> None:
    found = judged(check, attached(name, xx(b"docs.zip", zipped({"evil.exe": PE}))))
    assert found == {BANNED: (Action.REJECT, f"{name}/docs.zip/evil.exe: banned extension .exe")}


def test_xxencoded_and_uuencoded_files_in_one_text_are_each_decoded() -> None:
    text = xx(b"a.bin", PE) + uu(b"b.bin", PE)
    assert [(f.name, f.data.read()) for f in encoded_files([text], 1024, 1 << 20, 10)] == [("a.bin", PE), ("b.bin", PE)]


def test_an_xxencoded_executable_named_as_a_pdf_is_a_mismatch(check: AttachmentPolicy) -> None:
    assert found_mismatch(judged(check, attached("invoice.xxe", xx(b"invoice.pdf", PE))))


def found_mismatch(found: dict[str, tuple[Action | None, str]]) -> bool:
    return found.get(MISMATCH, (None, ""))[1] == "invoice.xxe/invoice.pdf: declared .pdf, content is a Windows executable (PE)"


# --- 5: a PE header 16 MB on or more --------------------------------------------------------------------------------------

def far_pe(offset: int, filler: int = 0) -> bytes:
    """The first 512 bytes of an executable whose PE header is at *offset*, its DOS header filled with *filler*."""
    return b"MZ" + bytes([filler]) * 0x3A + offset.to_bytes(4, "little") + bytes([filler]) * 448


@pytest.mark.parametrize("offset", [0x1000, 0xFFFFF0, 0x1000000, 0x2000000, 0x0A0D4247, 0xFFFFFF0])
def test_an_executable_whose_pe_header_is_far_is_still_one(offset: int) -> None:
    assert sniff(far_pe(offset)) == "pe"


def test_text_is_still_no_executable() -> None:
    assert sniff(b"MZ,Mozambique,1\r\nZA,South Africa,2\r\n" + b"ZW,Zimbabwe,3\r\n" * 40) is None
    assert sniff(b"MZ\r\nDE\r\nFR\r\n" + b"GB\r\n" * 200) is None  # e_lfanew 168 MB: "GB\r\n"
    assert sniff(b"MZ\tDE\tFR\t" + b"GB\t\t" * 200) is None
    assert sniff(far_pe(0x10000000)) is None  # past what Windows' loader reads
    assert sniff(far_pe(0x05000000, filler=0x41)) == "pe"  # no NUL, but 0x05 at 0x3F, which no text holds
    assert sniff(far_pe(0x0A414141, filler=0x41)) is None  # no NUL, a line feed at 0x3F: text may be so


# --- 6: encrypted Outlook messages and volumes in archives --------------------------------------------------------------

@pytest.mark.parametrize("name", ["fwd.msg", "fwd.oft", "x.7z.001", "x.r00", "x.z01", "X.R12"])
def test_an_encrypted_message_or_volume_in_an_archive_is_a_limit(check: AttachmentPolicy, name: str) -> None:
    found = judged(check, attached("a.zip", encrypted_zip({name: b"x" * 20}), b"application/zip"))
    assert found[LIMIT] == (Action.QUARANTINE, f"a.zip/{name}: an encrypted archive or message, never looked into")


def test_an_encrypted_file_of_no_archive_is_no_limit(check: AttachmentPolicy) -> None:
    found = judged(check, attached("a.zip", encrypted_zip({"data.bin": b"x" * 20, "2024.1234": b"y"}), b"application/zip"))
    assert LIMIT not in found


# --- 7: the late objects' limit says which bound --------------------------------------------------------------------------

def test_objects_past_the_late_allowance_say_so(check: AttachmentPolicy) -> None:
    files = {"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"}
    files.update({f"word/media/image{i}.png": b"\x89PNG" for i in range(30)})
    files.update({f"word/embeddings/oleObject{i}.bin": PACKAGER for i in range(25)})
    found = judged(check, attached("report.docx", zipped(files), DOCX))
    # Each object and the file it carries: ten of them are the 20 members opened past the parts' budget.
    assert found[LIMIT] == (Action.QUARANTINE,
                            "report.docx/word/embeddings/oleObject10.bin: past the 20 objects opened past the parts' budget, the rest not looked at")


# --- third look ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("garbage", [b"", b"x", b"abc"])
def test_garbage_past_a_uuencoded_line_s_length_does_not_make_it_xx(check: AttachmentPolicy, garbage: bytes) -> None:
    # uudecode reads a line for the length its first character says: a lower-case letter after it switched the whole
    # file to xxencode's alphabet, and the zip it held (evil.exe) was read as nothing.
    payload = zipped({"evil.exe": PE})
    lines = [binascii.b2a_uu(payload[i:i + 45]).rstrip(b"\n") for i in range(0, len(payload), 45)]
    lines[0] += garbage
    text = b"begin 644 scan.pdf\r\n" + b"\r\n".join(lines) + b"\r\n`\r\nend\r\n"
    assert [found.data.read() for found in encoded_files([text], 1 << 20, 1 << 20, 10)] == [payload]
    hits = judged(check, b"Content-Type: text/plain\r\n\r\nsee attached\r\n\r\n" + text)
    assert hits[BANNED][0] == Action.REJECT and "scan.pdf/evil.exe" in hits[BANNED][1]


def test_an_xxencoded_file_that_starts_with_nul_bytes_is_read_as_xx() -> None:
    # A quick look at the third: its first line ("h+++…") is also a line uudecode reads, so it was read as uu.
    data = bytes(16) + b"payload"
    lines = [xx_line(data[i:i + 45]) for i in range(0, len(data), 45)]
    text = b"begin 644 zeros.bin\r\n" + b"\r\n".join(lines) + b"\r\n+\r\nend\r\n"
    assert [found.data.read() for found in encoded_files([text], 1 << 20, 1 << 20, 10)] == [data]

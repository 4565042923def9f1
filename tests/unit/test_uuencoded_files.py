"""Files uuencoded or yEnc-encoded in a message's text, and parts sent x-uuencode, are decoded and judged as
attachments are: a zip with an .exe uuencoded in a plain text body was judged by its name alone, and delivered."""

from __future__ import annotations

import base64
import binascii
import gzip
from pathlib import Path

import pytest

from milterd.checks.attachments import BANNED, LIMIT, MAX_ENCODED_FILES, MIME_LIMIT, MISMATCH
from milterd.content.mimeparts import attachments
from milterd.content.uuencode import encoded_files, encoded_names, uudecode_line, ydecode_line
from milterd.message.model import Action, Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of, zipped

PE = b"MZ\x90\x00" + bytes(56) + (64).to_bytes(4, "little") + b"PE\x00\x00" + bytes(236)  # e_lfanew at 0x3C points at "PE\0\0"


def uuencoded(name: bytes, data: bytes, eol: bytes = b"\r\n") -> bytes:
    lines = b"".join(binascii.b2a_uu(data[i:i + 45]).replace(b"\n", eol) for i in range(0, len(data), 45))
    return b"begin 644 " + name + eol + lines + b"`" + eol + b"end" + eol


def yencoded(name: bytes, data: bytes) -> bytes:
    """yEnc: each byte plus 42, NUL, LF, CR and "=" escaped as "=" and the byte plus 64; lines of 128."""
    out = bytearray()
    for byte in data:
        shifted = (byte + 42) % 256
        out += bytes((0x3D, (shifted + 64) % 256)) if shifted in (0, 10, 13, 0x3D) else bytes((shifted,))
    lines = b"\r\n".join(bytes(out[i:i + 128]) for i in range(0, len(out), 128))
    return b"=ybegin line=128 size=%d name=" % len(data) + name + b"\r\n" + lines + b"\r\n=yend size=%d\r\n" % len(data)


def decoded(text: bytes, limit: int = 1 << 20, most: int = 10, chunk: int = 65536) -> list[tuple[str, bytes, bool]]:
    pieces = [text[i:i + chunk] for i in range(0, len(text), chunk)]
    return [(f.name, f.data.read(), f.truncated) for f in encoded_files(pieces, 1024, limit, most)]


@pytest.fixture
def check(tmp_path: Path) -> object:
    return attachment_check(tmp_path)


def hits(check: object, raw: bytes) -> dict[str, tuple[str, object]]:
    found = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))  # type: ignore[attr-defined]
    return {h.symbol: (h.detail, h.action) for h in found}


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 7, PE])
@pytest.mark.parametrize("chunk", [7, 65536])
def test_files_decode_to_what_was_encoded(data: bytes, chunk: int) -> None:
    text = b"Hello,\r\n\r\n" + uuencoded(b"a.bin", data) + b"and\r\n" + yencoded(b"b.bin", data) + b"\nbye\r\n" + uuencoded(b"c.bin", data, b"\n")
    assert decoded(text, chunk=chunk) == [("a.bin", data, False), ("b.bin", data, False), ("c.bin", data, False)]


def test_lines_are_read_leniently() -> None:
    line = binascii.b2a_uu(b"hello world").rstrip(b"\n")
    assert uudecode_line(line + b"garbage!!\r\n") == b"hello world"  # what a broken encoder adds past the length
    assert uudecode_line(b"`\r\n") == uudecode_line(b"") == b""
    assert uudecode_line(b"M\x00\x01\r\n") == b""  # nothing readable: nothing, no error
    assert ydecode_line(b"=") == b""


def test_decoding_is_bounded() -> None:
    text = uuencoded(b"big.bin", bytes(10_000)) + uuencoded(b"next.bin", b"abc")
    assert decoded(text, limit=100) == [("big.bin", bytes(100), True), ("next.bin", b"abc", False)]
    many = b"".join(uuencoded(b"f%d.txt" % i, b"x") for i in range(20))
    assert [name for name, _, _ in decoded(many, most=5)] == [f"f{i}.txt" for i in range(5)]
    # A file the text ends in is given as far as it goes; a line with no end for megabytes is read in pieces.
    assert decoded(b"begin 644 cut.bin\r\n" + binascii.b2a_uu(b"abc")) == [("cut.bin", b"abc", False)]
    assert decoded(b"begin 644 long.bin\r\nM" + b"`" * 300_000) == [("long.bin", bytes(45), False)]


def test_fix_a_zip_uuencoded_in_a_plain_text_body_is_opened(check: object) -> None:
    raw = b"From: a@example.org\r\nSubject: invoice\r\n\r\nPlease see the invoice.\r\n\r\n" + uuencoded(b"invoice.zip", zipped({"evil.exe": PE}))
    assert hits(check, raw)[BANNED] == ("invoice.zip/evil.exe: banned extension .exe", Action.REJECT)
    yenc = b"From: a@example.org\r\nSubject: invoice\r\n\r\nSee\r\n" + yencoded(b"invoice.zip", zipped({"run.js": b"WScript.Echo(1)"}))
    assert hits(check, yenc)[BANNED] == ("invoice.zip/run.js: banned extension .js", Action.REJECT)


def test_fix_an_executable_uuencoded_under_another_name_is_told_by_its_content(check: object) -> None:
    raw = b"Subject: scan\r\n\r\n" + uuencoded(b"scan.pdf", PE)
    assert hits(check, raw)[MISMATCH][0] == "scan.pdf: declared .pdf, content is a Windows executable (PE)"


def test_fix_a_uuencoded_file_in_an_attached_message_is_opened(check: object) -> None:
    # Encoded in base64 (as Exchange Online sends one), the attached message's text is not the message's own.
    inner = base64.encodebytes(b"Subject: fwd\r\n\r\n" + uuencoded(b"docs.zip", zipped({"evil.exe": PE}))).replace(b"\n", b"\r\n")
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
           b"--b\r\nContent-Type: message/rfc822; name=fwd.eml\r\nContent-Transfer-Encoding: base64\r\n\r\n" + inner + b"--b--\r\n")
    assert hits(check, raw)[BANNED] == ("fwd.eml/docs.zip/evil.exe: banned extension .exe", Action.REJECT)


def test_fix_a_part_sent_x_uuencode_is_decoded() -> None:
    payload = gzip.compress(PE)
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
           b"--b\r\nContent-Type: application/gzip; name=\"invoice.gz\"\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
           + uuencoded(b"invoice.gz", payload) + b"trailing words\r\n--b--\r\n")
    found = [(a.filename, a.data.read()) for a in attachments([raw])]
    assert found == [("invoice.gz", payload)]


def test_a_truncated_uuencoded_archive_is_a_limit(tmp_path: Path) -> None:
    check = attachment_check(tmp_path, 'max_attachment_size = "1K"')
    raw = b"Subject: x\r\n\r\n" + uuencoded(b"big.zip", zipped({"a.txt": bytes(range(256)) * 40}, compression=0))
    assert hits(check, raw)[LIMIT][0] == "big.zip: larger than max_attachment_size 1024: members not looked at"


def test_fix_a_begin_line_padded_past_its_bound_is_still_read(check: object) -> None:
    # Thunderbird reads the name to the line's end; Windows drops the trailing blanks when it saves the file.
    padded = uuencoded(b"evil.exe" + b" " * 1100, PE)
    assert hits(check, b"Subject: x\r\n\r\n" + padded)[BANNED] == ("evil.exe: banned extension .exe", Action.REJECT)
    inside = uuencoded(b"invoice.zip" + b" " * 1100, zipped({"evil.exe": PE}))
    assert hits(check, b"Subject: x\r\n\r\n" + inside)[BANNED] == ("invoice.zip/evil.exe: banned extension .exe", Action.REJECT)
    yenc = b"Subject: x\r\n\r\n=ybegin line=128 size=2 name=run.js" + b"\t" * 1100 + b"\r\nxx\r\n=yend size=2\r\n"
    assert hits(check, yenc)[BANNED] == ("run.js: banned extension .js", Action.REJECT)


def test_fix_findings_of_many_uuencoded_members_are_gathered_in_linear_time(check: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from milterd.checks import attachments as module

    compared = [0]
    real = module.Finding.__eq__

    def counted(self: object, other: object) -> bool:
        compared[0] += 1
        return bool(real(self, other))  # type: ignore[arg-type]

    monkeypatch.setattr(module.Finding, "__eq__", counted)
    members = {f"k{i:04}.exe": b"" for i in range(500)}
    raw = b"Subject: x\r\n\r\n" + uuencoded(b"a.zip", zipped(members)) + uuencoded(b"b.zip", zipped({f"b{k}": v for k, v in members.items()}))
    assert len(hits(check, raw)[BANNED][0]) == 300  # the detail's bound: every member found
    # Each finding was looked for in the list of those before it: 500,000 comparisons for 1,000 members (8 zips of
    # 2,000 members took 13 s of a worker).
    assert compared[0] < 10_000, compared[0]


def test_fix_an_x_uuencode_part_is_decoded_from_its_begin_line() -> None:
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: application/pdf; name=\"scan.pdf\"\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
           b"SEE THE FILE BELOW:\r\n" + uuencoded(b"scan.pdf", PE) + b"--b--\r\n")
    # The words before "begin" were decoded as data in front of the file (Thunderbird skips them): its first bytes hid.
    assert [a.data.read() for a in attachments([raw])] == [PE]


@pytest.mark.parametrize("ending", [b"", b"END of notes\r\n", b" indented words\r\n"])
def test_fix_a_file_ends_where_thunderbird_ends_it(check: object, ending: bytes) -> None:
    notes = uuencoded(b"notes.txt", b"hello").replace(b"`\r\nend\r\n", b"")  # no end line of its own
    raw = b"Subject: x\r\n\r\n" + notes + ending + uuencoded(b"docs.zip", zipped({"evil.exe": PE}))
    # The next begin line was decoded as the first file's data: docs.zip's content never judged.
    assert hits(check, raw)[BANNED] == ("docs.zip/evil.exe: banned extension .exe", Action.REJECT)
    assert [name for name, _, _ in decoded(raw)] == ["notes.txt", "docs.zip"]


def test_fix_files_past_the_bound_under_repeated_names_are_a_limit(check: object) -> None:
    padding = uuencoded(b"a.txt", b"x") * MAX_ENCODED_FILES  # one name: a thousand files
    raw = b"Subject: x\r\n\r\n" + padding + uuencoded(b"docs.zip", zipped({"evil.exe": PE}))
    # The names were counted, the files decoded to the bound: docs.zip, the 1,001st file, went unjudged and unsaid.
    assert hits(check, raw)[MIME_LIMIT][0] == "message: more than 1000 uuencoded files: the rest not looked at"


def test_fix_a_lone_cr_ends_a_line(check: object) -> None:
    raw = b"Subject: x\r\n\r\nHi,\r\n\r\n" + uuencoded(b"evil.exe", PE, b"\r") + b"\r\n"
    assert hits(check, raw)[BANNED] == ("evil.exe: banned extension .exe", Action.REJECT)
    assert encoded_names([b"begin 644 docs.zip\rM" + b"!" * 60 + b"\r"], MAX_ENCODED_FILES) == ["docs.zip"]


def test_fix_a_begin_line_padded_across_a_chunk_s_end_is_found() -> None:
    line = b"begin 644 " + b" " * 5000 + b"docs.zip\r\n"
    text = b"x" * (65536 - 3000) + b"\r\n" + line + b"M!!!\r\n"
    for size in (65536, 4096):
        assert encoded_names([text[i:i + size] for i in range(0, len(text), size)], MAX_ENCODED_FILES) == ["docs.zip"]


def test_fix_an_x_uuencode_part_ends_only_at_an_end_line_as_thunderbird_reads_it(check: object) -> None:
    # Thunderbird's decoder of such a part ends it at "end" alone on its line: after "end " (a blank after it) it
    # decodes on, and the zip uuencoded after the notes is in the file it saves (a zip opens from its end).
    notes, archive = uuencoded(b"notes.txt", b"hello\r\n"), zipped({"evil.exe": PE})
    tricked = notes.replace(b"\r\nend\r\n", b"\r\nend \r\n") + uuencoded(b"x", archive).split(b"\r\n", 1)[1]
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: application/octet-stream; name=\"notes.zip\"\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
           + tricked + b"--b--\r\n")
    assert [a.data.read() for a in attachments([raw])] == [b"hello\r\n" + archive]
    assert hits(check, raw)[BANNED] == ("notes.zip/evil.exe: banned extension .exe", Action.REJECT)

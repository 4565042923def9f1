"""The attachment policy against archives an attacker shapes so that the names milterd reads are not
the names an unzip tool extracts, or so that the archive is not opened at all."""

from __future__ import annotations

import base64
import binascii
import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from milterd.checks.attachments import BANNED, LIMIT, MAX_ENCODED_FILES, UNREADABLE
from milterd.config import load_config
from milterd.content import mimeparts
from milterd.content.archives import Limits, archive_kind, list_archive
from milterd.content.mimeparts import attachments
from milterd.content.uuencode import encoded_names
from milterd.message.model import Action, Session
from milterd.services import build
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of, zipped

PE = b"MZ\x90\x00" + b"\x00" * 300
SCRIPT = b"WScript.Echo(1)"


def message(filename: bytes, data: bytes) -> bytes:
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--zz\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"" + filename
            + b"\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--zz--\r\n")


@pytest.fixture
def check(tmp_path: Path) -> object:
    return attachment_check(tmp_path)


def banned_hit(check: object, raw: bytes) -> tuple[str, object]:
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))  # type: ignore[attr-defined]
    return next(((h.detail, h.action) for h in hits if h.symbol == BANNED), ("", None))


@pytest.mark.parametrize("prefix", [PE + b"stub", b"GIF89a" + b"\x00" * 100, b"%PDF-1.4\n"])
def test_a_zip_behind_a_stub_or_another_header_is_still_opened(check: object, prefix: bytes) -> None:
    # unzip, 7-Zip and libarchive find the archive from its end: invoice.zip extracts evil.exe.
    data = prefix + zipped({"docs/evil.exe": PE, "readme.txt": b"hi"})
    assert archive_kind("invoice.zip", data[:512]) == "zip"
    assert banned_hit(check, message(b"invoice.zip", data)) == ("invoice.zip/docs/evil.exe: banned extension .exe", Action.REJECT)


def unicode_path_zip(listed: str, extracted: str, data: bytes | None = None) -> bytes:
    """A zip whose member (*data*, else a script) is called *listed* in its headers and *extracted* in its Info-ZIP
    Unicode Path field."""
    field = struct.pack("<BL", 1, zlib.crc32(listed.encode("cp437"))) + extracted.encode("utf-8")
    info = zipfile.ZipInfo(listed)
    info.extra = struct.pack("<2H", 0x7075, len(field)) + field
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, SCRIPT if data is None else data)
    return buffer.getvalue()


def test_the_unicode_path_a_zip_member_is_extracted_under_is_judged(check: object) -> None:
    # Info-ZIP unzip and libarchive extract this member as invoice.js; zipfile lists only invoice.txt.
    data = unicode_path_zip("invoice.txt", "invoice.js")
    assert [i.filename for i in zipfile.ZipFile(io.BytesIO(data)).infolist()] == ["invoice.txt"]
    assert banned_hit(check, message(b"files.zip", data)) == ("files.zip/invoice.js: banned extension .js", Action.REJECT)


def test_the_local_header_name_of_a_zip_member_is_judged(check: object) -> None:
    # libarchive takes a member's name from its local header, zipfile from the central directory.
    data = bytearray(zipped({"notes.txt": SCRIPT}))
    at = data.find(b"PK\x03\x04") + 30
    assert data[at:at + 9] == b"notes.txt"
    data[at:at + 9] = b"notes.js "
    listing = list_archive("files.zip", io.BytesIO(bytes(data)), "zip", Limits())
    assert "files.zip/notes.js " in [e.path for e in listing.entries]
    assert banned_hit(check, message(b"files.zip", bytes(data))) == ("files.zip/notes.js : banned extension .js", Action.REJECT)


def test_a_plain_zip_has_no_aliases() -> None:
    listing = list_archive("a.zip", io.BytesIO(zipped({"dir/": b"", "dir/a.txt": b"x", "b.pdf": b"%PDF-1.4"})), "zip", Limits())
    assert [e.path for e in listing.entries] == ["a.zip/dir/a.txt", "a.zip/b.pdf"]


@pytest.fixture
def in_worker(tmp_path: Path) -> object:
    """The check with libarchive in the worker: unit tests may not fork its child."""
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
                    "[checks.attachments]\narchive_process = false\n")
    return next(c for c in build(load_config(conf)).checks if c.name == "attachments")


@pytest.mark.parametrize("shape", ["followed by 70 KB", "cut short"])
def test_a_zip_zipfile_cannot_open_but_unzip_extracts_is_listed(in_worker: object, shape: str) -> None:
    # unzip and libarchive extract evil.exe from both; zipfile finds no end of central directory.
    whole = zipped({"docs/evil.exe": PE, "readme.txt": b"hi" * 100})
    data = whole + b"x" * 70000 if shape == "followed by 70 KB" else whole[:-60]
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(data))
    listing = list_archive("invoice.zip", io.BytesIO(data), "zip", Limits())
    assert [e.path for e in listing.entries] == ["invoice.zip/docs/evil.exe", "invoice.zip/readme.txt"]
    assert listing.errors == ["invoice.zip: unreadable zip archive (BadZipFile: File is not a zip file), listed by libarchive"]
    assert banned_hit(in_worker, message(b"invoice.zip", data)) == ("invoice.zip/docs/evil.exe: banned extension .exe", Action.REJECT)


def test_garbage_named_zip_stays_an_unreadable_archive() -> None:
    listing = list_archive("broken.zip", io.BytesIO(b"PK\x03\x04" + b"\xff" * 100), "zip", Limits())
    assert not listing.entries and listing.errors[0].startswith("broken.zip: unreadable zip archive")


@pytest.mark.parametrize("boundary", ["z\u00e9".encode(), "z\u00e9".encode("latin-1")])
def test_a_boundary_with_8bit_bytes_still_splits_the_message(check: object, boundary: bytes) -> None:
    # Read from bytes, compat32 made the boundary "z\ufffd", which no delimiter line matched: no part was seen.
    raw = (b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n--" + boundary
           + b"\r\nContent-Type: application/octet-stream; name=evil.exe\r\n\r\nMZ\r\n--" + boundary + b"--\r\n")
    assert banned_hit(check, raw) == ("evil.exe: banned extension .exe", Action.REJECT)


def test_a_raw_utf8_name_is_named_as_sent(check: object) -> None:
    # RFC 6532: the reply names r\xe9sum\xe9.js, not three U+FFFD per accented letter.
    raw = message("r\u00e9sum\u00e9.js".encode(), SCRIPT)
    assert [a.filename for a in attachments([raw])] == ["r\u00e9sum\u00e9.js"]
    assert banned_hit(check, raw) == ("r\\xe9sum\\xe9.js: banned extension .js", Action.REJECT)


def test_one_member_name_that_is_not_the_utf8_it_claims_hides_no_other_member(in_worker: object) -> None:
    # zipfile refuses the whole archive (UnicodeDecodeError); unzip lists both members.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("caf\u00e9.txt", b"x")  # its UTF-8 flag set
        archive.writestr("evil.exe", PE)
    data = buffer.getvalue().replace(b"caf\xc3\xa9", b"caf\xc3\x28")
    listing = list_archive("a.zip", io.BytesIO(data), "zip", Limits())
    # libarchive cannot convert the bad name either: it stands as unreadable, and listing goes on.
    assert [e.path for e in listing.entries] == ["a.zip/(unreadable name)", "a.zip/evil.exe"]
    assert banned_hit(in_worker, message(b"a.zip", data)) == ("a.zip/evil.exe: banned extension .exe", Action.REJECT)


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        # Written through the NTFS stream syntax, the file's own data stream is evil.js itself.
        ("evil.js::$DATA", "banned extension .js"),
        ("evil.js.::$data", "banned extension .js"),
        # Explorer opens a file with a CLSID extension with that class (this one: an HTML application).
        ("invoice.pdf.{3050F4D8-98B5-11CF-BB82-00AA00BDCE0B}", "CLSID extension .{3050f4d8-98b5-11cf-bb82-00aa00bdce0b}"),
    ],
)
def test_windows_name_tricks_on_a_script(check: object, name: str, rule: str) -> None:
    detail, action = banned_hit(check, message(name.encode(), b"<script>new ActiveXObject('WScript.Shell')</script>"))
    assert (detail, action) == (f"{name}: {rule}", Action.REJECT)


@pytest.mark.parametrize("encoding", [b"base64 (a zip)", b"base64; x", b" BASE64 "])
def test_a_transfer_encoding_with_a_comment_or_a_parameter_is_still_decoded(check: object, encoding: bytes) -> None:
    # Clients read the field's first token; read as a whole it was no known encoding, the zip was
    # judged as its base64 text, and evil.exe inside was never seen.
    raw = message(b"invoice.zip", zipped({"evil.exe": PE})).replace(b"Transfer-Encoding: base64", b"Transfer-Encoding: " + encoding)
    assert banned_hit(check, raw) == ("invoice.zip/evil.exe: banned extension .exe", Action.REJECT)


def test_base64_after_its_padding_is_read_on_as_thunderbird_reads_it(check: object) -> None:
    # Thunderbird decodes every quartet ("YWI=" is "ab", then the zip); ZIP readers open the
    # archive behind those two bytes.  Cut at the "=", the zip was never seen.
    encoded = b"YWI=" + base64.b64encode(zipped({"evil.exe": PE}))
    lines = b"\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    raw = message(b"invoice.zip", b"").replace(b"base64\r\n\r\n", b"base64\r\n\r\n" + lines + b"\r\n")
    hits = {h.symbol: h for h in check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))}  # type: ignore[attr-defined]
    assert hits[BANNED].detail == "invoice.zip/evil.exe: banned extension .exe" and hits[BANNED].action == Action.REJECT
    # Other clients stop at the padding: the two readings differ, and that is said.
    assert hits[UNREADABLE].detail == "message: base64 that goes on after its padding: read on, as Thunderbird does (other clients stop there)"


@pytest.mark.parametrize(("encoded", "decoded"), [(b"TQ==\r\nTWE=\r\n", b"MMa"), (b"YWI=QUJD\r\n", b"abABC"), (b"TWFu\r\nTQ==\r\n==\r\n", b"ManM")])
def test_base64_quartets_decode_like_thunderbird(encoded: bytes, decoded: bytes) -> None:
    raw = message(b"a.bin", b"").replace(b"base64\r\n\r\n", b"base64\r\n\r\n" + encoded)
    skipped: list[str] = []
    assert [a.data.read() for a in attachments([raw], skipped=skipped)] == [decoded]
    assert bool(skipped) == (decoded != b"ManM")  # padding at the very end is no finding


@pytest.mark.parametrize(
    "parameters",
    [
        b"boundary*=''zz",  # RFC 2231: compat32's get_param gives a tuple, and the multipart was not followed
        b"boundary=zz (a comment)",  # Thunderbird reads an unquoted value up to a blank
        b"x=\"; boundary=no\"; boundary=\"zz\"",
    ],
)
def test_every_boundary_form_a_client_reads_splits_the_message(check: object, parameters: bytes) -> None:
    raw = (b"Content-Type: multipart/mixed; " + parameters + b"\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
           b"--zz\r\nContent-Type: application/octet-stream; name=evil.exe\r\n\r\nMZ\r\n--zz--\r\n")
    assert banned_hit(check, raw) == ("evil.exe: banned extension .exe", Action.REJECT)


def test_a_quoted_boundary_with_a_blank_still_works() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=\"a b\"\r\n\r\n--a b\r\nContent-Type: application/octet-stream; name=x.pdf\r\n\r\n"
           b"%PDF-1.4\r\n--a b--\r\nepilogue\r\n")
    assert [(a.filename, a.data.read()) for a in attachments([raw])] == [("x.pdf", b"%PDF-1.4")]


def test_a_member_whose_header_lies_before_the_file_leaves_the_others_judged() -> None:
    # An end record pointing past the real directory makes zipfile's offsets negative.
    data = bytearray(zipped({"good.txt": b"x", "evil.exe": PE}))
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<L", data, end + 16, struct.unpack_from("<L", data, end + 16)[0] + 1000)
    listing = list_archive("a.zip", io.BytesIO(bytes(data)), "zip", Limits())
    assert {e.path for e in listing.entries} == {"a.zip/good.txt", "a.zip/evil.exe"}
    # The directory's offsets lead nowhere: their local headers, read as hidden members, give their first bytes.
    assert any(e.path == "a.zip/evil.exe" and e.head.startswith(b"MZ") for e in listing.entries)


@pytest.mark.parametrize(
    "disposition",
    [b"filename=\"=?utf-8?q?readme.pdf=00.exe?=\"", b"filename*=utf-8''readme.pdf%00.exe"],
)
def test_a_nul_before_a_banned_extension_does_not_hide_it(check: object, disposition: bytes) -> None:
    # Cut at the NUL it is readme.pdf; a browser saving it from webmail makes the NUL a "_": readme.pdf_.exe.
    raw = (b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; " + disposition + b"\r\n\r\nWScript.Echo(1)\r\n--zz--\r\n")
    assert banned_hit(check, raw) == ("readme.pdf\\x00.exe: banned extension .exe", Action.REJECT)


@pytest.mark.parametrize("content_type", [b"multipart/mixed", b"multipart/mixed; boundary=\"\""])
def test_a_multipart_without_a_boundary_is_said_not_looked_into(check: object, content_type: bytes) -> None:
    raw = b"Content-Type: " + content_type + b"\r\n\r\n--zz\r\nContent-Type: application/octet-stream; name=evil.exe\r\n\r\nMZ\r\n--zz--\r\n"
    hits = {h.symbol: h.detail for h in check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))}  # type: ignore[attr-defined]
    assert hits == {LIMIT: "message: a multipart without a boundary: its parts not looked at"}


def uuencoded(name: bytes, data: bytes) -> bytes:
    lines = b"".join(binascii.b2a_uu(data[i:i + 45]).replace(b"\n", b"\r\n") for i in range(0, len(data), 45))
    return b"begin 644 " + name + b"\r\n" + lines + b"`\r\nend\r\n"


def test_a_uuencoded_file_in_a_plain_text_message_is_judged(check: object) -> None:
    # Thunderbird and Outlook show invoice.exe as an attachment of this message without MIME;
    # judged as one plain text part, it was never looked at.
    raw = b"From: a@example.org\r\nSubject: invoice\r\n\r\nPlease see the invoice.\r\n\r\n" + uuencoded(b"invoice.exe", PE)
    assert banned_hit(check, raw) == ("invoice.exe: banned extension .exe", Action.REJECT)
    yenc = b"Subject: x\r\n\r\nhello\r\n=ybegin line=128 size=15 name=run.js\r\nxx\r\n=yend size=15\r\n"
    assert banned_hit(check, yenc) == ("run.js: banned extension .js", Action.REJECT)


def test_begin_lines_are_found_across_chunks_and_bounded() -> None:
    body = b"x" * 65530 + b"\nbegin 644 split.exe\nM" + b"y" * 70000 + b"\nbegin 600 last.js"
    for size in (65536, 7):
        assert encoded_names([body[i:i + size] for i in range(0, len(body), size)], MAX_ENCODED_FILES) == ["split.exe", "last.js"]
    assert encoded_names([b"to begin 644 a.exe mid-line\r\nbegin 644 \r\n"], MAX_ENCODED_FILES) == []
    many = b"".join(b"begin 644 f%d.txt\n" % i for i in range(5000))
    assert len(encoded_names([many], MAX_ENCODED_FILES)) == MAX_ENCODED_FILES + 1


def test_padding_past_its_bound_is_decoded_without_the_quartet_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quartet by quartet, 10 MB of "=" cost seconds of a worker: past MAX_PADDING padding
    characters the rest of the part is decoded with them dropped, still flagged."""
    walked: list[int] = []
    walk = mimeparts._a2b_quartets
    monkeypatch.setattr(mimeparts, "_a2b_quartets", lambda data: walked.append(len(data)) or walk(data))
    body = b"YWJj\r\n" + b"A===" * 19 * 2000 + b"\r\n" + base64.encodebytes(b"tail" * 30).replace(b"\n", b"\r\n")
    message = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/octet-stream; name=x.bin\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"--b--\r\n")
    notes: list[str] = []
    data = b"".join(part.data.read() for part in attachments([message], skipped=notes))
    assert data.startswith(b"abc") and data.endswith(b"tail" * 30)
    assert sum(walked) <= mimeparts.MAX_PADDING + 4 * 76  # the walk stopped near the bound
    assert any("after its padding" in note for note in notes)

"""Files a limit kept from being looked into are held by default; what hides no file only scores.

An .exe one zip past ``archive_max_depth``, behind damage that unzip,
tar and 7-Zip read past, or inside a base64-encoded message/rfc822 part, was a
1-point ATTACH_ARCHIVE_LIMIT and delivered: a sender picks the nesting and the
damage.  ATTACH_ARCHIVE_LIMIT now quarantines by default; an attached message is
opened; what hides no file unseen (a kind without its library, an Office
document's own parts past a limit) is ATTACH_UNREADABLE, scored only.
"""

from __future__ import annotations

import base64
import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from milterd.checks import attachments as policy
from milterd.checks.attachments import ACTION_OPTIONS, LIMIT, UNREADABLE, AttachmentChecks
from milterd.content import archives
from milterd.message.model import Action, Hit, Session
from milterd.tuning import MAY_FORCE
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of, zipped

PE = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 500


def message(part: bytes) -> bytes:
    return (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nsee\r\n--zz\r\n" + part + b"--zz--\r\n")


def attached(name: bytes, data: bytes, ctype: bytes = b"application/zip") -> bytes:
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return b"Content-Type: " + ctype + b"; name=\"" + name + b"\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded


def nested(depth: int) -> bytes:
    inner = zipped({"evil.exe": PE})
    for level in range(depth - 1):
        inner = zipped({f"l{level}.zip": inner})
    return inner


@pytest.fixture
def check(tmp_path: Path) -> Any:
    return attachment_check(tmp_path)


def hits(check: Any, raw: bytes) -> dict[str, Hit]:
    return {h.symbol: h for h in check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))}


def test_an_exe_one_zip_deeper_than_looked_into_is_quarantined(check: Any) -> None:
    assert AttachmentChecks().archive_max_depth == 5
    assert hits(check, message(attached(b"invoice.zip", nested(5))))[policy.BANNED].action == Action.REJECT
    found = hits(check, message(attached(b"invoice.zip", nested(6))))
    assert policy.BANNED not in found
    assert found[LIMIT].detail == "invoice.zip/l4.zip/l3.zip/l2.zip/l1.zip/l0.zip: archive nested deeper than 5"
    assert found[LIMIT].action == Action.QUARANTINE


def test_members_past_the_count_are_a_limit_that_quarantines(tmp_path: Path) -> None:
    filler = {f"f{i}.txt": b"" for i in range(20)}
    check = attachment_check(tmp_path, "archive_max_members = 10\n")
    found = hits(check, message(attached(b"photos.zip", zipped({**filler, "evil.exe": PE}))))
    assert found[LIMIT].action == Action.QUARANTINE and "past 10 members" in found[LIMIT].detail


INNER = (b"From: x@example.org\r\nSubject: inner\r\nContent-Type: application/octet-stream; name=evil.exe\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(PE).replace(b"\n", b"\r\n"))


@pytest.mark.parametrize("ctype", [b"message/rfc822", b"application/octet-stream"])
def test_an_exe_in_an_encoded_attached_message_is_rejected(check: Any, ctype: bytes) -> None:
    # Exchange Online sends message/rfc822 in base64 (RFC 2046 forbids it); Outlook on the web an .eml as octet-stream.
    found = hits(check, message(attached(b"forwarded.eml", INNER, ctype)))
    assert found[policy.BANNED].detail == "forwarded.eml/evil.exe: banned extension .exe" and found[policy.BANNED].action == Action.REJECT


def test_a_clean_attached_message_passes_and_nesting_is_bounded(check: Any) -> None:
    clean = b"From: x@example.org\r\nSubject: minutes\r\nContent-Type: text/plain\r\n\r\nThe minutes.\r\n"
    assert hits(check, message(attached(b"minutes.eml", clean, b"message/rfc822"))) == {}

    def forwarded(levels: int) -> bytes:
        wrapped = INNER
        for level in range(levels):
            wrapped = (b"From: x@example.org\r\nSubject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=w\r\n\r\n"
                       b"--w\r\n" + attached(b"fwd%d.eml" % level, wrapped, b"message/rfc822") + b"--w--\r\n")
        return message(attached(b"outer.eml", wrapped, b"message/rfc822"))

    # Five messages deep (as archive_max_depth) are opened: a forward of a forward of… with the .exe at the bottom.
    assert hits(check, forwarded(4))[policy.BANNED].detail == "outer.eml/fwd3.eml/fwd2.eml/fwd1.eml/fwd0.eml/evil.exe: banned extension .exe"
    found = hits(check, forwarded(5))
    assert policy.BANNED not in found and found[LIMIT].action == Action.QUARANTINE
    assert found[LIMIT].detail == ("outer.eml/fwd4.eml/fwd3.eml/fwd2.eml/fwd1.eml/fwd0.eml: "
                                   "attached message nested deeper than 5: its attachments not looked at")


def test_one_attached_message_in_every_reading_is_opened_once(check: Any) -> None:
    # A boundary two readings split otherwise gave each attached message twice: 11 forwards were "more than 20".
    forwards = b"".join(b"--=_mixed 0034ABCD_=\r\n" + attached(b"msg%d.eml" % i, INNER.replace(b"evil.exe", b"notes%d.pdf" % i), b"message/rfc822")
                        for i in range(11))
    raw = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"=_mixed 0034ABCD_=\"\r\n\r\n" + forwards + b"--=_mixed 0034ABCD_=--\r\n")
    assert LIMIT not in hits(check, raw)


def test_a_damaged_zip_is_a_limit(check: Any) -> None:
    # Its listing stops at the damage, where unzip goes on (the names after it are never judged).
    found = hits(check, message(attached(b"report.zip", b"PK\x03\x04" + b"\x00" * 200)))
    assert found[LIMIT].detail.startswith("report.zip: unreadable zip archive") and found[LIMIT].action == Action.QUARANTINE


def test_office_documents_parts_are_counted_apart_and_only_noted(tmp_path: Path) -> None:
    check = attachment_check(tmp_path, "archive_max_members = 10\n")
    parts = {"[Content_Types].xml": b"<Types/>", **{f"ppt/slides/slide{i}.xml": b"<sld/>" for i in range(20)}}
    deck = zipped(parts)
    found = hits(check, message(attached(b"deck.pptx", deck, b"application/vnd.openxmlformats-officedocument.presentationml.presentation")))
    assert set(found) == {UNREADABLE} and "deck.pptx/" in found[UNREADABLE].detail and found[UNREADABLE].action is None
    # Nine decks in a zip: each has its own budget for its parts, the zip's members are the decks.
    found = hits(check, message(attached(b"decks.zip", zipped({f"deck{i}.pptx": deck for i in range(9)}))))
    assert LIMIT not in found
    # The same parts in a zip a user extracts: a limit, held.
    found = hits(check, message(attached(b"slides.zip", deck)))
    assert found[LIMIT].action == Action.QUARANTINE


def test_a_kind_without_its_library_only_scores_as_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "supported", lambda kind: False)
    listing = archives.list_archive("files.7z", io.BytesIO(b"7z\xbc\xaf\x27\x1c" + b"\x00" * 64), "7z", archives.Limits())
    assert listing.errors == ["files.7z: 7z archives cannot be listed (libarchive-c is not installed)"] and listing.limits == []


def test_the_default_actions_hold_what_was_never_looked_into() -> None:
    options = AttachmentChecks()
    assert (options.limit_action, options.unreadable_action, options.mime_limit_action) == ("quarantine", "score", "quarantine")


def test_whatif_knows_every_attachment_symbol_may_force_an_action() -> None:
    # ATTACH_MIME_LIMIT was missing: whatif could lower a message its quarantine held.
    assert set(ACTION_OPTIONS) <= MAY_FORCE


def test_a_stored_zip_is_still_listed_within_the_limits(check: Any) -> None:
    data = zipped({"a.txt": b"hello", "b.txt": b"world"}, zipfile.ZIP_STORED)
    assert hits(check, message(attached(b"notes.zip", data))) == {}


def test_a_bare_unicode_path_header_does_not_stop_the_listing() -> None:
    # A 4-byte Info-ZIP Unicode Path header in a local extra field raised IndexError: the whole zip "unreadable".
    assert archives._unicode_path(b"\x75\x70\x05\x00") == ""  # noqa: SLF001
    assert archives._unicode_path(b"\xfe\xca\x00\x00\x75\x70\x05\x00") == ""  # noqa: SLF001


def bad_crc(data: bytes) -> bytes:
    """The one-member zip *data* with its member's CRC-32 zeroed in both headers (unzip extracts it all the same)."""
    info = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
    raw = bytearray(data)
    raw[info.header_offset + 14:info.header_offset + 18] = bytes(4)
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 16:central + 20] = bytes(4)
    return bytes(raw)


def test_a_nested_archive_with_a_bad_crc_is_a_limit(check: Any) -> None:
    outer = bad_crc(zipped({"inner.zip": zipped({"evil.exe": PE})}, zipfile.ZIP_STORED))
    found = hits(check, message(attached(b"invoice.zip", outer)))
    assert found[LIMIT].detail.startswith("invoice.zip/inner.zip: unreadable member") and found[LIMIT].action == Action.QUARANTINE


#: A zip whose one member's name is flagged UTF-8 and holds a \xff (invoice\xff.js): zipfile refuses it, libarchive
#: lists it without a name, unzip extracts it as invoice.js.
BAD_NAME_ZIP = bytes.fromhex(
    "504b0304140000080800a432855d9266ce1517000000150000000b000000696e766f696365ff2e6a730b0f4e2eca2c28d173"
    "4dcec8d750cfc854d7b4e6e50200504b01021403140000080800a432855d9266ce1517000000150000000b00000000000000"
    "00000000800100000000696e766f696365ff2e6a73504b0506000000000100010039000000400000000000"
)


def test_a_member_name_that_cannot_be_read_is_a_limit(check: Any) -> None:
    pytest.importorskip("libarchive")
    found = hits(check, message(attached(b"invoice.zip", BAD_NAME_ZIP)))
    # Listed in the child, libarchive-c trips on the name (an unreadable archive); in the worker it is nameless: a limit either way.
    assert found[LIMIT].action == Action.QUARANTINE and found[LIMIT].detail.startswith("invoice.zip")
    listing = archives.list_archive("invoice.zip", io.BytesIO(BAD_NAME_ZIP), "zip", archives.Limits(child=False))
    assert any("a member's name libarchive cannot convert to text" in text for text in listing.limits)


def test_the_office_exemption_needs_a_document_by_every_name_and_by_its_parts(tmp_path: Path) -> None:
    check = attachment_check(tmp_path, "archive_max_members = 10\n")
    fillers = {f"f{i}.txt": b"" for i in range(20)}
    # A plain zip named .docx: no [Content_Types].xml, a user's 7-Zip opens it.
    assert hits(check, message(attached(b"report.docx", zipped({**fillers, "evil.exe": PE}))))[LIMIT].action == Action.QUARANTINE
    # A document by its parts, but saved as report.zip by the client that reads Content-Type's name.
    document = zipped({"[Content_Types].xml": b"<Types/>", **fillers, "evil.exe": PE})
    part = attached(b"report.zip", document).replace(b"Content-Transfer-Encoding", b'Content-Disposition: attachment; filename="report.docx"\r\nContent-Transfer-Encoding', 1)
    assert hits(check, message(part))[LIMIT].action == Action.QUARANTINE


def test_a_part_typed_as_a_message_that_is_an_archive_is_listed(check: Any) -> None:
    found = hits(check, message(attached(b"invoice.zip", zipped({"evil.exe": PE}), b"message/rfc822")))
    assert found[policy.BANNED].detail == "invoice.zip/evil.exe: banned extension .exe"


def test_a_uuencoded_file_in_an_attached_message_is_judged(check: Any) -> None:
    inner = b"From: x@example.org\r\nSubject: fwd\r\n\r\nSee below.\r\n\r\nbegin 644 evil.exe\r\nM35J0\r\n`\r\nend\r\n"
    found = hits(check, message(attached(b"fwd.eml", inner, b"message/rfc822")))
    assert found[policy.BANNED].detail == "fwd.eml/evil.exe: banned extension .exe"


@pytest.mark.parametrize("name", ["p.zipx", "p.epub"])
def test_an_unreadable_member_that_archive_tools_open_is_a_limit(check: Any, name: str) -> None:
    outer = bad_crc(zipped({name: zipped({"invoice.js": b"WScript.Echo(1)"})}, zipfile.ZIP_STORED))
    assert hits(check, message(attached(b"files.zip", outer)))[LIMIT].action == Action.QUARANTINE


def test_a_compressed_member_with_a_bad_crc_is_a_limit(check: Any) -> None:
    import gzip
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("evil.exe")
        info.size = len(PE)
        tar.addfile(info, io.BytesIO(PE))
    outer = bad_crc(zipped({"payload.tgz": gzip.compress(buffer.getvalue())}, zipfile.ZIP_STORED))
    found = hits(check, message(attached(b"mail.zip", outer)))
    assert found[LIMIT].detail.startswith("mail.zip/payload.tgz: unreadable member") and found[LIMIT].action == Action.QUARANTINE


def with_unicode_path(data: bytes, name: str, alias: str) -> bytes:
    """The zip *data* with an Info-ZIP Unicode Path *alias* for its member *name* (central directory), as unzip extracts it."""
    encoded = alias.encode()
    extra = struct.pack("<HHB", 0x7075, 5 + len(encoded), 1) + struct.pack("<L", zlib.crc32(name.encode())) + encoded
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            if info.filename == name:
                info.extra = extra
            target.writestr(info, source.read(info.filename))
    return buffer.getvalue()


def test_a_nested_archive_known_by_its_unicode_path_is_opened(check: Any) -> None:
    # notes.txt that unzip extracts as docs.zip (a GIF header in front hides it from the first bytes' test).
    docs = b"GIF89a" + bytes(64) + zipped({"invoice.js": b"WScript.Echo(1)"})
    outer = with_unicode_path(zipped({"notes.txt": docs}, zipfile.ZIP_STORED), "notes.txt", "docs.zip")
    assert hits(check, message(attached(b"files.zip", outer)))[policy.BANNED].detail == "files.zip/notes.txt/invoice.js: banned extension .js"


def test_an_unreadable_member_known_by_an_archive_alias_is_a_limit(check: Any) -> None:
    outer = bad_crc(with_unicode_path(zipped({"notes.txt": zipped({"invoice.js": b"x"})}, zipfile.ZIP_STORED), "notes.txt", "docs.zip"))
    assert hits(check, message(attached(b"files.zip", outer)))[LIMIT].action == Action.QUARANTINE


def test_a_news_message_is_opened_as_thunderbird_opens_it(check: Any) -> None:
    found = hits(check, message(attached(b"article", INNER, b"message/news")))  # no .eml name: the type alone
    assert found[policy.BANNED].detail == "article/evil.exe: banned extension .exe"


def test_office_documents_in_documents_share_one_parts_budget() -> None:
    # A fresh budget per document let 318 workbooks of 2,000 parts in each of four documents list 2.5 million parts (78 s).
    book = zipped({"[Content_Types].xml": b"<Types/>", **{f"xl/p{i}.xml": b"" for i in range(30)}})
    report = zipped({"[Content_Types].xml": b"<Types/>", **{f"word/embeddings/e{i}.xlsx": book for i in range(10)}})
    listing = archives.list_archive("r.docx", io.BytesIO(report), "zip", archives.Limits(max_members=50))
    assert len(listing.entries) <= 2 * 50 + 1 and listing.limits == []
    assert any("past 50 members" in text for text in listing.errors)

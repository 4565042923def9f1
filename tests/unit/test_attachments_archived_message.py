"""A message saved as a file (``.eml``) inside an archive is opened as a mail client opens it.

Before, an archive's listing kept each member's first bytes only: ``mail.zip``
holding ``fwd.eml`` with ``evil.exe`` attached was delivered, though Outlook
and Thunderbird open the saved message with its attachment a click away.
"""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from milterd.checks import attachments as policy
from milterd.checks.attachments import ATTACHED_MESSAGE_BYTES, ATTACHED_MESSAGE_PARTS, BANNED, LIMIT
from milterd.content import archives
from milterd.message.model import Action, Hit, Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of, zipped
from tests.unit.test_attachments_unjudged import attached, message

PE = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 500


def saved(file: str = "evil.exe", data: bytes = PE) -> bytes:
    """A saved message carrying *file* as a base64 attachment."""
    return (b"From: x@example.org\r\nSubject: inner\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n"
            b"--in\r\nContent-Type: text/plain\r\n\r\nhere\r\n--in\r\nContent-Type: application/octet-stream; name=\"" + file.encode()
            + b"\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(data).replace(b"\n", b"\r\n") + b"--in--\r\n")


def tarred(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def hits(check: Any, raw: bytes) -> dict[str, Hit]:
    return {h.symbol: h for h in check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))}


def test_an_exe_in_a_message_saved_in_a_zip_is_rejected(tmp_path: Path) -> None:
    found = hits(attachment_check(tmp_path), message(attached(b"mail.zip", zipped({"notes.txt": b"hi", "fwd.eml": saved()}))))
    assert found[BANNED].action == Action.REJECT
    assert found[BANNED].detail == "mail.zip/fwd.eml/evil.exe: banned extension .exe"


@pytest.mark.skipif(not archives.supported("tar"), reason="libarchive-c is not installed")
def test_an_exe_in_a_message_saved_in_a_tar_is_rejected(tmp_path: Path) -> None:
    check = attachment_check(tmp_path, "archive_process = false\n")  # listed in this process: unit tests fork nothing
    found = hits(check, message(attached(b"mail.tar", tarred({"old/Fwd.EML": saved("run.js", b"WScript.Echo(1)")}), b"application/x-tar")))
    assert found[BANNED].detail == "mail.tar/old/Fwd.EML/run.js: banned extension .js"


@pytest.mark.skipif(not archives.supported("tar"), reason="libarchive-c is not installed")
def test_a_saved_message_that_is_also_an_archive_is_judged_as_both(tmp_path: Path) -> None:
    # 7-Zip opens it as the zip it is; renamed, a mail client would not, but judging both costs nothing.
    listing = archives.list_archive("a.tar", io.BytesIO(tarred({"x.eml": zipped({"y.exe": PE})})), "tar", archives.Limits())
    assert [path for path, _ in listing.messages] == ["a.tar/x.eml"]
    assert "a.tar/x.eml/y.exe" in [entry.path for entry in listing.entries]


def test_a_saved_message_past_the_archive_budget_is_a_limit(tmp_path: Path) -> None:
    big = saved("notes.txt", b"x" * 300_000)
    listing = archives.list_archive("mail.zip", io.BytesIO(zipped({"fwd.eml": big})), "zip", archives.Limits(max_size=200_000))
    assert listing.messages == [] and listing.limits == ["mail.zip/fwd.eml: would decompress past 200000 bytes"]


def test_a_zip_of_a_hundred_saved_messages_is_opened_through(tmp_path: Path) -> None:
    # Twenty attached messages were the most opened: the 21st was a limit, and an export of mail quarantined.
    many = {f"m{i}.eml": saved(f"f{i}.txt") for i in range(99)}
    found = hits(attachment_check(tmp_path), message(attached(b"mails.zip", zipped({**many, "m99.eml": saved()}))))
    assert LIMIT not in found
    assert found[BANNED].detail == "mails.zip/m99.eml/evil.exe: banned extension .exe"


def test_attached_messages_past_their_parts_in_all_are_a_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each attached message may have 2,000 parts (about 0.1 s to read): their parts are bounded together."""
    assert ATTACHED_MESSAGE_PARTS == 20_000
    monkeypatch.setattr(policy, "ATTACHED_MESSAGE_PARTS", 5000)
    parts = b"".join(b"--in\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(1990))
    fat = (b"From: x@example.org\r\nSubject: inner\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n"
           + parts + b"--in\r\nContent-Type: application/octet-stream; name=\"%s\"\r\n\r\nMZ\r\n--in--\r\n")
    files = {f"m{i}.eml": fat % f"f{i}.txt".encode() for i in range(2)}
    found = hits(attachment_check(tmp_path), message(attached(b"mails.zip", zipped({**files, "m2.eml": fat % b"evil.exe", "m3.eml": saved("b.js")}))))
    assert BANNED not in found and found[LIMIT].action == Action.QUARANTINE
    assert found[LIMIT].detail == ("mails.zip/m2.eml/message: MIME parts past those the attached messages may have in all: the rest not looked at; "
                                   "mails.zip/m3.eml: attached messages past 5000 MIME parts in all: its attachments not looked at")


def test_an_export_of_thirteen_hundred_messages_is_opened_through(tmp_path: Path) -> None:
    # Five parts each, 6,500 in all, were past the 5,000 first allowed: a legal export quarantined (found by review).
    body = b"--in\r\nContent-Type: text/plain\r\n\r\nhi\r\n--in\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n"
    mail = (b"From: x@example.org\r\nSubject: order %d\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n"
            + body * 2 + b"--in\r\nContent-Type: application/pdf; name=\"order.pdf\"\r\n\r\n%%PDF-1.4\r\n--in--\r\n")
    export = zipped({f"Inbox/order-{i}.eml": mail % i for i in range(1300)})
    assert LIMIT not in hits(attachment_check(tmp_path), message(attached(b"sales-export.zip", export)))


def test_attached_messages_past_their_bytes_in_all_are_a_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 48 MB .eml of delimiter-like lines, from a zip of a few hundred KB, took 7 s to read: their bytes are bounded together."""
    assert ATTACHED_MESSAGE_BYTES == 32 * 1024 * 1024
    padded = saved("notes.txt", b"x" * 1000)
    monkeypatch.setattr(policy, "ATTACHED_MESSAGE_BYTES", len(padded) + 10)  # the first is read, the second is not
    monkeypatch.setattr(policy, "_BYTES_NOTE", "past the bytes")
    found = hits(attachment_check(tmp_path), message(attached(b"mails.zip", zipped({"a.eml": padded, "b.eml": saved("evil.exe")}))))
    assert BANNED not in found and found[LIMIT].detail == "mails.zip/b.eml: past the bytes"


def test_a_batch_of_forwards_is_opened_through(tmp_path: Path) -> None:
    # An abuse desk's batch from Exchange Online: 30 base64 message/rfc822 parts were "more than 20", quarantined.
    forwards = b"".join(b"--zz\r\n" + attached(b"spam%d.eml" % i, saved(f"f{i}.pdf" if i < 29 else "evil.exe"), b"message/rfc822") for i in range(30))
    raw = message(forwards[len(b"--zz\r\n"):])
    found = hits(attachment_check(tmp_path), raw)
    assert LIMIT not in found and found[BANNED].detail == "spam29.eml/evil.exe: banned extension .exe"


def test_a_saved_message_in_winmail_dat_is_opened(tmp_path: Path) -> None:
    # Outlook shows fwd.eml among winmail.dat's attachments and opens it with its own (found by review).
    from tests.unit.test_attachments_tnef import file_attachment, tnef

    found = hits(attachment_check(tmp_path), message(attached(b"winmail.dat", tnef(file_attachment("fwd.eml", saved())), b"application/ms-tnef")))
    assert found[BANNED].detail == "winmail.dat/fwd.eml/evil.exe: banned extension .exe"


def test_a_small_saved_message_with_a_bad_crc_is_a_limit(tmp_path: Path) -> None:
    # Under 512 bytes, its first bytes reach the end, where zipfile checks the CRC and raises: the member was
    # only unreadable (scored), though unzip extracts it with a warning (found by review).
    inner = saved("run.js", b"WScript.Echo(1)")
    assert len(inner) < 512
    data = bytearray(zipped({"fwd.eml": inner}, compression=0))
    data[data.index(b"--in")] ^= 0x01  # a byte of the stored member's data: its CRC no longer matches
    found = hits(attachment_check(tmp_path), message(attached(b"mails.zip", bytes(data))))
    assert found[LIMIT].action == Action.QUARANTINE and found[LIMIT].detail.startswith("mails.zip/fwd.eml: unreadable member (BadZipFile")


@pytest.mark.skipif(not archives.supported("tar"), reason="libarchive-c is not installed")
def test_a_link_named_as_a_saved_message_is_a_limit(tmp_path: Path) -> None:
    # Extracted, fwd.eml is notes.txt, a saved message no name of which says so (found by review).
    for kind in (tarfile.LNKTYPE, tarfile.SYMTYPE):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo("mail/notes.txt")
            info.size = len(saved())
            tar.addfile(info, io.BytesIO(saved()))
            link = tarfile.TarInfo("mail/fwd.eml")
            link.type, link.linkname = kind, "mail/notes.txt"
            tar.addfile(link)
        check = attachment_check(tmp_path, "archive_process = false\n")
        found = hits(check, message(attached(b"mails.tar", buffer.getvalue(), b"application/x-tar")))
        assert found[LIMIT].detail == "mails.tar/mail/fwd.eml: a link named as a message, to a file never opened as one", kind


def test_a_zip_symlink_named_as_a_saved_message_is_a_limit(tmp_path: Path) -> None:
    # unzip extracts it as a link to data.bin, a saved message no name of which says so (found by review).
    import stat
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.bin", saved())
        link = zipfile.ZipInfo("fwd.eml")
        link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "data.bin")
    found = hits(attachment_check(tmp_path), message(attached(b"mail.zip", buffer.getvalue())))
    assert found[LIMIT].detail == "mail.zip/fwd.eml: a link named as a message, to a file never opened as one"

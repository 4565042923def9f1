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

from milterd.checks.attachments import BANNED, LIMIT, MAX_ATTACHED_MESSAGES
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


def test_saved_messages_count_among_the_attached_messages(tmp_path: Path) -> None:
    many = zipped({f"m{i}.eml": saved(f"f{i}.txt") for i in range(MAX_ATTACHED_MESSAGES + 1)})
    found = hits(attachment_check(tmp_path), message(attached(b"mails.zip", many)))
    assert found[LIMIT].detail == f"mails.zip/m{MAX_ATTACHED_MESSAGES}.eml: more than {MAX_ATTACHED_MESSAGES} attached messages: its attachments not looked at"
    assert BANNED not in found

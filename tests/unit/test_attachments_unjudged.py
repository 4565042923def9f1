"""Files a limit kept from being looked into are held by default; what could not be read only scores.

An .exe four zips deep (one past ``archive_max_depth``), or inside a base64-encoded
message/rfc822 part, was a 1-point ATTACH_ARCHIVE_LIMIT and delivered: a sender
picks the nesting.  ATTACH_ARCHIVE_LIMIT now quarantines by default, and what
could not be read whole (a damaged archive, a kind without its library) is
ATTACH_UNREADABLE, scored only.
"""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from milterd.checks import attachments as policy
from milterd.checks.attachments import _ACTION_OPTION, LIMIT, UNREADABLE, AttachmentChecks
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
    assert AttachmentChecks().archive_max_depth == 3
    assert hits(check, message(attached(b"invoice.zip", nested(3))))[policy.BANNED].action == Action.REJECT
    found = hits(check, message(attached(b"invoice.zip", nested(4))))
    assert policy.BANNED not in found
    assert found[LIMIT].detail == "invoice.zip/l2.zip/l1.zip/l0.zip: archive nested deeper than 3"
    assert found[LIMIT].action == Action.QUARANTINE


def test_members_past_the_count_are_a_limit_that_quarantines(tmp_path: Path) -> None:
    filler = {f"f{i}.txt": b"" for i in range(20)}
    check = attachment_check(tmp_path, "archive_max_members = 10\n")
    found = hits(check, message(attached(b"photos.zip", zipped({**filler, "evil.exe": PE}))))
    assert found[LIMIT].action == Action.QUARANTINE and "past 10 members" in found[LIMIT].detail


def test_an_exe_in_an_encoded_attached_message_is_quarantined(check: Any) -> None:
    inner = (b"From: x@example.org\r\nSubject: inner\r\nContent-Type: application/octet-stream; name=evil.exe\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(PE).replace(b"\n", b"\r\n"))
    found = hits(check, message(attached(b"forwarded.eml", inner, b"message/rfc822")))
    assert found[LIMIT].detail == "message: an encoded message/rfc822 part: its attachments not looked at"
    assert found[LIMIT].action == Action.QUARANTINE


def test_a_damaged_zip_only_scores_as_unreadable(check: Any) -> None:
    found = hits(check, message(attached(b"report.zip", b"PK\x03\x04" + b"\x00" * 200)))
    assert set(found) == {UNREADABLE}
    assert found[UNREADABLE].detail.startswith("report.zip: unreadable zip archive")
    assert found[UNREADABLE].action is None  # scored only


def test_a_kind_without_its_library_only_scores_as_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "supported", lambda kind: False)
    listing = archives.list_archive("files.7z", io.BytesIO(b"7z\xbc\xaf\x27\x1c" + b"\x00" * 64), "7z", archives.Limits())
    assert listing.errors == ["files.7z: 7z archives cannot be listed (libarchive-c is not installed)"] and listing.limits == []


def test_the_default_actions_hold_what_was_never_looked_into() -> None:
    options = AttachmentChecks()
    assert (options.limit_action, options.unreadable_action, options.mime_limit_action) == ("quarantine", "score", "quarantine")


def test_whatif_knows_every_attachment_symbol_may_force_an_action() -> None:
    # ATTACH_MIME_LIMIT was missing: whatif could lower a message its quarantine held.
    assert set(_ACTION_OPTION) <= MAY_FORCE


def test_a_stored_zip_is_still_listed_within_the_limits(check: Any) -> None:
    data = zipped({"a.txt": b"hello", "b.txt": b"world"}, zipfile.ZIP_STORED)
    assert hits(check, message(attached(b"notes.zip", data))) == {}

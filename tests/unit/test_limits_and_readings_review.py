"""The second review of the session's MIME limits and boundary readings: a link past the 500th part,
a part read in both readings, a crowded parameter field, signatures in a long digest."""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from milterd.content import archives, mimeparams
from milterd.content.mimeparts import MAX_PARTS, PARTS_LIMIT_NOTE, attachments
from milterd.content.mimetext import extract
from milterd.message.model import Action, Hit, Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of, zipped

LINK = b'<a href="http://phish.example.test/login">Your bank</a>'


@pytest.fixture
def check(tmp_path: Path) -> Any:
    return attachment_check(tmp_path)


def hits(check: Any, raw: bytes) -> list[Hit]:
    found: list[Hit] = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))
    return found


def multipart(*parts: bytes, boundary: bytes = b"zz", parameter: bytes = b"boundary=zz") -> bytes:
    return (b"From: a@example.net\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; " + parameter + b"\r\n\r\n"
            + b"".join(b"--" + boundary + b"\r\n" + part for part in parts) + b"--" + boundary + b"--\r\n")


def test_a_link_in_a_text_part_past_the_500th_is_looked_up(check: Any) -> None:
    # The attachment check follows text parts past 500 (a digest passes); the links were read from 500 parts only,
    # so 505 text parts hid a phishing link from the URI lists, with no symbol at all.
    raw = multipart(*[b"Content-Type: text/plain\r\n\r\nx\r\n"] * 505, b"Content-Type: text/html\r\n\r\n" + LINK + b"\r\n")
    assert extract(raw).uris == ["http://phish.example.test/login"]
    assert hits(check, raw) == []


def test_a_part_read_in_both_readings_is_known_by_its_decoded_text() -> None:
    # A 7-bit copy of the base64 text first hid the base64 part that decodes to the link: both had the same payload.
    payload = base64.encodebytes(LINK)
    plain = b"Content-Type: text/html\r\n\r\n" + payload
    encoded = b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n" + payload
    raw = multipart(plain, encoded, parameter=b'boundary="zz" (c)')
    assert extract(raw).uris == ["http://phish.example.test/login"]


def test_a_crowded_parameter_field_is_read_without_the_stdlibs_split(monkeypatch: pytest.MonkeyPatch) -> None:
    # The stdlib's split counts the quotes again at each ";": 2,000 of them in 1,990 parts cost 21 s.
    def refused(_value: str) -> Any:
        raise AssertionError("the stdlib's parameter split was used")

    monkeypatch.setattr(email.message, "_parseparam", refused)
    crowded = 'application/octet-stream; x="' + "a;" * (mimeparams.MAX_STDLIB_SEPARATORS + 1) + '"; name="evil.exe"'
    part = email.message_from_string(f"Content-Type: {crowded}\r\n\r\nx", mimeparams.LenientMessage, policy=email.policy.compat32)
    assert part.get_param("name") == "evil.exe" and part.get_params()[0][0] == "application/octet-stream"
    raw = multipart(f"Content-Type: {crowded}\r\n\r\nMZ\r\n".encode())
    assert [a.filename for a in attachments([raw])] == ["evil.exe"]
    assert extract(multipart(f"Content-Type: text/plain; {crowded[26:]}\r\n\r\nhello\r\n".encode())).text == "hello"


def signed_post(signature_name: bytes = b"signature.asc", signature_type: bytes = b"application/pgp-signature") -> bytes:
    return (b"Content-Type: message/rfc822\r\n\r\nFrom: a@example.org\r\nSubject: post\r\n"
            b"Content-Type: multipart/signed; boundary=sig; protocol=\"application/pgp-signature\"\r\n\r\n"
            b"--sig\r\nContent-Type: text/plain\r\n\r\nhello\r\n--sig\r\nContent-Type: " + signature_type
            + b"; name=\"" + signature_name + b"\"\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\n--sig--\r\n")


def test_a_signed_post_past_the_500th_part_is_no_file(check: Any) -> None:
    # A digest whose 131st post was PGP-signed was quarantined: its signature.asc came past the 500 parts decoded.
    raw = multipart(*[signed_post()] * 140, boundary=b"dd", parameter=b"boundary=dd")
    assert len(raw) and hits(check, raw) == []
    skipped: list[str] = []
    names = [a.filename for a in attachments([raw], skipped=skipped)]
    assert set(names) == {"signature.asc"} and len(names) == (MAX_PARTS - 1) // 4 and skipped == []  # four parts a post


@pytest.mark.parametrize(("name", "ctype"), [(b"evil.exe", b"application/pgp-signature"), (b"signature.asc", b"application/octet-stream")])
def test_a_file_posing_as_a_signature_past_the_500th_part_is_still_a_limit(check: Any, name: bytes, ctype: bytes) -> None:
    raw = multipart(*[signed_post()] * 130, signed_post(name, ctype), boundary=b"dd", parameter=b"boundary=dd")
    assert [(h.symbol, h.detail, h.action) for h in hits(check, raw)] == [("ATTACH_MIME_LIMIT", f"message: {PARTS_LIMIT_NOTE}", Action.QUARANTINE)]


def test_the_archives_of_one_message_share_a_decompression_budget(tmp_path: Path) -> None:
    # archive_max_size bounds one attachment: 500 small zips each holding a 50 MB inner archive cost 25 GB of
    # decompression.  The message's archives now share archive_max_message_size: each is listed within what is left.
    inner = zipped({"big.txt": b"\0" * 400_000}, zipfile.ZIP_STORED)  # decompressed whole to be listed: 400 KB
    outer = zipped({"inner.zip": inner})
    one = archives.list_archive("a.zip", io.BytesIO(outer), "zip", archives.Limits()).decompressed
    assert one > 400_000
    encoded = base64.encodebytes(outer).replace(b"\n", b"\r\n")
    raw = multipart(*[b'Content-Type: application/zip; name="a%d.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n' % i + encoded
                      for i in range(5)])
    # Room for two: the third and the next are not looked into.
    check = attachment_check(tmp_path, f"archive_process = false\narchive_max_message_size = {2 * one}\n")
    past = f"the message's archives decompressed past archive_max_message_size {2 * one}: not looked into"
    assert {h.symbol: h.detail for h in hits(check, raw)} == {"ATTACH_ARCHIVE_LIMIT": "; ".join(f"a{i}.zip: {past}" for i in range(2, 5))}
    # Room for two and a half: the third is listed within what is left (its inner archive not opened).
    check = attachment_check(tmp_path, f"archive_process = false\narchive_max_message_size = {2 * one + one // 2}\n")
    detail = {h.symbol: h.detail for h in hits(check, raw)}["ATTACH_ARCHIVE_LIMIT"]
    assert detail.startswith(f"a2.zip/inner.zip: would decompress past {one // 2} bytes") and "a0.zip" not in detail
    assert hits(attachment_check(tmp_path), raw) == []  # the default, 200 MB

"""The links of a message larger than the link reader's window (``Envelope.text``, ``mimeparts.text_views``).

The link reader is given the headers and the first 4 × limit bytes of the body: a 5 MB image
before the HTML part hid its link from the URI lists and the custom rules (found in review).
The bodies of parts that hold no text are now left out of what it is given.
"""

from __future__ import annotations

import base64
import os

from milterd.content import mimeparts
from milterd.message.model import Envelope, Spool

LIMIT = 64 * 1024
PHISH = '<a href="https://phish-domain.test/login">Log in</a>'


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def envelope(body: bytes, content_type: bytes = b"multipart/mixed; boundary=B") -> Envelope:
    spool = Spool(1024)
    spool.write(body)
    return Envelope(spool=spool, headers=[("Subject", b"big"), ("Content-Type", content_type)], mail_args={})


def part(fields: str, body: bytes) -> bytes:
    return b"--B\r\n" + fields.encode() + b"\r\n\r\n" + body + b"\r\n"


def test_a_link_after_an_image_larger_than_the_window_is_found() -> None:
    body = (part("Content-Type: text/plain", b"See the picture.")
            + part("Content-Type: image/png\r\nContent-Transfer-Encoding: base64", b64(os.urandom(5 * LIMIT)))
            + part("Content-Type: text/html", PHISH.encode()) + b"--B--\r\n")
    found = envelope(body).text(LIMIT)
    assert found.uris == ["https://phish-domain.test/login"]
    assert found.text == "See the picture.\nLog in"
    assert not found.truncated


def test_parts_that_may_hold_text_are_kept_whole() -> None:
    forwarded = b"Subject: fwd\r\nContent-Type: text/html\r\n\r\n" + PHISH.replace("phish-", "forwarded-").encode() + b"\r\n"
    body = (part("Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64", b64(os.urandom(5 * LIMIT)))
            + part('Content-Type: application/octet-stream; name="saved.eml"\r\nContent-Transfer-Encoding: base64', b64(forwarded))
            + part("Content-Type: message/rfc822", forwarded.replace(b"forwarded-", b"inline-"))
            + part("Content-Type: text/plain; charset=utf-8", b"Visit www.plain-domain.test today") + b"--B--\r\n")
    found = envelope(body).text(LIMIT)
    assert set(found.uris) == {"https://forwarded-domain.test/login", "https://inline-domain.test/login", "http://www.plain-domain.test"}


def test_a_view_drops_only_the_bodies_of_parts_without_text() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=B\r\n\r\npreamble\r\n"
           + part("Content-Type: image/gif", b"GIF89a...")
           + part('Content-Type: application/zip; name="a.msg"', b"kept: an Outlook message by name")
           + part("Content-Type: text/plain", b"text") + b"--B--\r\nepilogue\r\n")
    view, cut = mimeparts.text_view([raw], 1 << 20)
    assert view == raw.replace(b"GIF89a...\r\n", b"")
    assert not cut
    assert mimeparts.text_view([raw], 40) == (raw[:40], True)


def test_a_part_only_one_reading_shows_is_kept_in_its_view() -> None:
    # Thunderbird reads boundary="B" (comment) as B, the standard library as the whole value: in the library's
    # reading the "image" below is no part but the text/html body's own lines, and its link is shown.
    raw = (b'Content-Type: multipart/mixed; boundary="B" (comment)\r\n\r\n'
           b'--"B" (comment)\r\nContent-Type: text/html\r\n\r\n'
           b"--B\r\nContent-Type: image/png\r\n\r\n" + PHISH.encode() + b'\r\n--"B" (comment)--\r\n')
    views = mimeparts.text_views(lambda: [raw], 1 << 20)
    assert [PHISH.encode() in view for view, _ in views] == [False, True, False]  # client, library, every variant

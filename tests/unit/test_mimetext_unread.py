"""``MessageText.unread``: why some of a message was not read for links (the URI lists' URIBL_UNREAD).

A message whose links lie past the link reader's bounds (4 MiB of text, 20,000 links, a large message's view cut,
an Outlook file it cannot open) had them silently not looked up; ``truncated`` is set for text past the text
budget too, whose links are read, so it could not tell the administrator which messages those were.
"""

from __future__ import annotations

import base64
import os

from milterd.content.mimetext import MAX_LINKS_SCANNED, extract
from tests.unit.test_mimetext_large_messages import LIMIT, PHISH, envelope, part

HEAD = b"From: a@example.org\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def test_an_ordinary_message_is_read_whole() -> None:
    found = extract(HEAD + part("Content-Type: text/html", PHISH.encode()) + b"--B--\r\n")
    assert (found.uris, found.unread) == (["https://phish-domain.test/login"], "")


def test_text_past_the_text_budget_whose_links_are_read_is_not_unread() -> None:
    # truncated (the text cut) but every link read: the second part is within the link room (4 x limit).
    raw = HEAD + part("Content-Type: text/plain", b"x" * 1500) + part("Content-Type: text/html", b"y" * 2500 + PHISH.encode()) + b"--B--\r\n"
    found = extract(raw, limit=1000)
    assert found.truncated and found.unread == "" and found.uris == ["https://phish-domain.test/login"]


def test_a_part_past_the_link_room_is_unread() -> None:
    raw = HEAD + part("Content-Type: text/plain", b"x" * 1500) + part("Content-Type: text/html", b"y" * 5000 + PHISH.encode()) + b"--B--\r\n"
    found = extract(raw, limit=1000)
    assert found.unread == "text" and found.uris == []


def test_more_links_than_the_reader_takes() -> None:
    links = " ".join(f"http://host{i}.example/" for i in range(MAX_LINKS_SCANNED + 1)).encode()
    assert extract(HEAD + part("Content-Type: text/plain", links) + b"--B--\r\n").unread == "links"
    fewer = " ".join(f"http://host{i}.example/" for i in range(MAX_LINKS_SCANNED)).encode()  # every one read
    assert extract(HEAD + part("Content-Type: text/plain", fewer) + b"--B--\r\n").unread == ""


def test_an_outlook_file_that_cannot_be_opened() -> None:
    damaged = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600
    raw = HEAD + part('Content-Type: application/vnd.ms-outlook; name="fwd.msg"\r\nContent-Transfer-Encoding: base64', b64(damaged)) + b"--B--\r\n"
    assert extract(raw).unread == "outlook"


def test_a_large_message_read_whole_through_its_view() -> None:
    body = (part("Content-Type: image/png\r\nContent-Transfer-Encoding: base64", b64(os.urandom(5 * LIMIT)))
            + part("Content-Type: text/html", PHISH.encode()) + b"--B--\r\n")
    found = envelope(body).text(LIMIT)
    assert (found.uris, found.unread) == (["https://phish-domain.test/login"], "")


def test_a_large_message_whose_view_is_cut() -> None:
    # More text than the view holds (4 x limit) before the HTML part: its link is past every reading.
    body = (part("Content-Type: text/plain", b"a newsletter line\r\n" * (5 * LIMIT // 19))
            + part("Content-Type: text/html", PHISH.encode()) + b"--B--\r\n")
    found = envelope(body).text(LIMIT)
    assert (found.uris, found.unread) == ([], "large")

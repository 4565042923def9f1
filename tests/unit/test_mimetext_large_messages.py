"""The links of a message larger than the link reader's window (``Envelope.text``, ``mimeparts.text_views``).

The link reader is given the headers and the first 4 × limit bytes of the body: a 5 MB image
before the HTML part hid its link from the URI lists and the custom rules (found in review).
The bodies of parts that hold no text are now left out of what it is given.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from milterd.content import mimeparts, mimetext
from milterd.content.mimetext import extract
from milterd.message.model import Envelope, Spool, SpoolError
from tests.harness.outlookmsg import attachment, compound_file, msg_tree, unicode

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


IMAGE = b"--B\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(os.urandom(5 * LIMIT)) + b"--B--\r\n"
HTML = b"--B\r\nContent-Type: text/html\r\n\r\n" + PHISH.encode() + b"\r\n"
CHUNK_EDGE = b"--B\r\nContent-Type: text/html\r\n\r\n<p>"


# Found by review: each part below is shown as text by the standard library (and so the link reader), but the first
# view took it for an image's body and dropped it, with its link, where the 4 MB window had kept it.
@pytest.mark.parametrize("head", [
    b"--B\r\nContent-Type: image/gif\r\n" + HTML,  # a delimiter ends the image's header section: its part has no body
    b"--B\r\nContent-Type: image /png\r\n\r\n" + PHISH.encode() + b"\r\n",  # a type not plainly written: text/plain
    b"--B\r\nContent-Type: (c) text/html\r\n\r\n" + PHISH.encode() + b"\r\n",
    # The first Content-Type (text/html) is past the field bound; the second is not what the standard library reads.
    b'--B\r\nContent-Type: text/html; x="' + b"a" * 17000 + b'"\r\nContent-Type: image/gif\r\n\r\n' + PHISH.encode() + b"\r\n",
    # A line of the HTML body longer than 64 KB, read in pieces: no delimiter starts the piece at the spool's chunk edge.
    CHUNK_EDGE + b"x" * (131072 - len(CHUNK_EDGE)) + b"--B\r\nContent-Type: image/png\r\n\r\n" + PHISH.encode() + b"\r\n",
    # Past MAX_VIEW_LINES lines that start like a delimiter, the rest is read as written.
    b"--B\r\nContent-Type: image/png\r\n\r\n" + b"--Bx\n" * 250_000 + HTML,
    # A second review: header sections the standard library ends, or splits, otherwise than the view did.
    b"--B\r\r\nContent-Type: image/png\r\n\r\n" + PHISH.encode() + b"\r\n",  # a blank line after the delimiter
    b"--B\r\nX: y\r\r\nContent-Type: image/png\r\n\r\n" + PHISH.encode() + b"\r\n",  # a bare CR in a field
    b"--B\r\nno colon here\r\nContent-Type: image/png\r\n\r\n" + PHISH.encode() + b"\r\n",  # no field line
    b"--B\r\nContent-Type : image/png\r\n\r\n" + PHISH.encode() + b"\r\n",
    # A bare-CR delimiter right after a line longer than 64 KB (read in pieces).
    b"--B\r\nContent-Type: image/png\r\n\r\n" + b"A" * 131_140 + b"\r--B\rContent-Type: text/html\r\r" + PHISH.encode() + b"\r\n",
    # The first Content-Type past its bound, the second a multipart: what that multipart holds is kept too.
    b'--B\r\nContent-Type: text/html; x="' + b"a" * 17000 + b'"\r\nContent-Type: multipart/mixed; boundary=C\r\n\r\n'
    b"--C\r\nContent-Type: image/png\r\n\r\n" + PHISH.encode() + b"\r\n--C--\r\n",
], ids=["header-ended-by-delimiter", "spaced-type", "comment-type", "long-first-type", "chunk-edge", "line-bound",
        "cr-cr-lf-delimiter", "bare-cr-field", "no-field-line", "space-before-colon", "bare-cr-after-long-line",
        "long-first-type-multipart"])
def test_a_part_read_as_text_is_never_dropped(head: bytes) -> None:
    assert envelope(head + IMAGE).text(LIMIT).uris == ["https://phish-domain.test/login"]


def view_links(body: bytes, content_type: bytes = b"multipart/mixed; boundary=B") -> set[str]:
    """The links of the text views alone of the message (not its first 4 x limit bytes as written)."""
    found = envelope(body, content_type)
    room = len(found.header_bytes) + 4 * LIMIT
    return {uri for view, _ in mimeparts.text_views(found.message_chunks, room, 12 * LIMIT) for uri in extract(view, LIMIT).uris}


def typed(ctype: bytes, body: bytes = PHISH.encode()) -> bytes:
    return b"--B\r\nContent-Type: " + ctype + b"\r\n\r\n" + body + b"\r\n"


# A third review: each hid the link from the views (the window found these, being before the image).
@pytest.mark.parametrize(("head", "content_type"), [
    # 0xA0 and 0x85 are blanks in the view's Latin-1 reading of the fields, U+FFFD to the parser of the bytes.
    (typed(b"\xa0 image/png"), b"multipart/mixed; boundary=B"),
    (b"--X\r\nContent-Type: image/png\r\n\r\n" + typed(b"text/html").replace(b"--B", b"--X C"), b"multipart/mixed; \xa0boundary=X; boundary=X C"),
    # A nested multipart reusing B: the parser gives "--B" to the outermost, so C is closed there for it.
    (typed(b"multipart/alternative; boundary=C", b"--C\r\nContent-Type: multipart/related; boundary=B\r\n\r\n--B\r\n"
           b"Content-Type: text/html\r\n\r\n<p>Hi</p>\r\n--C\r\nContent-Type: image/png\r\n\r\n" + PHISH.encode() + b"\r\n--C--"),
     b"multipart/mixed; boundary=B"),
    # A bare CR in a body: a line end to the parser, whose "--B" there closes C.
    (typed(b"multipart/related; boundary=C", b"x\r--B\r\n--C\r\nContent-Type: image/png\r\n\r\n" + PHISH.encode() + b"\r\n--C--"),
     b"multipart/mixed; boundary=B"),
    # An attached message's header ended by "\r\r\n": two blank lines to the parser, the message's header empty.
    (b"--B\r\nContent-Type: message/rfc822\r\n\r\r\nContent-Type: image/png\r\n\r\n" + PHISH.encode() + b"\r\n",
     b"multipart/mixed; boundary=B"),
], ids=["nbsp-type", "nbsp-boundary", "reused-boundary", "bare-cr-in-preamble", "cr-cr-lf-message-header"])
def test_the_views_read_the_structure_as_the_parser_does(head: bytes, content_type: bytes) -> None:
    tail = IMAGE.replace(b"--B", b"--X") if b"boundary=X" in content_type else IMAGE
    assert view_links(head + tail, content_type) == {"https://phish-domain.test/login"}


def test_what_the_window_finds_is_found_where_the_views_miss_it() -> None:
    # Past the parser's line bound (cut short by the word "boundary"), the window's text is scanned as written,
    # an image's body too; no view keeps that body (found by review).
    body = typed(b"text/plain", b"boundary\r\n" * 2100) + typed(b"image/png", b"https://phish-domain.test/login") + IMAGE
    assert view_links(body) == set()
    assert envelope(body).text(LIMIT).uris == ["https://phish-domain.test/login"]


def test_a_delimiter_line_ended_by_a_bare_cr_is_followed_as_the_standard_library_does() -> None:
    # Not followed by the view, which splits lines at LF: the image's body with a bare CR is kept, as written.
    body = IMAGE[:-7] + b"--B\rContent-Type: text/html\r\r" + PHISH.encode() + b"\r\n--B--\r\n"
    assert envelope(body).text(LIMIT).uris == ["https://phish-domain.test/login"]


def test_parts_that_may_hold_text_are_kept_whole() -> None:
    forwarded = b"Subject: fwd\r\nContent-Type: text/html\r\n\r\n" + PHISH.replace("phish-", "forwarded-").encode() + b"\r\n"
    body = (part("Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64", b64(os.urandom(5 * LIMIT)))
            + part('Content-Type: application/octet-stream; name="saved.eml"\r\nContent-Transfer-Encoding: base64', b64(forwarded))
            + part("Content-Type: message/rfc822", forwarded.replace(b"forwarded-", b"inline-"))
            + part("Content-Type: text/plain; charset=utf-8", b"Visit www.plain-domain.test today") + b"--B--\r\n")
    found = envelope(body).text(LIMIT)
    assert set(found.uris) == {"https://forwarded-domain.test/login", "https://inline-domain.test/login", "http://www.plain-domain.test"}


def test_an_outlook_message_file_larger_than_the_window_is_read() -> None:
    # A photo in a .msg made it larger than the window: its base64 was cut and its HTML body's link never read.
    saved = msg_tree("Your account", attachment("photo.jpg", os.urandom(5 * LIMIT)))
    saved["__substg1.0_1013001F"] = unicode(PHISH)
    body = (part("Content-Type: text/plain", b"See the attached.")
            + part('Content-Type: application/vnd.ms-outlook; name="Your account.msg"\r\nContent-Transfer-Encoding: base64',
                   b64(compound_file(saved))) + b"--B--\r\n")
    found = envelope(body).text(LIMIT)
    assert found.uris == ["https://phish-domain.test/login"]
    # Attached messages' bodies have their own room (SAVED_ROOM x the limit), past which they are cut too.
    assert envelope(body).text(LIMIT // 16).uris == []


def test_a_view_drops_only_the_bodies_of_parts_without_text() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=B\r\n\r\npreamble\r\n"
           + part("Content-Type: image/gif", b"GIF89a...")
           + part('Content-Type: application/zip; name="a.msg"', b"kept: an Outlook message by name")
           + part("Content-Type: text/plain", b"text") + b"--B--\r\nepilogue\r\n")
    view, cut = mimeparts.text_view([raw], 1 << 20)
    assert view == raw.replace(b"GIF89a...\r\n", b"")
    assert not cut
    assert mimeparts.text_view([raw], 40) == (raw[:40], True)
    forwarded = b64(b"Subject: x\r\n\r\nhi")
    raw = (b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: message/rfc822\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + forwarded + b"--B--\r\n")
    room = len(raw) - len(forwarded)  # the rest: an attached message's body has a room of its own
    assert mimeparts.text_view([raw], room, len(forwarded)) == (raw, False)
    assert mimeparts.text_view([raw], room, len(forwarded) - 1) == (raw[:room], True)  # past it, counted against room


def test_a_part_only_one_reading_shows_is_kept_in_its_view() -> None:
    # Thunderbird reads boundary="B" (comment) as B, the standard library as the whole value: in the library's
    # reading the "image" below is no part but the text/html body's own lines, and its link is shown.
    raw = (b'Content-Type: multipart/mixed; boundary="B" (comment)\r\n\r\n'
           b'--"B" (comment)\r\nContent-Type: text/html\r\n\r\n'
           b"--B\r\nContent-Type: image/png\r\n\r\n" + PHISH.encode() + b'\r\n--"B" (comment)--\r\n')
    views = mimeparts.text_views(lambda: [raw], 1 << 20)
    assert [PHISH.encode() in view for view, _ in views] == [False, True, False]  # client, library, every variant


def test_the_text_of_every_reading_is_read() -> None:
    # Only the standard library's reading shows this text (in Thunderbird's the "image" is a part): the custom
    # rules read it too, not only the first view's text (found in review).
    body = (b'--"B" (comment)\r\nContent-Type: text/html\r\n\r\n'
            b"--B\r\nContent-Type: image/png\r\n\r\n<p>Your mailbox is suspended</p>" + PHISH.encode() + b"\r\n"
            + IMAGE.replace(b"--B", b'--"B" (comment)'))
    found = envelope(body, b'multipart/mixed; boundary="B" (comment)').text(LIMIT)
    assert "Your mailbox is suspended" in found.text
    assert found.uris == ["https://phish-domain.test/login"]


def test_a_view_that_fails_leaves_the_window_s_links(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*_: object) -> None:
        raise ValueError("a defect in the view")

    monkeypatch.setattr(mimetext, "text_views", failing)
    found = envelope(HTML + IMAGE).text(LIMIT)
    assert found.uris == ["https://phish-domain.test/login"]
    assert found.error == "ValueError: a defect in the view" and found.truncated


# A fourth review: ordinary mail that made the views keep everything, so the window alone was read.
@pytest.mark.parametrize(("head", "image_fields"), [
    (typed(b"text/html", b"<p>Hi\r\r\nthere</p>\r\r\n"), b""),  # CR CR LF line ends, a Windows double conversion
    (typed(b"text/plain", b"Hi\rthere"), b""),  # a lone CR no delimiter line is made of
    (b"", b'Content-Disposition: attachment; filename="f\xc3\xb6t\xc3\xb6.png"\r\n'),  # a raw UTF-8 name
    (b"", b"Content-Disposition: inline\r\nContent-Disposition: attachment\r\n"),
], ids=["cr-cr-lf-lines", "lone-cr", "utf8-file-name", "disposition-twice"])
def test_ordinary_quirks_before_a_large_image_leave_the_views_working(head: bytes, image_fields: bytes) -> None:
    image = IMAGE[:-7].replace(b"Content-Type: image/png\r\n", b"Content-Type: image/png\r\n" + image_fields)
    assert view_links(head + image + HTML + b"--B--\r\n") == {"https://phish-domain.test/login"}


def test_the_text_is_the_views_not_the_window_cut_anywhere() -> None:
    # The window cut "&amp;" short: its text was no part of the view's, and was joined twice (found in review).
    html = b"--B\r\nContent-Type: text/html\r\n\r\n<p>Tom &amp; Jerry</p>\r\n"
    head = b"--B\r\nContent-Type: image/gif\r\n\r\n"
    pad = head + b"x" * (4 * LIMIT - len(head) - 2 - html.index(b"&amp;") - 2) + b"\r\n"
    assert (pad + html)[:4 * LIMIT].endswith(b"Tom &a")  # where the window ends
    found = envelope(pad + html + IMAGE).text(LIMIT)
    assert found.text == "Tom & Jerry"
    assert found.uris == []


def test_a_spool_that_fails_past_the_window_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    found = envelope(HTML + IMAGE)
    chunks = found.message_chunks

    def failing(size: int = 65536) -> Any:
        for count, chunk in enumerate(chunks(size)):
            if count > 5:  # the header, then 64 KB chunks: the window is 4 of them
                raise SpoolError("the spool file was cut")
            yield chunk

    monkeypatch.setattr(found, "message_chunks", failing)
    with pytest.raises(SpoolError):
        found.text(LIMIT)


def test_views_past_the_cpu_bound_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mimetext, "LARGE_SECONDS", -1.0)
    found = envelope(HTML + IMAGE).text(LIMIT)
    assert found.uris == ["https://phish-domain.test/login"] and found.truncated  # the window's
    assert envelope(IMAGE[:-7] + HTML + b"--B--\r\n").text(LIMIT).uris == []


# A fifth review: bare CRs making a delimiter line that the CR rule missed, after a large image.
def test_a_bare_cr_delimiter_as_a_dropped_body_s_first_line_stops_the_leaving_out() -> None:
    body = IMAGE[:-7] + b"--B\r\nContent-Type: image/png\r\n\r\n--B\rContent-Type: text/html\r\r" + PHISH.encode() + b"\r\n--B--\r\n"
    assert view_links(body) == {"https://phish-domain.test/login"}


@pytest.mark.parametrize("before_edge", [1, 2], ids=["cr|--B", "cr-|-B"])
def test_a_bare_cr_delimiter_across_the_pieces_of_a_long_line_stops_the_leaving_out(before_edge: int) -> None:
    # A line longer than 64 KB is read in pieces cut at the spool's 64 KB chunks: "\r--B" across two of them.
    head = IMAGE[:-7] + b"--B\r\nContent-Type: image/png\r\n\r\n"
    edge = (len(head) // 65536 + 2) * 65536
    body = (head + b"A" * (edge - before_edge - len(head)) + b"\r--B\r\nContent-Type: text/html\r\n\r\n" + PHISH.encode()
            + b"\r\n--B--\r\n")
    assert view_links(body) == {"https://phish-domain.test/login"}

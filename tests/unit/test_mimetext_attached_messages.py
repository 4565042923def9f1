"""An attached message's text and links are read as a mail client opens it.

A message/rfc822 part in base64 (Exchange Online's "forward as attachment")
was left encoded by the parser, its base64 read as text: the phishing link of
the forwarded message was never looked up in the URI lists, and the text
rules and the classifier saw base64.  A file named ``.eml`` was not read at all.
"""

from __future__ import annotations

import base64

from milterd.content.mimetext import MAX_ATTACHED_DEPTH, MAX_PARTS, extract

INNER = b"From: x@example.org\r\nSubject: account\r\nContent-Type: text/html\r\n\r\n<p>Your account: <a href=\"https://phish.example/login\">log in</a></p>\r\n"


def encoded(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def carrying(inner: bytes, part: bytes = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64") -> bytes:
    return (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
            b"--zz\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--zz\r\n" + part + b"\r\n\r\n" + encoded(inner) + b"--zz--\r\n")


def test_a_base64_message_part_is_read_decoded() -> None:
    result = extract(carrying(INNER))
    assert result.uris == ["https://phish.example/login"] and result.error == ""
    assert result.text == "see attached\nYour account: log in"  # no base64 among the text


def test_a_file_named_eml_is_read_as_a_message() -> None:
    for part in (b'Content-Type: application/octet-stream; name="Fwd.EML"\r\nContent-Transfer-Encoding: base64',
                 b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=utf-8''fwd%2Eeml\r\nContent-Transfer-Encoding: base64"):
        assert extract(carrying(INNER, part)).uris == ["https://phish.example/login"], part


def test_attached_messages_are_read_down_to_the_depth_bound() -> None:
    def forwarded(levels: int) -> bytes:
        message = INNER
        for _ in range(levels):
            message = carrying(message)
        return message

    assert extract(forwarded(MAX_ATTACHED_DEPTH)).uris == ["https://phish.example/login"]
    deeper = extract(forwarded(MAX_ATTACHED_DEPTH + 1))
    assert deeper.uris == [] and deeper.error == ""


def test_an_attached_message_s_parts_count_with_the_message_s() -> None:
    many = b"".join(b"--in\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(MAX_PARTS))
    inner = b"Content-Type: multipart/mixed; boundary=in\r\n\r\n" + many + b"--in\r\nContent-Type: text/plain\r\n\r\nhttp://late.example/\r\n--in--\r\n"
    result = extract(carrying(inner))
    assert result.truncated and result.error == "" and "http://late.example/" not in result.uris


def test_undecodable_base64_is_no_message_and_no_error() -> None:
    raw = carrying(b"").replace(b"\r\n\r\n--zz--", b"\r\n\r\n!!!! not base64 ????\r\n--zz--")
    assert extract(raw).error == ""

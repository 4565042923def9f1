"""Links in text the parser is not given are read as a mail client would show them.

The parser is given a message's first lines only (fewer when the word "boundary" repeats), and an attached
message past the CPU budget none: that text was scanned for links as written, so a link in a base64 or
quoted-printable HTML part there was missed (found by review, as each of the cases below).  Its text bodies
are decoded now; a PDF's or an image's body is not (no mail client shows its links).
"""

from __future__ import annotations

import base64

import pytest

from milterd.content.mimetext import MAX_LINKS_SCANNED, extract

HTML = b'<html><body><a href="https://evil.example/login">log in</a></body></html>\r\n'
PAD = b"boundary " * 2100 + b"\r\n"  # the parser is given 2,000 lines
FILLER = b"".join(b"line %d\r\n" % i for i in range(1985))


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def padded(part: bytes, more: int = 100) -> bytes:
    filler = FILLER + b"".join(b"more %d\r\n" % i for i in range(more))
    return (b"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
            b"Content-Type: text/plain\r\n\r\n" + PAD + filler + b"--zz\r\n" + part + b"--zz--\r\n")


@pytest.mark.parametrize(("case", "raw"), [
    ("a base64 part the line bound cuts", padded(b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                                                 + b64(b"<p>" + b"x" * 1500 + b"</p>" + HTML), more=0)),
    ("base64 after a blank line", padded(b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n\r\n" + b64(HTML))),
    ("a folded encoding field", padded(b"Content-Type: text/html\r\nContent-Transfer-Encoding:\r\n base64\r\n\r\n" + b64(HTML))),
    ("a character no base64 has", padded(b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n." + b64(HTML))),
    ("a blank line within the base64", padded(b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                                              + b64(b"<p>" + b"y" * 200 + b"</p>").rstrip() + b"\r\n\r\n" + b64(HTML))),
    ("quoted-printable without =3D", padded(b"Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                                            b'<a href="h=74tps://evil=2Eexample/login">log in</a>\r\n')),
])
def test_an_encoded_link_in_text_the_parser_is_not_given_is_found(case: str, raw: bytes) -> None:
    assert extract(raw.replace(PAD, b"\r\n")).uris == ["https://evil.example/login"], case  # parsed whole: the control
    result = extract(raw)
    assert result.truncated and "https://evil.example/login" in result.uris, case


def test_links_read_as_written_are_not_counted_again_when_decoded() -> None:
    # 10,000 links and one soft line break: the quoted-printable pass read them all again, spending the bound
    # before the base64 part's link (which needed 20,000).
    links = b"".join(b"http://pad.example/%d\r\n" % i for i in range(MAX_LINKS_SCANNED // 2 + 1)) + b"=\r\n"
    raw = padded(b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(HTML) + b"--zz\r\nContent-Type: text/plain\r\n\r\n" + links)
    assert "https://evil.example/login" in extract(raw).uris


def test_a_pdf_s_links_are_not_read_from_the_unparsed_text() -> None:
    pdf = b"%PDF-1.4\r\n<< /URI (https://tracking.vendor.example/c/123) >>\r\n"
    raw = padded(b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(pdf))
    assert extract(raw.replace(PAD, b"\r\n")).uris == []  # parsed whole: a PDF is no text part
    assert extract(raw).uris == []


HEADER = b"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\n"


def cut_within(part: bytes, lines_before_cut: int) -> bytes:
    """A message whose parser input (2,000 lines: PAD) ends *lines_before_cut* lines into *part*."""
    from milterd.content.mimetext import _line_ends, _parser_input

    base = HEADER + PAD
    filler = b"".join(b"line %d\r\n" % i for i in range(2000 - _line_ends(base, len(base)) - 1 - lines_before_cut))
    raw = base + filler + b"--zz\r\n" + part + b"--zz--\r\n"
    head, _ = _parser_input(raw)
    assert head.endswith(b"".join(part.splitlines(keepends=True)[:lines_before_cut]))
    return raw


def b64_lines(data: bytes, width: int) -> bytes:
    encoded = base64.b64encode(data)
    return b"".join(encoded[i:i + width] + b"\r\n" for i in range(0, len(encoded), width))


LONG = b"<p>" + b"x" * 300 + b"</p>" + HTML  # the link on its body's sixth and seventh 76-character lines


@pytest.mark.parametrize(("case", "part", "lines"), [
    # The link split by the cut: the head decoded to ...https://evil.ex, the rest to ample/login.
    ("a link the cut splits", b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64_lines(LONG, 76), 3 + 6),
    # Lines of 75 characters: the rest decoded alone is out of step.
    ("75-character base64 lines", b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64_lines(LONG, 75), 3 + 2),
    # The cut inside the part's header: the rest's first lines are the header's.
    ("a cut within the header", b"Content-Transfer-Encoding: base64\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + b64_lines(LONG, 76), 1),
    # A quoted-printable soft break at the cut.
    ("a soft break at the cut", b"Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                                b'<a href=3D"https://evil.ex=\r\nample/login">x</a>\r\n', 4),
])
def test_a_link_of_the_part_the_cut_falls_in_is_found(case: str, part: bytes, lines: int) -> None:
    raw = cut_within(part, lines)
    assert "https://evil.example/login" in extract(raw.replace(PAD, b"\r\n")).uris, case
    assert "https://evil.example/login" in extract(raw).uris, case


def test_unparsed_links_are_read_in_the_order_of_the_text() -> None:
    # A base64 part of 20,001 links after a written link spent the bound before it; so did a plain part after
    # a quoted-printable one.
    many = b"".join(b"http://pad.example/%d " % i for i in range(MAX_LINKS_SCANNED + 1))
    for first, then in ((b"Content-Type: text/plain\r\n\r\nsee https://evil.example/login\r\n",
                         b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(many)),
                        (b"Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<a href=3D\"https://evil.example/login\">x</a>\r\n",
                         b"Content-Type: text/plain\r\n\r\n" + many + b"\r\n")):
        raw = padded(first + b"--zz\r\n" + then)
        assert "https://evil.example/login" in extract(raw).uris, first


def test_a_link_a_soft_break_cut_is_not_read_as_written() -> None:
    raw = padded(b"Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                 b'<a href=3D"https://evil.ex=\r\nample/login">x</a>\r\n')
    assert [uri for uri in extract(raw).uris if "evil" in uri] == ["https://evil.example/login"]  # not https://evil.ex= too

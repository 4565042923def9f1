"""mimetext.extract gives the stdlib parser at most MAX_LINES lines of a message.

The parser keeps each line as an object of its own: 4 MB of empty lines (two million) took
150 MB and most of a second of a worker, for every such message it held at once.  The parts in
the first MAX_LINES lines are read as before; the links written in the rest are still found,
as in plain text, so padding cannot hide a link from the URI lists.
"""

from __future__ import annotations

import pytest

from milterd.content import mimetext
from tests.harness.memory import peak_while

HEAD = b"From: a@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"


def multipart(*parts: tuple[bytes, bytes]) -> bytes:
    return HEAD + b"".join(b"--XX\r\nContent-Type: " + ctype + b"\r\n\r\n" + body for ctype, body in parts) + b"--XX--\r\n"


def test_a_body_of_empty_lines_is_read_in_bounded_memory() -> None:
    raw = multipart((b"text/plain", b"hello http://first.example/\r\n"), (b"text/plain", b"\r\n" * 2_000_000))
    found, peak = peak_while(lambda: mimetext.extract(raw))
    assert found.uris == ["http://first.example/"] and found.text.startswith("hello http://first.example/")
    assert found.truncated
    assert peak < 10 * len(raw)  # all two million lines parsed: 150 MB, 37 times the message


def test_links_past_the_lines_parsed_are_still_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mimetext, "MAX_LINES", 1000)
    raw = multipart(
        (b"text/plain", b"first http://first.example/\r\n"),
        (b"application/octet-stream", b"QUFB\r\n" * 2000),
        (b"text/html", b'<a href="http://hidden.example/x">click</a> and www.later.example\r\n'),
    )
    found = mimetext.extract(raw)
    assert found.text == "first http://first.example/" and found.truncated
    assert found.uris == ["http://first.example/", "http://hidden.example/x", "http://www.later.example"]


def test_a_message_within_the_lines_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = multipart((b"text/plain", b"a\r\n" * 500), (b"text/html", b"<p>http://b.example/</p>\r\n"))
    whole = mimetext.extract(raw)
    monkeypatch.setattr(mimetext, "MAX_LINES", raw.count(b"\n"))
    assert mimetext.extract(raw) == whole and not whole.truncated and whole.uris == ["http://b.example/"]
    monkeypatch.setattr(mimetext, "MAX_LINES", raw.count(b"\n") - 1)
    assert mimetext.extract(raw).truncated


@pytest.mark.parametrize("count", [0, 1, 2, 5, 6, 100])
def test_first_lines_cuts_after_the_count_th_line_end(count: int) -> None:
    raw = b"a\nbb\n\nccc\nd\n"  # five line ends
    head, rest = mimetext._first_lines(raw, count)
    assert head + rest == raw
    assert head == b"".join(raw.splitlines(keepends=True)[:count]) if count < 5 else (head, rest) == (raw, b"")


def test_bare_carriage_returns_are_lines_to_the_parser_and_are_counted() -> None:
    """The stdlib parser ends a line at a bare CR too: 4 MB of "a CR" took 143 MB past a count of LFs only."""
    raw = multipart((b"text/plain", b"hello http://first.example/\r\n"), (b"text/plain", b"a\r" * 2_000_000 + b"\r\n"))
    found, peak = peak_while(lambda: mimetext.extract(raw))
    assert found.truncated and found.uris == ["http://first.example/"]
    assert peak < 10 * len(raw)


@pytest.mark.parametrize(("count", "head"), [(1, b"a\r\n"), (2, b"a\r\nb\r"), (3, b"a\r\nb\rc\n"), (4, b"a\r\nb\rc\n\r\n")])
def test_first_lines_ends_lines_at_crlf_cr_and_lf(count: int, head: bytes) -> None:
    raw = b"a\r\nb\rc\n\r\nd\r\ne"
    assert mimetext._first_lines(raw, count) == (head, raw[len(head):])

"""The stdlib parser's work is bounded by nesting times lines, not lines alone.

The email feedparser checks every line against the boundary of each enclosing multipart (the EOF
stack of its BufferedSubFile): 600 nested multiparts and 200,000 lines of "x" (634 KB) cost
120 million checks, 8-36 s of CPU, in extract() and again in the Bayes tokenizer.  The work is
measured here by counting those checks (every EOF matcher the parser pushes is wrapped), not by
the clock.
"""

from __future__ import annotations

import email.feedparser
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from milterd.content import mimetext
from milterd.content.mimetext import extract
from milterd.learner import tokenizer

#: The bound the fix promises (mimetext.LINE_WORK), written out: the test must not follow the constant.
WORK = 4_000_000


class TooMuchWork(Exception):
    pass


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many times the parser checked a line against an enclosing boundary, in a list of one; past
    twice the bound the check raises (extract() records it as its error), so that the unbounded
    parse fails in a second rather than running for half a minute."""
    count = [0]
    push = email.feedparser.BufferedSubFile.push_eof_matcher

    def counting_push(self: Any, pred: Callable[[str], Any]) -> None:
        def counted(line: str) -> Any:
            count[0] += 1
            if count[0] > 2 * WORK:
                raise TooMuchWork(count[0])
            return pred(line)

        push(self, counted)

    monkeypatch.setattr(email.feedparser.BufferedSubFile, "push_eof_matcher", counting_push)
    yield count


def deep_message(levels: int = 600, lines: int = 200_000, tail: bytes = b"") -> bytes:
    """The fuzzer's message: *levels* nested multipart/mixed, then *lines* lines of "x" (CRLF)."""
    head = b"From: a@example.org\nTo: b@example.net\nSubject: t\nMIME-Version: 1.0\n"
    parts = [head]
    for level in range(levels):
        parts.append(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (level, level))
    parts.append(b"Content-Type: text/plain\n\n")
    parts.append(b"x\n" * lines)
    parts.append(tail)
    return b"".join(parts).replace(b"\n", b"\r\n")


def test_deep_nesting_and_many_lines_cost_bounded_parser_work(checks: list[int]) -> None:
    raw = deep_message(tail=b"see http://late-link.example/after-the-cut\n")
    assert len(raw) > 600_000
    found = extract(raw)
    assert found.error == ""
    assert checks[0] <= WORK, checks[0]
    assert checks[0] > 0  # the parse did read nested parts (the counter counts)
    assert found.truncated
    # the lines past the parsed ones are read as those past MAX_LINES: their links are still found
    assert "http://late-link.example/after-the-cut" in found.uris


def test_tokenizer_parse_of_deep_nesting_is_bounded(checks: list[int]) -> None:
    raw = deep_message()
    tokens = tokenizer.tokenize(raw)
    assert checks[0] <= WORK, checks[0]
    assert "--b599" in tokens  # the header section and undecoded body are still tokenized


def test_many_boundary_words_with_few_lines_are_parsed_whole(checks: list[int]) -> None:
    """Under MIN_PARSED_LINES lines the parse is whole, however many "boundary" it names."""
    raw = deep_message(levels=300, lines=100, tail=b"http://inner.example/x\n")  # 600 parts: past MAX_PARTS
    found = extract(raw)
    assert found.error == ""
    assert checks[0] <= WORK
    assert found.uris == ["http://inner.example/x"]
    assert not found.truncated


def ordinary_message(lines: int, boundaries: int) -> bytes:
    """A multipart/alternative of a long plain part and an HTML part, in *boundaries* levels."""
    out = [b"From: a@example.org\nTo: b@example.net\nSubject: t\nMIME-Version: 1.0\n"]
    for level in range(boundaries - 1):
        out.append(b'Content-Type: multipart/mixed; boundary="m%d"\n\npreamble\n--m%d\n' % (level, level))
    out.append(b'Content-Type: multipart/alternative; boundary="alt"\n\n--alt\n')
    out.append(b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n")
    out.append(b"".join(b"line %d caf=C3=A9\n" % number for number in range(lines)))
    out.append(b"last words http://plain.example/end\n--alt\nContent-Type: text/html\n\n")
    out.append(b'<p>hello <a href="http://html.example/link">there</a></p>\n--alt--\n')
    for level in reversed(range(boundaries - 1)):
        out.append(b"--m%d--\n" % level)
    return b"".join(out)


@pytest.mark.parametrize(("lines", "boundaries"), [(150_000, 3), (100_000, 20)])
def test_ordinary_multipart_extraction_unchanged(lines: int, boundaries: int) -> None:
    raw = ordinary_message(lines, boundaries)
    found = extract(raw, limit=16 * 1024 * 1024)
    assert found.error == ""
    assert not found.truncated
    assert found.text.startswith("line 0 café\nline 1 café\n")
    assert f"line {lines - 1} café\nlast words http://plain.example/end" in found.text
    assert found.text.endswith("hello there")
    assert found.uris == ["http://plain.example/end", "http://html.example/link"]


def test_ordinary_multipart_goes_to_the_parser_whole() -> None:
    for lines, boundaries in [(150_000, 3), (100_000, 20), (199_000, 20)]:
        raw = ordinary_message(lines, boundaries)
        assert mimetext._parser_input(raw) == (raw, b"")  # noqa: SLF001


def test_parser_input_cut_is_at_a_line_end_and_keeps_every_byte() -> None:
    raw = deep_message()
    head, rest = mimetext._parser_input(raw)  # noqa: SLF001
    assert head + rest == raw
    assert head.endswith(b"\r\n") and rest.startswith(b"x\r\n")
    lines = head.count(b"\n")
    assert lines == 4_000_000 // 600  # the boundaries: 600, in their headers

"""Hostile message content (the fuzzing review): unterminated HTML, codecs that are no mail charset,
encoded-words naming such codecs.  Each gives a verdict in bounded time, never an exception.

The bounds are checked on the work done (characters the HTML parser's scans may reach, values given to the stdlib's
address parser, bytes given to the punycode decoder), not on the clock: a busy machine must not fail them."""

from __future__ import annotations

import email._header_value_parser
import email.utils
import encodings.punycode
from typing import Any, Callable

import pytest

from milterd.checks import headers as headers_module
from milterd.checks.headers import Headers, bad_encoded_words
from milterd.config import Config
from milterd.content import headertext, mimetext
from milterd.learner import tokenizer
from milterd.message.model import Envelope, Session, Spool
from milterd.services import Services

HEAD = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: t\r\nMessage-ID: <1@example.org>\r\n"


def html_message(markup: bytes) -> bytes:
    """A one-part HTML message of *markup*."""
    return HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + markup + b"\r\n"


#: The parse methods HTMLParser.goahead() calls at a "<": each may scan from there to the end of the document.
_PARSES = ("parse_starttag", "parse_endtag", "parse_pi", "parse_html_declaration", "parse_comment", "parse_marked_section", "parse_bogus_comment")


@pytest.fixture
def scanned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """For each markup construct parsed, the characters from it to the end of the document (what its parse may scan)."""
    lengths: list[int] = []
    for name in _PARSES:
        def counted(self: Any, i: int, *args: Any, _parse: Callable[..., int] = getattr(mimetext._HTMLText, name), **kwargs: Any) -> int:
            lengths.append(len(self.rawdata) - i)
            return _parse(self, i, *args, **kwargs)

        monkeypatch.setattr(mimetext._HTMLText, name, counted)
    return lengths


# 3,000 unclosed start tags took the stdlib parser 7 s (each scanned to the end of the part at its
# close); 50,000 of them (700 KB) about an hour.  A browser shows nothing from the first of them on.
@pytest.mark.parametrize(
    "markup",
    [
        "<div <a href='" * 3000,
        "<a x='>' " * 3000 + "<a x='",
    ],
)
def test_unterminated_start_tags_take_linear_time_and_hide_the_rest(markup: str, scanned: list[int]) -> None:
    document = "<p>seen <a href='http://shown.example/'>here</a></p>" + markup
    text, links = mimetext.html_to_text(document)
    # A few scans to the end (the unterminated tag's, at feed() and close()), not one per "<" after it (3,000 x).
    assert sum(scanned) <= 10 * len(document)
    assert (text, links) == ("seen here", ["http://shown.example/"])


@pytest.mark.parametrize("opening", ["</a", "<!doctype", "<?x", "<!x", "<!--", "<![CDATA["])
def test_unterminated_constructs_at_the_end_hide_the_rest(opening: str, scanned: list[int]) -> None:
    # Before, each was read as text up to the next "<" and the parse went on: "</a" * 100,000 came out
    # as 300 KB of markup in the text body rules and the classifier read, after a scan to the end for each.
    # As many as are parsed (mimetext.MAX_TAGS): links written past those are found as in text.
    document = "visible " + opening * (mimetext.MAX_TAGS - 1) + " http://hidden.example/"
    text, links = mimetext.html_to_text(document)
    assert sum(scanned) <= 10 * len(document)  # the old parse: 50,000 scans to the end
    assert (text, links) == ("visible", [])


def test_a_whole_message_of_unclosed_tags_is_extracted_quickly(scanned: list[int]) -> None:
    raw = html_message(b"Hello <a href=\"http://x.example/\">x</a> " + b"<div <a href='" * 3000)
    found = mimetext.extract(raw)
    assert sum(scanned) <= 10 * len(raw)
    assert found.error == "" and found.text == "Hello x" and found.uris == ["http://x.example/"]


def test_punycode_is_no_mail_charset(monkeypatch: pytest.MonkeyPatch) -> None:
    # Python's punycode decoder is quadratic: a 300 KB part named charset=punycode cost 6 s (4 MB: minutes).
    decoded: list[int] = []

    punycode = encodings.punycode.punycode_decode

    def punycode_decode(text: bytes, errors: str) -> str:
        decoded.append(len(text))
        return punycode(text, errors) if len(text) < 1024 else ""  # not the quadratic work: that it was asked is enough

    monkeypatch.setattr(encodings.punycode, "punycode_decode", punycode_decode)
    assert mimetext.decode_bytes(b"bcher-kva", "punycode") == "bcher-kva"
    body = b"a" * 100_000 + b"-" + b"z9" * 100_000
    message = HEAD + b"Content-Type: text/plain; charset=punycode\r\nContent-Disposition: inline\r\n\r\n" + body + b"\r\n"
    found = mimetext.extract(message)
    tokenizer.hashed_tokens(message)
    assert decoded == []
    assert found.text.startswith("aaaa") and found.error == ""


@pytest.mark.parametrize("charset", ["unicode_escape", "raw_unicode_escape", "Unicode-Escape"])
def test_python_only_codecs_are_read_as_unknown_charsets(charset: str) -> None:
    assert mimetext.decode_bytes(b"caf\xc3\xa9 \\u0041", charset) == "café \\u0041"


def test_encoded_word_in_punycode_is_read_as_an_unknown_charset() -> None:
    assert headertext.decoded("=?punycode?q?bcher-kva?=") == "bcher-kva"


def judge(subject: bytes) -> dict[str, str]:
    """The header check's symbols for a good header section with *subject*."""
    check = Headers(Services(config=Config()))
    headers = [
        ("From", b"Alice <alice@example.org>"),
        ("To", b"bob@example.com"),
        ("Subject", subject),
        ("Date", email.utils.formatdate().encode()),
        ("Message-ID", b"<abc@example.org>"),
    ]
    envelope = Envelope(spool=Spool(1024), headers=headers, mail_args={})
    return {hit.symbol: hit.detail for hit in check.on_eoh(Session(), envelope)}


# Before, a codec of no text ("base64", "rot13": LookupError from decode) or a NUL in the charset
# (ValueError from codecs.lookup) escaped bad_encoded_words: HDR_PARSE_ERROR, and no verdict on the word.
@pytest.mark.parametrize(
    "word", [b"=?base64?b?QUJD?=", b"=?rot13?q?nop?=", b"=?zlib?q?x?=", b"=?a\x00b?q?x?=", b"=?punycode?q?bcher-kva?="]
)
def test_encoded_word_naming_no_text_charset_is_invalid(word: bytes) -> None:
    found = judge(b"hello " + word)
    assert "HDR_PARSE_ERROR" not in found
    assert found["HDR_ENCODED_WORD_INVALID"] == "Subject: " + word.decode("latin-1")
    assert bad_encoded_words(word.decode("latin-1")) == word.decode("latin-1")


def test_good_encoded_words_stay_good() -> None:
    assert judge(b"=?utf-8?q?caf=C3=A9?= =?iso-8859-1?b?Y2Fm6Q==?=") == {}


def judge_fields(**values: bytes) -> dict[str, str]:
    """The header check's symbols for a good header section with the fields of *values* replaced."""
    check = Headers(Services(config=Config()))
    headers = {"From": b"Alice <alice@example.org>", "To": b"bob@example.com", "Date": email.utils.formatdate().encode(), "Message-ID": b"<abc@example.org>"}
    headers.update({name.replace("_", "-"): value for name, value in values.items()})
    envelope = Envelope(spool=Spool(1024), headers=list(headers.items()), mail_args={})
    return {hit.symbol: hit.detail for hit in check.on_eoh(Session(), envelope)}


# The stdlib's address parser takes quadratic time on some values: a valid 32 KB From of '"a"a…' took
# 4 s, of "(a)(a)…" 6 s, and every To and Cc field (32 of them fit the header section) was parsed.
@pytest.mark.parametrize("value", [b'"a"a' * 8000 + b" <x@example.org>", b"(a)" * 10000 + b"x@example.org"])
def test_a_huge_address_is_judged_in_bounded_time(value: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[int] = []
    parse = email._header_value_parser.get_address_list

    def get_address_list(text: str) -> Any:
        parsed.append(len(text))
        return parse(text)

    monkeypatch.setattr(email._header_value_parser, "get_address_list", get_address_list)
    found = judge_fields(From=value, To=value)
    assert max(parsed, default=0) <= 2048  # the stdlib's parser is given no value longer than 2 KB
    assert found["HDR_FROM_INVALID"].endswith(f"address of {len(value)} characters")
    assert found["HDR_TO_INVALID"] == f"To: address of {len(value)} characters"


def test_many_pathological_to_fields_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each field 25 KB of valid addresses the stdlib parses slowly; only the first 64 KB of To and Cc are judged.
    field = ", ".join('"a"a' * 90 + f" <u{i}@example.org>" for i in range(64)).encode()
    check = Headers(Services(config=Config()))
    headers = [("From", b"a@example.org"), ("Date", email.utils.formatdate().encode()), ("Message-ID", b"<1@example.org>")]
    envelope = Envelope(spool=Spool(1024), headers=headers + [("To", field)] * 30 + [("Cc", b"bad@")], mail_args={})
    judged: list[tuple[str, int]] = []  # the fields judged: (name, characters)
    depth = [0]
    judge_list = headers_module.address_list_problem

    def address_list_problem(name: str, value: str, budget: headers_module.ParseBudget | None = None) -> str:
        if not depth[0]:  # a field, not one of its addresses judged on their own
            judged.append((name, len(value)))
        depth[0] += 1
        try:
            return judge_list(name, value, budget)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(headers_module, "address_list_problem", address_list_problem)
    found = {hit.symbol: hit.detail for hit in check.on_eoh(Session(), envelope)}
    recipients = [length for name, length in judged if name in ("To", "Cc")]
    assert 0 < sum(recipients) <= 64 * 1024 and len(recipients) < 30  # the old code judged all 750 KB
    assert set(found) == {"HDR_DUPLICATE"}  # the Cc after 750 KB of To is not judged


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (", ".join(f'"User {i}, X" <u{i}@example{i}.com>' for i in range(1000)), ""),
        ("list: " + ", ".join(f"u{i}@example.com" for i in range(300)) + ";, other@example.com", ""),
        (", ".join(f"u{i}@example.com (Mr, {i})" for i in range(300)) + ", Bob <bob@>", "invalid address in address-list"),
    ],
)
def test_long_address_lists_are_judged_address_by_address(value: str, problem: str) -> None:
    found = judge_fields(To=value.encode())
    assert found.get("HDR_TO_INVALID", "") == (f"To: {problem}" if problem else "")


def test_deep_nesting_after_the_content_does_not_hide_it() -> None:
    # The stdlib parser recurses once a multipart level: 1,000 levels raised RecursionError, extract gave
    # no text and no link at all, and the URI lists and body rules passed a spam link put before them.
    head = HEAD + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=top\r\n\r\n"
    first = b"--top\r\nContent-Type: text/html\r\n\r\n<a href=\"http://spam.example/\">buy now</a>\r\n"
    nest = b"--top\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n" + b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (level, level + 1) for level in range(1200)
    )
    found = mimetext.extract(head + first + nest)
    assert (found.error, found.text, found.uris, found.truncated) == ("", "buy now", ["http://spam.example/"], True)
    assert "buy" in tokenizer.tokenize(head + first + nest)

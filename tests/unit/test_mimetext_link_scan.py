"""mimetext's link scan (_links): the matches of the whole-text pattern, found without trying it where no link can start."""

from __future__ import annotations

import random
import re

import pytest

from milterd.content import mimetext
from milterd.content.mimetext import extract, uris_in_text
from tests.unit.test_auth_row_cuts import REFERENCE, reference_links, reference_uris  # a search from each link's end on

PIECES = list("hHtTpPsSfFwW:/. x\n\t<>\"'()[]{}é_1`@-\u200e\u2066") + [
    "ſ", "İ", "ẞ", "K", "\u2003", "\x1c", "\x85", "://", "http://", "https://", "ftp://", "FTP://", "www.", "WwW.",
    "httpſ://", "HTTPS://", "a.b", "xhttp://", "_www.", "wwww.", ":// ", "http:// ", "www. ",
]


class CountingPattern:
    """_URI_IN_TEXT, counting the places it is tried at."""

    def __init__(self) -> None:
        self.pattern = REFERENCE
        self.tries = 0

    def match(self, text: str, pos: int = 0) -> re.Match[str] | None:
        self.tries += 1
        return self.pattern.match(text, pos)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingPattern:
    assert mimetext._URI_IN_TEXT.pattern == REFERENCE.pattern and mimetext._URI_IN_TEXT.flags == REFERENCE.flags
    counter = CountingPattern()
    monkeypatch.setattr(mimetext, "_URI_IN_TEXT", counter)
    return counter


def test_random_texts_give_the_links_of_the_whole_text_pattern() -> None:
    rnd = random.Random(2026)
    for _ in range(30000):
        text = "".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 40)))
        assert uris_in_text(text) == reference_uris(text), text
        assert list(mimetext._links(text)) == reference_links(text), text


@pytest.mark.parametrize("unit", ["http:// ", "http://", "www. ", "www.", "://ab ", "xhttp://ab ", "p://ab", "Https://x.y ", "wWw.a ", "ftp://a\u2003"])
def test_repeated_shapes_give_the_links_of_the_whole_text_pattern(unit: str) -> None:
    for count in (1, 2, 3, 999, 1000, 1001, 5000):
        text = unit * count
        assert uris_in_text(text) == reference_uris(text), (unit, count)
        assert uris_in_text("İ" + text) == reference_uris("İ" + text), (unit, count)  # a character lower-cased to two


def test_the_characters_case_insensitivity_matches_to_a_schemes_letters_are_all_known() -> None:
    # The scheme before a "://" is checked with explicit classes ([hH], [sSſ], …): they hold every match of (?i).
    def matching(letter: str) -> set[str]:
        return {chr(c) for c in range(0x110000) if re.fullmatch(f"(?i){letter}", chr(c))}

    assert matching("s") == set(mimetext._SCHEME_ENDS_S) == {"s", "S", "\u017f"}
    for letter in "htpfw":
        assert matching(letter) == {letter, letter.upper()}
    assert all(f"[{letter}{letter.upper()}]" in mimetext._AFTER_SCHEME for letter in "htpf")


def test_no_try_where_no_link_can_start(counting: CountingPattern) -> None:
    # A scheme with no host, "www." followed by a blank, "://" without a scheme: no link anywhere.
    text = "http:// www. x:// Https://( " * 20000
    assert uris_in_text(text) == []
    assert counting.tries == 0  # the old scan tried it 10 times a repetition (199,999 tries)


def test_the_scan_stops_at_the_last_link_kept(counting: CountingPattern) -> None:
    # Each match runs 2,000 characters over many more "http://"; those inside a match are never tried.
    text = "http://" * 400000
    assert len(uris_in_text(text)) == mimetext.MAX_URIS
    assert counting.tries == mimetext.MAX_URIS


def test_extract_gives_the_same_links_and_text() -> None:
    body = ("see http://a1.example/ and www.b.example, http:// nothing, WWW.C.example. ftp://d.example/x\r\n" * 2000).encode()
    raw = b"From: a@example.com\r\nContent-Type: text/plain\r\n\r\n" + body
    found = extract(raw)
    assert found.uris == list(dict.fromkeys(reference_uris(body.decode())))  # extract keeps each link once
    html = b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n<p>http:// www. <a href='http://e.example/'>x</a> www.f.example</p>"
    assert extract(html).uris == ["http://e.example/", "http://www.f.example"]

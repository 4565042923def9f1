"""Links written out in text as Thunderbird reads them (FindURLEnd), and CSS escapes in url() (thirty-eighth review)."""

from __future__ import annotations

import pytest

from milterd.checks.uribl import link_host
from milterd.content.mimetext import extract, uris_in_text

BIDI = ["\u061c", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]


@pytest.mark.parametrize("mark", BIDI)
def test_a_bidi_formatting_character_ends_a_link(mark: str) -> None:
    # The link was read with the mark in its host, which no lookup takes: the listed domain went unasked.
    assert uris_in_text(f"Sign in: https://phish.test{mark}/login now") == ["https://phish.test"]
    assert uris_in_text(f"or www.phish.test{mark} now") == ["http://www.phish.test"]
    assert [link_host(uri) for uri in uris_in_text(f"https://phish.test{mark}/x")] == ["phish.test"]


@pytest.mark.parametrize("text", [
    "http://paypal.com(secure)@phish.test/login",
    "http://paypal.com'secure'@phish.test/login",
    "http://[paypal.com]@phish.test/login",
    "www.paypal.com(secure)@phish.test/login",
])
def test_a_link_goes_on_over_what_thunderbird_reads_on_over(text: str) -> None:
    # The reader stopped at "(", "'" or "[" and looked up paypal.com (or nothing); the client opens phish.test.
    assert "phish.test" in {link_host(uri) for uri in uris_in_text(f"Sign in: {text} today")}


@pytest.mark.parametrize(("text", "links"), [
    ("(see http://a.test)", ["http://a.test"]),
    ("[http://a.test]", ["http://a.test"]),
    ("http://a.test/wiki/Foo_(bar) ok", ["http://a.test/wiki/Foo_(bar)", "http://a.test/wiki/Foo_"]),
    ("http://[::1]:8080/x] ok", ["http://[::1]:8080/x]"]),
    ("http://a.test/x[y]", ["http://a.test/x"]),
    ("(http://a.test)http://b.test", ["http://a.test", "http://b.test"]),
    ("'http://a.test','http://b.test'", ["http://a.test','http://b.test", "http://a.test", "http://b.test"]),
    ("http://a.test`@evil.test", ["http://a.test"]),
    ("say 'http://a.test/x-'.", ["http://a.test/x"]),
])
def test_thunderbird_s_reading_and_the_one_before_quotes_and_brackets_are_both_given(text: str, links: list[str]) -> None:
    # A link more is only a lookup more: the shorter reading (the reader's before) is kept where it differs.
    assert uris_in_text(text) == links


@pytest.mark.parametrize(("css", "host"), [
    ('url("http://\\65vil.test/a.png")', "evil.test"),
    ("url('http://ev\\69 l.test/a.png')", "evil.test"),
    ("url(http://\\000065vil.test/a.png)", "evil.test"),
    ('@import "http://e\\v\\il.test/s.css"', "evil.test"),
])
def test_css_escapes_in_a_url_are_decoded(css: str, host: str) -> None:
    # The link was looked up as written (65vil.test) or not at all; the browser loads evil.test.
    raw = f"Content-Type: text/html\r\n\r\n<style>p {{ background: {css} }}</style><p>x</p>".encode()
    assert host in {link_host(uri) for uri in extract(raw).uris}

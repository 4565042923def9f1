"""Links written out in text as Thunderbird reads them (FindURLEnd), and CSS escapes in url() (thirty-eighth review)."""

from __future__ import annotations

import pytest

from milterd.checks.uribl import link_host
from milterd.content.mimetext import extract, uris_in_text

BIDI = ["\u061c", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]


@pytest.mark.parametrize("mark", BIDI)
def test_a_bidi_formatting_character_ends_a_link(mark: str) -> None:
    # The link was read with the mark in its host, which no lookup takes: the listed domain went unasked.
    # (The reading before, which goes on over the mark, is given too: its host is another.)
    assert uris_in_text(f"Sign in: https://phish.test{mark}/login now")[0] == "https://phish.test"
    assert uris_in_text(f"or www.phish.test{mark} now")[0] == "http://www.phish.test"
    assert link_host(uris_in_text(f"https://phish.test{mark}/x")[0]) == "phish.test"


@pytest.mark.parametrize("mark", [*BIDI, "`"])
def test_a_host_after_a_bidi_mark_or_backtick_in_the_userinfo_is_still_read(mark: str) -> None:
    # Second look: Thunderbird ends the link at the mark (paypal.com); a client that reads on opens evil.test, which
    # the reading before found and the first fix lost.
    assert {"paypal.com", "evil.test"} <= {link_host(uri) for uri in uris_in_text(f"Log in: https://paypal.com{mark}@evil.test/login")}


def test_one_place_gives_one_link_per_host() -> None:
    # Second look: each "http://a.test/N'x" gave two links of one host, so padding hid a listed link after half as
    # many of them (MAX_LINKS_SCANNED).
    assert uris_in_text("http://a.test/1'x http://a.test/2'x") == ["http://a.test/1'x", "http://a.test/2'x"]


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
    ("http://a.test/wiki/Foo_(bar) ok", ["http://a.test/wiki/Foo_(bar)"]),
    ("http://[::1]:8080/x] ok", ["http://[::1]:8080/x]"]),
    ("http://a.test/x[y]", ["http://a.test/x"]),
    ("(http://a.test)http://b.test", ["http://a.test", "http://b.test"]),
    ("'http://a.test','http://b.test'", ["http://a.test','http://b.test", "http://a.test", "http://b.test"]),
    ("http://a.test`@evil.test", ["http://a.test", "http://a.test`@evil.test"]),
    ("say 'http://a.test/x-'.", ["http://a.test/x"]),
])
def test_thunderbird_s_reading_and_the_one_before_quotes_and_brackets_are_both_given(text: str, links: list[str]) -> None:
    # A link more is only a lookup more: the reading before is kept where its host differs.
    assert uris_in_text(text) == links


@pytest.mark.parametrize(("css", "host"), [
    ('url("http://\\65vil.test/a.png")', "evil.test"),
    ("url('http://ev\\69 l.test/a.png')", "evil.test"),
    ("url(http://\\000065vil.test/a.png)", "evil.test"),
    ('@import "http://e\\v\\il.test/s.css"', "evil.test"),
    ('url("http://ok.test\\"@evil.test/x")', "evil.test"),  # an escaped quote ends no string
    ("url(http://ok.test\\20 @evil.test/x)", "evil.test"),  # nor an escaped blank a url()
])
def test_css_escapes_in_a_url_are_decoded(css: str, host: str) -> None:
    # The link was looked up as written (65vil.test) or not at all; the browser loads evil.test.
    raw = f"Content-Type: text/html\r\n\r\n<style>p {{ background: {css} }}</style><p>x</p>".encode()
    assert host in {link_host(uri) for uri in extract(raw).uris}


@pytest.mark.parametrize("text", ["see http:///evil.test's page", "and http://\\evil.test(x) now", "HTTP:///evil.test'x"])
def test_a_host_after_more_slashes_keeps_the_reading_before(text: str) -> None:
    # Third look: both readings' hosts compared as "" (nothing between "//" and the next slash), so the reading
    # before, the one whose host a browser opens, was dropped.
    assert "evil.test" in {link_host(uri) for uri in uris_in_text(text)}

"""Links a reader follows that the URI lists did not look up (32nd review).

A host a browser maps to a listed domain (UTS #46 with a current Unicode; a right-to-left label ending in a
digit), ``<a href="#">`` and a form without an action under ``<base href>`` (the click goes to the base URL),
and an Outlook VML button's href, counted as embedded, so followed padding links pushed them out."""

from __future__ import annotations

import random

import pytest

from milterd.checks import dmarc, uribl
from milterd.content import mimetext
from milterd.dns import a_label, domain_name


def html(body: str) -> bytes:
    return ("From: a@b.test\r\nTo: c@d.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body).encode()


@pytest.mark.parametrize(("link", "host"), [
    ("https://\u2091vil.test/", "evil.test"),  # ₑ, Unicode 4.1: IDNA2003 (Unicode 3.2) has no mapping for it
    ("https://\u1d49vil.test/", "evil.test"),  # ᵉ
    ("https://\U0001f134vil.test/", "evil.test"),  # 🄴
    ("https://\u1d31VIL.test/", "evil.test"),  # ᴱ
    ("https://\u05e9\u05dc\u05d5\u05dd1.evil.test/", "xn--1-9hcuf1d.evil.test"),  # RFC 5893 lets an RTL label end in a digit
    ("https://fa\u00df.example/", "xn--fa-hia.example"),  # IDNA2008 keeps ß
    ("https://B\u00fccher.Example./", "xn--bcher-kva.example"),
])
def test_a_link_host_is_the_one_a_browser_opens(link: str, host: str) -> None:
    assert uribl.link_host(link) == host


def test_domain_names_map_as_browsers_and_registries_do() -> None:
    assert domain_name("\u2091vil.test") == "evil.test"
    assert domain_name("example.\u03a4\u0395\u03a3\u03a4\u03a3") == "example.xn--qxa2aabc"  # a final Σ is σ
    assert domain_name("bank\u200d.example") == "bank.example"  # a joiner is dropped, as before
    assert a_label("evil\u3002test") == "evil.test"  # an ideographic full stop
    assert a_label("a..b\u00fc.example") is None  # an empty label
    assert a_label("\u00fc" * 60 + ".example") is None  # an A-label over 63 characters
    assert a_label("\ufffd.example") is None  # a code point UTS #46 disallows
    # Invisible characters UTS #46 ignores, past the 1,024 characters idna takes whole: the From domain a reader
    # sees (paypal.com), where the name was no domain and DMARC fell back to "pay" (second look, 32nd review).
    for ignored in ("\ufe0f", "\u034f", "\u00ad"):
        assert domain_name("pay" + ignored * 1030 + "pal.com") == "paypal.com"


def followed_and_embedded(body: str) -> tuple[list[str], set[str]]:
    found = mimetext.extract(html(body))
    return found.uris, set(found.embedded)


@pytest.mark.parametrize("body", [
    '<base href="https://evil.test/login/"><a href="#">Log in</a>',
    '<a href="#top">Log in</a><base href="https://evil.test/login/">',  # a base later in the document counts too
    '<base href="https://evil.test/login/"><a href="">Log in</a>',
    '<base href="https://evil.test/"><form method=post><input name=pw type=password></form>',
    '<base href="https://evil.test/"><form action=""><input type=submit></form>',
    '<!--[if mso]><v:roundrect href="https://evil.test/pay"><center>Pay</center></v:roundrect><![endif]-->',
    '<!--[if mso]><v:rect href="https://evil.test/pay"></v:rect><![endif]-->',
])
def test_a_link_the_reader_follows_is_not_embedded(body: str) -> None:
    uris, embedded = followed_and_embedded(body)
    followed = [u for u in uris if u not in embedded and uribl.link_host(u) == "evil.test"]
    assert followed, (uris, embedded)
    padded = mimetext.extract(html(body + "".join(f'<a href="https://n{i}.pad{i}.example/">n</a>' for i in range(20))))
    looked_up, _ = uribl.link_targets(padded.uris, frozenset(), 20, embedded=padded.embedded, rng=random.Random(1))
    assert "evil.test" in looked_up  # drawn among the followed links (as embedded it came after 20 of them: never looked up)


def test_without_a_base_a_fragment_is_no_link() -> None:
    assert followed_and_embedded('<a href="#top">x</a><form><input></form>') == ([], set())


def test_a_from_domain_padded_with_ignored_characters_keeps_its_dmarc_domain() -> None:
    assert dmarc.from_domains(["Security <security@pay" + "\ufe0f" * 1030 + "pal.com>"]) == ("paypal.com",)

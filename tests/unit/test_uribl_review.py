"""URI block lists: links hidden from the lookups by reading them otherwise than browsers do."""

from __future__ import annotations

from typing import Callable

import pytest

from milterd.checks.uribl import link_host, link_targets
from milterd.content.mimetext import extract


def message(content_type: str, body: str) -> bytes:
    """A one-part message (read by mimetext's shortcut)."""
    return f"From: a@example.org\r\nContent-Type: {content_type}\r\n\r\n{body}\r\n".encode()


def multipart(content_type: str, body: str) -> bytes:
    """The same part inside a multipart/mixed (read by the stdlib parse)."""
    return (
        "From: a@example.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        f"--b\r\nContent-Type: {content_type}\r\n\r\n{body}\r\n--b--\r\n"
    ).encode()


@pytest.mark.parametrize("uri", [
    "http://evil.example\\@good.example/",  # a browser ends the authority at the backslash
    "http:\\\\evil.example/",
    "https:/\\evil.example/x",
    "http:evil.example/",
    "HTTP:\\\\EVIL.example\\path",
    "\\\\evil.example/x",  # "//evil.example/x" under an http(s) page
    " http://evil.example\u3002/",  # an ideographic full stop is a dot to IDNA
])
def test_a_link_host_is_the_one_a_browser_goes_to(uri: str) -> None:
    assert link_host(uri) == "evil.example"
    assert link_targets([uri], frozenset({"good.example"}), 20) == (["evil.example"], [])


def test_plain_links_are_read_as_before() -> None:
    assert link_host("http://paypal.com@evil.example/") == "evil.example"
    assert link_host("/images/a.png") is None
    assert link_host("//cdn.example/a.png") == "cdn.example"
    assert link_host("mailto:a@evil.example") is None


def test_address_links_in_decimal_hex_and_octal_are_looked_up_as_addresses() -> None:
    uris = [
        "http://134744072/",  # 8.8.8.8
        "http://0x1.0x1.0x1.0x1/x",  # 1.1.1.1
        "http://011.1.1.1/",  # 9.1.1.1 (octal)
        "http://9.16843009/",  # 9.1.1.1 again
        "http://[::ffff:8.8.4.4]/",  # an IPv4-mapped IPv6 address
        "http://0x7f.1/",  # 127.0.0.1: not public
        "http://a.b.123/", "http://1.2.3.4.5/", "http://09.1.1.1/",  # no host to a browser
    ]
    assert link_targets(uris, frozenset(), 20) == ([], ["8.8.8.8", "1.1.1.1", "9.1.1.1", "8.8.4.4"])


@pytest.mark.parametrize("hiding", [
    "<!-- note --!>",  # a comment ends at --!> in browsers
    "<!-->",  # an empty comment
    "<!--->",
    "<![CDATA[ >",  # a bogus comment in HTML, to the first > (not to "]]>")
])
@pytest.mark.parametrize("build", [message, multipart])
def test_html_comments_end_where_browsers_end_them(hiding: str, build: Callable[[str, str], bytes]) -> None:
    body = f'<p>Hi</p>{hiding}<a href="http://evil.example/claim">Claim your prize</a><!-- end ]]> -->'
    found = extract(build("text/html", body))
    assert "http://evil.example/claim" in found.uris
    assert "Claim your prize" in found.text
    assert "end" not in found.text


def test_a_comment_still_hides_what_it_holds() -> None:
    found = extract(message("text/html", '<!-- <a href="http://hidden.example/">x</a> --><a href="http://shown.example/">y</a>'))
    assert found.uris == ["http://shown.example/"]

"""A first text part that spends the text budget must not hide the links of the later parts."""

from __future__ import annotations

from typing import Any

import pytest

from milterd.content import mimetext
from milterd.content.mimetext import extract
from milterd.message.pipeline import Pipeline
from tests.unit import test_review15_uri_padding as padding
from tests.unit.test_review15_uri_padding import HEAD, run_message, symbols

dns_table, pipeline = padding.dns_table, padding.pipeline  # the fixtures, shared

MIB = 1024 * 1024
MULTIPART = HEAD + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"


def filler(size: int) -> bytes:
    return (b"lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]


def message(*parts: tuple[bytes, bytes]) -> bytes:
    return MULTIPART + b"".join(b"--BB\r\nContent-Type: " + ctype + b"\r\n\r\n" + body + b"\r\n" for ctype, body in parts) + b"--BB--\r\n"


LATE_HTML = (b"text/html", b"<p>Dear customer</p><a href=\"http://evil.example/login\">Log in</a>")


def test_links_of_parts_after_the_text_budget_are_found() -> None:
    raw = message(
        (b"text/plain", filler(MIB + 10)), LATE_HTML, (b"text/plain", b"or www.later.example/x"),
        (b"text/html", b"<a href='https&#58;//encoded.example/'><img src=http://img.example/a.png></a>"),
    )
    found = extract(raw, MIB)
    # The old code: [].  An HTML part is parsed (its character references read, its image sources told apart).
    assert found.uris == ["http://evil.example/login", "http://www.later.example/x", "https://encoded.example/", "http://img.example/a.png"]
    assert found.embedded == {"http://img.example/a.png"}
    assert found.truncated and found.error == ""
    assert len(found.text) == MIB and "Dear customer" not in found.text  # the text budget holds


def test_many_html_parts_after_the_text_budget_are_read_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1,000,000 tags past the budget: one part's worth (MAX_TAGS) is parsed, the links of the rest are scanned.
    parts = [(b"text/plain", filler(MIB))] + [(b"text/html", b"<b>" * 2000 + b"<a href=http://p%d.example/>x</a>" % i) for i in range(497)]
    tags = [0]  # start tags parsed
    parse = mimetext._HTMLText.parse_starttag

    def counted(self: Any, i: int) -> int:
        tags[0] += 1
        return parse(self, i)

    monkeypatch.setattr(mimetext._HTMLText, "parse_starttag", counted)
    found = extract(message(*parts), MIB)
    assert found.uris == [f"http://p{i}.example/" for i in range(497)]  # the old code: []
    assert tags[0] <= 50_000, tags  # MAX_TAGS in all; parsing every part took 1,000,000 (3.7 s)


def test_a_big_first_part_does_not_hide_a_listed_link_from_the_lists(pipeline: Pipeline, dns_table: Any) -> None:
    dns_table({("evil.example.dbl.spamhaus.org", "A"): ["127.0.1.4"]})
    env = run_message(pipeline, message((b"text/plain", filler(MIB + 10)), LATE_HTML))
    assert "URIBL_DBL_PHISH" in symbols(env)


def test_links_only_reading_is_bounded_by_parts_and_by_room() -> None:
    # A text budget of 15,000 characters; the link reading past it, 4 x that (what the envelope holds), more
    # than the links of MAX_PARTS parts.
    parts = [(b"text/plain", filler(15000))] + [(b"text/plain", b"http://p%d.example/" % i) for i in range(mimetext.MAX_PARTS + 50)]
    found = extract(message(*parts), 15000)
    # The multipart and the first part are the first two of MAX_PARTS parts walked; the old code read none after the
    # first.  More links than MAX_URIS are kept as a sample: none of a part past MAX_PARTS is among them.
    walked = {f"http://p{i}.example/" for i in range(mimetext.MAX_PARTS - 2)}
    assert set(found.uris) <= walked and len(found.uris) == min(len(walked), mimetext.MAX_URIS) and found.truncated
    # A budget of 1,000 characters: the links of the next 4,000 are read, not those after.
    found = extract(message((b"text/plain", filler(1000)), (b"text/plain", filler(3000) + b" http://near.example/"),
                            (b"text/html", filler(2000) + b"<a href=http://far.example/>far</a>")), 1000)
    assert found.uris == ["http://near.example/"] and found.truncated

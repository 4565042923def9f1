"""Text past the HTML parser's tag bound and text behind invisible characters reach the body rules' text
(thirty-seventh session's review; through Postfix: tests/integration/test_hidden_text_review37.py)."""

from __future__ import annotations

from milterd.content.mimetext import MAX_TAGS, extract, html_to_text
from milterd.text import without_invisible

SENTENCE = "Send money by western union"


def test_markup_past_the_tag_bound_gives_its_text_tags_dropped() -> None:
    text, links = html_to_text("<i>" * (MAX_TAGS + 1) + f"<p>{SENTENCE}&nbsp;now</p><a href='http://x.example/'>here</a> 1 < 2")
    assert text.endswith(f"{SENTENCE}\xa0now here 1 < 2")
    assert links == ["http://x.example/"]
    short, _ = html_to_text("<i>" * 10 + f"<p>{SENTENCE}</p><script>var hidden = 1;</script>")
    assert short == SENTENCE  # parsed: a script's content is no text
    unclosed, _ = html_to_text("<a" * (MAX_TAGS + 1) + "<b>visible")
    assert unclosed.endswith("visible")


def test_invisible_characters_spend_no_text_budget() -> None:
    raw = ("Content-Type: text/plain; charset=utf-8\r\n\r\n" + "\u200b" * 3_000 + f"\r\n{SENTENCE}\r\n").encode()
    found = extract(raw, 1_000)
    assert SENTENCE in found.text and not found.truncated
    assert without_invisible("vi\u200bag\u00adra \U000e0020x") == "viagra x"
    plain = "plain ASCII"
    assert without_invisible(plain) is plain

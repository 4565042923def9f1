"""The RTF reader: what an RTF body shows (Outlook keeps a message's body, and an HTML message's HTML, in RTF)."""

from __future__ import annotations

import pytest

from milterd.content.rtf import read


def html_of(rtf: bytes) -> str:
    found = read(rtf)
    assert found.html
    return found.text


def test_encapsulated_html_is_rebuilt_from_its_tag_groups_without_the_rtf_only_text() -> None:
    rtf = (b'{\\rtf1\\ansi\\fromhtml1 {\\fonttbl{\\f0 Arial;}}{\\*\\htmltag19 <html>}{\\*\\htmltag84 <a href="https://a.test/x">}'
           b'\\htmlrtf {\\field{\\*\\fldinst{HYPERLINK "https://a.test/x"}}{\\fldrslt Log in}}\\htmlrtf0 Log in{\\*\\htmltag92 </a>}}')
    found = read(rtf)
    assert (found.text, found.html, found.targets) == ('<html><a href="https://a.test/x">Log in</a>', True, ["https://a.test/x"])


def test_htmlrtf_hides_text_only_in_rtf_that_carries_html_and_never_inside_a_tag() -> None:
    # Outlook shows a plain RTF body whole: the unknown control word hid a link (found by review).
    assert "http://evil.example/login" in read(b"{\\rtf1 Log in: \\htmlrtf http://evil.example/login\\htmlrtf0  now}").text
    assert html_of(b'{\\rtf1\\fromhtml1 {\\*\\htmltag84 \\htmlrtf <a href="http://evil.example/">}click}') == '<a href="http://evil.example/">click'


def test_a_literal_fromhtml_is_no_html() -> None:
    found = read(b"{\\rtf1 \\\\fromhtml text <http://angle.example/x> ok}")
    assert not found.html and "<http://angle.example/x>" in found.text


def test_each_hyperlink_field_gives_its_own_target_and_a_bookmark_gives_none() -> None:
    rtf = (b'{\\rtf1 {\\field{\\*\\fldinst HYPERLINK http://good.example/}{\\fldrslt a}}{\\field{\\*\\fldinst HYPERLINK "http://evil.example/"}'
           b'{\\fldrslt b}}{\\field{\\*\\fldinst HYPERLINK \\\\l "_Toc123"}{\\fldrslt c}}{\\field{\\*\\fldinst HYPERLINK \\\\o "tip" "http://x.example/"}'
           b'{\\fldrslt d}}{\\*\\unknown {\\field{\\*\\fldinst HYPERLINK "http://hidden.example/"}}}}')
    assert read(rtf).targets == ["http://good.example/", "http://evil.example/", "http://x.example/"]


def test_unicode_escapes_follow_uc_and_a_brace_ends_the_stand_ins() -> None:
    assert "http://evil-site.example" in read(b"{\\rtf1\\uc0 http://ev\\u105 l-site.example}").text
    assert "http://evil-site.example" in read(b"{\\rtf1\\uc2 http://ev\\u105 ??l-site.example}").text
    assert "http://evil-site.example" in read(b"{\\rtf1 http://ev{\\u105}l-site.example}").text
    assert read(b"{\\rtf1 \\u-10179?\\u-9047?}").text == "\U0001f4a9"  # a surrogate pair is one character


def test_hex_escapes_are_read_in_the_document_s_codepage() -> None:
    found = read(b"{\\rtf1\\ansi\\ansicpg1251 http://\\'ef\\'f0\\'e8\\'ec\\'e5\\'f0.\\'f0\\'f4/}")
    assert "http://\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444/" in found.text


def test_binary_data_is_skipped_as_data() -> None:
    found = read(b"{\\rtf1 {\\bin21 http://binfalse.test/} see http://shown.example/}")
    assert "binfalse" not in found.text and "http://shown.example/" in found.text
    assert "http://after.example/" in read(b"{\\rtf1 \\bin3 {\\*x see http://after.example/}").text


@pytest.mark.parametrize(("rtf", "text"), [
    (b"{\\rtf1 evil\\_site}", "evil-site"),  # a non-breaking hyphen
    (b"{\\rtf1 one\\\r\ntwo}", "one\ntwo"),  # a backslash before a line end is a paragraph
    (b"{\\rtf1 li\r\nnk}", "link"),  # a line end alone is nothing
    (b"{\\rtf1 {\\pict\\pngblip 89504e47 687474703a2f2f}{\\*\\objdata 0102}shown}", "shown"),
])
def test_symbols_line_ends_and_pictures(rtf: bytes, text: str) -> None:
    assert read(rtf).text == text


def test_a_body_of_more_tokens_than_the_bound_is_read_up_to_it() -> None:
    found = read(b"{\\rtf1 " + b"\\par " * 1000 + b"http://late.example/}", max_tokens=500)
    assert not found.whole and "http://late.example/" not in found.text


def test_the_document_s_codepage_is_read_as_an_outlook_message_s_is() -> None:
    # One table of Windows code page identifiers for both (ISO 8859-5 is 28595, not Python's cp28595).
    assert "\u043f\u0440\u0438" in read(b"{\\rtf1\\ansi\\ansicpg28595 \\'df\\'e0\\'d8}").text

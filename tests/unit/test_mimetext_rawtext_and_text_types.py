"""The link reader's HTML raw-text elements (<title>, <textarea>, <xmp>, <iframe>, <noembed>, <noframes>,
<plaintext>) read as browsers read them, and the text/* parts besides text/plain and text/html (and calendar
files) read as the mail clients that show them do."""

from __future__ import annotations

import base64

import pytest

from milterd.content.mimetext import MAX_LINKS_SCANNED, extract

EVIL = "https://evil.test/login"
HEAD = "From: a@b.test\r\nTo: c@d.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"


def single(ctype: str, body: str, fields: str = "") -> bytes:
    """A one-part message of *ctype* (its MIME fields *fields* besides) holding *body*."""
    return f"{HEAD}Content-Type: {ctype}\r\n{fields}\r\n{body}".encode()


def mixed(*parts: tuple[str, str]) -> bytes:
    """A multipart/mixed message of *parts*: (their MIME fields, their body)."""
    body = "".join(f"--B\r\n{fields}\r\n\r\n{text}\r\n" for fields, text in parts)
    return f'{HEAD}Content-Type: multipart/mixed; boundary="B"\r\n\r\n{body}--B--\r\n'.encode()


# A browser ends each at its end tag (HTML standard 13.2.5.2-3, 13.2.6.4.7); the stdlib (3.11) read them as markup.
@pytest.mark.parametrize("markup", [
    f'<title>x<script></title><p>Log in: <a href="{EVIL}">here</a></p>',  # the rest was a script that never ended
    f'<title><!--</title><a href="{EVIL}">here</a><!-- -->',  # the link was in a comment
    f'<title><a title="</title><a href={EVIL}>here">',  # the link was an attribute's value
    f'<textarea><!--</textarea><a href="{EVIL}">here</a><!-- -->',
    f'<TITLE>x<style></Title ><a href="{EVIL}">here</a>',
    f'<title/><!--</title><a href="{EVIL}">here</a><!-- -->',  # "/>" closes no HTML element
    f'<xmp><!--</xmp><a href="{EVIL}">here</a><!-- -->',
    f'<iframe><!--</iframe><a href="{EVIL}">here</a><!-- -->',
    f'<noembed><!--</noembed><a href="{EVIL}">here</a><!-- -->',
    f'<noframes><!--</noframes><a href="{EVIL}">here</a><!-- -->',
    f'<svg><path d="M0"/></svg><title><!--</title><a href="{EVIL}">here</a><!-- -->',  # out of the <svg> again
])
def test_what_follows_a_raw_text_element_is_markup(markup: str) -> None:
    found = extract(single("text/html", markup))
    assert EVIL in found.uris
    assert EVIL not in found.embedded  # a link the reader follows


def test_the_words_of_a_title_are_not_visible_text() -> None:
    found = extract(single("text/html", f"<title>Secret &amp; hidden<script></title><p>Shown <a href='{EVIL}'>x</a>"))
    assert EVIL in found.uris
    assert "Shown" in found.text
    assert "Secret" not in found.text and "hidden" not in found.text


@pytest.mark.parametrize("element", ["iframe", "noembed", "noframes"])
def test_the_text_of_a_hidden_raw_text_element_is_not_visible(element: str) -> None:
    found = extract(single("text/html", f"<{element}>unseen <b>words</b></{element}><p>Shown <a href='{EVIL}'>x</a>"))
    assert EVIL in found.uris
    assert "Shown" in found.text and "unseen" not in found.text


@pytest.mark.parametrize("element", ["title", "xmp", "plaintext", "iframe", "noembed", "noframes", "style"])
def test_an_element_a_select_ignores_hides_no_link(element: str) -> None:
    """Second look: in a <select> a browser ignores a <title> (13.2.6.4.16), and the </select> and the link after
    it are markup; here the title ran to the end of the part, the link unread (it was read before the fix)."""
    for href in (EVIL, EVIL.replace(":", "&#58;")):  # a reference: not found as a link written out in text either
        found = extract(single("text/html", f'<p>Your invoice:</p><select><{element}></select><a href="{href}">View invoice</a>'))
        assert EVIL in found.uris, href


@pytest.mark.parametrize("element", ["iframe", "noembed", "noframes"])
def test_the_links_of_a_fallback_are_still_read(element: str) -> None:
    """A client without frames, embeds or iframes shows their fallback as markup: its links are read (they were
    before these elements were raw text), its words stay hidden."""
    found = extract(single("text/html", f"<{element}>unseen <a href='{EVIL}'>here</a></{element}><p>Shown"))
    assert EVIL in found.uris
    assert "unseen" not in found.text and "Shown" in found.text


def test_tags_inside_a_textarea_are_text_to_see_and_links_to_look_up() -> None:
    markup = f'<textarea>Dear &amp; <a href="tag.evil.test/x">click</a> {EVIL} </textarea><p>after</p>'
    found = extract(single("text/html", markup))
    assert "tag.evil.test/x" in found.uris  # text to a browser here, a link where one does not take it as raw text
    assert EVIL in found.uris  # a link written out in visible text, found as in any text
    assert 'Dear & <a href="tag.evil.test/x">click</a>' in found.text  # character references decoded (RCDATA)
    assert "after" in found.text


def test_xmp_text_is_visible_and_not_decoded() -> None:
    found = extract(single("text/html", f'<xmp>a &amp; <a href="tag.evil.test/x">b</a></xmp><a href="{EVIL}">c</a>'))
    assert "a &amp; <a" in found.text
    assert found.uris == ["tag.evil.test/x", EVIL]


def test_plaintext_makes_the_rest_of_the_document_text() -> None:
    found = extract(single("text/html", f'<plaintext><a href="tag.evil.test/x">x</a></plaintext> {EVIL}'))
    assert "tag.evil.test/x" in found.uris
    assert EVIL in found.uris
    assert "</plaintext>" in found.text


def test_a_title_inside_svg_is_no_raw_text() -> None:
    # Foreign content (13.2.6.5): its <title> holds markup, the link a tag gives there is read as before; past the
    # </svg> a <title> is RCDATA again.
    found = extract(single("text/html", f'<svg><title><a href="{EVIL}">x</a></title></svg><title><!--</title><p>after</p><!-- -->'))
    assert EVIL in found.uris
    assert "after" in found.text


# Thunderbird shows a text/* part of a type it does not know inline, as plain text with its links clickable.
@pytest.mark.parametrize("ctype", ["text/x-anything", "text/markdown", "text/csv", "text/xml", "text/rtf"])
def test_other_text_types_are_read_as_plain_text(ctype: str) -> None:
    found = extract(single(ctype, f"Sign in at {EVIL} today\r\n"))
    assert EVIL in found.uris
    assert "today" in found.text
    found = extract(mixed(("Content-Type: text/plain", "Hello"), (f"Content-Type: {ctype}", f"Sign in at {EVIL} today")))
    assert EVIL in found.uris
    assert "today" in found.text


def test_other_text_types_are_read_when_attached_as_text_plain_is() -> None:
    fields = 'Content-Type: text/markdown; name="notes.md"\r\nContent-Disposition: attachment; filename="notes.md"'
    found = extract(mixed(("Content-Type: text/plain", "Hello"), (fields, f"[Sign in]({EVIL})")))
    assert EVIL in found.uris


@pytest.mark.parametrize(("ctype", "body"), [
    ("text/enriched", "<bold>Sign in</bold> at https://evil.test/<italic>login</italic> <<not a command>"),
    ("text/richtext", "<bold>Sign in</bold><nl>at https://evil.test/<italic>login</italic> <lt>x>"),
])
def test_enriched_text_is_read_without_its_commands(ctype: str, body: str) -> None:
    found = extract(single(ctype, body))
    assert EVIL in found.uris
    assert "<bold>" not in found.text and "Sign in" in found.text
    assert ("<not a command>" if ctype == "text/enriched" else "<x>") in found.text


ICS = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nSUMMARY:Quarterly review\r\n"
    "DESCRIPTION:Join the meeting\\nhttps://evil.t\r\n est/login\\, or call us\\; thanks\r\n"
    "LOCATION:Room 1\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)


def test_a_calendar_part_is_unfolded_and_unescaped() -> None:
    # Folded at 75 octets (within the host) and after a "\n" (an "n" before "https" made it no link).
    found = extract(mixed(("Content-Type: text/plain", "Invitation"), ("Content-Type: text/calendar; method=REQUEST", ICS)))
    assert EVIL in found.uris
    assert "Join the meeting\nhttps://evil.test/login, or call us; thanks" in found.text


@pytest.mark.parametrize("ctype", ["application/ics", "application/octet-stream", "text/calendar", "text/plain"])
def test_a_calendar_file_is_read_as_a_calendar(ctype: str) -> None:
    encoded = base64.encodebytes(ICS.encode()).decode()
    fields = (f'Content-Type: {ctype}; name="invite.ics"\r\nContent-Disposition: attachment; filename="invite.ics"\r\n'
              "Content-Transfer-Encoding: base64")
    found = extract(mixed(("Content-Type: text/plain", "Invitation"), (fields, encoded)))
    assert EVIL in found.uris


def test_calendar_escapes_are_read_left_to_right() -> None:
    body = "DESCRIPTION:a\\\\nb\\\\\\nhttps://evil.test/login c\\\\\\\\\\,d\r\n"
    found = extract(mixed(("Content-Type: text/plain", "x"), ("Content-Type: text/calendar", body)))
    assert "a\\nb\\\nhttps://evil.test/login c\\\\,d" in found.text
    assert EVIL in found.uris


def test_script_types_are_still_not_read() -> None:
    # A script is a file the attachment check judges (SCRIPT_TEXT_TYPES), never a body a reader is shown.
    found = extract(mixed(("Content-Type: text/markdown", f"See {EVIL}"),
                          ("Content-Type: text/javascript", "// https://script.evil.test/"),
                          ("Content-Type: text/vbscript", "' https://vbscript.evil.test/")))
    assert found.uris == [EVIL]


def test_the_link_bound_holds_for_the_new_readings() -> None:
    body = " ".join(f"https://h{i}.test/" for i in range(MAX_LINKS_SCANNED + 10)) + f" {EVIL}"
    found = extract(single("text/markdown", body))
    assert found.unread == "links" and not found.truncated  # links left unread; the text is whole


@pytest.mark.parametrize("markup", [
    f'<svg><foreignObject><textarea><!--</textarea><a href="{EVIL}">here</a><!-- --></foreignObject></svg>',
    f'<math><mtext><title><!--</title><a href="{EVIL}">here</a><!-- --></mtext></math>',
    f'<svg><circle r="1"/><p><title><!--</title><a href="{EVIL}">here</a><!-- -->',  # a <p> ends the <svg>
    f'<svg><circle r="1"/></p><textarea><!--</textarea><a href="{EVIL}">here</a><!-- -->',
])
def test_html_inside_svg_or_math_has_raw_text_elements(markup: str) -> None:
    # An integration point's content is HTML (13.2.6.5), and some tags leave the <svg> altogether.
    assert EVIL in extract(single("text/html", markup)).uris

"""Link extraction review (twenty-ninth session): links a mail client shows and follows that the URI block lists
never looked up (no URIBL_UNREAD either).

- a conditional comment's content (``<!--[if mso]> … <![endif]-->``), which Outlook for Windows renders;
- ``<script>``/``<style>`` inside ``<svg>``/``<math>``, which hold markup there (HTML standard 13.2.6.5);
- a link wrapped in a handler's scheme (``microsoft-edge:https://…``), opened at the link inside;
- an SVG ``<a>`` given its href by ``<set>``/``<animate>``.
"""

from __future__ import annotations

import pytest

from milterd.checks.uribl import link_targets
from milterd.content.mimetext import extract


def domains(html: str) -> list[str]:
    raw = ("From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html).encode()
    found, _addresses = link_targets(extract(raw).uris, frozenset(), 20)
    return found


@pytest.mark.parametrize("html", [
    '<p>hi</p><!--[if mso]><a href="https://evil.test/login">Verify</a><![endif]-->',
    '<!--[if gte mso 9]><v:roundrect href="https://evil.test/login" style="width:200px"><center>Verify</center></v:roundrect><![endif]-->',
    '<svg><script><div><a href="https://evil.test/login">Verify</a></div></script></svg>',
    '<svg><style><p><a href="&#104;ttps://evil.test/">Verify</a></style></svg>',
    '<math><style><p><a href="//evil.test/login">Verify</a></style></math>',
    '<a href="microsoft-edge:https://evil.test/login">Open</a>',
    '<a href="ms-word:ofe|u|https://evil.test/invoice.docx">Invoice</a>',
    '<svg><a><set attributeName="href" to="https://evil.test/login"/><text>Verify</text></a></svg>',
    '<svg><a><animate attributeName="xlink:href" values="https://evil.test/a;https://evil.test/b"/><text>Go</text></a></svg>',
])
def test_a_link_a_client_follows_is_looked_up(html: str) -> None:
    assert domains(html) == ["evil.test"]


def test_a_comment_that_is_not_conditional_still_hides_its_links() -> None:
    assert domains('<!-- <a href="https://evil.test/">old</a> --><p>hi</p>') == []
    assert domains('<script>var a = "<a href=\\"https://evil.test/\\">";</script>') == []  # a script outside SVG is text


@pytest.mark.parametrize(("charset", "encoded"), [
    ("unicode", "utf-16-le"), ("ucs-2", "utf-16-le"), ("csunicode", "utf-16-le"), ("iso-10646-ucs-2", "utf-16-le"),
    ("cp037", "ascii"), ("cp500", "ascii"), ("cp1140", "ascii"), ("utf-32", "ascii"), ("utf32", "ascii"),
])
def test_a_charset_label_is_read_as_mail_clients_read_it(charset: str, encoded: str) -> None:
    """WHATWG labels of UTF-16LE Python does not know were read as UTF-8 (NULs between the letters), and codecs
    only Python has (EBCDIC, UTF-32) turned an ASCII body a client shows into other characters: no link either way."""
    body = '<a href="https://evil.test/login">Verify</a>'.encode(encoded)
    raw = f"From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset={charset}\r\n\r\n".encode() + body
    found, _addresses = link_targets(extract(raw).uris, frozenset(), 20)
    assert found == ["evil.test"]


def test_an_svg_script_s_links_are_read_whatever_its_markup_swallows() -> None:
    """JS like ``i<n;`` read as markup swallowed ``</script>``: the links of the <svg>'s script, and those after it (a
    browser's </svg> ends the script there), are read by a parse of the script's text of its own."""
    html = "<p>Hello</p><svg><script>for(i=0;i<n;i++){}</script></svg><p>Verify at <a href='https://evil.test/login'>here</a></p>"
    assert domains(html) == ["evil.test"]
    assert "Hello" in extract(_html(html)).text


@pytest.mark.parametrize("href", ["microsoft-edge:https:evil.test/", "microsoft-edge:https:/evil.test/", "ms-word:ofe|u|//evil.test/a.docx",
                                  "ms-word:ofe|u|\\\\evil.test\\a.docx"])
def test_a_handler_s_link_without_two_slashes_is_looked_up(href: str) -> None:
    assert domains(f'<a href="{href}">Open</a>') == ["evil.test"]


def test_the_links_of_a_part_thunderbird_reads_as_a_multipart_are_read() -> None:
    """x?multipart/alternative: followed for attachments since the review, but its HTML part's links were not read."""
    raw = (b"From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: x?multipart/alternative; boundary=zz\r\n\r\n"
           b"--zz\r\nContent-Type: text/html\r\n\r\n<a href=\"https://evil.test/login\">Verify</a>\r\n--zz--\r\n")
    found, _ = link_targets(extract(raw).uris, frozenset(), 20)
    assert found == ["evil.test"]


def test_conditional_comments_share_the_part_s_bound_on_links_read() -> None:
    """Each comment's parse had a bound of its own: 1,000 comments read 1,000 times as many srcset links (30x the CPU)."""
    from milterd.content.mimetext import MAX_LINKS_LOOKED

    per_comment = MAX_LINKS_LOOKED // 2 + 1
    comment = '<!--[if mso]><img srcset="' + ", ".join(["a"] * per_comment) + '"><![endif]-->'
    raw = ("From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n" + comment * 2).encode()
    assert extract(raw).unread == "links"


def _html(html: str) -> bytes:
    return ("From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html).encode()


@pytest.mark.parametrize("href", ["itms-services://?action=download-manifest&url=https://evil.test/app.plist",
                                  "googlechrome://navigate?url=https://evil.test/"])
def test_a_handler_s_link_written_after_its_own_slashes_is_the_one_read(href: str) -> None:
    """A fourth look: the first "//" (the handler's own) was taken for the link inside: evil.test was never asked."""
    assert "evil.test" in domains(f'<a href="{href}">Install</a>')


@pytest.mark.parametrize("html", [
    "<p>Hello</p><svg><foreignObject><script><!--</script><a href='https://evil.test/'>BUY CHEAP PILLS</a> --></foreignObject></svg>",
    "<p>Hello</p><math><mtext><style><!--</style>BUY CHEAP PILLS here --></mtext></math>",
    "<html><head><title>Offer</title><body><p>BUY CHEAP PILLS here</p>",
])
def test_text_a_browser_shows_is_seen_by_body_rules(html: str) -> None:
    """A fourth look: a <head> whose end tag is left out (optional in HTML) hid the whole body's text."""
    assert "BUY CHEAP PILLS" in extract(_html(html)).text


def test_an_attached_message_thunderbird_reads_in_base64_is_decoded() -> None:
    import base64

    inner = b"From: b@in.test\r\nSubject: inner\r\n\r\ninner msg https://in.test/\r\n"
    raw = (b"From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
           b"--zz\r\nContent-Type: text/plain\r\n\r\nouter text\r\n--zz\r\nContent-Type: x?message/rfc822\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(inner) + b"--zz--\r\n")
    found = extract(raw)
    assert "https://in.test/" in found.uris and "inner msg" in found.text


@pytest.mark.parametrize("html", [
    "<p>hi</p><svg><font><script></svg>BUY CHEAP PILLS <a href='https://evil.test/x'>here</a>",
    "<p>hi</p><svg></div><script></svg>BUY CHEAP PILLS <a href='https://evil.test/x'>here</a>",
    "<p>hi</p><svg></body><script></svg>BUY CHEAP PILLS <a href='https://evil.test/x'>here</a>",
    "<p>hi</p><svg><svg><desc></svg><script></svg>BUY CHEAP PILLS <a href='https://evil.test/x'>here</a>",
    "<p>hi</p><svg><foreignObject><div>x</div></foreignObject><script></svg>BUY CHEAP PILLS <a href='https://evil.test/x'>here</a>",
])
def test_the_links_after_an_svg_script_that_swallows_the_part_are_read(html: str) -> None:
    """Later looks: whatever ends an <svg>'s <script> to a browser, the links after it are read (its text after it
    stays hidden here, as before this session: an approach that followed the browser's foreign content step by step
    hid text that browsers show in each of five later reviews)."""
    assert "https://evil.test/x" in extract(_html(html)).uris


@pytest.mark.parametrize("href", ["ms-word:ofe|u|\\\\evil.test\\share\\report.docx#https:", "ms-excel:ofv|u|//evil.test/s/a.xlsx?ref=https:x"])
def test_a_handler_s_inner_host_is_read_whatever_follows_it(href: str) -> None:
    assert "evil.test" in domains(f'<a href="{href}">Open</a>')

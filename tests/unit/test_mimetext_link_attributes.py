"""The link reader's HTML attributes beyond href and src: srcset, CSS, a refresh, formaction, SVG links, <object
data>, poster and <base href>; which of them a reader follows; and their bounds."""

from __future__ import annotations

import base64

import pytest

from milterd.content import mimetext
from milterd.content.mimetext import extract, extract_large, html_to_text


@pytest.mark.parametrize(("markup", "links"), [
    ('<img srcset="http://a.test/1.png 1x, https://b.test/2,3.png 2x,http://c.test/x.png">',
     ["http://a.test/1.png", "https://b.test/2,3.png", "http://c.test/x.png"]),
    ('<img srcset="http://a.test/1.png (x, y) 1x, http://b.test/2.png,,">', ["http://a.test/1.png", "http://b.test/2.png"]),
    ("<div style=\"background:url( 'http://css.test/bg.png' )\">x</div>", ["http://css.test/bg.png"]),
    ('<style>@import "http://imp.test/s.css"; body{background:URL(//pr.test/b.png)}</style><p>hi</p>',
     ["http://imp.test/s.css", "//pr.test/b.png"]),
    ('<style>p{background:url(http://a.test/)}</x p{background:url(http://b.test/)}</style>', ["http://a.test/", "http://b.test/"]),
    ("<meta http-equiv=\"Refresh\" content=\"0; URL='http://refresh.test/go'\">", ["http://refresh.test/go"]),
    ('<meta http-equiv="refresh" content="5;http://refresh.test/">', ["http://refresh.test/"]),
    ('<meta name="description" content="http://not-a-link.test/">', []),
    ('<form><button formaction="http://fa.test/post">go</button></form>', ["http://fa.test/post"]),
    ('<svg><a xlink:href="http://svg.test/x"><text>x</text></a></svg>', ["http://svg.test/x"]),
    ('<object data="http://obj.test/f.swf"></object><video poster="http://poster.test/p.jpg"></video>',
     ["http://obj.test/f.swf", "http://poster.test/p.jpg"]),
    ('<div data="http://not-object.test/">x</div>', []),
    ('<script>@import "http://script.test/"; url(http://script.test/)</script>', []),
    ('<base href="http://base.test/dir/"><a href="/y">y</a><img src="i.png">',
     ["http://base.test/dir/", "/y", "http://base.test/y", "i.png", "http://base.test/dir/i.png"]),
    # A client that ignores the base reads the link as written: both are kept (the written one's domain was lost).
    ('<base href="https://news.example/"><a href="www.evil.example/login">x</a>',
     ["https://news.example/", "www.evil.example/login", "https://news.example/www.evil.example/login"]),
    ('<base href="https:\\\\evil.example\\"><a href="login">x</a>', ["https:\\\\evil.example\\", "login", "https://evil.example/login"]),
    ('<base href="mailto:a@b.test"><a href="login">x</a>', ["mailto:a@b.test", "login"]),  # no base but an http(s) or ftp URL
    ('<style>@import"http://imp.test/s.css";</style>', ["http://imp.test/s.css"]),
    ("<div style=\"background-image:-webkit-image-set('http://set.test/a.png' 1x)\">x</div>", ["http://set.test/a.png"]),
    ('<link rel=preload as=image imagesrcset="http://preload.test/a.png 1x">', ["http://preload.test/a.png"]),
    # A browser ends a <style> or <script> at "</style" and a blank, "/" or ">": the stdlib (3.11.7) read on as CSS.
    ('<style>p{}</style foo><a href="http://after-style.test/">x</a>', ["http://after-style.test/"]),
    ('<script>x()</script/><a href="http://after-script.test/">x</a>', ["http://after-script.test/"]),
    # Still CSS to a browser, but read for links too: where a browser ignores the <style> (in a <select>) it is markup.
    ('<style>a</stylex><a href="http://still-css.test/">x</a></style><p>shown</p>', ["http://still-css.test/"]),
    # A <style> left open at the end is CSS to the end in a browser: the stdlib (3.11.7) dropped its text.
    ('<p>x</p><style>body{background:url(http://open-style.test/a.png)}', ["http://open-style.test/a.png"]),
    ('<style>@import "http://open-import.test/s.css";</sty', ["http://open-import.test/s.css"]),
    ('<script>x("<a href=http://in-script.test/>")', []),
])
def test_links_in_other_attributes_are_read(markup: str, links: list[str]) -> None:
    assert html_to_text(markup)[1] == links


def test_a_base_after_the_links_resolves_them_too() -> None:
    # A browser resolves every link against the document's first <base href>, wherever it stands.
    _, links = html_to_text('<a href="login">x</a><base href="https://base.test/app/"><base href="https://second.test/">')
    assert links == ["login", "https://base.test/app/login", "https://base.test/app/", "https://second.test/"]


def test_which_of_the_new_links_a_reader_follows() -> None:
    markup = (
        '<img srcset="http://img.test/a.png 2x"><p style="background:url(http://css.test/b.png)">x</p>'
        '<object data="http://obj.test/f"></object>'
        '<meta http-equiv="refresh" content="0;url=http://refresh.test/"><button formaction="http://form.test/">x</button>'
        '<svg><a xlink:href="http://svg.test/">x</a><image xlink:href="http://svgimg.test/i.png"/></svg>'
    )
    raw = b"Content-Type: text/html\r\n\r\n" + markup.encode()
    found = extract(raw)
    assert set(found.uris) - found.embedded == {"http://refresh.test/", "http://form.test/", "http://svg.test/"}
    assert found.embedded == {"http://img.test/a.png", "http://css.test/b.png", "http://obj.test/f", "http://svgimg.test/i.png"}


@pytest.mark.parametrize("markup", [
    '<img srcset="' + "a.test/x 1x, " * (mimetext.MAX_LINKS_LOOKED + 10_000) + '">',
    "<style>" + "url(http://a.test/x)" * (mimetext.MAX_LINKS_LOOKED + 10_000) + "</style>",
    '<p style="' + "url(http://a.test/x) " * (mimetext.MAX_LINKS_LOOKED + 10_000) + '">',
])
def test_links_read_in_css_and_srcsets_are_bounded_as_the_links_scanned_and_the_cut_is_said(markup: str) -> None:
    raw = b"Content-Type: text/html\r\n\r\n" + markup.encode()
    found = extract(raw)
    assert found.unread == "links"
    assert len(found.uris) <= mimetext.MAX_URIS


def test_relative_links_past_the_links_scanned_are_not_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    # Resolving copies the base into each link: none past the bound, where nothing is kept anyway.
    calls = []
    resolve = mimetext._Base.resolve
    monkeypatch.setattr(mimetext._Base, "resolve", lambda self, link: calls.append(link) or resolve(self, link))
    html_to_text('<base href="http://b.test/">' + "".join(f"<a href=r{n}>" for n in range(mimetext.MAX_LINKS_SCANNED)))
    assert len(calls) == (mimetext.MAX_LINKS_SCANNED - 1) // 2  # each a written link and a resolved one; the base first


def test_a_base_too_long_is_no_base() -> None:
    # Each resolved link holds a copy of the base: a base of 1 MB under 1,000 links took a gigabyte.
    host = "h" * mimetext.MAX_BASE
    _, links = html_to_text(f'<base href="http://{host}.test/"><a href="login">x</a>')
    assert links == [f"http://{host}.test/", "login"]


def test_resolution_joins_as_a_browser_does_dot_segments_aside() -> None:
    base = mimetext._Base.of("http://base.test/dir/page.html?q=1#top")
    assert base is not None
    assert [base.resolve(link) for link in ("x.png", "/abs", "?p=2", "\\back", "sub/../y")] == [
        "http://base.test/dir/x.png", "http://base.test/abs", "http://base.test/dir/page.html?p=2", "http://base.test/back",
        "http://base.test/dir/sub/../y",
    ]


def _with_file(ctype: str, name: str, content: bytes) -> bytes:
    body = base64.encodebytes(content)
    return (b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n'
            b"--B\r\nContent-Type: " + ctype.encode() + b'\r\nContent-Disposition: attachment; filename="' + name.encode()
            + b'"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + body + b"--B--\r\n")


@pytest.mark.parametrize(("ctype", "name", "found"), [
    ("application/octet-stream", "invoice.HTML", True),
    ("image/svg+xml", "scan.svg", True),
    ("application/octet-stream", "notes.txt", True),
    ("application/octet-stream", "page.xht", True),
    ("application/hta", "update.hta", True),
    ("application/octet-stream", "data.bin", False),
    ("application/pdf", "a.pdf", False),
])
def test_an_html_page_svg_or_text_file_is_read_by_its_name_whatever_its_type(ctype: str, name: str, found: bool) -> None:
    content = b'<svg><a href="https://page.test/login">x</a></svg>' if name != "notes.txt" else b"see https://page.test/login"
    assert ("https://page.test/login" in extract(_with_file(ctype, name, content)).uris) is found


@pytest.mark.parametrize("name", ["saved.mht", "saved.MHTML", "saved.eml"])
def test_a_saved_web_page_is_read_as_the_message_it_is(name: str) -> None:
    # A browser or Word opens an MHTML file (a MIME message) as its page; the page is base64 inside it.
    page = base64.encodebytes(b'<a href="https://page.test/login">Sign in</a>')
    mhtml = (b"From: <Saved by Blink>\r\nSubject: Sign in\r\nMIME-Version: 1.0\r\n"
             b'Content-Type: multipart/related; type="text/html"; boundary="P"\r\n\r\n'
             b"--P\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n" + page + b"--P--\r\n")
    assert "https://page.test/login" in extract(_with_file("application/octet-stream", name, mhtml)).uris


def test_a_large_message_s_view_keeps_an_html_page_sent_as_another_type() -> None:
    # Past the link reader's window its views leave out bodies that show no text: an HTML file by name shows some.
    image = _with_file("image/png", "big.png", b"\x89PNG" + b"\0" * 6_000_000).split(b"--B--")[0]
    page = _with_file("application/octet-stream", "invoice.html", b'<a href="https://page.test/login">x</a>')
    raw = image + page[page.index(b"--B\r\nContent-Type: application"):]
    room = 4 * 1024 * 1024
    found = extract_large(raw[:room], lambda: [raw], room)
    assert "https://page.test/login" in found.uris

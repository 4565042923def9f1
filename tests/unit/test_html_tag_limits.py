"""HTML parts of hostile shape: one start tag of a million attributes, a part of a million tags.

The stdlib parser locates a start tag's end with a pattern that keeps a backtracking entry per
attribute (one tag of 4 MB of "x=y " took 900 MB of a worker's memory), and it costs about 3 µs
a tag (4 MB of "<b>" took 4 s).  milterd reads a start tag's attributes with the stdlib's own
attribute loop and no locating pattern, to the same text and links, and parses at most
``MAX_TAGS`` tags of a part, finding the links written in the rest as in plain text.
"""

from __future__ import annotations

import html
import random
import re
import tracemalloc

import pytest

from milterd.content import mimetext

HEAD = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: t\r\nMessage-ID: <1@example.org>\r\n"


# CPython 3.11.7's start-tag reading, frozen here: the reference milterd's reading is compared with
# whatever Python runs the tests (Debian 12's 3.11.2 reads start tags by the 2025 security fixes' rules).
_LOCATE_3_11_7 = re.compile(r"""
  <[a-zA-Z][^\t\n\r\f />\x00]*       # tag name
  (?:[\s/]*                          # optional whitespace before attribute name
    (?:(?<=['"\s/])[^\s/>][^\s/=>]*  # attribute name
      (?:\s*=+\s*                    # value indicator
        (?:'[^']*'                   # LITA-enclosed value
          |"[^"]*"                   # LIT-enclosed value
          |(?!['"])[^>\s]*           # bare value
         )
        \s*                          # possibly followed by a space
       )?(?:\s|/(?!>))*
     )*
   )?
  \s*                                # trailing whitespace
""", re.VERBOSE)


class StdlibStartTags(mimetext._HTMLText):
    """milterd's HTML reader with CPython 3.11.7's ``parse_starttag`` and ``check_for_whole_start_tag``
    (what it did before: the locating pattern first, then the attribute loop over what it located)."""

    def parse_starttag(self, i: int) -> int:
        return self._to_end(self._stdlib_parse_starttag(i))

    def _stdlib_parse_starttag(self, i: int) -> int:
        endpos = self._whole_start_tag(i)
        if endpos < 0:
            return endpos
        rawdata = self.rawdata
        attrs: list[tuple[str, str | None]] = []
        match = mimetext._TAG_NAME.match(rawdata, i + 1)
        assert match
        k = match.end()
        self.lasttag = tag = match.group(1).lower()
        while k < endpos:
            m = mimetext._ATTRIBUTE.match(rawdata, k)
            if not m:
                break
            attrname, rest, attrvalue = m.group(1, 2, 3)
            if not rest:
                attrvalue = None
            elif attrvalue[:1] == "'" == attrvalue[-1:] or attrvalue[:1] == '"' == attrvalue[-1:]:
                attrvalue = attrvalue[1:-1]
            if attrvalue:
                attrvalue = html.unescape(attrvalue)
            attrs.append((attrname.lower(), attrvalue))
            k = m.end()
        end = rawdata[k:endpos].strip()
        if end not in (">", "/>"):
            self.handle_data(rawdata[i:endpos])
            return endpos
        if end.endswith("/>"):
            self.handle_startendtag(tag, attrs)
        else:
            self.handle_starttag(tag, attrs)
            if tag in self.CDATA_CONTENT_ELEMENTS:
                self.set_cdata_mode(tag)
        return endpos

    def _whole_start_tag(self, i: int) -> int:
        rawdata = self.rawdata
        m = _LOCATE_3_11_7.match(rawdata, i)
        assert m
        j = m.end()
        following = rawdata[j:j + 1]
        if following == ">":
            return j + 1
        if following == "/":
            if rawdata.startswith("/>", j):
                return j + 2
            return -1
        if following == "" or following in "abcdefghijklmnopqrstuvwxyz=/ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            return -1
        return j if j > i else i + 1


def read(parser_class: type[mimetext._HTMLText], markup: str) -> tuple[str, list[str], set[str], set[str]]:
    """Text parts, links, embedded and followed links of *markup* as *parser_class* reads it (as _html_parts feeds it)."""
    markup, mark = mimetext._text_lt(markup)
    parser = parser_class(mark)
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts), parser.links, parser.embedded, parser.followed


def html_message(markup: bytes) -> bytes:
    return HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + markup + b"\r\n"


def test_one_start_tag_of_many_attributes_is_read_in_little_memory() -> None:
    markup = "<p>x</p><a " + "x=y " * 200_000 + "href='http://late.example/'>go</a>"
    tracemalloc.start()
    try:
        text, links = mimetext.html_to_text(markup)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (text, links) == ("x\ngo", ["http://late.example/"])
    assert peak < 16_000_000, f"{peak / 1e6:.0f} MB"  # the stdlib's pattern: 164 MB


@pytest.mark.parametrize(
    "markup",
    [
        # Long tags a sender writes: an inline image, a long link, a long style.
        '<p>x<img src="data:image/png;base64,' + "A" * 300_000 + '" alt=y><a href=\'http://after.example/\'>go</a>',
        '<a href="http://long.example/?' + "q=1&amp;" * 5000 + '">long</a> <img src=http://img.example/i.png />',
        '<div style="' + "color: red; " * 10_000 + '">styled <a HREF=http://up.example/>up</a></div>',
        # Unterminated: a quote that never closes, "=" at the end, a lone "/" at the end.
        "<p>seen</p><a href='http://never.example/ " + "x " * 10_000,
        "<p>seen</p><a href=",
        "<p>seen</p><a href=x /",
        # Junk the stdlib takes as text, a NUL in a tag name, attributes in quotes, uppercase names.
        '<a\x00b href=http://nul.example/>z</a> <a "x"=y href="http://q.example/">q</a> <BR/>end',
        "<script>if (a<b) {}</script><a x='>' href=http://gt.example/>gt</a>",
    ],
)
def test_start_tags_read_as_cpython_3_11_7_reads_them(markup: str) -> None:
    assert read(mimetext._HTMLText, markup) == read(StdlibStartTags, markup)


def test_random_markup_reads_as_cpython_3_11_7_reads_it() -> None:
    """Markup made of the pieces a start tag's reading turns on: the same text and links, case after case."""
    pieces = ["<a", "<A", "<img", "<br", " ", "\n", "\t", "/", "/>", ">", "=", "==", "'", '"', "href", "HREF", "src",
              "x", "http://a.example/", "&amp;", "&", "\x00", "<", "</a>", "<script>", "</script>", "<!--", "-->", "<p>",
              "text", "<!x", "=\"v\"", "='w'", "-"]
    rng = random.Random(14)
    for _ in range(20_000):
        markup = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 40)))
        assert read(mimetext._HTMLText, markup) == read(StdlibStartTags, markup), repr(markup)


def test_tags_past_the_budget_are_not_parsed_but_their_links_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []
    handle = mimetext._HTMLText.handle_starttag

    def counted(self: mimetext._HTMLText, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        started.append(tag)
        handle(self, tag, attrs)

    monkeypatch.setattr(mimetext._HTMLText, "handle_starttag", counted)
    markup = b"<p>hello <a href='http://first.example/'>first</a>" + b"<b>" * 300_000 + b"<a href=\"http://late.example/x\">late</a>"
    found = mimetext.extract(html_message(markup))
    assert len(started) == mimetext.MAX_TAGS - 1  # and the "</a>": the old code parsed 300,003 start tags
    assert found.uris == ["http://first.example/", "http://late.example/x"]
    # The rest's text read with its tags dropped (thirty-seventh review: it hid text from the body rules).
    assert found.text == "hello first\n\nlate" and not found.truncated and found.error == ""  # the text is whole


def test_a_part_within_the_budget_is_not_cut() -> None:
    markup = b"<p>a</p>" * (mimetext.MAX_TAGS // 2 - 1) + b"<a href=http://end.example/>end</a>"
    found = mimetext.extract(html_message(markup))
    assert found.uris == ["http://end.example/"] and not found.truncated
    assert found.text.endswith("a\nend")

"""Custom rules against review 33's evasions: invisible characters above U+FFFF, decomposed accents, links.

Header and body rules see text without its invisible characters and in NFKC
form: that held for the BMP only (``vi`` U+E0020 ``agra`` passed ``viagra``)
and for compatibility characters one by one (``cafe`` U+0301 never became
``café``).  A ``uri`` rule saw a link only as written, so the example rule of
rules/local.toml missed ``https://evil.top?x=1``, ``HTTPS://EVIL.TOP`` and the
like; it now also sees :func:`milterd.checks.uribl.link_form` of each link.
Work is counted, not timed.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from milterd import text as text_module
from milterd.checks import custom, uribl
from milterd.message.pipeline import Pipeline
from tests.conftest import message
from tests.unit.test_custom_rules_review import html, rules_pipeline, symbols_of

ROOT = Path(__file__).resolve().parents[2]


def shipped_uri_example() -> str:
    """The commented-out ``uri = '…'`` example rule of rules/local.toml."""
    found = re.search(r"(?m)^# uri = '([^']*)'$", (ROOT / "rules" / "local.toml").read_text())
    assert found, "rules/local.toml has no uri example"
    return found.group(1)


RULES = rf"""
[[rule]]
name = "SUBJ_VIAGRA"
header = "Subject"
regex = '(?i)viagra'

[[rule]]
name = "SUBJ_CAFE"
header = "Subject"
regex = 'café gratuit'

[[rule]]
name = "BODY_VIAGRA"
body = '(?i)viagra'

[[rule]]
name = "BODY_CAFE"
body = 'café gratuit'

[[rule]]
name = "URI_CHEAP_TLD"
uri = '{shipped_uri_example()}'
"""

#: Ways of writing a link to evil.top that the example rule missed, all of them browsers follow there.
EVIL_TOP = [
    "https://evil.top./x",
    "https://evil.top?x=1",
    "https://evil.top#a",
    "https://evil.top\\x",
    "https://evil.to%70/",
    "https:evil.top/x",
    "//evil.top/x",
    "HTTPS://EVIL.TOP.",
    "HTTPS://Evil.Top.:8080?q",
    "https:/\\evil.top/x",
    "https://evil\u3002top/x",  # an ideographic full stop (a second look: browsers go to evil.top)
    "https://\uff45\uff56\uff49\uff4c\uff0e\uff54\uff4f\uff50/x",  # fullwidth
    "https://evil.top:/x",  # an empty port
]

#: Invisible characters above U+FFFF: a tag space and a tag letter, a variation selector of the supplement,
#: a shorthand format control and a musical symbol formatting character.
ASTRAL_INVISIBLE = ["\U000e0020", "\U000e0061", "\U000e0100", "\U000e01ef", "\U0001bca0", "\U0001d173", "\U0001d17a"]


@pytest.fixture()
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    yield from rules_pipeline(tmp_path, RULES)


def encoded(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


# --- 1. invisible characters above U+FFFF ------------------------------------------------------

@pytest.mark.parametrize("invisible", ASTRAL_INVISIBLE)
def test_visible_drops_invisible_characters_above_the_bmp(invisible: str) -> None:
    assert custom._visible(f"vi{invisible}agra") == "viagra"
    assert custom._visible(f"Gr\u00fc{invisible}\u00dfe \U0001f600") == "Gr\u00fc\u00dfe \U0001f600"  # an emoji stays


@pytest.mark.parametrize("subject", ["vi\U000e0020agra", encoded("cheap vi\U000e0020agra"), "vi\U000e0100agra"])
def test_header_rule_sees_through_tag_characters(pipeline: Pipeline, subject: str) -> None:
    assert "SUBJ_VIAGRA" in symbols_of(pipeline, message(subject=subject))


@pytest.mark.parametrize("raw", [
    message(body="vi\U000e0020agra vi\U000e0101agra\r\n"),
    html("<p>vi&#xE0020;agra</p>"),
    html("<p>vi&#917536;ag\U0001d173ra</p>"),
])
def test_body_rule_sees_through_tag_characters(pipeline: Pipeline, raw: bytes) -> None:
    assert "BODY_VIAGRA" in symbols_of(pipeline, raw)


def test_bmp_text_keeps_the_fast_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pattern with supplementary-plane ranges (slower) runs only on text that has such a character."""
    scanned: list[str] = []

    class Counted:
        def __init__(self, pattern: re.Pattern[str], name: str) -> None:
            self.pattern, self.name = pattern, name

        def sub(self, replacement: str, text: str) -> str:
            scanned.append(self.name)
            return self.pattern.sub(replacement, text)

    monkeypatch.setattr(text_module, "INVISIBLE", Counted(text_module.INVISIBLE, "bmp"))
    monkeypatch.setattr(text_module, "INVISIBLE_WIDE", Counted(text_module.INVISIBLE_WIDE, "wide"))
    assert custom._visible("Gr\u00fc\u00dfe \u200bK\u00f6ln\n" * 1000) == "Gr\u00fc\u00dfe K\u00f6ln\n" * 1000
    assert scanned == ["bmp"]
    assert custom._visible("hello world\n" * 100) == "hello world\n" * 100
    assert scanned == ["bmp"]  # ASCII: not scanned at all
    assert custom._visible("vi\u200bag\U000e0020ra \U0001f600") == "viagra \U0001f600"
    assert scanned == ["bmp", "wide"]


# --- 2. a letter and its combining marks -------------------------------------------------------

def test_visible_composes_a_letter_and_its_accent() -> None:
    assert custom._visible("cafe\u0301 gratuit") == "caf\u00e9 gratuit"
    assert custom._visible("\uff43afe\u0301") == "caf\u00e9"  # full-width and decomposed at once
    assert custom._visible("n\u0303o\u0308") == "\u00f1\u00f6"
    assert custom._visible("e\u0301", 1) == "\u00e9"  # the limit counts composed characters


@pytest.mark.parametrize("subject", ["cafe\u0301 gratuit", encoded("cafe\u0301 gratuit"), "cafe\u200b\u0301 gratuit"])
def test_header_rule_sees_a_decomposed_accent(pipeline: Pipeline, subject: str) -> None:
    assert "SUBJ_CAFE" in symbols_of(pipeline, message(subject=subject))


@pytest.mark.parametrize("raw", [message(body="cafe\u0301 gratuit\r\n"), html("<p>cafe&#x301; gratuit</p>")])
def test_body_rule_sees_a_decomposed_accent(pipeline: Pipeline, raw: bytes) -> None:
    assert "BODY_CAFE" in symbols_of(pipeline, raw)


def longest_nonstarter_run(text: str) -> int:
    runs = re.findall(r"[^\x00-\x7f]+", "".join(c if unicodedata.combining(c) else "a" for c in unicodedata.normalize("NFD", text)))
    return max(map(len, runs), default=0)


@pytest.mark.parametrize("marks", ["\u0301\u0316", "\u0f73", "\uff9e\u0334", "\u0345\u05b0\u0301"])
def test_runs_of_combining_marks_are_cut_before_normalising(monkeypatch: pytest.MonkeyPatch, marks: str) -> None:
    """NFKC sorts a run of combining marks in quadratic time: it is never given a run longer than about
    MAX_MARKS characters' worth (a character may decompose to two or three marks)."""
    normalize = unicodedata.normalize
    given: list[str] = []

    def counted(form: Any, text: str) -> str:
        given.append(text)
        return normalize(form, text)

    monkeypatch.setattr(custom, "unicodedata", SimpleNamespace(is_normalized=unicodedata.is_normalized, normalize=counted))
    text = ("cafe" + marks * 20_000 + " gratuit\n") * 3
    seen = custom._visible(text, 1_000_000)
    assert given and all(longest_nonstarter_run(piece) <= 3 * custom.MAX_MARKS for piece in given)
    assert sum(map(len, given)) <= 3 * (len("cafe gratuit\n") + custom.MAX_MARKS)
    assert seen == normalize("NFKC", "cafe" + (marks * custom.MAX_MARKS)[:custom.MAX_MARKS] + " gratuit\n") * 3


# --- 3. uri rules see each link normalised too --------------------------------------------------

@pytest.mark.parametrize("link", EVIL_TOP)
def test_link_form_writes_the_host_as_browsers_read_it(link: str) -> None:
    form = uribl.link_form(link)
    assert form.startswith(("https://evil.top/", "http://evil.top/", "https://evil.top:8080/")), form
    assert re.search(shipped_uri_example(), form)


def test_link_form_keeps_what_it_need_not_change() -> None:
    for link in ("https://example.org/Path?Q=A#F", "mailto:Bob@Example.ORG", "/relative/Path", "cid:part1@x"):
        assert uribl.link_form(link) == link
    assert uribl.link_form("https://User:Pw@[2001:DB8::1]:8080") == "https://User:Pw@[2001:db8::1]:8080/"
    assert uribl.link_form("FTP://Files.Example.ORG./a\\b") == "ftp://files.example.org/a/b"


@pytest.mark.parametrize("link", EVIL_TOP)
def test_the_shipped_uri_example_hits_each_way_of_writing_the_link(pipeline: Pipeline, link: str) -> None:
    assert "URI_CHEAP_TLD" in symbols_of(pipeline, html(f'<p><a href="{link}">offer</a></p>'))


def test_the_readme_uri_example_hits_the_normalised_links() -> None:
    found = re.search(r"uri = '([^']*)'", (ROOT / "README.md").read_text())
    assert found
    for link in EVIL_TOP:
        assert re.search(found.group(1), link) or re.search(found.group(1), uribl.link_form(link)), link


def test_uri_rule_hits_the_links_of_text_and_misses_other_hosts(pipeline: Pipeline) -> None:
    assert "URI_CHEAP_TLD" in symbols_of(pipeline, message(body="see https://Evil.Top.?x=1 now\r\n"))
    others = ["https://evil.top.example.org/", "https://example.org/?u=evil.top", "https://example.org/evil.top/", "mailto:a@evil.top"]
    assert "URI_CHEAP_TLD" not in symbols_of(pipeline, html("".join(f'<a href="{link}">x</a>' for link in others)))


def test_links_are_normalised_once_a_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """However many uri rules: each link's form is worked out once."""
    rules = RULES + "".join(f"\n[[rule]]\nname = \"URI_OTHER_{n}\"\nuri = 'nothing{n}'\n" for n in range(5))
    pipe = next(rules_pipeline(tmp_path, rules))
    calls: list[str] = []
    link_form = uribl.link_form

    def counted(uri: str) -> str:
        calls.append(uri)
        return link_form(uri)

    monkeypatch.setattr(custom, "link_form", counted)
    links = [f"https://site{n}.example/" for n in range(20)] + ["HTTPS://EVIL.TOP."]
    try:
        assert "URI_CHEAP_TLD" in symbols_of(pipe, html("".join(f'<a href="{link}">x</a>' for link in links)))
    finally:
        pipe.shutdown()
    assert sorted(calls) == sorted(links)

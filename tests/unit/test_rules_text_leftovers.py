"""Two evasions of text the rules read.

Custom header and body rules read compatibility characters (full-width,
mathematical and ligature letters) in their NFKC form, so ``ｖｉａｇｒａ`` is
``viagra`` to them; ASCII text costs nothing more.  URI block lists, when a
message has more link domains than ``max_domains``, draw those of clickable
links first: image sources no longer pad a listed ``<a href>`` out.
"""

from __future__ import annotations

import base64
import random
import unicodedata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from milterd.checks import custom
from milterd.checks.uribl import UriblChecks, link_targets, query_name
from milterd.config import load_config
from milterd.content.mimetext import extract
from milterd.message.pipeline import Pipeline
from milterd.services import build
from tests.conftest import message
from tests.harness.messages import envelope_of
from tests.unit.test_custom_rules_review import html, rules_pipeline, symbols_of

RULES = r"""
[[rule]]
name = "SUBJ_VIAGRA"
header = "Subject"
regex = '(?i)\bviagra\b'

[[rule]]
name = "BODY_VIAGRA"
body = '(?i)\bviagra\b'

[[rule]]
name = "BODY_FINANCE"
body = 'finance'
"""


@pytest.fixture()
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    yield from rules_pipeline(tmp_path, RULES)


FULL_WIDTH = "\uff56\uff49\uff41\uff47\uff52\uff41"  # ｖｉａｇｒａ
BOLD = "\U0001d42f\U0001d422\U0001d41a\U0001d420\U0001d42b\U0001d41a"  # 𝐯𝐢𝐚𝐠𝐫𝐚 (MATHEMATICAL BOLD SMALL)


# --- 1. compatibility characters --------------------------------------------------------------

@pytest.mark.parametrize("word", [FULL_WIDTH, BOLD, "\uff36\uff29\uff21\uff27\uff32\uff21", "v\u200b\uff49\u00ad\uff41gra"])
def test_body_rule_matches_compatibility_letters(pipeline: Pipeline, word: str) -> None:
    assert "BODY_VIAGRA" in symbols_of(pipeline, message(body=f"Cheap {word} today\r\n"))
    assert "BODY_VIAGRA" in symbols_of(pipeline, html(f"<p>Cheap {word} today</p>"))


def test_body_rule_matches_a_ligature(pipeline: Pipeline) -> None:
    assert "BODY_FINANCE" in symbols_of(pipeline, message(body="Your \ufb01nance offer\r\n"))  # ﬁ


@pytest.mark.parametrize("subject", [FULL_WIDTH, BOLD, "=?utf-8?b?" + base64.b64encode(f"Cheap {FULL_WIDTH}!".encode()).decode() + "?="])
def test_header_rule_on_subject_matches_compatibility_letters(pipeline: Pipeline, subject: str) -> None:
    assert "SUBJ_VIAGRA" in symbols_of(pipeline, message(subject=subject))


def test_ordinary_text_keeps_no_rule_hit(pipeline: Pipeline) -> None:
    assert not {"SUBJ_VIAGRA", "BODY_VIAGRA"} & symbols_of(pipeline, message(subject="Gr\u00fc\u00dfe", body="caf\u00e9 \u4e2d\u6587\r\n"))


def test_visible_forms() -> None:
    assert custom._visible(FULL_WIDTH) == custom._visible(BOLD) == "viagra"
    assert custom._visible("\u2460 \u00bd \u2122 \u00a0x") == "1 1\u20442 TM  x"  # NFKC's forms
    assert custom._visible("Gr\u00fc\u00dfe \u4e2d\u6587\u3002") == "Gr\u00fc\u00dfe \u4e2d\u6587\u3002"  # already NFKC: as it was
    assert custom._visible("\uffa0\u3164x\u115f") == "x"  # Hangul fillers: invisible before and after NFKC
    assert custom._decoded(f"=?utf-8?b?{base64.b64encode(FULL_WIDTH.encode()).decode()}?=".encode()) == "viagra"


def test_mapped_text_stays_within_the_body_limit_and_costs_linear_time() -> None:
    # unicodedata.normalize sorts a run of combining marks in quadratic time: a million U+0F73 would take an hour.
    # A run is cut to MAX_MARKS first, and text is normalised a piece at a time until the limit is reached.
    expected = {"\u0f73": unicodedata.normalize("NFKC", "\u0f73" * custom.MAX_MARKS),
                "\ufdfa": unicodedata.normalize("NFKC", "\ufdfa" * 6_000)[:100_000], "\uff56": "viagra" * 50_000}
    short = unicodedata.normalize("NFKC", "\ufdfa" * 10)
    normalize = unicodedata.normalize
    normalised: list[int] = []

    def counted(form: str, text: str) -> str:
        normalised.append(len(text))  # work checked, not timed
        return normalize(form, text)  # type: ignore[arg-type]

    unicodedata.normalize = counted
    try:
        for text in ("\u0f73" * 300_000, "\ufdfa" * 300_000, FULL_WIDTH * 50_000):
            normalised.clear()
            mapped = custom._visible(text, 100_000)
            assert mapped == expected[text[0]][:100_000]
            assert sum(normalised) <= 2 * custom._CHUNK
        assert custom._visible("\ufdfa" * 10) == short  # headers: no limit
    finally:
        unicodedata.normalize = normalize


def test_ascii_and_normalized_text_never_map(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def is_normalized(form: Any, text: str) -> bool:
        calls.append("is_normalized")
        return unicodedata.is_normalized(form, text)

    def refuse(*args: Any) -> Any:
        raise AssertionError("mapped")

    monkeypatch.setattr(custom, "unicodedata", SimpleNamespace(is_normalized=is_normalized, normalize=refuse))
    monkeypatch.setattr(custom, "_MARK_RUN", SimpleNamespace(sub=refuse))
    ascii_text = "Hello Bob,\r\nsee you tomorrow at http://example.org/.\r\n" * 100
    assert custom._visible(ascii_text) is ascii_text
    assert custom._decoded(b"Re: the meeting =?utf-8?q?tomorrow?=") == "Re: the meeting tomorrow"
    assert calls == []  # ASCII: neither checked nor mapped
    assert custom._visible("Gr\u00fc\u00dfe, \u0431\u043e\u0431") == "Gr\u00fc\u00dfe, \u0431\u043e\u0431"
    assert calls == ["is_normalized"]  # already in NFKC form: checked, not mapped


# --- 2. URI block lists: clickable links first --------------------------------------------------

SKIP = frozenset(UriblChecks().skip_domains)


def padded_with_images(count: int = 30) -> bytes:
    images = "".join(f'<img src="https://cdn.pad{i}.example/p{i}.png">' for i in range(count))
    return html(f'<p>{images}<a href="https://click.listed.test/offer">Claim</a></p>')


def test_a_clickable_listed_domain_is_always_looked_up_beside_image_padding() -> None:
    found = extract(padded_with_images())
    assert "https://click.listed.test/offer" not in found.embedded and len(found.embedded) == 30
    for seed in range(50):
        domains, _ = link_targets(found.uris, SKIP, 10, rng=random.Random(seed), embedded=found.embedded)
        assert len(domains) == 10 and "listed.test" in domains
    assert "listed.test" in link_targets(found.uris, SKIP, 10, embedded=found.embedded)[0]  # the default chooser


def test_the_check_passes_the_link_kinds(tmp_path: Path) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[checks.uribl]\nmax_domains = 10\n')
    services = build(load_config(conf))
    check = next(c for c in services.checks if c.name == "uribl")
    zone = "dbl.spamhaus.org"
    for _ in range(20):
        envelope = envelope_of(padded_with_images())
        names = [query_name(target, z) for z, target in check._queries(envelope) or [] if z.zone == zone]  # type: ignore[attr-defined]
        assert len(names) == 10 and f"listed.test.{zone}" in names
        envelope.close()


def test_link_kinds_across_parts_and_tags() -> None:
    # Followed anywhere (a's href, area's href, form's action, text) is followed; embedded only where only embedded.
    markup = (
        '<link rel="stylesheet" href="https://css.example/s.css"><img src="https://both.example/i.png">'
        '<a href="https://both.example/i.png">x</a><area href="https://area.example/"><form action="https://form.example/go">'
        '<td background="https://bg.example/b.png"><img src="https://img.example/1.png"> see https://text.example/ too'
    )
    found = extract(html(markup))
    assert found.embedded == {"https://css.example/s.css", "https://img.example/1.png", "https://bg.example/b.png"}
    multipart = (
        b"From: a@example.org\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<img src='https://img.example/1.png'><img src='https://only.example/2.png'>\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee https://img.example/1.png\r\n--b--\r\n"
    )
    assert extract(multipart).embedded == {"https://only.example/2.png"}
    assert extract(message(body="see https://text.example/\r\n")).embedded == set()


def test_within_the_cap_nothing_changes_and_the_draw_fills_the_places_left() -> None:
    found = extract(padded_with_images(9))
    assert link_targets(found.uris, SKIP, 10, embedded=found.embedded) == link_targets(found.uris, SKIP, 10)
    # 3 clickable domains and 30 image ones, cap 10: the 3 always, 7 of the 30 at random (each about as often).
    links = "".join(f'<a href="https://c{i}.example/">c</a>' for i in range(3))
    found = extract(html(links + "".join(f'<img src="https://i{i}.example/x.png">' for i in range(30))))
    counts: dict[str, int] = {}
    for seed in range(600):
        domains, _ = link_targets(found.uris, SKIP, 10, rng=random.Random(seed), embedded=found.embedded)
        assert len(domains) == 10 and {"c0.example", "c1.example", "c2.example"} <= set(domains)
        for domain in domains[3:]:
            counts[domain] = counts.get(domain, 0) + 1
    assert len(counts) == 30 and all(90 <= n <= 190 for n in counts.values()), counts  # 600 × 7/30 = 140 each
    # More clickable domains than the cap: drawn among them only.
    many = extract(html("".join(f'<a href="https://c{i}.example/">c</a>' for i in range(15)) + '<img src="https://img.example/x.png">'))
    for seed in range(30):
        domains, _ = link_targets(many.uris, SKIP, 10, rng=random.Random(seed), embedded=many.embedded)
        assert len(domains) == 10 and "img.example" not in domains

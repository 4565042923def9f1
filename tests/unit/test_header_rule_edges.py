"""What a header rule is matched against, from a review (thirty-first session): the blanks around a value
(SpamAssassin's header rules see the value trimmed; ``Subject:<TAB>WIN`` or a fold after the colon dodged a
rule anchored with ``^``), and a character split between two encoded-words (read whole, as Thunderbird and
Python's ``decode_header`` read it; word by word it was two U+FFFD and the rule missed)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from milterd.content.headertext import decoded
from milterd.message.pipeline import Pipeline
from tests.conftest import message
from tests.unit.test_custom_rules_review import rules_pipeline, symbols_of

RULES = r"""
[[rule]]
name = "SUBJ_STARTS_WIN"
header = "Subject"
regex = '^WIN\b'

[[rule]]
name = "SUBJ_ENDS_FREE"
header = "Subject"
regex = '\bFREE$'

[[rule]]
name = "SUBJ_VIAGRA_RU"
header = "Subject"
regex = '(?i)виагра'
"""


@pytest.fixture()
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    yield from rules_pipeline(tmp_path, RULES)


@pytest.mark.parametrize("subject", ["\tWIN it all FREE", "  WIN it all FREE", "\r\n WIN it all FREE", "WIN it all FREE \t",
                                     "\u00a0WIN it all FREE"])
def test_anchored_header_rules_see_the_value_trimmed(pipeline: Pipeline, subject: str) -> None:
    raw = message().replace(b"Subject: hello", b"Subject:" + subject.encode())
    assert {"SUBJ_STARTS_WIN", "SUBJ_ENDS_FREE"} <= symbols_of(pipeline, raw)


@pytest.mark.parametrize(("value", "text"), [
    ("=?utf-8?b?0LLQuNA=?= =?utf-8?b?sNCz0YDQsA==?=", "виагра"),  # split inside the а (d0 b0)
    ("=?utf-8?q?caf=C3?=\r\n =?UTF-8?Q?=A9?= ok", "café ok"),  # folded, the charset in another case
    ("=?utf-8?q?a?= =?iso-8859-1?q?=E9?=", "aé"),  # two charsets: each run its own
    ("=?utf-8?q?x?= =?utf-8?b?abcde?= =?utf-8?q?y?=", "x=?utf-8?b?abcde?=y"),  # a word that is no base64 stays as sent
])
def test_a_character_split_between_encoded_words_is_read_whole(value: str, text: str) -> None:
    assert decoded(value) == text


def test_a_header_rule_matches_a_split_word(pipeline: Pipeline) -> None:
    raw = message().replace(b"Subject: hello", b"Subject: =?utf-8?b?0LLQuNA=?= =?utf-8?b?sNCz0YDQsA==?=")
    assert "SUBJ_VIAGRA_RU" in symbols_of(pipeline, raw)

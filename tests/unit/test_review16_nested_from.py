"""Review 16 (fuzzing): comments or groups nested hundreds deep in From (valid RFC 5322) made the
standard library's address parser raise RecursionError; DMARC and local_domains then failed as
CHECK_ERROR (0 points), so a forged From of a p=reject or local domain was accepted."""

from __future__ import annotations

import pytest

from milterd.checks.dmarc import from_domains
from milterd.content.headertext import _without_comments, addresses

DEEP = "(" * 600 + ")" * 600


@pytest.mark.parametrize(("value", "expected"), [
    (f"{DEEP} CEO <ceo@example.org>", [("CEO", "ceo@example.org")]),
    (f"CEO {DEEP}<ceo@example.org>", [("CEO", "ceo@example.org")]),
    ("a: " * 600 + "ceo@example.org" + ";" * 600, [("", "ceo@example.org")]),  # groups nested: the last resort
])
def test_deeply_nested_from_values_still_give_their_addresses(value: str, expected: list[tuple[str, str]]) -> None:
    assert addresses(value) == expected


def test_dmarc_judges_the_domain_of_a_deeply_nested_from() -> None:
    assert from_domains([f"{DEEP} CEO <ceo@example.org>"]) == ("example.org",)


def test_comments_are_removed_without_recursion_quoted_strings_kept() -> None:
    assert _without_comments('"(not a comment)" (a (b \\) c) d) <x@example.net>') == '"(not a comment)"   <x@example.net>'
    assert _without_comments(DEEP + "<x@example.net>") == " <x@example.net>"

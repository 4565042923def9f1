"""Administrators' regular expressions (custom rules, rDNS generic_patterns, greylist /regex/ entries)
run on text the client controls: a search that backtracks gives up after SEARCH_TIMEOUT, counted as no
match with a warning, instead of stalling the worker (Python's re took hours on a rule as plain as
``\\s+x`` over a body of spaces)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from milterd import patterns
from milterd.checks.rdns import looks_generic
from milterd.config import load_config
from milterd.greylist import compile_pattern
from milterd.message.pipeline import Pipeline
from milterd.milter.offline import Client, check_message
from milterd.patterns import AdminPattern
from milterd.services import build
from tests.conftest import message

#: Exponential for any backtracking engine: about a second for regex, more for re, on 26 "a"s.
BACKTRACKS = "(a|aa)+$"
HOSTILE = "a" * 26 + "b"


@pytest.fixture
def quick_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patterns, "SEARCH_TIMEOUT", 0.05)


def test_a_search_that_backtracks_gives_up_and_says_so(quick_timeout: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="milterd.patterns"):
        assert AdminPattern(BACKTRACKS).search(HOSTILE) is None
    assert "gave up after 0.05s on 27 characters" in caplog.text


def test_the_same_pattern_still_matches_what_it_matches() -> None:
    found = AdminPattern(BACKTRACKS).search("xaaa")
    assert found is not None and found.group(0) == "aaa"


def test_patterns_keep_pythons_unicode_classes() -> None:
    """regex's default mode reads \\w, \\d and \\s as re does (RE2 would read them as ASCII)."""
    assert AdminPattern(r"^\w+$").search("héllo") is not None
    assert AdminPattern(r"\d").search("٣") is not None
    assert AdminPattern(r"(a)\1").search("xaa") is not None  # backreferences kept


def test_a_body_rule_on_hostile_text_gives_up_and_the_message_is_judged(tmp_path: Path, quick_timeout: None, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text(f'[[rule]]\nname = "BODY_BACKTRACKS"\nbody = \'{BACKTRACKS}\'\nscore = 5\n')
    (tmp_path / "milter.conf").write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = 0.3\n')
    pipeline = Pipeline(build(load_config(tmp_path / "milter.conf")), keep_log=False)
    try:
        with caplog.at_level(logging.WARNING, logger="milterd.patterns"):
            result = check_message(pipeline, message(body=HOSTILE + "\r\n"), Client(addr="192.0.2.10"))
    finally:
        pipeline.shutdown()
    assert not result.error and "BODY_BACKTRACKS" not in result.symbols and "CHECK_ERROR" not in result.symbols
    assert "gave up after" in caplog.text


def test_greylist_and_rdns_patterns_are_bounded_too(quick_timeout: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="milterd.patterns"):
        assert not compile_pattern("sender", f"/{BACKTRACKS}/").matches(HOSTILE)
        assert not looks_generic(HOSTILE, "192.0.2.10", (AdminPattern(BACKTRACKS),))
    assert caplog.text.count("gave up after") == 2
    assert compile_pattern("sender", "/^ALICE@/").matches("alice@example.org")  # still case-insensitive

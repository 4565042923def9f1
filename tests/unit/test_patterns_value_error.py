"""An administrator's regex that the regex package refuses with ValueError (an inline ``(?V1)``)
is refused at start naming the key, in every place such patterns are configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.config import ConfigError, load_config
from milterd.patterns import AdminPattern, PatternError
from milterd.services import build


def _load(tmp_path: Path, section: str) -> None:
    path = tmp_path / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n[dns]\nnameservers = ["127.0.0.1:9"]\n{section}')
    build(load_config(path))


def test_an_rdns_generic_pattern_with_v1_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, "[checks.rdns]\nenabled = true\ngeneric_patterns = ['(?V1)x']\n")
    assert caught.value.key == "[checks.rdns] generic_patterns[0]"
    assert caught.value.reason.startswith("bad regular expression: VERSION0 and VERSION1")


def test_a_greylist_regex_entry_with_v1_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, "[greylist]\nenabled = true\nwhitelist_clients = ['/(?V1)x/']\n")
    assert caught.value.key == "[greylist] whitelist_clients"
    assert "bad regular expression '/(?V1)x/'" in caught.value.reason


# --- counted repeats the regex package would expand into gigabytes (found by review) -------------
HUGE = ["x{2147483648}", "x{10000000}", "(?:(?:x{1000}){1000}){1000}", "(ab){60000}",
        # A "[" in a comment read as a set hid the repeat after it (second review).
        "(?#[)x{3000000}(?#])", "(?x)x#[\n{3000000}", "(?x)(?:x{1000} #[\n){3000}", "(?x)(?:x{1000} #)\n){3000}",
        # Verbose mode's blanks before "{" and among the digits, an escaped "(?x", a scoped "(?-x:", a set
        # holding a line end (fourth review).
        "(?x)(?:(?:(?:x{1000}) {1000}) {1000})", "(?x)x{1 000 000 000}", "\\(?x#x{1000000000}",
        "(?x)a(?-x:#x{1000000000})", "[\n[]x{1000000000}]", "[\n(?#]x{1000000000}[)]"]


@pytest.mark.parametrize("pattern", HUGE)
def test_a_counted_repeat_too_large_to_compile_is_refused_at_once(pattern: str) -> None:
    # x{100000000} asked for 28 GB at start: the kernel killed milterd with no word.
    with pytest.raises(PatternError, match="counted repeats expand to more than 100,000 items"):
        AdminPattern(pattern)


@pytest.mark.parametrize("pattern", [r"\d{3}-\d{3}-\d{4}", "x{1,50000}", "[{]{3}", r"\{99999999\}", "(?:(a|b){10}){10}", "w" * 200_000, "(?:a{300}){300}"])
def test_ordinary_patterns_and_long_ones_without_repeats_compile(pattern: str) -> None:
    assert AdminPattern(pattern).pattern == pattern


def test_a_huge_repeat_in_a_rule_file_is_refused_naming_the_file_and_rule(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "big.toml").write_text('[[rule]]\nname = "BIGREP"\nbody = "x{2147483648}"\nscore = 1\n')
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, "")
    assert caught.value.file.endswith("big.toml") and "BIGREP" in caught.value.key
    assert "too large to compile" in caught.value.reason


def test_a_huge_repeat_in_a_greylist_entry_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, "[greylist]\nenabled = true\nwhitelist_clients = ['/x{100000000}/']\n")
    assert caught.value.key == "[greylist] whitelist_clients" and "too large to compile" in caught.value.reason

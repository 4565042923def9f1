"""X-Spam-Status is folded at the commas of its tests list (review 15)."""

from __future__ import annotations

from milterd.config import ActionsSection
from milterd.message.model import Action, Verdict
from milterd.message.model import header_safe as _header_safe
from milterd.message.policy import plan_headers, spam_status


def _verdict(symbols: list[str], score: float = 12.3) -> Verdict:
    action = Action.ADD_HEADER if score >= 5.0 else Action.ACCEPT
    return Verdict(action=action, score=score, symbols={s: 0.3 for s in symbols}, details={}, reason="", required=5.0)


def _header(verdict: Verdict) -> str:
    edits = plan_headers(verdict, {}, None, ActionsSection())
    return next(e.value for e in edits if e.name == "X-Spam-Status")


LONG = [f"CUSTOM_RULE_WITH_A_RATHER_LONG_NAME_NUMBER_{i:02d}" for i in range(40)]


def test_long_tests_list_is_folded_at_commas() -> None:
    value = _header(_verdict(LONG))
    lines = ("X-Spam-Status: " + value).split("\n")
    assert len(lines) > 1
    assert all(len(line) <= 998 for line in lines)
    # The first symbol stays after tests= ("tests=NAME" still matches); each further line is under 78.
    assert all(len(line) <= 78 for line in lines[1:])
    assert all(line.startswith("\t") for line in lines[1:])
    assert all(line.endswith(",") for line in lines[:-1])
    # Unfolded (the line breaks removed, RFC 5322 §2.2.3) it is the one-line value with a tab after
    # the commas where it was folded; without those tabs, exactly the old value.
    unfolded = value.replace("\n", "")
    assert unfolded.replace(",\t", ",") == spam_status(_verdict(LONG))
    assert unfolded.replace(",\t", ",") == "Yes, score=12.3 required=5 tests=" + ",".join(sorted(LONG))


def test_folded_value_goes_to_postfix_as_folding() -> None:
    value = _header(_verdict(LONG))
    assert _header_safe(value) == value  # "\n\t" kept: Postfix writes it as CRLF + tab


def test_short_values_are_unchanged() -> None:
    assert _header(_verdict([], 0.0)) == "No, score=0.0 required=5 tests=none"
    assert _header(_verdict(["BAYES_99", "SPF_FAIL"])) == "Yes, score=12.3 required=5 tests=BAYES_99,SPF_FAIL"


def test_one_line_form_is_kept_unfolded() -> None:
    """``milterd check``'s x_spam_status (JSON) stays one line."""
    assert "\n" not in spam_status(_verdict(LONG))

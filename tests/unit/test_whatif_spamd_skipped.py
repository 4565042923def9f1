"""``rules whatif`` and rows whose spamd the tiers skipped (SPAMD_SKIPPED_CONFIDENT), from a review (thirty-first
session): a weight change that leaves the score before spamd short of the bound would have spamd asked, and
what it adds is not known; whatif re-scored such a row as if spamd had said 0 (add_header → accept) where the
milter, asking spamd, rejected it."""

from __future__ import annotations

from milterd.tuning import whatif
from tests.unit.test_tuning_fourth_review import ACTIONS, MILTER, row

SKIPPED = row("add_header", {"BAYES_999": 4.0, "DNSBL_SPAMHAUS_PBL": 2.0, "SPAMD_SKIPPED_CONFIDENT": 0.0})
BOUNDS = (5.0, False)  # [learner] skip_spamd_above = 5


def test_a_row_that_would_have_spamd_asked_keeps_its_action_and_is_counted_apart() -> None:
    report = whatif([SKIPPED], {"BAYES_999": 2.0}, ACTIONS, MILTER, skip_bounds=BOUNDS)  # 4 before spamd: asked
    assert report.changed == 0 and report.spamd_unknown == {"add_header": 1}
    assert report.as_json()["kept_spamd_unknown"] == {"add_header": 1}


def test_a_row_still_beyond_the_bound_is_rescored() -> None:
    report = whatif([SKIPPED], {"BAYES_999": 7.0}, ACTIONS, MILTER, skip_bounds=BOUNDS)  # 9: still skipped
    assert report.changes == {("add_header", "rewrite_subject"): 1} and not report.spamd_unknown

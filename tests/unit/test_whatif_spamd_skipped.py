"""``rules whatif`` and rows whose spamd the tiers skipped (SPAMD_SKIPPED_CONFIDENT), from a review (thirty-first
session): a weight change that leaves the score before spamd short of the bound would have spamd asked, and
what it adds is not known; whatif re-scored such a row as if spamd had said 0 (add_header → accept) where the
milter, asking spamd, rejected it."""

from __future__ import annotations

from pathlib import Path

from milterd.commands.rules import _after_tiers, _spamd_metas
from milterd.config import Config
from milterd.services import build
from milterd.tuning import SpamdSkip, whatif
from tests.unit.test_tuning_fourth_review import ACTIONS, MILTER, row

SKIPPED = row("add_header", {"BAYES_999": 4.0, "DNSBL_SPAMHAUS_PBL": 2.0, "SPAMD_SKIPPED_CONFIDENT": 0.0})
BOUNDS = SpamdSkip(5.0, False)  # [learner] skip_spamd_above = 5


def test_a_row_that_would_have_spamd_asked_keeps_its_action_and_is_counted_apart() -> None:
    report = whatif([SKIPPED], {"BAYES_999": 2.0}, ACTIONS, MILTER, spamd_skip=BOUNDS)  # 4 before spamd: asked
    assert report.changed == 0 and report.spamd_unknown == {"add_header": 1}
    assert report.as_json()["kept_spamd_unknown"] == {"add_header": 1}


def test_a_row_still_beyond_the_bound_is_rescored() -> None:
    report = whatif([SKIPPED], {"BAYES_999": 7.0}, ACTIONS, MILTER, spamd_skip=BOUNDS)  # 9: still skipped
    assert report.changes == {("add_header", "rewrite_subject"): 1} and not report.spamd_unknown


def test_a_meta_rule_counted_after_the_tiers_is_left_out_of_the_score_before_spamd() -> None:
    """A second look: the bounds were compared with the whole score, meta rules' points included, which the
    pipeline counts after the tiers decided; a row whose score before spamd fell below the bound was re-scored."""
    meta = row("rewrite_subject", {"BAYES_999": 4.0, "DNSBL_SPAMHAUS_PBL": 2.0, "META_SPAMMY": 3.0, "SPAMD_SKIPPED_CONFIDENT": 0.0})
    bounds = SpamdSkip(5.0, False, frozenset({"META_SPAMMY"}))
    report = whatif([meta], {"BAYES_999": 2.0}, ACTIONS, MILTER, spamd_skip=bounds)  # 4 before spamd: asked
    assert report.changed == 0 and report.spamd_unknown == {"rewrite_subject": 1}


def test_a_row_no_change_moves_is_not_counted_apart() -> None:
    below = row("accept", {"BAYES_00": -2.0, "META_HAMMY": 1.0, "SPAMD_SKIPPED_CONFIDENT": 0.0})
    report = whatif([below], {}, ACTIONS, MILTER, spamd_skip=SpamdSkip(False, -1.0, frozenset({"META_HAMMY"})))
    assert report.changed == 0 and not report.spamd_unknown


def test_the_symbols_checks_add_after_the_tiers_are_named_by_the_checks(tmp_path: Path) -> None:
    """A third look: the greylist's RCPT deferrals (GREYLIST_DEFERRED, weighted in triplet mode) are counted after
    the tiers too, and whatif passed only the meta rules' names."""
    services = build(Config().with_changes({"database.url": f"sqlite:///{tmp_path / 's.sqlite'}", "dns.nameservers": ["127.0.0.1:9"],
                                            "greylist.enabled": True}))
    try:
        assert {"GREYLIST_DEFERRED", "GREYLIST_ERROR"} <= _after_tiers(services)
    finally:
        services.close()
    row_deferred = row("add_header", {"BAYES_999": 4.0, "DNSBL_SPAMHAUS_PBL": 2.0, "GREYLIST_DEFERRED": 4.0, "SPAMD_SKIPPED_CONFIDENT": 0.0})
    report = whatif([row_deferred], {"BAYES_999": 2.0}, ACTIONS, MILTER,
                    spamd_skip=SpamdSkip(5.0, False, frozenset({"GREYLIST_DEFERRED"})))
    assert report.changed == 0 and report.spamd_unknown == {"add_header": 1}


# --- the other way (review, thirty-sixth session) -----------------------------------------------------
# A change that puts a row whose spamd answered beyond a bound has the tiers skip spamd: its points are lost.
# whatif kept them and predicted the opposite of what the milter did (raising a weight: "quarantine → reject"
# where the milter, without spamd's points, tagged the message add_header).
ASKED = row("quarantine", {"BAYES_999": 4.0, "DNSBL_SPAMHAUS_PBL": 2.0, "SPAMASSASSIN": 7.0})  # 13


def test_a_row_the_changes_put_beyond_the_bound_is_rescored_without_spamd() -> None:
    report = whatif([ASKED], {"BAYES_999": 5.0}, ACTIONS, MILTER, spamd_skip=SpamdSkip(6.0, False))  # 7 before spamd: skipped
    assert report.changes == {("quarantine", "add_header"): 1}
    assert report.spamd_skipped == {"quarantine": 1} and report.as_json()["rescored_without_spamd"] == {"quarantine": 1}
    [change] = report.as_json()["changes"]
    assert change["examples"][0]["new_score"] == 7.0


def test_a_row_the_changes_put_below_the_lower_bound_is_rescored_without_spamd() -> None:
    hammy = row("rewrite_subject", {"BAYES_00": -1.5, "HDR_DATE_MISSING": 1.0, "SPAMASSASSIN": 8.0})  # -0.5 before spamd: asked
    report = whatif([hammy], {"BAYES_00": -2.5}, ACTIONS, MILTER, spamd_skip=SpamdSkip(False, -1.0))
    assert report.changes == {("rewrite_subject", "accept"): 1}


def test_a_row_the_changes_leave_short_of_the_bound_keeps_spamd() -> None:
    report = whatif([ASKED], {"BAYES_999": 3.0}, ACTIONS, MILTER, spamd_skip=SpamdSkip(6.0, False))  # 5: spamd asked again
    assert report.changed == 0 and not report.spamd_skipped  # 12 with spamd's 7: still quarantine


def test_a_row_whose_classifier_did_not_speak_is_never_skipped() -> None:
    silent = row("quarantine", {"DNSBL_SPAMHAUS_PBL": 6.0, "SPAMASSASSIN": 7.0})
    report = whatif([silent], {"DNSBL_SPAMHAUS_PBL": 8.0}, ACTIONS, MILTER, spamd_skip=SpamdSkip(6.0, False))
    assert report.changes == {("quarantine", "reject"): 1} and not report.spamd_skipped


def test_a_row_the_changes_put_past_the_bound_is_kept_where_meta_rules_read_spamd() -> None:
    # A second look: SA_AND_BAYES = "SPAMASSASSIN and BAYES_999" stays in the row re-scored without spamd, where the
    # milter, skipping spamd, would not have it hit (predicted rewrite_subject, the milter's add_header).
    meta = row("quarantine", {"BAYES_999": 4.0, "DNSBL_SPAMHAUS_PBL": 2.0, "SPAMASSASSIN": 3.0, "SA_AND_BAYES": 4.0})
    bounds = SpamdSkip(6.5, False, frozenset({"SA_AND_BAYES"}), frozenset({"SA_AND_BAYES"}))
    report = whatif([meta], {"BAYES_999": 5.0}, ACTIONS, MILTER, spamd_skip=bounds)
    assert report.changed == 0 and report.spamd_unknown == {"quarantine": 1}


def test_the_meta_rules_reading_spamd_are_found_through_other_metas(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "local.toml").write_text(
        '[[rule]]\nname = "SUBJ_WIN"\nheader = "Subject"\nregex = "win"\nscore = 1.0\n'
        '[[rule]]\nname = "SA_AND_BAYES"\nmeta = "SPAMASSASSIN and BAYES_999"\nscore = 4.0\n'
        '[[rule]]\nname = "SA_SKIPPED"\nmeta = "SPAMD_SKIPPED_CONFIDENT and SUBJ_WIN"\nscore = 1.0\n'
        '[[rule]]\nname = "BOTH_METAS"\nmeta = "SA_AND_BAYES or SUBJ_WIN"\nscore = 1.0\n'
        '[[rule]]\nname = "WIN_ALONE"\nmeta = "SUBJ_WIN and BAYES_999"\nscore = 1.0\n')
    services = build(Config().with_changes({"database.url": f"sqlite:///{tmp_path / 's.sqlite'}", "dns.nameservers": ["127.0.0.1:9"],
                                            "rules.dir": str(rules)}))
    try:
        assert _spamd_metas(services) == {"SA_AND_BAYES", "SA_SKIPPED", "BOTH_METAS"}
    finally:
        services.close()

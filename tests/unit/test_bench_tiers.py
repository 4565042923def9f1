"""bench/learner_tiers.py: the rule that chooses the tiers' bounds on cross-validated training messages."""

from __future__ import annotations

from bench.learner_tiers import BENCH_OFFSET, Judged, bench_bounds, choose, judged, outcome, skipped, tiers_section


def _row(kind: str, score: float, spamd: float, bucket: str | None = "BAYES_00", bucket_score: float = -2.0) -> dict[str, object]:
    symbols: dict[str, float] = {"SPAMASSASSIN": spamd}
    if bucket:
        symbols[bucket] = bucket_score
    return {"kind": kind, "score": score, "symbols": symbols}


def test_judged_rescores_the_bucket_and_takes_spamd_out() -> None:
    # Logged with BAYES_99 at 1.0; now shipped at another score: the score before spamd follows it.
    message = judged(_row("spam", 9.0, 6.0, "BAYES_99", 1.0), {"BAYES_99": 3.0})
    assert message == Judged(spam=True, before=5.0, final=11.0, spoke=True)
    silent = judged(_row("ham", 1.0, 1.0, bucket=None), {"BAYES_99": 3.0})
    assert silent == Judged(spam=False, before=0.0, final=1.0, spoke=False)


def test_only_a_classifier_that_spoke_lets_spamd_be_skipped() -> None:
    assert skipped(Judged(False, -3.0, -2.0, True), None, -2.0)
    assert not skipped(Judged(False, -3.0, -2.0, False), None, -2.0)
    assert skipped(Judged(True, 9.0, 12.0, True), 8.0, None)
    assert not skipped(Judged(True, 7.5, 12.0, True), 8.0, None)


def test_outcome_counts_lost_spam_and_new_ham_at_the_threshold() -> None:
    messages = [Judged(True, -2.0, 6.0, True),  # spam that spamd lifts over 5: lost when skipped below -2
                Judged(False, 6.0, 3.0, True),  # ham that spamd pulls under 5: newly flagged when skipped above 6
                Judged(False, -2.0, -1.0, True)]
    result = outcome(messages, 6.0, -2.0)
    assert (result.skipped, result.lost_spam, result.new_ham, result.changed) == (3, 1, 1, 2)
    assert (result.caught, result.flagged) == (0, 1)
    assert outcome(messages, None, None).skipped == 0


def test_choose_skips_the_most_without_losing_spam() -> None:
    # 400 clear ham, 1 spam hidden at -2 (only spamd catches it), 100 spam clearly above 10.
    messages = [Judged(False, -4.0, -3.0, True)] * 400 + [Judged(True, -2.0, 7.0, True)] + [Judged(True, 12.0, 20.0, True)] * 100
    (above, below), report = choose(messages)
    assert below is not None and -4.0 <= below < -2.0  # skips the clear ham, not the hidden spam
    assert above is not None and 5.0 <= above <= 12.0
    assert report["at_5"]["with"]["lost_spam"] == 0 and report["at_5"]["with"]["skipped"] == 500
    # Ties between bounds that skip the same messages go to the most conservative ones.
    assert (above, below) == (12.0, -4.0)


def test_bench_bounds_shift_by_what_the_corpus_mix_adds_and_keep_off() -> None:
    assert BENCH_OFFSET == 2.0
    assert bench_bounds((8.0, None)) == (10.0, False)
    assert bench_bounds((None, -2.5)) == (False, -0.5)


def test_tiers_section_for_the_offline_pipeline() -> None:
    assert tiers_section("off,-2.5") == "[learner]\nskip_spamd_above = false\nskip_spamd_below = -2.5\n"
    assert tiers_section("9, off") == "[learner]\nskip_spamd_above = 9.0\nskip_spamd_below = false\n"

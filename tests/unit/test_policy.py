"""The policy: scores to actions, forced actions, SpamAssassin-format headers."""

from __future__ import annotations

from milterd.config import ActionsSection
from milterd.message.model import Action, HeaderEdit, Hit
from milterd.message.policy import GreylistStatus, decide, greylists_at_score, plan_headers, spam_status, tag_subject, threshold_action
from milterd.message.reply import Reply

ACTIONS = ActionsSection()  # add_header 5, rewrite_subject 8, quarantine 12, reject 15
WEIGHTS = {"A": 2.0, "B": 3.5, "NEG": -4.0}


def weight(symbol: str) -> float:
    return WEIGHTS.get(symbol, 0.0)


def test_thresholds() -> None:
    assert threshold_action(0, ACTIONS) == Action.ACCEPT
    assert threshold_action(5, ACTIONS) == Action.ADD_HEADER
    assert threshold_action(8, ACTIONS) == Action.REWRITE_SUBJECT
    assert threshold_action(12, ACTIONS) == Action.QUARANTINE
    assert threshold_action(15, ACTIONS) == Action.REJECT
    off = ActionsSection(quarantine=False, reject=False)
    assert threshold_action(100, off) == Action.REWRITE_SUBJECT


def test_scores_add_up_and_symbols_count_once() -> None:
    verdict = decide([Hit("A"), Hit("B"), Hit("A", detail="again")], weight, ACTIONS)
    assert verdict.symbols == {"A": 2.0, "B": 3.5}
    assert verdict.score == 5.5
    assert verdict.action == Action.ADD_HEADER
    assert verdict.details == {"A": "again"}


def test_hit_score_overrides_weight_and_negative_scores_count() -> None:
    verdict = decide([Hit("SPAMASSASSIN", score=9.0), Hit("NEG")], weight, ACTIONS)
    assert verdict.score == 5.0
    assert verdict.action == Action.ADD_HEADER


def test_reject_reply_names_score() -> None:
    verdict = decide([Hit("X", score=16)], weight, ACTIONS)
    assert verdict.action == Action.REJECT
    assert str(verdict.reply) == "550 5.7.1 Message rejected as spam (score 16)"
    assert verdict.reason == "score 16 >= reject 15"


def test_forced_action_wins_when_more_severe() -> None:
    virus = Hit("CLAMAV_VIRUS", detail="Eicar-Test-Signature", action=Action.REJECT, reply=Reply("550", "5.7.1", "Virus found: Eicar-Test-Signature"))
    verdict = decide([virus, Hit("A")], weight, ACTIONS)
    assert verdict.action == Action.REJECT
    assert str(verdict.reply) == "550 5.7.1 Virus found: Eicar-Test-Signature"
    # A tempfail does not override a reject by score.
    verdict = decide([Hit("X", score=20), Hit("FAIL", action=Action.TEMPFAIL)], weight, ACTIONS)
    assert verdict.action == Action.REJECT


def test_unscored_clients_keep_forced_actions_only() -> None:
    assert decide([Hit("X", score=50)], weight, ACTIONS, scored=False).action == Action.ACCEPT
    forced = decide([Hit("V", action=Action.DISCARD)], weight, ACTIONS, scored=False)
    assert forced.action == Action.DISCARD


def test_spam_status_format() -> None:
    verdict = decide([Hit("B"), Hit("A")], weight, ACTIONS)
    assert spam_status(verdict) == "Yes, score=5.5 required=5 tests=A,B"
    clean = decide([], weight, ACTIONS)
    assert spam_status(clean) == "No, score=0.0 required=5 tests=none"


def test_plan_headers_removes_forged_and_adds_ours() -> None:
    verdict = decide([Hit("X", score=9)], weight, ACTIONS)
    edits = plan_headers(verdict, {"x-spam-flag": 2, "x-spam-status": 1}, "Hello", ACTIONS)
    assert edits[:3] == [
        HeaderEdit("change", "X-Spam-Status", "", 1),
        HeaderEdit("change", "X-Spam-Flag", "", 2),
        HeaderEdit("change", "X-Spam-Flag", "", 1),
    ]
    assert HeaderEdit("add", "X-Spam-Flag", "YES") in edits
    assert HeaderEdit("change", "Subject", "[SPAM] Hello", 1) in edits


def test_the_status_says_yes_wherever_the_flag_does() -> None:
    # add_header switched off: a score at rewrite_subject tagged the Subject and set X-Spam-Flag YES, while
    # X-Spam-Status said "No" (a Sieve rule on it missed the message); so did an action a check forced (review).
    no_add_header = ActionsSection(reject=15, quarantine=False, add_header=False, rewrite_subject=8)
    forced = decide([Hit("ATTACH_BANNED", score=1, action=Action.QUARANTINE)], weight, ACTIONS)
    for verdict, actions in ((decide([Hit("X", score=9)], weight, no_add_header), no_add_header), (forced, ACTIONS)):
        edits = {e.name: e.value for e in plan_headers(verdict, {}, "Hi", actions) if e.op == "add"}
        assert edits["X-Spam-Flag"] == "YES" and edits["X-Spam-Status"].startswith("Yes, "), edits


def test_greylist_and_tempfail_judge_no_content() -> None:
    for action in (Action.TEMPFAIL, Action.GREYLIST):
        verdict = decide([Hit("CHECK_ERROR", action=action)], weight, ACTIONS)
        assert verdict.action == action and spam_status(verdict).startswith("No, "), action


def test_no_flag_below_add_header() -> None:
    verdict = decide([Hit("A")], weight, ACTIONS)
    names = [e.name for e in plan_headers(verdict, {}, "Hi", ACTIONS)]
    assert names == ["X-Spam-Status", "X-Spam-Score"]


def test_subject_tagged_once() -> None:
    assert tag_subject("[SPAM] already", "[SPAM]") == []
    assert tag_subject(None, "[SPAM]") == [HeaderEdit("add", "Subject", "[SPAM]")]


GREYLISTING = ActionsSection(reject=15, quarantine=False, greylist=6, rewrite_subject=False, add_header=5)


def test_greylist_at_score_waits_when_the_store_says_so() -> None:
    plain = decide([Hit("X", score=7)], weight, GREYLISTING)
    assert greylists_at_score(plain) and plain.reply is None
    waits = decide([Hit("X", score=7)], weight, GREYLISTING, greylist=GreylistStatus(needed=True, wait=299.6, detail="192.0.2.0/24 a>b new"))
    assert waits.action == Action.GREYLIST
    assert str(waits.reply) == "451 4.7.1 Greylisted, please try again in 300 seconds"
    assert waits.symbols == {"X": 7.0, "GREYLIST": 0.0} and waits.details["GREYLIST"] == "192.0.2.0/24 a>b new"
    assert waits.reason == "score 7 >= greylist 6; greylisted 192.0.2.0/24 a>b new"


def test_greylist_at_score_passed_or_store_down_takes_the_action_below() -> None:
    passed = decide([Hit("X", score=7)], weight, GREYLISTING, greylist=GreylistStatus(needed=False))
    assert passed.action == Action.ADD_HEADER and passed.reply is None
    assert passed.symbols == {"X": 7.0, "GREYLIST_PASSED": 0.0}
    assert passed.details["GREYLIST_PASSED"] == "score 7, retried after the greylisting delay"
    down = decide([Hit("X", score=7)], weight, GREYLISTING, greylist=GreylistStatus(needed=False, error="disk full"))
    assert down.action == Action.ADD_HEADER and down.details["GREYLIST_ERROR"] == "disk full"


def test_greylist_at_score_store_down_failing_closed_answers_its_reply() -> None:
    reply = Reply("451", "4.3.0", "Greylisting unavailable, please try again later")
    down = decide([Hit("X", score=7)], weight, GREYLISTING, greylist=GreylistStatus(needed=False, error="disk full", reply=reply))
    assert down.action == Action.TEMPFAIL and down.reply == reply
    assert down.symbols == {"X": 7.0, "GREYLIST_ERROR": 0.0} and down.details["GREYLIST_ERROR"] == "disk full"
    assert down.reason == "score 7 >= greylist 6; 451 4.3.0 Greylisting unavailable, please try again later: greylist store unavailable"
    below = decide([Hit("X", score=4)], weight, GREYLISTING, greylist=GreylistStatus(needed=False, error="disk full", reply=reply))
    assert below.action == Action.ACCEPT  # a score that does not greylist never asks the store


def test_greylist_status_changes_nothing_but_a_greylist_by_score() -> None:
    status = GreylistStatus(needed=True, wait=60, detail="t")
    for hits in ([Hit("X", score=5)], [Hit("X", score=16)], [Hit("GREYLIST", action=Action.GREYLIST, reply=Reply("451", "4.7.1", "own"))]):
        assert decide(hits, weight, GREYLISTING, greylist=status) == decide(hits, weight, GREYLISTING)
    forced = decide([Hit("GREYLIST", action=Action.GREYLIST, reply=Reply("451", "4.7.1", "own"))], weight, GREYLISTING)
    assert not greylists_at_score(forced)

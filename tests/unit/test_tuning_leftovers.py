"""``rules whatif`` and symbols scored by their hit (SPAMASSASSIN, a DMARC failure an
ARC sealer overrode); ``rules stats`` counting messages, not greylisted attempts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from milterd.checks.dmarc import Dmarc
from milterd.checks.spamassassin import SPAMASSASSIN
from milterd.cli import main
from milterd.config import MilterSection
from milterd.message.model import Hit
from milterd.message.policy import GreylistStatus
from milterd.store import MessageRecord
from milterd.tuning import log_stats, rescore, whatif
from tests.unit.test_tuning_review import ACTIONS, logged_row, logged_store


# --- whatif and scores carried by the hit ----------------------------------------------
@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    return logged_store(tmp_path, MessageRecord(action="add_header", client_addr="192.0.2.1", sender="a@example.org", score=6.0,
                                                reason="score 6 >= add_header 5", symbols={SPAMASSASSIN: 6.0}))


def test_whatif_refuses_to_reweight_spamassassin(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # SPAMASSASSIN's score is spamd's own for each message: a fixed weight would replace every
    # message's score by one number (the old code re-scored the row at 20 and "rejected" it).
    assert main(["rules", "whatif", "-c", str(conf), "--set", f"symbols.{SPAMASSASSIN}=20", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert SPAMASSASSIN in err and "SpamAssassin's own" in err and "actions." in err
    # The thresholds still work on the same log.
    assert main(["rules", "whatif", "-c", str(conf), "--set", "actions.reject=5.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["changes"] == [{"from": "add_header", "to": "reject", "count": 1, "examples": out["changes"][0]["examples"]}]


def test_rescore_keeps_each_messages_spamassassin_score() -> None:
    # Called directly (a script), a weight for SPAMASSASSIN does not replace the message's own score.
    row = logged_row([Hit(SPAMASSASSIN, score=6.0)])
    assert row["action"] == "add_header"
    item = rescore(row, {SPAMASSASSIN: 20.0}, ACTIONS, MilterSection())
    assert item.new_score == 6.0 and item.new_action == "add_header"


def test_an_arc_overridden_dmarc_failure_stays_unscored_under_a_new_weight() -> None:
    # A DMARC failure of a message sealed by a trusted ARC sealer is logged with score 0 (dmarc.py's
    # override hit): whatever DMARC_FAIL_QUARANTINE's weight, the milter would still not score it.
    # Without the override the same failure takes the new weight, as the milter would give it.
    assert {"DMARC_ARC_OVERRIDE", "DMARC_FAIL_QUARANTINE"} <= {s.name for s in Dmarc.symbols}
    other = Hit("BODY_X", score=4.0)
    overridden = logged_row([other, Hit("DMARC_FAIL_QUARANTINE", detail="example.com", score=0.0), Hit("DMARC_ARC_OVERRIDE")])
    plain = logged_row([other, Hit("DMARC_FAIL_QUARANTINE", detail="example.com")], weights={"DMARC_FAIL_QUARANTINE": 0.5})
    assert overridden["action"] == "accept" and overridden["symbols"]["DMARC_FAIL_QUARANTINE"] == 0.0
    assert plain["action"] == "accept" and plain["score"] == 4.5
    weights = {"DMARC_FAIL_QUARANTINE": 3.0}
    assert rescore(overridden, weights, ACTIONS, MilterSection()).new_action == "accept"
    assert rescore(plain, weights, ACTIONS, MilterSection()).new_action == "greylist"  # 7: at the greylist threshold
    report = whatif([overridden, plain], weights, ACTIONS, MilterSection())
    assert report.changes == {("accept", "greylist"): 1}


def test_whatif_still_reweights_dmarc_failures(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Not every symbol a hit may zero is refused: DMARC_FAIL_* has a weight the milter uses.
    assert main(["rules", "whatif", "-c", str(conf), "--set", "symbols.DMARC_FAIL_QUARANTINE=5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["messages"] == 1


# --- stats: messages, not attempts -----------------------------------------------------------
def greylisted_then_passed() -> list[dict[str, Any]]:
    """One message greylisted at score 8, then its retry after the delay (add_header), and one accepted message."""
    hits = [Hit("BAYES_SPAM", score=6.0), Hit("HELO_NOT_FQDN", score=2.0)]
    first = logged_row(hits, GreylistStatus(needed=True, wait=300, detail="(192.0.2.0/24, a, b) new"))
    retry = logged_row(hits, GreylistStatus(needed=False))
    ham = logged_row([Hit("HELO_NOT_FQDN", score=2.0)])
    assert (first["action"], retry["action"], ham["action"]) == ("greylist", "add_header", "accept")
    assert "GREYLIST_PASSED" in retry["symbols"]
    return [first, retry, ham]


def test_stats_count_a_greylisted_then_passed_message_once() -> None:
    report = log_stats(greylisted_then_passed())
    assert report.messages == 2
    assert report.deferred == {"greylist": 1}
    by_symbol = {s.symbol: s for s in report.symbols}
    assert by_symbol["BAYES_SPAM"].hits == 1 and by_symbol["BAYES_SPAM"].share == 0.5
    assert by_symbol["BAYES_SPAM"].deferred == 1
    assert by_symbol["HELO_NOT_FQDN"].hits == 2 and by_symbol["HELO_NOT_FQDN"].share == 1.0
    assert by_symbol["GREYLIST_PASSED"].hits == 1
    # The greylisted attempt's own symbol is on no message, only on the deferred attempt.
    assert by_symbol["GREYLIST"].hits == 0 and by_symbol["GREYLIST"].deferred == 1


def test_stats_count_a_tempfailed_attempt_apart() -> None:
    # spamd down with [spamd] on_error = tempfail: 451, the client retries, the retry is scanned.
    tempfail = {"action": "tempfail", "score": 0.0, "reason": "451 4.7.1 Spam scanner unavailable", "symbols": {"SPAMD_ERROR": 0.0}}
    retry = {"action": "accept", "score": 1.0, "reason": "", "symbols": {SPAMASSASSIN: 1.0}}
    report = log_stats([tempfail, retry])
    assert report.messages == 1 and report.deferred == {"tempfail": 1}
    assert {s.symbol: (s.hits, s.deferred) for s in report.symbols} == {SPAMASSASSIN: (1, 0), "SPAMD_ERROR": (0, 1)}


def test_stats_command_counts_messages_and_shows_deferred_attempts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = logged_store(tmp_path, *(MessageRecord(action=row["action"], client_addr="192.0.2.1", sender="a@example.org", score=row["score"],
                                                  reason=row["reason"], symbols=row["symbols"], details=row["details"])
                                    for row in greylisted_then_passed()))
    assert main(["rules", "stats", "-c", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["messages"] == 2 and out["deferred_attempts"] == 1 and out["deferred_by_action"] == {"greylist": 1}
    by_symbol = {s["symbol"]: s for s in out["symbols"]}
    assert set(by_symbol["BAYES_SPAM"]) >= {"symbol", "hits", "share", "mean_score", "in_reject_or_quarantine", "released_as_ham"}
    assert by_symbol["BAYES_SPAM"]["hits"] == 1 and by_symbol["BAYES_SPAM"]["on_deferred_attempts"] == 1
    assert main(["rules", "stats", "-c", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("2 messages\ndeferred attempts: 1 (greylist 1)")


def test_a_nan_symbol_score_counts_zero_in_its_mean() -> None:
    # One NaN (an older milterd's SQLite row) made the symbol's mean nan for every period holding it: the figure
    # an administrator sets a weight from.  The policy counts a NaN score 0 (policy.score_hits).
    rows = [{"action": "accept", "score": 1.0, "symbols": {"HELO_NOT_FQDN": 1.0}} for _ in range(3)]
    rows.append({"action": "accept", "score": 0.0, "symbols": {"HELO_NOT_FQDN": float("nan")}})
    [entry] = [s for s in log_stats(rows).symbols if s.symbol == "HELO_NOT_FQDN"]
    assert entry.hits == 4 and entry.mean_score == 0.75

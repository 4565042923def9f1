"""Review 15: ``rules whatif`` against the policy the pipeline applies (milterd.message.policy.decide)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from milterd.checks.attachments import ERROR as ATTACH_ERROR
from milterd.checks.clamav import VIRUS
from milterd.cli import main
from milterd.config import ActionsSection, MilterSection, load_config
from milterd.message.model import Action, Hit
from milterd.message.policy import GreylistStatus, decide
from milterd.message.reply import Reply
from milterd.store import MessageRecord, Store
from milterd.tuning import rescore, whatif

ACTIONS = ActionsSection(add_header=5.0, rewrite_subject=8.0, greylist=6.0, quarantine=12.0, reject=15.0)
MILTER = MilterSection()
WEIGHTS = {"BIG": 8.0, "SMALL": 1.0, VIRUS: 5.0, "DMARC_FAIL_QUARANTINE": 3.0}


def weight(name: str) -> float:
    return WEIGHTS.get(name, 0.0)


def row_of(hits: list[Hit], status: GreylistStatus | None = None, client: str = "192.0.2.1", auth_user: str = "") -> dict[str, Any]:
    """The log row the pipeline writes for these hits (action, score, reason, symbols as decide gives them)."""
    v = decide(hits, weight, ACTIONS, greylist=status)
    return {"action": v.action.label, "score": v.score, "reason": v.reason, "symbols": v.symbols, "details": v.details,
            "client_addr": client, "auth_user": auth_user}


# 1. A forced action under a threshold action the new settings make more severe.
@pytest.mark.parametrize("forcing", [Hit(VIRUS, detail="Eicar", action=Action.QUARANTINE),
                                     Hit("DMARC_FAIL_QUARANTINE", detail="example.com", action=Action.QUARANTINE)])
def test_forced_row_is_raised_by_a_lowered_threshold(forcing: Hit) -> None:
    hits = [Hit("BIG"), Hit("SMALL"), forcing]
    row = row_of(hits)
    assert row["action"] == "quarantine" and not row["reason"].startswith("score ")
    changed = ACTIONS.model_copy(update={"reject": 10.0})
    assert decide(hits, weight, changed).action == Action.REJECT  # what the milter would do
    item = rescore(row, {}, changed, MILTER)
    assert (item.new_action, item.why) == ("reject", "")


def test_forced_row_is_never_lowered_and_an_unscored_one_is_kept() -> None:
    forcing = Hit(VIRUS, detail="Eicar", action=Action.QUARANTINE)
    row = row_of([Hit("BIG"), Hit("SMALL"), forcing])
    item = rescore(row, {"BIG": -5.0}, ACTIONS, MILTER)
    assert (item.new_action, item.why) == ("quarantine", "forced")
    # An authenticated client's message: only forced actions apply, whatever its score.
    unscored_row = {**row, "auth_user": "bob"}
    item = rescore(unscored_row, {}, ACTIONS.model_copy(update={"reject": 10.0}), MILTER)
    assert (item.new_action, item.why) == ("quarantine", "forced")


def test_whatif_reports_the_raised_forced_row() -> None:
    row = row_of([Hit("BIG"), Hit("SMALL"), Hit(VIRUS, detail="Eicar", action=Action.QUARANTINE)])
    report = whatif([row], {}, ACTIONS.model_copy(update={"reject": 10.0}), MILTER)
    assert report.changes == {("quarantine", "reject"): 1} and not report.kept


# 2. Hits that force a 451 (tempfail) hidden under a score reject: not lowered past what they may force.
@pytest.mark.parametrize("symbol", [ATTACH_ERROR, "EOM_TIMEOUT", "CHECK_ERROR"])
def test_tempfail_hits_may_force(symbol: str) -> None:
    hits = [Hit("BIG"), Hit("BIG2", score=8.0), Hit(symbol, detail="x", action=Action.TEMPFAIL, reply=Reply.tempfail("try later"))]
    row = row_of(hits)
    assert row["action"] == "reject" and row["reason"].startswith("score ")
    changed = ACTIONS.model_copy(update={"reject": False, "quarantine": False})
    assert decide(hits, weight, changed).action == Action.TEMPFAIL  # the milter: 451, not rewrite_subject
    item = rescore(row, {}, changed, MILTER)
    assert (item.new_action, item.why) == ("reject", "may_force")  # before: rewrite_subject


# 3. Symbols logged with a fixed 0.0: no weight reaches them.
@pytest.mark.parametrize(("symbol", "status"), [("GREYLIST_PASSED", GreylistStatus(needed=False)),
                                                ("GREYLIST_ERROR", GreylistStatus(needed=False, error="down"))])
def test_policy_greylist_symbols_keep_their_fixed_score(symbol: str, status: GreylistStatus) -> None:
    hits = [Hit("SMALL", score=7.0)]
    row = row_of(hits, status=status)
    assert row["symbols"][symbol] == 0.0
    milter_would = decide(hits, lambda s: 10.0 if s == symbol else weight(s), ACTIONS, greylist=status).action.label
    item = rescore(row, {symbol: 10.0}, ACTIONS, MILTER)
    assert item.new_action == milter_would == "add_header" and item.new_score == 7.0


@pytest.mark.parametrize("symbol", ["DKIM_SIGNED", "DKIM_SIGN_ERROR", "ARC_SEALED", "ARC_SEAL_ERROR"])
def test_after_decision_symbols_keep_their_fixed_score(symbol: str) -> None:
    row = row_of([Hit("SMALL", score=1.0)])
    row["symbols"] = {**row["symbols"], symbol: 0.0}  # added by on_verdict, after the decision
    item = rescore(row, {symbol: 20.0}, ACTIONS, MILTER)
    assert (item.new_action, item.new_score) == ("accept", 1.0)


def test_greylist_symbols_are_weighted_in_triplet_mode() -> None:
    from milterd.tuning import not_weighted  # new in review 15

    # In triplet mode the greylist check emits GREYLIST_PASSED as a hit of its own: its weight counts.
    assert "GREYLIST_PASSED" not in not_weighted("triplet") and "DKIM_SIGNED" in not_weighted("triplet")
    assert "GREYLIST_PASSED" in not_weighted("score")


# --- at the command line ------------------------------------------------------------------
CONF = """[database]
url = "sqlite:///{root}/log.sqlite"
[dns]
nameservers = ["127.0.0.1:9"]
[actions]
add_header = 5
rewrite_subject = 8
greylist = 6
quarantine = 12
reject = 15
[greylist]
enabled = true
mode = "score"
"""
SYMS = {"BAYES_95": 3.5, "HDR_DATE_MISSING": 1.0, "HDR_MSGID_MISSING": 1.0, "BAYES_50": 1.0}  # the shipped weights: 6.5


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "milter.conf"
    path.write_text(CONF.format(root=tmp_path))
    store = Store(load_config(path).database)
    store.upgrade()
    now = dt.datetime.now(dt.timezone.utc)
    # One message: greylisted at score 6.5 (451), then passed on its retry (add_header); and two others.
    store.log_message(MessageRecord(action="greylist", time=now - dt.timedelta(minutes=30), client_addr="192.0.2.5", sender="g@example.org",
                                    score=6.5, reason="score 6.5 >= greylist 6; greylisted t", symbols={**SYMS, "GREYLIST": 0.0}))
    store.log_message(MessageRecord(action="add_header", time=now, client_addr="192.0.2.5", sender="g@example.org",
                                    score=6.5, reason="score 6.5 >= add_header 5", symbols={**SYMS, "GREYLIST_PASSED": 0.0}))
    for i in range(2):
        store.log_message(MessageRecord(action="accept", time=now, client_addr="192.0.2.9", sender=f"s{i}@example.org",
                                        score=1.0, symbols={"HDR_DATE_MISSING": 1.0}))
    store.close()
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(list(argv)) == 0
    return dict(json.loads(capsys.readouterr().out))


# 8. Deferred attempts are not messages, in whatif as in rules stats.
def test_whatif_counts_deferred_attempts_apart(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stats = run_json(capsys, "rules", "stats", "-c", str(conf), "--json")
    what = run_json(capsys, "rules", "whatif", "-c", str(conf), "--json", "--set", "actions.greylist=false")
    assert stats["messages"] == what["messages"] == 3
    assert what["deferred_attempts"] == 1 and what["deferred_by_action"] == {"greylist": 1}
    assert what["changes"] == []  # not "greylist -> add_header" for a message delivered on its retry
    assert main(["rules", "whatif", "-c", str(conf), "--set", "actions.greylist=false"]) == 0
    out = capsys.readouterr().out
    assert "3 messages" in out and "deferred attempts: 1 (greylist 1); counted apart" in out


# 3. --set refuses the symbols logged with a fixed score.
@pytest.mark.parametrize("symbol", ["GREYLIST_PASSED", "DKIM_SIGNED", "ARC_SEALED"])
def test_set_refuses_a_fixed_score_symbol(conf: Path, capsys: pytest.CaptureFixture[str], symbol: str) -> None:
    assert main(["rules", "whatif", "-c", str(conf), "--set", f"symbols.{symbol}=5"]) == 2
    err = capsys.readouterr().err
    assert f"--set: symbols.{symbol}: " in err and "fixed score of 0" in err and "cannot be re-weighted" in err


# 5. A bad --set value is blamed on --set, not on milter.conf.
@pytest.mark.parametrize(("change", "key"), [("actions.reject=abc", "actions.reject"), ("actions.rejectt=5", "actions.rejectt")])
def test_bad_set_value_names_set_and_the_key(conf: Path, capsys: pytest.CaptureFixture[str], change: str, key: str) -> None:
    assert main(["rules", "whatif", "-c", str(conf), "--set", change]) == 2
    err = capsys.readouterr().err
    assert f"milterd: --set: {key}: " in err and "milter.conf" not in err, err

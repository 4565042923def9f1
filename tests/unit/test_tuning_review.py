"""Review of ``rules whatif``, ``log`` and ``check``: greylisted-then-passed rows
re-scored as the milter decides, attacker text escaped on a terminal, JSON that
is ASCII whatever the stored text, score-based greylisting under ``check``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from milterd.cli import main
from milterd.config import ActionsSection, MilterSection, load_config
from milterd.message.model import Action, Hit
from milterd.message.policy import GreylistStatus, decide
from milterd.store import MessageRecord, Store
from milterd.tuning import rescore, whatif
from tests.conftest import message

#: Score-based greylisting (the only mode [actions] greylist allows).
ACTIONS = ActionsSection(add_header=5.0, rewrite_subject=10.0, greylist=7.0, quarantine=12.0, reject=15.0)
CONF = """[database]
url = "sqlite:///{root}/log.sqlite"
[actions]
add_header = 5
rewrite_subject = 10
greylist = 7
quarantine = 12
reject = 15
[greylist]
enabled = true
mode = "score"
"""
RULES = """
[[rule]]
name = "BODY_GREY_ME"
body = 'grey me please'
score = 8.0
"""
#: Text a sender controls, with an OSC title change, a CSI colour, a bidi override and a C1 CSI.
HOSTILE = "Hi \x1b]0;owned\x07\x1b[31mred\u202e \x9b2J"


#: The hits of a message of score 8 (between greylist and rewrite_subject).
SCORE_8 = [Hit("BAYES_SPAM", score=8.0)]


def logged_row(hits: list[Hit], status: GreylistStatus | None = None, weights: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """The log row the pipeline writes for *hits* (weights from *weights*) and the greylist store's *status*."""
    table = weights or {}
    verdict = decide(hits, lambda s: table.get(s, 0.0), ACTIONS, greylist=status)
    return {"action": verdict.action.label, "score": verdict.score, "reason": verdict.reason, "symbols": verdict.symbols,
            "details": verdict.details, "client_addr": "192.0.2.1", "auth_user": "", **extra}


def logged_store(root: Path, *records: MessageRecord) -> Path:
    """A milter.conf (CONF) in *root* whose SQLite log holds *records*; returns its path."""
    path = root / "milter.conf"
    path.write_text(CONF.format(root=root))
    store = Store(load_config(path).database)
    store.upgrade()
    for record in records:
        store.log_message(record)
    store.close()
    return path


@pytest.mark.parametrize("status", [GreylistStatus(needed=False), GreylistStatus(needed=False, error="database down")])
def test_whatif_keeps_a_message_that_passed_greylisting(status: GreylistStatus) -> None:
    # Retried after the delay (or the store did not answer): the milter applied the action below
    # greylist; re-scored with the very same settings it must not turn into "greylist".
    row = logged_row(SCORE_8, status)
    assert row["action"] == "add_header"
    report = whatif([row], {}, ACTIONS, MilterSection())
    assert report.changed == 0 and report.after == {"add_header": 1}
    # A lower threshold re-derives from below greylist too, as the milter would on that retry.
    lower = rescore(row, {}, ACTIONS.model_copy(update={"add_header": 3.0, "rewrite_subject": 6.0}), MilterSection())
    assert lower.new_action == "rewrite_subject"
    # A score past quarantine is not greylisted at all: the retry's pass does not matter.
    assert rescore(row, {"BAYES_SPAM": 13.0}, ACTIONS, MilterSection()).new_action == "quarantine"


def test_whatif_still_greylists_a_first_attempt() -> None:
    row = logged_row(SCORE_8, GreylistStatus(needed=True, wait=300, detail="(192.0.2.0/24, a, b) new"))
    assert row["action"] == "greylist"
    assert whatif([row], {}, ACTIONS, MilterSection()).changed == 0
    assert rescore(row, {}, ACTIONS.model_copy(update={"greylist": 9.0}), MilterSection()).new_action == "add_header"


@pytest.fixture()
def hostile_log(tmp_path: Path) -> Path:
    return logged_store(tmp_path, MessageRecord(
        action="add_header", client_addr="192.0.2.1", sender="evil\x1b[2J@example.org", recipients=["bob@example.com"],
        subject=HOSTILE, score=8.0, reason="score 8 >= add_header 5", symbols={"BAYES_SPAM": 8.0},
        # Envelope addresses are decoded with surrogateescape: a detail naming one keeps the raw byte.
        details={"BAYES_SPAM": "caf\udce9 \x9b"},
    ))


def test_whatif_text_escapes_sender_and_subject(hostile_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "whatif", "-c", str(hostile_log), "--set", "actions.add_header=4", "--set", "actions.reject=7.5"]) == 0
    out = capsys.readouterr().out
    assert "add_header -> reject" in out
    assert not any(c in out for c in "\x1b\x07\x9b\u202e"), out
    assert "evil\\x1b[2J@example.org" in out and "\\x1b]0;owned\\x07" in out


@pytest.mark.parametrize("argv", [["log"], ["rules", "whatif", "--set", "actions.reject=7.5"]])
def test_json_is_ascii_whatever_was_stored(hostile_log: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    # RFC 8259 §8.1: UTF-8 whatever the locale; and no raw C1 control or bidi override reaches a terminal.
    assert main([*argv, "-c", str(hostile_log), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.isascii()
    data = json.loads(out)
    example = data[0] if isinstance(data, list) else data["changes"][0]["examples"][0]
    assert example["subject"] == HOSTILE and example["sender"] == "evil\x1b[2J@example.org"
    if isinstance(data, list):
        assert data[0]["details"]["BAYES_SPAM"] == "caf\udce9 \x9b"


@pytest.fixture()
def score_greylisting(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text(RULES)
    conf = tmp_path / "milter.conf"
    conf.write_text(CONF.format(root=tmp_path))
    return conf


def test_check_works_with_score_greylisting(score_greylisting: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The milter answers a first attempt at this score with 451 (greylist); check says so, and
    # records no triplet (nor anything else) in the store.
    path = tmp_path / "grey.eml"
    path.write_bytes(message(body="Please grey me please.\r\n"))
    assert main(["check", "-c", str(score_greylisting), str(path)]) == 14
    assert ": greylist (score " in capsys.readouterr().out.splitlines()[0]
    path.write_bytes(message())
    assert main(["check", "-c", str(score_greylisting), str(path)]) == 0
    assert not (tmp_path / "log.sqlite").exists()


def test_check_json_is_ascii_for_an_undecodable_file_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n')
    path = tmp_path / "caf\udce9.eml"  # a file name that is not UTF-8 (os.fsdecode's surrogateescape)
    path.write_bytes(message())
    assert main(["check", "-c", str(conf), str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.isascii() and json.loads(out)["messages"][0]["file"] == str(path)


def test_a_forced_quarantine_the_score_also_reached_stays_forced_in_whatif() -> None:
    # The score alone reaches quarantine, and DMARC forces it too: the row must say so, or a
    # raised quarantine threshold in whatif would "release" mail the milter would still hold.
    actions = ActionsSection()
    hits = [Hit("BIG", score=float(actions.quarantine) + 1), Hit("DMARC_FAIL_QUARANTINE", detail="example.com", action=Action.QUARANTINE)]
    verdict = decide(hits, lambda _s: 0.0, actions)
    assert verdict.action == Action.QUARANTINE and verdict.reason.startswith("DMARC_FAIL_QUARANTINE")
    row = {"action": "quarantine", "reason": verdict.reason, "score": verdict.score, "symbols": verdict.symbols}
    raised = actions.model_copy(update={"quarantine": 1000.0, "reject": 2000.0})
    assert rescore(row, {}, raised, MilterSection()).new_action == "quarantine"


def test_whatif_knows_the_pipelines_own_symbols(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # CHECK_ERROR (a check that raised) and EOM_TIMEOUT come from the pipeline, not a check: whatif listed them as
    # "renamed or removed since logged" (found by review).
    path = logged_store(tmp_path, MessageRecord(action="accept", client_addr="192.0.2.1", score=1.0, symbols={"CHECK_ERROR": 0.0, "GONE_RULE": 1.0}))
    assert main(["rules", "whatif", "-c", str(path), "--json", "--set", "actions.reject=7.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unknown_symbols"] == {"GONE_RULE": 1}, report

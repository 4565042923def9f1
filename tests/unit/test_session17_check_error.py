"""``[milter] on_check_error``: a check that raises (a defect) either leaves the message to the
other checks (accept, the default: CHECK_ERROR, 0 points) or answers 451 4.3.0 at that stage
(tempfail), so that no message passes a check that could not run.

On the code before it there was no choice: a DMARC or attachment check that raised let the
message through judged without it (three such defects were found by fuzzing in one session).
Postfix end to end: tests/integration/test_session17_check_error.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import Milter
import pytest

from milterd.checks import Check, Hits, Symbol
from milterd.checks.greylist import Greylist as GreylistCheck
from milterd.config import ConfigError, load_config
from milterd.message.model import Envelope, Session, Verdict
from milterd.message.pipeline import Pipeline
from milterd.message.policy import GreylistStatus

from .test_adapter_pipeline_review import Context, eom, log_rows, make_conf, make_pipeline, negotiate


class BrokenEom(Check):
    name: ClassVar[str] = "test_broken_eom"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_BROKEN_EOM", 0.0, "test"),)

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        raise RuntimeError("injected")


class BrokenRcpt(Check):
    name: ClassVar[str] = "test_broken_rcpt"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_BROKEN_RCPT", 0.0, "test"),)

    def on_rcpt(self, session: Session, envelope: Envelope, recipient: str) -> Hits:
        raise RuntimeError("injected")


def _message(ctx: Context, queue_id: str) -> int:
    """MAIL to end of message of one small message over TCP; end of message's answer."""
    milter = ctx.getpriv()
    ctx._stage = -1  # every macro visible
    assert milter.envfrom("<alice@example.org>") == Milter.CONTINUE
    ctx._setsymval("i", queue_id)
    assert milter.envrcpt("<bob@example.com>") == Milter.CONTINUE
    assert milter.data() == Milter.CONTINUE
    for name, value in (("From", b"alice@example.org"), ("Subject", b"hello")):
        assert milter.header_bytes(name, value) == Milter.CONTINUE
    assert milter.eoh() == Milter.CONTINUE
    assert milter.body(b"Hello\r\n") == Milter.CONTINUE
    return eom(ctx)


def _run(conf: Path, check: type[Check], queue_id: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
         first: bool = False) -> tuple[Context, int, dict[str, Any]]:
    """One message through a pipeline of *conf* with *check* added (asked first with *first*): the
    context, end of message's answer and the message's log row."""
    services, pipeline = make_pipeline(conf, check)
    if first:
        pipeline.shutdown()
        services.checks.insert(0, services.checks.pop())
        pipeline = Pipeline(services)
    try:
        ctx = negotiate(pipeline, monkeypatch)
        answer = _message(ctx, queue_id)
        Milter.close_callback(ctx)
        row = log_rows(conf, capsys)[queue_id]
    finally:
        pipeline.shutdown()
        services.close()
    return ctx, answer, row


@pytest.mark.parametrize("setting", [None, "accept", "tempfail"])
def test_an_end_of_message_check_that_raises(
    tmp_path: Path, setting: str | None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = make_conf(tmp_path, extra={"milter": {"on_check_error": setting}} if setting else None)
    ctx, answer, row = _run(conf, BrokenEom, "QBROKEN", capsys, monkeypatch)
    assert row["details"]["CHECK_ERROR"] == "test_broken_eom"
    if setting == "tempfail":
        assert answer == Milter.TEMPFAIL
        assert ctx._reply == ("451", "4.3.0", "Message could not be checked now, try again later")
        assert row["action"] == "tempfail"
    else:
        assert answer == Milter.CONTINUE
        assert row["action"] == "accept"


def test_a_recipient_check_that_raises_tempfails_the_recipient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = make_conf(tmp_path, extra={"milter": {"on_check_error": "tempfail"}})
    services, pipeline = make_pipeline(conf, BrokenRcpt)
    try:
        ctx = negotiate(pipeline, monkeypatch)
        milter = ctx.getpriv()
        ctx._stage = -1
        assert milter.envfrom("<alice@example.org>") == Milter.CONTINUE
        assert milter.envrcpt("<bob@example.com>") == Milter.TEMPFAIL
        assert ctx._reply[:2] == ("451", "4.3.0")
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()


def test_a_value_other_than_accept_or_tempfail_is_refused_with_file_and_key(tmp_path: Path) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text('[milter]\non_check_error = "reject"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    assert str(info.value) == f"{conf}: [milter] on_check_error: Input should be 'accept' or 'tempfail'"


def test_doctor_names_on_check_error_among_what_fails_closed_under_accept() -> None:
    from .test_review16_followups import default_action_finding

    finding = default_action_finding({"database.on_error": "accept", "milter.on_check_error": "tempfail"})
    assert finding.status == "warn"
    assert finding.detail.startswith("accept while a check that raises (on_check_error) fail closed"), finding.detail


class BrokenVerdict(Check):
    name: ClassVar[str] = "test_broken_verdict"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_BROKEN_VERDICT", 0.0, "test"),)

    def on_verdict(self, session: Session, envelope: Envelope, verdict: Verdict) -> Verdict:
        raise RuntimeError("injected")  # as if removing forged headers, signing or sealing failed


class BrokenScoreGreylist(Check):
    name: ClassVar[str] = "test_broken_score_greylist"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_BROKEN_SCORE_GREYLIST", 0.0, "test"),)

    def on_score_greylist(self, session: Session, envelope: Envelope) -> GreylistStatus | None:
        raise RuntimeError("injected")


@pytest.mark.parametrize("setting", ["accept", "tempfail"])
def test_a_verdict_hook_that_raises(tmp_path: Path, setting: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The review's case: a check's on_verdict (SPF's removes forged Authentication-Results) raising was
    # logged and the message delivered without what it does, whatever on_check_error said.
    conf = make_conf(tmp_path, extra={"milter": {"on_check_error": setting}})
    ctx, answer, row = _run(conf, BrokenVerdict, "QVERDICT", capsys, monkeypatch)
    if setting == "tempfail":
        assert answer == Milter.TEMPFAIL and ctx._reply[:2] == ("451", "4.3.0")
        assert row["action"] == "tempfail" and row["details"]["CHECK_ERROR"] == "test_broken_verdict"
    else:
        assert answer == Milter.CONTINUE and row["action"] == "accept"


def test_a_score_greylist_hook_that_raises_tempfails_with_tempfail(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    conf = make_conf(tmp_path, rules='[[rule]]\nname = "SUBJ_HELLO"\nheader = "Subject"\nregex = "hello"\nscore = 7\n',
                     extra={"milter": {"on_check_error": "tempfail"}, "actions": {"greylist": 6}, "greylist": {"enabled": True, "mode": "score"}})
    # Asked before the greylist check, which would answer first.
    ctx, answer, row = _run(conf, BrokenScoreGreylist, "QSCOREGL", capsys, monkeypatch, first=True)
    assert answer == Milter.TEMPFAIL and ctx._reply == ("451", "4.3.0", "Message could not be checked now, try again later")
    assert row["action"] == "tempfail" and "test_broken_score_greylist" in row["details"]["GREYLIST_ERROR"], row


def test_a_score_greylist_hook_that_raises_is_judged_below_greylist_with_accept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A review: with accept (the default) the verdict stayed "greylist" with no reply, answered a generic
    # 451 at every retry (the message was never delivered), and the row had no CHECK_ERROR.
    conf = make_conf(tmp_path, rules='[[rule]]\nname = "SUBJ_HELLO"\nheader = "Subject"\nregex = "hello"\nscore = 7\n',
                     extra={"milter": {"on_check_error": "accept"}, "actions": {"greylist": 6}, "greylist": {"enabled": True, "mode": "score"}})
    monkeypatch.setattr(GreylistCheck, "on_score_greylist", BrokenScoreGreylist.on_score_greylist)  # the only one
    ctx, answer, row = _run(conf, BrokenScoreGreylist, "QSCOREGLA", capsys, monkeypatch, first=True)
    assert answer == Milter.CONTINUE and row["action"] == "add_header", (row["action"], row["symbols"], row["details"])
    assert row["details"]["CHECK_ERROR"] == "test_broken_score_greylist"
    assert "test_broken_score_greylist" in row["details"]["GREYLIST_ERROR"]


def test_a_store_down_status_without_error_text_still_fails_closed() -> None:
    from milterd.config import ActionsSection
    from milterd.message.model import Action, Hit
    from milterd.message.policy import decide
    from milterd.message.reply import Reply

    reply = Reply("451", "4.3.0", "Greylisting unavailable, please try again later")
    actions = ActionsSection(reject=15, quarantine=False, greylist=6, rewrite_subject=False, add_header=5)
    verdict = decide([Hit("X", score=7)], lambda _symbol: 0.0, actions, greylist=GreylistStatus(needed=False, error="", reply=reply))
    assert verdict.action == Action.TEMPFAIL and verdict.details["GREYLIST_ERROR"] == "greylist store unavailable"

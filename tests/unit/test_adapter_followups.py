"""Follow-ups of the adapter and pipeline review (test_adapter_pipeline_review.py), driven the same way.

Each test marked *fix* fails on the code before its change:

* a Subject that is not UTF-8 was tagged with U+FFFD in place of its 8-bit bytes
  (pymilter's chgheader takes UTF-8 text); it is now left untagged, and logged;
* the milter result followed the action, not the reply's code: a 4xx reply with a
  reject (or a 5xx one with a tempfail) reached the client as a plain reply;
* an error (not a StoreError) logging a transaction refused before end of message
  surfaced at the next MAIL FROM, which was tempfailed;
* an internal error at end of message left no summary line and no row;
* end of message waited for the shared pool without a deadline and never sent
  SMFIR_PROGRESS: Postfix's milter_content_timeout could expire first.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, ClassVar, Iterator

import Milter
import pytest

from milterd import metrics
from milterd.checks import Check, Hits, Symbol
from milterd.config import load_config
from milterd.message import pipeline as pipeline_module
from milterd.message.model import Action, Envelope, Hit, Session
from milterd.message.pipeline import EOM_MARGIN, Pipeline, eom_budget
from milterd.message.policy import tag_subject
from milterd.message.reply import Reply
from milterd.services import Services
from tests.unit.test_adapter_pipeline_review import Context, connect, eom, log_rows, make_conf, make_pipeline, up_to_body


class MailRefusals(Check):
    """Refuses some senders at MAIL FROM, with a reply whose class may disagree with the action."""

    name: ClassVar[str] = "test_mail_refusals"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_REFUSED", 0.0, "test"),)
    REFUSALS: ClassVar[dict[str, tuple[Action, Reply]]] = {
        "reject-4xx@example.org": (Action.REJECT, Reply("451", "4.7.1", "slow down")),
        "tempfail-5xx@example.org": (Action.TEMPFAIL, Reply("554", "5.7.1", "go away")),
        "refused@example.org": (Action.REJECT, Reply.reject("not you")),
    }

    def on_mail(self, session: Session, envelope: Envelope) -> Hits:
        refusal = self.REFUSALS.get(envelope.sender)
        if refusal is None:
            return ()
        return [Hit("TEST_REFUSED", action=refusal[0], reply=refusal[1])]


class Slow(Check):
    """An end-of-message check that waits (for a scanner, say) until released."""

    name: ClassVar[str] = "test_slow"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_SLOW", 0.0, "test"),)
    release = threading.Event()

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        self.release.wait(3)
        return [Hit("TEST_SLOW")]


class Quick(Check):
    """An end-of-message check that may wait but does not: it runs in the callback's thread."""

    name: ClassVar[str] = "test_quick"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_QUICK", 0.0, "test"),)

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        return [Hit("TEST_QUICK")]


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    return make_conf(tmp_path)


@pytest.fixture()
def built(conf: Path) -> Iterator[tuple[Services, Pipeline]]:
    services, pipeline = make_pipeline(conf, MailRefusals, Slow, Quick)
    Slow.release.set()  # no waiting unless a test asks for it
    yield services, pipeline
    Slow.release.set()
    pipeline.shutdown()
    services.close()


@pytest.fixture()
def ctx(built: tuple[Services, Pipeline], monkeypatch: pytest.MonkeyPatch) -> Context:
    return connect(built[1], monkeypatch)


def summary_lines(caplog: pytest.LogCaptureFixture, queue_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{queue_id}: action=")]


# --- 1. an 8-bit Subject ------------------------------------------------------------------


def test_fix_a_subject_that_is_not_utf8_is_not_tagged_but_flagged(ctx: Context, conf: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO, logger="milterd")
    up_to_body(ctx, "Q8SUBJ", subject=b"SPAMME caf\xe9")  # Latin-1: score 9, rewrite_subject
    assert eom(ctx) == Milter.CONTINUE
    # The old code sent " [SPAM] SPAMME caf\ufffd": the reader saw a replacement character.
    assert [edit for edit in ctx.edits if edit[1] == "Subject"] == []
    assert ("add", "X-Spam-Flag", " YES", -1) in ctx.edits
    assert any("Q8SUBJ: Subject not tagged: it is not UTF-8" in r.getMessage() for r in caplog.records)
    Milter.close_callback(ctx)
    assert log_rows(conf, capsys)["Q8SUBJ"]["action"] == "rewrite_subject"


def test_a_utf8_subject_is_tagged_with_its_own_bytes(ctx: Context) -> None:
    up_to_body(ctx, "QUTF8", subject="SPAMME café".encode())
    assert eom(ctx) == Milter.CONTINUE
    [value] = [value for op, name, value, _ in ctx.edits if (op, name) == ("change", "Subject")]
    assert value == " [SPAM] SPAMME café" and value.encode()[1:] == "[SPAM] SPAMME café".encode()
    Milter.close_callback(ctx)


def test_tag_subject_leaves_a_replacement_character_alone() -> None:
    assert tag_subject("caf\ufffd", "[SPAM]") == []
    assert tag_subject("café", "[SPAM]")[0].value == "[SPAM] café"


# --- 2. the reply's code decides the milter result -----------------------------------------


@pytest.mark.parametrize(
    ("sender", "result", "reply"),
    [
        ("reject-4xx@example.org", Milter.TEMPFAIL, ("451", "4.7.1", "slow down")),
        ("tempfail-5xx@example.org", Milter.REJECT, ("554", "5.7.1", "go away")),
        ("refused@example.org", Milter.REJECT, ("550", "5.7.1", "not you")),
    ],
)
def test_fix_the_milter_result_follows_the_reply_code(sender: str, result: int, reply: tuple[str, str, str], ctx: Context) -> None:
    milter = ctx.getpriv()
    ctx._stage = -1
    # The old code answered by the action: SMFIS_REJECT with a 451 reply, which libmilter
    # sends as a plain reject (its text lost), and SMFIS_TEMPFAIL with a 554 one.
    assert milter.envfrom(f"<{sender}>") == result
    assert ctx._reply[:3] == reply
    Milter.close_callback(ctx)


# --- 3. logging a refused transaction never fails the next one --------------------------


@pytest.mark.parametrize("broken", ["store", "record"])
def test_fix_a_failure_logging_a_refused_transaction_spares_the_next(
    broken: str, built: tuple[Services, Pipeline], ctx: Context, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    services, pipeline = built
    milter = ctx.getpriv()
    ctx._stage = -1
    assert milter.envfrom("<refused@example.org>") == Milter.REJECT

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("not a StoreError")

    monkeypatch.setattr(services.store, "log_message", fail) if broken == "store" else monkeypatch.setattr(pipeline, "record", fail)
    observed: list[tuple[str, bool]] = []
    monkeypatch.setattr(metrics, "observe", lambda record, eom_started=None, stored=True: observed.append((record.action, stored)))
    caplog.set_level(logging.DEBUG, logger="milterd")
    # Postfix sends no ABORT after a refused MAIL FROM: the next MAIL FROM ends that transaction.
    assert milter.envfrom("<alice@example.org>") == Milter.CONTINUE  # the old code: TEMPFAIL
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].getMessage().startswith("NOQUEUE: ") and "RuntimeError: not a StoreError" in errors[0].getMessage()
    assert errors[0].exc_info is None and any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)
    assert observed == [("reject", False)]  # counted as a store error
    Milter.close_callback(ctx)


# --- 4. an internal error at end of message is still logged ----------------------------


def test_fix_an_internal_error_at_end_of_message_leaves_a_summary_line_and_a_row(
    ctx: Context, conf: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="milterd")
    up_to_body(ctx, "QBUG")

    def bug(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline_module, "plan_headers", bug)
    assert eom(ctx) == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.3.0")
    monkeypatch.undo()
    [line] = summary_lines(caplog, "QBUG")  # the old code: none
    assert "action=tempfail" in line and 'reason="internal error: RuntimeError: a bug"' in line
    up_to_body(ctx, "QNEXT")
    assert eom(ctx) == Milter.CONTINUE
    Milter.close_callback(ctx)
    rows = log_rows(conf, capsys)
    assert rows["QBUG"]["action"] == "tempfail" and rows["QBUG"]["reason"] == "internal error: RuntimeError: a bug"
    assert rows["QNEXT"]["action"] == "accept"


def test_fix_a_store_raising_at_end_of_message_still_leaves_a_summary_line(
    built: tuple[Services, Pipeline], ctx: Context, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="milterd")
    up_to_body(ctx, "QSTORE")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("driver bug")

    monkeypatch.setattr(built[0].store, "log_message", fail)  # the second attempt (the tempfail row) fails too
    assert eom(ctx) == Milter.TEMPFAIL and ctx._reply[:2] == ("451", "4.3.0")
    [line] = summary_lines(caplog, "QSTORE")
    assert "action=tempfail" in line and "RuntimeError: driver bug" in line
    Milter.close_callback(ctx)


def test_fix_edits_libmilter_refuses_leave_a_summary_line_and_a_tempfail_row(
    ctx: Context, conf: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="milterd")
    up_to_body(ctx, "QEDITS", subject=b"SPAMME")

    def refuse(*args: object) -> None:
        raise Milter.error("cannot add header")

    monkeypatch.setattr(ctx, "addheader", refuse)
    assert eom(ctx) == Milter.TEMPFAIL
    monkeypatch.undo()
    [line] = summary_lines(caplog, "QEDITS")
    assert "action=tempfail" in line and "cannot add header" in line
    Milter.close_callback(ctx)
    # A row saying tempfail and why, with the verdict that was being sent (thirty-eighth review: Postfix may
    # have delivered the message by its milter_default_action), never one saying accepted.
    row = log_rows(conf, capsys)["QEDITS"]
    assert row["action"] == "tempfail" and row["score"] == 9.0 and "TEST_SPAM" in row["symbols"]
    assert row["reason"].startswith("Postfix did not take the edits of its rewrite_subject verdict (cannot add header)")


# --- 5. end of message has a deadline, and tells Postfix it is still running ------------


def test_fix_end_of_message_outlasting_its_budget_is_tempfailed_and_logged(
    built: tuple[Services, Pipeline], ctx: Context, conf: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, pipeline = built
    Slow.release.clear()
    pipeline.eom_budget = 0.4
    monkeypatch.setattr(pipeline_module, "PROGRESS_EVERY", 0.05)
    progress: list[int] = []
    monkeypatch.setattr(ctx, "progress", lambda: progress.append(1))
    caplog.set_level(logging.INFO, logger="milterd")
    up_to_body(ctx, "QSLOW")
    # The old code waited for the slow check (3 s here, for ever for a stuck pool) and then accepted.
    assert eom(ctx) == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.4.5")
    assert len(progress) >= 3  # SMFIR_PROGRESS while waiting (the old code never sent it)
    [line] = summary_lines(caplog, "QSLOW")
    assert "action=tempfail" in line and "EOM_TIMEOUT" in line
    Slow.release.set()
    up_to_body(ctx, "QFAST")
    assert eom(ctx) == Milter.CONTINUE
    Milter.close_callback(ctx)
    rows = log_rows(conf, capsys)
    assert rows["QSLOW"]["action"] == "tempfail" and "EOM_TIMEOUT" in rows["QSLOW"]["symbols"]
    assert "test_slow" in rows["QSLOW"]["details"]["EOM_TIMEOUT"]
    assert rows["QFAST"]["action"] == "accept" and "TEST_SLOW" in rows["QFAST"]["symbols"]


def test_the_budget_adds_up_the_timeouts_end_of_message_may_spend(conf: Path) -> None:
    config = load_config(conf)
    assert eom_budget(config) == 3 * config.dns.timeout + config.database.busy_timeout + EOM_MARGIN
    scanning = config.model_copy(update={"clamav": config.clamav.model_copy(update={"enabled": True}), "spamd": config.spamd.model_copy(update={"enabled": True})})
    assert eom_budget(scanning) == eom_budget(config) + config.clamav.timeout + config.spamd.timeout
    assert eom_budget(scanning) < 300  # Postfix's default milter_content_timeout

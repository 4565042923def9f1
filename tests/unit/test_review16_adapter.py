"""Review 16 of the adapter: an internal error while the body is received tempfails the message
*and logs it*, over a unix socket (the body gets no reply: the 451 waits for end of message) as
over TCP (answered at the body at once).

On the old code (5071120) both answered 451 but wrote no row and no summary line: ``milterd
log`` and rule tuning never saw the attempt.  Now the message is logged as an internal error at
end of message is: action ``tempfail``, the error as reason.  It is never accepted: the answer
stays 451 4.3.0, also when that row cannot be written.

pymilter's ``TestCtx`` stands in for libmilter, as in test_adapter_pipeline_review.py.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any, Iterator

import Milter
import pytest

from milterd.message.model import Spool
from milterd.message.pipeline import Pipeline
from milterd.milter.adapter import MilterdMilter
from milterd.services import Services
from milterd.store import StoreError

from .test_adapter_pipeline_review import Context, eom, log_rows, make_conf, make_pipeline, negotiate

BIG_BODY = b"x" * 4096  # past spool_memory (1024): spooled to a file in spool_dir


@pytest.fixture()
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture()
def conf(tmp_path: Path, spool_dir: Path) -> Path:
    return make_conf(tmp_path, extra={"milter": {"spool_dir": str(spool_dir)}})


@pytest.fixture()
def built(conf: Path) -> Iterator[tuple[Services, Pipeline]]:
    services, pipeline = make_pipeline(conf)
    yield services, pipeline
    pipeline.shutdown()
    services.close()


def connect(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, unix: bool) -> Context:
    context = negotiate(pipeline, monkeypatch, unix=unix)
    context._stage = Milter.M_HELO  # TestCtx._helo would close the connection on NOREPLY
    assert context.getpriv().hello("client.example.org") == (Milter.NOREPLY if unix else Milter.CONTINUE)
    context._stage = None
    return context


def to_body(ctx: Context, queue_id: str, subject: str, unix: bool) -> MilterdMilter:
    """MAIL to end of headers of one message, as Postfix drives it; the milter."""
    milter: MilterdMilter = ctx.getpriv()
    no_reply = Milter.NOREPLY if unix else Milter.CONTINUE
    ctx._stage = -1  # every macro visible
    assert milter.envfrom("<alice@example.org>") == Milter.CONTINUE
    ctx._setsymval("i", queue_id)
    assert milter.envrcpt("<bob@example.com>") == Milter.CONTINUE
    assert milter.data() == Milter.CONTINUE
    for name, value in (("From", b"alice@example.org"), ("Subject", subject.encode())):
        assert milter.header_bytes(name, value) == no_reply
    assert milter.eoh() == Milter.CONTINUE
    return milter


def fail_body(milter: MilterdMilter, unix: bool) -> None:
    """Send a body chunk the adapter fails on; over a unix socket, a second one and end of message."""
    ctx: Context = milter._ctx
    if unix:
        assert milter.body(BIG_BODY) == Milter.NOREPLY  # no reply to the body: carried to end of message
        assert milter.body(BIG_BODY) == Milter.NOREPLY
        assert eom(ctx) == Milter.TEMPFAIL
    else:
        assert milter.body(BIG_BODY) == Milter.TEMPFAIL  # answered at once; Postfix then aborts
        assert milter.abort() == Milter.CONTINUE
    assert ctx._reply[:2] == ("451", "4.3.0")


def spool_dir_gone(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.rmtree(spool_dir)  # the README's case: the temporary directory gone while a body is spooled


def disk_full(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def write(self: Spool, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Spool, "write", write)


def next_message_is_judged(ctx: Context, conf: Path, capsys: pytest.CaptureFixture[str], unix: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    milter = to_body(ctx, "QNEXT", "next one", unix)
    assert milter.body(b"Hello\r\n") == (Milter.NOREPLY if unix else Milter.CONTINUE)
    assert eom(ctx) == Milter.CONTINUE
    Milter.close_callback(ctx)
    assert log_rows(conf, capsys)["QNEXT"]["action"] == "accept"


@pytest.mark.parametrize("fault", [spool_dir_gone, disk_full], ids=["spool_dir-gone", "disk-full"])
@pytest.mark.parametrize("unix", [True, False], ids=["unix", "inet"])
def test_fix_an_internal_error_in_the_body_is_answered_451_and_logged(
    unix: bool, fault: Any, built: tuple[Services, Pipeline], conf: Path, spool_dir: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _services, pipeline = built
    ctx = connect(pipeline, monkeypatch, unix)
    milter = to_body(ctx, "QBODYERR", "body fails", unix)
    fault(spool_dir, monkeypatch)
    capsys.readouterr()
    fail_body(milter, unix)
    assert milter.envelope is None  # the transaction is over
    rows = log_rows(conf, capsys)
    # The old code wrote no row at all: KeyError here.
    row = rows["QBODYERR"]
    assert row["action"] == "tempfail", row
    assert row["reason"].startswith("internal error: ") and ("FileNotFoundError" in row["reason"] or "No space left" in row["reason"]), row
    assert row["subject"] == "body fails" and row["sender"] == "alice@example.org" and row["recipients"] == ["bob@example.com"]
    assert len([r for r in rows.values() if r["queue_id"] == "QBODYERR"]) == 1  # once, not again when the transaction ends
    if fault is spool_dir_gone:
        spool_dir.mkdir()
    next_message_is_judged(ctx, conf, capsys, unix, monkeypatch)


@pytest.mark.parametrize("unix", [True, False], ids=["unix", "inet"])
def test_the_summary_line_of_the_failed_message_is_logged(
    unix: bool, built: tuple[Services, Pipeline], spool_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _services, pipeline = built
    ctx = connect(pipeline, monkeypatch, unix)
    milter = to_body(ctx, "QSUMMARY", "summary", unix)
    disk_full(spool_dir, monkeypatch)
    with caplog.at_level("INFO", logger="milterd"):
        fail_body(milter, unix)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("QSUMMARY: ")]
    assert len(lines) == 1 and "action=tempfail" in lines[0] and "reason=\"internal error: OSError" in lines[0], lines
    Milter.close_callback(ctx)


@pytest.mark.parametrize("unix", [True, False], ids=["unix", "inet"])
def test_a_store_that_cannot_log_it_still_gets_451_never_an_accept(
    unix: bool, built: tuple[Services, Pipeline], conf: Path, spool_dir: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    services, pipeline = built
    ctx = connect(pipeline, monkeypatch, unix)
    milter = to_body(ctx, "QNOSTORE", "no store", unix)
    disk_full(spool_dir, monkeypatch)

    def refuse(*args: object, **kwargs: object) -> None:
        raise StoreError("database is locked")

    monkeypatch.setattr(services.store, "log_message", refuse)
    fail_body(milter, unix)
    monkeypatch.undo()
    Milter.close_callback(ctx)
    assert "QNOSTORE" not in log_rows(conf, capsys)


def test_a_body_check_that_raises_is_a_check_error_not_a_tempfail(
    tmp_path: Path, conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A check's body hook that raises costs that check only (CHECK_ERROR, as at any stage): the
    message is judged and logged as usual.  What the fix above covers is the adapter's own work."""
    from typing import ClassVar

    from milterd.checks import Check, Hits, Symbol
    from milterd.message.model import Envelope, Session

    class BrokenBody(Check):
        name: ClassVar[str] = "test_broken_body"
        symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_BROKEN_BODY", 0.0, "test"),)

        def on_body(self, session: Session, envelope: Envelope, chunk: bytes) -> Hits:
            raise RuntimeError("injected")

    services, pipeline = make_pipeline(conf, BrokenBody)
    try:
        pipeline = Pipeline(services)  # the body stage hooked: built after the check was added
        ctx = connect(pipeline, monkeypatch, unix=True)
        milter = to_body(ctx, "QCHECKERR", "check fails", unix=True)
        assert milter.body(b"Hello\r\n") == Milter.NOREPLY
        assert eom(ctx) == Milter.CONTINUE
        Milter.close_callback(ctx)
        row = log_rows(conf, capsys)["QCHECKERR"]
        assert row["action"] == "accept" and row["details"].get("CHECK_ERROR") == "test_broken_body", row
    finally:
        pipeline.shutdown()
        services.close()

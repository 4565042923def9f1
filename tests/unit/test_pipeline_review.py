"""The pipeline's failure paths: a full disk, a score that is not a number, a store that fails.

Each test fails on the code before its fix: a full spool disk was noticed only by
the end-of-message readers (and a message whose checks did not read the spool was
accepted); ``spool_memory = 0`` kept every body in memory; a NaN weight made every
threshold comparison false; a message tempfailed because the store was down was
logged with the action it did not get.
"""

from __future__ import annotations

import email.message
import errno
import io
import logging
import socket
from io import BytesIO
from pathlib import Path
from typing import Iterator

import Milter
import pytest
from Milter import testctx

from milterd.config import ActionsSection, load_config
from milterd.message.model import Action, Hit, Spool
from milterd.message.pipeline import Pipeline
from milterd.message.policy import decide
from milterd.milter.adapter import MilterdMilter
from milterd.services import build
from milterd.store import StoreError
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import write_config


class FullDisk(io.RawIOBase):
    """A file on a full file system: every write fails with ENOSPC (nothing is read back)."""

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def readinto(self, buffer: object) -> int:
        return 0

    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def full_disk_spool() -> Spool:
    """A spool rolled over to a (buffered) file on a full disk, as SpooledTemporaryFile's file is."""
    spool = Spool(1 << 20)
    spool._file = io.BufferedRandom(FullDisk())  # noqa: SLF001
    return spool


# --- the spool ---------------------------------------------------------------


def test_a_full_disk_fails_the_spool_write_not_a_later_read() -> None:
    spool = full_disk_spool()
    with pytest.raises(OSError) as raised:
        spool.write(b"the last, short chunk of a body\r\n")
    assert raised.value.errno == errno.ENOSPC
    assert spool.size == 0


def test_spool_memory_zero_spools_every_body_to_disk() -> None:
    # [milter] spool_memory: "Bodies up to this size stay in memory; larger ones are spooled".
    spool = Spool(0)
    try:
        spool.write(b"x" * 4096)
        assert spool._file._rolled  # type: ignore[attr-defined]  # noqa: SLF001
        assert spool.read() == b"x" * 4096
    finally:
        spool.close()
    kept = Spool(1024)
    try:
        kept.write(b"x" * 100)
        assert not kept._file._rolled  # type: ignore[attr-defined]  # noqa: SLF001
    finally:
        kept.close()


# --- the policy --------------------------------------------------------------


def test_a_nan_weight_does_not_hide_the_other_scores() -> None:
    # TOML reads "score = nan"; one such symbol made the sum NaN, every threshold
    # comparison false, and a message at 20 points was accepted.
    weights = {"NAN_RULE": float("nan"), "BIG": 20.0}
    verdict = decide([Hit("NAN_RULE"), Hit("BIG")], lambda s: weights.get(s, 0.0), ActionsSection())
    assert verdict.action == Action.REJECT and verdict.score == 20.0
    assert verdict.symbols == {"NAN_RULE": 0.0, "BIG": 20.0}
    twice = decide([Hit("X", score=3.0), Hit("X", score=float("nan")), Hit("Y", score=2.0)], lambda s: 0.0, ActionsSection())
    assert twice.score == 5.0 and twice.action == Action.ADD_HEADER


# --- through the adapter, as Postfix drives it --------------------------------


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    sections = with_sections(NO_CHECKS, {"milter": {"hostname": "mx.test", "trusted_networks": []}, "database": {"url": f"sqlite:///{tmp_path / 'log.sqlite'}"}})
    return write_config(tmp_path / "milter.conf", sections)


@pytest.fixture()
def pipeline(conf: Path) -> Iterator[Pipeline]:
    services = build(load_config(conf))
    services.store.ensure_schema(True)
    built = Pipeline(services)
    yield built
    built.shutdown()
    services.close()


@pytest.fixture()
def ctx(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> testctx.TestCtx:
    class Worker(MilterdMilter):
        pass

    Worker.pipeline = pipeline
    monkeypatch.setattr(Milter, "factory", Worker)
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF, 0, 0])
    context = testctx.TestCtx()
    context._msg = email.message.Message()  # libmilter takes header edits at end of message
    assert context._negotiate() == Milter.CONTINUE
    context._stage = Milter.M_CONNECT
    assert Milter.connect_callback(context, "[192.0.2.7]", socket.AF_INET, ("192.0.2.7", 4321)) == Milter.CONTINUE
    context._stage = None
    assert context._helo("client.example.org") == Milter.CONTINUE
    assert context._envfrom("<alice@example.org>") == Milter.CONTINUE
    context._setsymval("i", "QREVIEW")
    assert context._envrcpt("<bob@example.com>") == Milter.CONTINUE
    assert context._data() == Milter.CONTINUE
    for name, value in (("From", b"alice@example.org"), ("Subject", b"hello")):
        assert context.getpriv().header_bytes(name, value) == Milter.CONTINUE
    assert context._eoh() == Milter.CONTINUE
    return context


def test_a_full_spool_disk_tempfails_the_message_at_the_body(ctx: testctx.TestCtx, caplog: pytest.LogCaptureFixture) -> None:
    milter = ctx.getpriv()
    milter.envelope.spool = full_disk_spool()
    # Answered 451 while the body arrives; the old code answered CONTINUE and went on
    # to end of message with a body it had not kept.
    assert ctx._feed_body(BytesIO(b"Hello\r\n" * 10)) == Milter.TEMPFAIL
    assert ctx._reply[0] == "451"
    assert any("internal error at body" in r.getMessage() for r in caplog.records)  # the log says why
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="milterd"):
        Milter.close_callback(ctx)  # the transaction ends: the spool is freed without a second error
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_closing_a_spool_on_a_full_disk_does_not_raise() -> None:
    spool = full_disk_spool()
    with pytest.raises(OSError):
        spool.write(b"short")
    spool.close()
    assert spool._file.closed  # noqa: SLF001


def test_a_store_failure_logs_the_tempfail_it_answers(ctx: testctx.TestCtx, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def down(*args: object) -> int:
        raise StoreError("database is locked")

    monkeypatch.setattr(pipeline.services.store, "log_message", down)
    assert ctx._feed_body(BytesIO(b"Hello\r\n" * 10)) == Milter.CONTINUE
    with caplog.at_level(logging.INFO, logger="milterd"):
        assert ctx._eom() == Milter.TEMPFAIL
    assert ctx._reply[0] == "451"
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("QREVIEW: action=")]
    assert len(summary) == 1 and summary[0].startswith("QREVIEW: action=tempfail "), summary
    assert "store unavailable" in summary[0]
    Milter.close_callback(ctx)


def test_the_envelope_says_what_end_of_message_answered_once_the_row_is_committed(ctx: testctx.TestCtx, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    # The greylist counts a successful retry once its message was answered accepted (review, thirty-sixth session):
    # judged at the verdict, a retry whose log row then failed (451) had counted.
    def down(*args: object) -> int:
        raise StoreError("database is locked")

    monkeypatch.setattr(pipeline.services.store, "log_message", down)
    assert ctx._feed_body(BytesIO(b"Hello\r\n" * 10)) == Milter.CONTINUE
    envelope = ctx.getpriv().envelope
    assert envelope is not None and envelope.answered is None
    assert ctx._eom() == Milter.TEMPFAIL
    assert envelope.answered is not None and envelope.answered.action == Action.TEMPFAIL

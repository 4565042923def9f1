"""A quarantined message whose reason carries what no store holds as text (a NUL, undecodable
8-bit bytes from an attachment's name) is stored, its reason escaped as in the log row.

Driven through pymilter's callbacks with the helpers of tests/unit/test_adapter_pipeline_review.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import Milter
import pytest

from milterd.checks import Check, Hits, Symbol
from milterd.cli import main
from milterd.message.model import Action, Envelope, Hit, Session

from .test_adapter_pipeline_review import connect, eom, log_rows, make_conf, make_pipeline, up_to_body

#: What a check's detail holds for a file named with 8-bit junk (kept by surrogateescape) and a NUL.
DETAIL = "file b\udce4d\x00.exe"


class QuarantinesWithJunk(Check):
    """Stands in for the attachment check quarantining a file named with undecodable bytes."""

    name: ClassVar[str] = "test_quarantines_with_junk"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_JUNK", 0.0, "test"),)

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        return [Hit("TEST_JUNK", detail=DETAIL, action=Action.QUARANTINE)]


@pytest.mark.parametrize(("mode", "answer"), [("discard", Milter.DISCARD), ("hold", Milter.CONTINUE)])
def test_fix_a_reason_no_store_holds_as_text_is_stored_escaped(
    mode: str, answer: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = make_conf(tmp_path, extra={"quarantine": {"mode": mode}})
    services, pipeline = make_pipeline(conf, QuarantinesWithJunk)
    try:
        ctx = connect(pipeline, monkeypatch)
        up_to_body(ctx, "QJUNK")
        # The old code passed the reason to the quarantine row unescaped: SQLite refused the
        # lone surrogate, and the message was answered 451 at every retry.
        assert eom(ctx) == answer
        Milter.close_callback(ctx)
        row = log_rows(conf, capsys)["QJUNK"]
        assert row["action"] == "quarantine"
        capsys.readouterr()
        assert main(["quarantine", "list", "-c", str(conf), "--json"]) == 0
        out = capsys.readouterr().out
        assert "b\\\\udce4d\\\\0.exe" in out, out
    finally:
        pipeline.shutdown()
        services.close()

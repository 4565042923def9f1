"""A check that raises on every message logs its traceback once every five minutes, and a line per message
otherwise: the log stays readable (it held one whole traceback per message)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from milterd.logs import Repeats
from milterd.message import pipeline
from milterd.message.model import Session
from milterd.message.pipeline import Pipeline


def test_repeats_logs_the_first_and_again_after_the_interval() -> None:
    now = [1000.0]
    repeats = Repeats(300.0, clock=lambda: now[0])
    assert repeats.first("a") and not repeats.first("a")
    assert repeats.first("b")  # another key is its own
    now[0] += 299.0
    assert not repeats.first("a")
    now[0] += 2.0
    assert repeats.first("a") and not repeats.first("a")


#: The pipeline as _call sees it: [milter] on_check_error at its default.
_PIPELINE: Any = SimpleNamespace(config=SimpleNamespace(milter=SimpleNamespace(on_check_error="accept")))


def _broken(_check: Any) -> Any:
    raise RuntimeError("library broken by an upgrade")


def test_a_check_failing_on_every_message_logs_one_traceback(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(pipeline, "CHECK_TRACEBACKS", Repeats())
    check: Any = SimpleNamespace(name="broken")
    session = Session(client_addr="192.0.2.1")
    with caplog.at_level(logging.ERROR, logger="milterd"):
        hits = [Pipeline._call(_PIPELINE, check, session, _broken) for _ in range(3)]
    assert all([h.symbol for h in found] == ["CHECK_ERROR"] and found[0].detail == "broken" for found in hits)
    records = [r for r in caplog.records if "check broken failed" in r.getMessage()]
    assert len(records) == 3  # one line per message still
    assert records[0].exc_info is not None and [r.exc_info for r in records[1:]] == [None, None]
    assert "RuntimeError: library broken by an upgrade" in records[1].getMessage()
    other: Any = SimpleNamespace(name="other")
    with caplog.at_level(logging.ERROR, logger="milterd"):
        Pipeline._call(_PIPELINE, other, session, _broken)
    assert caplog.records[-1].exc_info is not None  # another check's first failure is logged whole

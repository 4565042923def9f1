"""A milter connection reused after SMFIC_QUIT_NC keeps its negotiation (thirty-eighth review).

libmilter keeps what was negotiated over QUIT_NC (an MTA starting its next SMTP connection on the same milter
connection); pymilter's connect_callback then makes a new object, which no negotiate ran on.  It took the class's
defaults: header values lost their negotiated leading space (an edit read "X-Spam-Status:Yes", a logged Subject
" hello"), and a unix-socket worker answered its no-reply stages.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Iterator

import Milter
import pytest

from milterd.message.pipeline import Pipeline
from milterd.milter import adapter
from milterd.milter.adapter import MilterdMilter
from tests.unit.test_adapter_pipeline_review import Context, eom, log_rows, make_conf, make_pipeline, negotiate, up_to_body


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    return make_conf(tmp_path)


@pytest.fixture()
def pipeline(conf: Path) -> Iterator[Pipeline]:
    services, built = make_pipeline(conf)
    yield built
    built.shutdown()
    services.close()


def quit_nc_and_connect(context: Context, address: str = "192.0.2.8") -> MilterdMilter:
    """QUIT_NC as libmilter passes it (close), then the next connection's CONNECT on the same milter connection."""
    Milter.close_callback(context)
    context.setpriv(None)  # what pymilter's C module does after the close callback
    context._stage = Milter.M_CONNECT
    Milter.connect_callback(context, f"[{address}]", socket.AF_INET, (address, 4321))
    context._stage = None
    milter: MilterdMilter = context.getpriv()
    return milter


@pytest.mark.parametrize("unix", [False, True])
def test_the_next_connection_keeps_the_negotiated_protocol(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, unix: bool) -> None:
    context = negotiate(pipeline, monkeypatch, unix=unix)
    first: MilterdMilter = context.getpriv()
    assert first._leadspc and bool(first._no_reply) is unix
    second = quit_nc_and_connect(context)
    assert second is not first
    assert (second._leadspc, second._no_reply) == (first._leadspc, first._no_reply)


def test_the_next_connection_s_edits_and_row_are_written_as_negotiated(
    pipeline: Pipeline, conf: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    context = negotiate(pipeline, monkeypatch)
    quit_nc_and_connect(context)
    assert context._helo("client.example.org") == Milter.CONTINUE
    up_to_body(context, "QNC1", subject=b" SPAMME again")  # the value as it arrives with P_HDR_LEADSPC
    assert eom(context) == Milter.CONTINUE
    added = {name: value for op, name, value, _ in context.edits if op == "add"}
    assert added["X-Spam-Flag"] == " YES"  # the old code sent "YES": "X-Spam-Flag:YES"
    Milter.close_callback(context)
    assert log_rows(conf, capsys)["QNC1"]["subject"] == "SPAMME again"


def test_another_connection_s_negotiation_is_not_taken(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    # Second look: the negotiation was kept per worker, so one MTA's (without P_HDR_LEADSPC) given to another's
    # reused connection.  libmilter serves each milter connection on its own thread: what it agreed is kept there.
    context = negotiate(pipeline, monkeypatch)
    other: list[bool] = []

    def another_mta() -> None:
        elsewhere = Context()
        elsewhere._stage = -1
        assert Milter.negotiate_callback(elsewhere, [Milter.CURR_ACTS, 0x1FFFFF & ~Milter.P_HDR_LEADSPC, 0, 0]) == Milter.CONTINUE
        other.append(elsewhere.getpriv()._leadspc)

    thread = threading.Thread(target=another_mta)
    thread.start()
    thread.join()
    assert other == [False]
    assert quit_nc_and_connect(context)._leadspc is True
    assert getattr(adapter._agreed, "value", None) is not None

"""The protocol layer in process: pymilter's ``Milter.testctx.TestCtx`` stands in for
libmilter and drives :class:`milterd.milter.adapter.MilterdMilter` callback by callback, as
the worker registers them (supervisor.register), with no daemon and no socket.

These are fast checks of what Postfix cannot easily show: the negotiated bits,
per-transaction state across RSET (abort) on one connection, and the exact
replies and header edits at end of message.  The same paths through a real
Postfix are in tests/integration.
"""

from __future__ import annotations

import json
import socket
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

import Milter
import pytest
from Milter import testctx

from milterd.cli import main
from milterd.config import load_config
from milterd.message.pipeline import Pipeline
from milterd.milter.adapter import MilterdMilter
from milterd.services import build
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import write_config

RULES = {"test.toml": '[[rule]]\nname = "TEST_REJECT"\nheader = "Subject"\nregex = "REJECTME"\nscore = 100\n'}


class Context(testctx.TestCtx):  # type: ignore[misc]
    """TestCtx that records the header edits at end of message (libmilter sends them to Postfix)."""

    def __init__(self) -> None:
        super().__init__()
        self.edits: list[tuple[str, str, str, int]] = []

    def addheader(self, field: str, value: str, idx: int) -> None:
        assert self._body is not None, "addheader outside end of message"
        self.edits.append(("add", field, value, idx))

    def chgheader(self, field: str, idx: int, value: str) -> None:
        assert self._body is not None, "chgheader outside end of message"
        self.edits.append(("change", field, value, idx))


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("proto")
    (root / "rules").mkdir()
    for name, text in RULES.items():
        (root / "rules" / name).write_text(text)
    sections = with_sections(
        NO_CHECKS,
        {"milter": {"hostname": "mx.test", "trusted_networks": []}, "database": {"url": f"sqlite:///{root / 'log.sqlite'}"}, "rules": {"dir": str(root / "rules")}},
    )
    return write_config(root / "milter.conf", sections)


@pytest.fixture(scope="module")
def milter_class(conf: Path) -> Iterator[type[MilterdMilter]]:
    """MilterdMilter with its own pipeline, as a worker sets it before serving."""
    services = build(load_config(conf))
    services.store.ensure_schema(True)
    pipeline = Pipeline(services)

    class Worker(MilterdMilter):
        pass

    Worker.pipeline = pipeline
    yield Worker
    pipeline.shutdown()
    services.close()


@pytest.fixture()
def ctx(milter_class: type[MilterdMilter], monkeypatch: pytest.MonkeyPatch) -> Context:
    """A connection negotiated as Postfix does: every action and protocol bit offered."""
    monkeypatch.setattr(Milter, "factory", milter_class)
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF, 0, 0])  # negotiate writes into it
    context = Context()
    assert context._negotiate() == Milter.CONTINUE
    return context


def log_rows(conf: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    capsys.readouterr()
    assert main(["log", "-c", str(conf), "--json", "--limit", "0"]) == 0
    return {row["queue_id"]: row for row in json.loads(capsys.readouterr().out)}


def start(ctx: Context, addr: str = "192.0.2.7") -> None:
    """CONNECT and HELO, with the macros and the (address, port) pair libmilter passes."""
    ctx._setsymval("j", "mx.test")
    ctx._setsymval("{daemon_name}", "smtpd")
    ctx._stage = Milter.M_CONNECT
    assert Milter.connect_callback(ctx, f"[{addr}]", socket.AF_INET, (addr, 4321)) == Milter.CONTINUE
    ctx._stage = None
    assert ctx._helo("client.example.org") == Milter.CONTINUE


def mail_and_rcpt(ctx: Context, queue_id: str) -> None:
    ctx.edits.clear()
    ctx._reply = None
    assert ctx._envfrom("<alice@example.org>") == Milter.CONTINUE
    ctx._setsymval("i", queue_id)
    assert ctx._envrcpt("<bob@example.com>") == Milter.CONTINUE


def transaction(ctx: Context, subject: str, queue_id: str) -> int:
    """One message; the answer at end of message."""
    mail_and_rcpt(ctx, queue_id)
    assert ctx._data() == Milter.CONTINUE
    for name, value in (("From", "alice@example.org"), ("Subject", subject), ("X-Spam-Flag", "YES")):
        assert ctx.getpriv().header_bytes(name, value.encode()) == Milter.CONTINUE
    assert ctx._eoh() == Milter.CONTINUE
    assert ctx._feed_body(BytesIO(b"Hello\r\n" * 10)) == Milter.CONTINUE
    return int(ctx._eom())


def test_negotiation_replies_at_every_stage(ctx: Context) -> None:
    actions, protocol = ctx._opts[0], ctx._opts[1]
    no_reply = Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT | Milter.P_NR_DATA | Milter.P_NR_HDR | Milter.P_NR_EOH | Milter.P_NR_BODY
    assert protocol & no_reply == 0
    assert protocol & Milter.P_NOUNKNOWN
    assert not protocol & (Milter.P_NOCONNECT | Milter.P_NOHELO | Milter.P_NOMAIL | Milter.P_NORCPT | Milter.P_NODATA | Milter.P_NOHDRS | Milter.P_NOEOH)
    assert actions == Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE
    Milter.close_callback(ctx)


def test_transactions_on_one_connection_are_independent(ctx: Context, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start(ctx)
    assert transaction(ctx, "please REJECTME", "QPROTO1") == Milter.REJECT
    code, xcode, text = ctx._reply
    assert (code, xcode) == ("550", "5.7.1") and text.startswith("Message rejected as spam (score 100")
    assert ctx.getpriv().abort() == Milter.CONTINUE  # RSET: libmilter's abort callback, the connection stays
    assert transaction(ctx, "hello", "QPROTO2") == Milter.CONTINUE
    # The forged X-Spam-Flag is deleted (empty value), ours are added.
    assert ("change", "X-Spam-Flag", "", 1) in ctx.edits
    added = {name: value.strip() for op, name, value, _ in ctx.edits if op == "add"}
    assert added["X-Spam-Status"] == "No, score=0.0 required=5 tests=none"
    Milter.close_callback(ctx)  # QUIT
    rows = log_rows(conf, capsys)
    assert rows["QPROTO1"]["action"] == "reject"
    assert rows["QPROTO1"]["symbols"] == {"TEST_REJECT": 100.0}
    assert rows["QPROTO2"]["action"] == "accept"
    assert rows["QPROTO2"]["symbols"] == {}


def test_eight_bit_and_nul_headers_do_not_break_the_worker(ctx: Context, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start(ctx, "192.0.2.8")
    mail_and_rcpt(ctx, "QPROTO3")
    # As libmilter passes them: the name as text, the value as raw bytes.
    for name, value in (("Subject", b"caf\xe9 =?utf-8?q?broken"), ("X-Raw", b"\xff\xfe\x80 junk"), ("X-Nul", b"a\x00b")):
        assert ctx.getpriv().header_bytes(name, value) == Milter.CONTINUE
    assert ctx._eoh() == Milter.CONTINUE
    assert ctx._eom() == Milter.CONTINUE
    Milter.close_callback(ctx)
    assert "QPROTO3" in log_rows(conf, capsys)


def test_bytes_callbacks_decode_as_pymilters_base_does(ctx: Context) -> None:
    # libmilter calls envfrom_bytes/envrcpt_bytes/header_bytes; the adapter's own versions skip
    # Base's per-call lookups and must hand the pipeline what Base's would.
    start(ctx)
    ctx._stage = -1  # no stage's macros
    milter = ctx.getpriv()
    sender, params, recipient = b"<caf\xe9@example.org>", (b"SIZE=100", b"BODY=8BITMIME", b"X\xff=1"), b"<b\xfcb@example.com>"
    assert milter.envfrom_bytes(sender, *params) == Milter.CONTINUE
    assert milter.envrcpt_bytes(recipient, b"NOTIFY=NEVER") == Milter.CONTINUE
    assert milter.header_bytes("Subject", b" caf\xe9") == Milter.CONTINUE
    ours = milter.envelope
    assert ours is not None
    milter.abort()
    assert Milter.Base.envfrom_bytes(milter, sender, *params) == Milter.CONTINUE
    assert Milter.Base.envrcpt_bytes(milter, recipient, b"NOTIFY=NEVER") == Milter.CONTINUE
    assert Milter.Base.header_bytes(milter, "Subject", b" caf\xe9") == Milter.CONTINUE
    base = milter.envelope
    assert base is not None and base is not ours
    assert (ours.sender, ours.mail_args, ours.recipients, ours.headers) == (base.sender, base.mail_args, base.recipients, base.headers)
    assert ours.sender == "caf\udce9@example.org" and ours.recipients == ["b\udcfcb@example.com"] and ours.mail_args["SIZE"] == "100"
    Milter.close_callback(ctx)

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
from milterd.milter.adapter import MilterdMilter, unmapped
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import write_config
from tests.harness.pipeline import milter_worker

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
    yield from milter_worker(conf)


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
    assert actions == Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE | Milter.SETSYMLIST
    Milter.close_callback(ctx)


def test_the_macros_read_are_asked_for_whatever_postfix_is_set_to_send(ctx: Context) -> None:
    """Postfix sends a milter the macros it names at negotiation instead of its milter_*_macros (milter
    protocol 6): without them, a site whose milter_mail_macros lacked {auth_authen} scored logged-in users."""
    asked = ctx._symlist
    assert {b"i", b"{auth_authen}"} <= asked[Milter.M_ENVFROM]
    assert all(b"i" in asked[stage] for stage in (Milter.M_ENVRCPT, Milter.M_DATA, Milter.M_EOH, Milter.M_EOM))
    assert {b"{daemon_addr}", b"{client_addr}"} <= asked[Milter.M_CONNECT]
    assert all(len(names) <= 5 for names in asked if names is not None)
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


# --- over a unix socket: no-reply stages, no DATA; what they decide is answered at the next reply ---

NO_REPLY = Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_HDR | Milter.P_NR_BODY


@pytest.fixture()
def unix_ctx(milter_class: type[MilterdMilter], monkeypatch: pytest.MonkeyPatch) -> Context:
    """A connection to a worker serving a unix socket (run_worker sets unix_socket)."""

    class UnixWorker(milter_class):  # type: ignore[valid-type,misc]
        unix_socket = True

    monkeypatch.setattr(Milter, "factory", UnixWorker)
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF, 0, 0])
    context = Context()
    assert context._negotiate() == Milter.CONTINUE
    return context


def unix_start(ctx: Context, addr: str = "192.0.2.9") -> None:
    ctx._stage = Milter.M_CONNECT
    assert Milter.connect_callback(ctx, f"[{addr}]", socket.AF_INET, (addr, 4321)) == Milter.NOREPLY
    ctx._stage = Milter.M_HELO  # TestCtx's _helo would close the connection on an answer other than CONTINUE
    assert ctx.getpriv().hello("client.example.org") == Milter.NOREPLY
    ctx._stage = None


def test_unix_socket_negotiates_no_reply_stages_and_no_data(unix_ctx: Context, ctx: Context) -> None:
    assert unix_ctx._opts[1] & NO_REPLY == NO_REPLY and unix_ctx._opts[1] & Milter.P_NODATA
    assert not unix_ctx._opts[1] & (Milter.P_NR_MAIL | Milter.P_NR_RCPT | Milter.P_NR_EOH | Milter.P_NOHDRS | Milter.P_NOEOH | Milter.P_NOBODY)
    assert ctx._opts[1] & (NO_REPLY | Milter.P_NODATA) == 0  # TCP (and milterd check): a reply at every stage, DATA included
    Milter.close_callback(unix_ctx)
    Milter.close_callback(ctx)


def test_unix_socket_message_is_judged_as_over_tcp(unix_ctx: Context, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unix_start(unix_ctx)
    mail_and_rcpt(unix_ctx, "QUNIX1")
    for name, value in (("From", "alice@example.org"), ("Subject", "please REJECTME")):
        assert unix_ctx.getpriv().header_bytes(name, value.encode()) == Milter.NOREPLY
    assert unix_ctx._eoh() == Milter.CONTINUE
    assert unix_ctx.getpriv().body(b"Hello\r\n" * 10) == Milter.NOREPLY
    assert unix_ctx._eom() == Milter.REJECT
    assert unix_ctx._reply[:2] == ("550", "5.7.1")
    Milter.close_callback(unix_ctx)
    assert log_rows(conf, capsys)["QUNIX1"]["symbols"] == {"TEST_REJECT": 100.0}


def test_header_refusal_at_a_no_reply_stage_is_answered_at_end_of_headers(unix_ctx: Context, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unix_start(unix_ctx)
    mail_and_rcpt(unix_ctx, "QUNIX2")
    milter = unix_ctx.getpriv()
    assert milter.header_bytes("X-Large", b"x" * 60_000) == Milter.NOREPLY  # over max_header_size (56K)
    assert milter.header_bytes("Subject", b"after the refusal") == Milter.NOREPLY
    assert milter.envelope is not None and [n for n, _ in milter.envelope.headers] == []  # nothing kept
    assert unix_ctx._eoh() == Milter.REJECT
    assert unix_ctx._reply == ("552", "5.3.4", "Message header too large")  # the reply the header itself would have had
    assert milter.abort() == Milter.CONTINUE  # Postfix ends the refused transaction
    mail_and_rcpt(unix_ctx, "QUNIX3")  # the next transaction starts clean
    assert milter.header_bytes("Subject", b"fine") == Milter.NOREPLY
    assert unix_ctx._eoh() == Milter.CONTINUE
    Milter.close_callback(unix_ctx)
    rows = log_rows(conf, capsys)
    assert rows["QUNIX2"]["action"] == "reject" and "HDR_TOO_LARGE" in rows["QUNIX2"]["symbols"]


def test_internal_error_at_a_no_reply_stage_tempfails_at_the_next_reply(unix_ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    milter = unix_ctx.getpriv()
    unix_start(unix_ctx)
    mail_and_rcpt(unix_ctx, "QUNIX4")
    assert milter.header_bytes("Subject", b"hello") == Milter.NOREPLY
    assert unix_ctx._eoh() == Milter.CONTINUE

    def broken(*args: Any) -> None:
        raise RuntimeError("spool broke")

    monkeypatch.setattr(milter.pipeline, "body", broken)
    assert milter.body(b"Hello\r\n") == Milter.NOREPLY
    assert unix_ctx._eom() == Milter.TEMPFAIL
    assert unix_ctx._reply[:2] == ("451", "4.3.0")
    assert milter.envelope is None
    monkeypatch.undo()
    Milter.close_callback(unix_ctx)


def test_internal_error_at_connect_tempfails_every_mail_of_the_session(milter_class: type[MilterdMilter], unix_ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    milter = unix_ctx.getpriv()

    def broken(*args: Any) -> None:
        raise RuntimeError("connect broke")

    monkeypatch.setattr(milter.pipeline, "connect", broken)
    unix_start(unix_ctx)
    monkeypatch.undo()
    for _ in range(2):
        unix_ctx._reply = None
        assert unix_ctx._envfrom("<alice@example.org>") == Milter.TEMPFAIL
        assert unix_ctx._reply[:2] == ("451", "4.3.0")
    Milter.close_callback(unix_ctx)


def test_an_ipv4_mapped_client_address_is_the_ipv4_address(ctx: Context) -> None:
    # From a dual-stack socket behind another MTA: trusted_networks and reverse DNS took ::ffff:192.0.2.10 for an
    # IPv6 client while the DNS lists and greylisting unmapped it (found by review); Postfix writes it as IPv4.
    ctx._stage = Milter.M_CONNECT
    assert Milter.connect_callback(ctx, "[::ffff:192.0.2.10]", socket.AF_INET6, ("::FFFF:192.0.2.10", 4321, 0, 0)) == Milter.CONTINUE
    ctx._stage = None
    session = ctx.getpriv().session
    assert (session.client_addr, session.family, str(session.ip)) == ("192.0.2.10", "inet", "192.0.2.10")
    Milter.close_callback(ctx)


def test_other_addresses_are_kept_as_given() -> None:
    for address in ("2001:db8::1", "::1", "fe80::1%eth0", "::ffff:zz", "192.0.2.1", "", "unknown"):
        assert unmapped(address) == address

"""The adapter and the pipeline as Postfix drives them: several messages and HELOs
on one connection, header edits at end of message, aborts, bad input.

pymilter's ``TestCtx`` stands in for libmilter (as in test_protocol.py).  The
tests marked *fix* fail on the code before this review's changes:

* an edit libmilter refused at end of message (Postfix gone, an action not
  negotiated) was answered 451 after the log row had been committed saying
  ``accept``; the edits are now sent before the commit;
* a second HELO/EHLO (after STARTTLS) kept the first one's DNS deadline, long
  past a few seconds later, so its lookups timed out at once, and kept the
  first one's hits (a refusal at HELO applied at MAIL after a good EHLO);
* a tagged folded Subject gained a tab on every continuation line.
"""

from __future__ import annotations

import json
import os
import socket
import time
from io import BytesIO
from pathlib import Path
from typing import Any, ClassVar, Iterator

import Milter
import pytest
from Milter import testctx

from milterd.checks import Check, Hits, Symbol
from milterd.cli import main
from milterd.config import load_config
from milterd.message.model import Action, Hit, Session
from milterd.message.pipeline import Pipeline
from milterd.message.reply import Reply
from milterd.milter.adapter import MilterdMilter
from milterd.services import Services, build
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import write_config

RULES = '[[rule]]\nname = "TEST_SPAM"\nheader = "Subject"\nregex = "SPAMME"\nscore = 9\n'


class Context(testctx.TestCtx):  # type: ignore[misc]
    """TestCtx that records what libmilter would send Postfix at end of message."""

    def __init__(self) -> None:
        super().__init__()
        self.edits: list[tuple[str, str, str, int]] = []

    def addheader(self, field: str, value: str, idx: int) -> None:
        self.edits.append(("add", field, value, idx))

    def chgheader(self, field: str, idx: int, value: str) -> None:
        self.edits.append(("change", field, value, idx))

    def quarantine(self, reason: str) -> None:
        self.edits.append(("quarantine", reason, "", 0))


class BadHelo(Check):
    """A check that refuses one HELO name (no shipped check refuses at HELO today)."""

    name: ClassVar[str] = "test_bad_helo"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_BAD_HELO", 0.0, "test"),)

    def on_helo(self, session: Session) -> Hits:
        if session.helo == "bad.example":
            return [Hit("TEST_BAD_HELO", action=Action.REJECT, reply=Reply.reject("bad HELO"))]
        return ()


def make_conf(root: Path, rules: str = RULES, extra: dict[str, dict[str, Any]] | None = None) -> Path:
    (root / "rules").mkdir(exist_ok=True)
    (root / "rules" / "t.toml").write_text(rules)
    sections = with_sections(
        NO_CHECKS,
        extra or {},
        {"milter": {"hostname": "mx.test", "trusted_networks": [], "spool_memory": 1024}, "database": {"url": f"sqlite:///{root / 'log.sqlite'}"}, "rules": {"dir": str(root / "rules")}},
    )
    return write_config(root / "milter.conf", sections)


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    return make_conf(tmp_path)


def make_pipeline(conf: Path, *extra: type[Check]) -> tuple[Services, Pipeline]:
    services = build(load_config(conf))
    services.store.ensure_schema(True)
    services.checks.extend(check(services) for check in extra)
    return services, Pipeline(services)


@pytest.fixture()
def pipeline(conf: Path) -> Iterator[Pipeline]:
    services, built = make_pipeline(conf)
    yield built
    built.shutdown()
    services.close()


def negotiate(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, unix: bool = False, address: str = "192.0.2.7") -> Context:
    """A connection from *address* negotiated as Postfix does, through CONNECT: as an inet worker (every stage
    answered) or, with *unix*, as a unix-socket one (CONNECT, HELO, headers and body get no reply)."""

    class Worker(MilterdMilter):
        unix_socket = unix

    Worker.pipeline = pipeline
    monkeypatch.setattr(Milter, "factory", Worker)
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF, 0, 0])
    context = Context()
    assert context._negotiate() == Milter.CONTINUE
    context._stage = Milter.M_CONNECT
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    answer = Milter.connect_callback(context, f"[{address}]", family, (address, 4321))
    assert answer == (Milter.NOREPLY if unix else Milter.CONTINUE)
    return context


def connect(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, helo: str = "client.example.org") -> Context:
    """A connection negotiated as Postfix does, through CONNECT and HELO."""
    context = negotiate(pipeline, monkeypatch)
    context._stage = None
    assert context._helo(helo) == Milter.CONTINUE
    return context


@pytest.fixture()
def ctx(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> Context:
    return connect(pipeline, monkeypatch)


def up_to_body(ctx: Context, queue_id: str, subject: bytes = b"hello", body: bytes = b"Hello\r\n") -> MilterdMilter:
    """MAIL to the body of one message; the milter."""
    milter: MilterdMilter = ctx.getpriv()
    ctx._stage = -1  # every macro visible
    assert milter.envfrom("<alice@example.org>") == Milter.CONTINUE
    ctx._setsymval("i", queue_id)
    assert milter.envrcpt("<bob@example.com>") == Milter.CONTINUE
    assert milter.data() == Milter.CONTINUE
    for name, value in (("From", b"alice@example.org"), ("Subject", subject)):
        assert milter.header_bytes(name, value) == Milter.CONTINUE
    assert milter.eoh() == Milter.CONTINUE
    assert milter.body(body) == Milter.CONTINUE
    return milter


def eom(ctx: Context) -> int:
    ctx._body = BytesIO()  # TestCtx's marker of end of message
    ctx.edits.clear()
    return int(ctx.getpriv().eom())


def log_rows(conf: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    capsys.readouterr()
    assert main(["log", "-c", str(conf), "--json", "--limit", "0"]) == 0
    return {row["queue_id"]: row for row in json.loads(capsys.readouterr().out)}


# --- end of message: nothing answered 451 is logged as accepted -----------------------


@pytest.mark.parametrize("refused", ["addheader", "chgheader"])
@pytest.mark.parametrize("error", [Milter.error("cannot add header"), Milter.DisabledAction("ADDHDRS")])
def test_fix_an_edit_libmilter_refuses_tempfails_with_no_row_saying_accepted(
    refused: str, error: Exception, ctx: Context, conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    up_to_body(ctx, "QEDIT1", subject=b"SPAMME")  # rewrite_subject: headers added, Subject changed

    def refuse(*args: object) -> None:
        raise error  # what pymilter raises when smfi_* fails, or for an action the MTA did not negotiate

    monkeypatch.setattr(ctx, refused, refuse)
    assert eom(ctx) == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.3.0")
    monkeypatch.undo()
    # The old code committed the row (action rewrite_subject) before sending the edits.  Since the thirty-eighth
    # review, a row says tempfail and why (Postfix, gone or tired of waiting, may have delivered the message), and
    # the log has a warning, not an internal error's traceback.
    row = log_rows(conf, capsys)["QEDIT1"]
    assert row["action"] == "tempfail" and row["reason"].startswith("Postfix did not take the edits of its rewrite_subject verdict")
    assert row["score"] == 9.0 and row["symbols"]["TEST_SPAM"] == 9.0  # the verdict that was being sent, kept
    assert "milter_content_timeout" in caplog.text and "internal error" not in caplog.text and "Traceback" not in caplog.text
    # The connection goes on: the next message is judged and logged as usual.
    up_to_body(ctx, "QEDIT2")
    assert eom(ctx) == Milter.CONTINUE
    Milter.close_callback(ctx)
    assert log_rows(conf, capsys)["QEDIT2"]["action"] == "accept"


def test_edits_and_the_row_still_go_together(ctx: Context, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    up_to_body(ctx, "QEDIT3", subject=b"SPAMME now")
    assert eom(ctx) == Milter.CONTINUE
    assert ("change", "Subject", " [SPAM] SPAMME now", 1) in ctx.edits
    assert [name for op, name, _, _ in ctx.edits if op == "add"] == ["X-Spam-Status", "X-Spam-Score", "X-Spam-Flag"]
    Milter.close_callback(ctx)
    assert log_rows(conf, capsys)["QEDIT3"]["action"] == "rewrite_subject"


def test_quarantine_hold_is_sent_with_the_edits(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Score 13: quarantine (12), below reject (15).
    conf = make_conf(tmp_path, RULES.replace("score = 9", "score = 13"), {"quarantine": {"mode": "hold"}})
    services, pipeline = make_pipeline(conf)
    try:
        ctx = connect(pipeline, monkeypatch)
        up_to_body(ctx, "QHOLD", subject=b"SPAMME")
        assert eom(ctx) == Milter.CONTINUE  # Postfix waits for a final reply after SMFIR_QUARANTINE
        assert ctx.edits[-1] == ("quarantine", "score 13 >= quarantine 12", "", 0)
        Milter.close_callback(ctx)
        assert log_rows(conf, capsys)["QHOLD"]["action"] == "quarantine"
    finally:
        pipeline.shutdown()
        services.close()


# --- a second HELO/EHLO on one connection ----------------------------------------------


def test_fix_a_second_helo_gets_its_own_dns_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = make_conf(tmp_path, extra={"checks": {"helo": {"enabled": True, "resolve": True}}})
    services, pipeline = make_pipeline(conf)
    deadlines: list[tuple[str, float, float]] = []

    def submit(name: str, rdtype: str, deadline: float | None = None) -> Any:
        assert deadline is not None
        deadlines.append((name, deadline, time.monotonic()))
        raise RuntimeError("no DNS in unit tests")  # the helo check's on_helo fails: CHECK_ERROR, nothing else

    monkeypatch.setattr(services.resolver, "submit", submit)
    monkeypatch.setattr(services.resolver, "timeout", 0.05)
    try:
        ctx = connect(pipeline, monkeypatch, helo="first.example.org")
        time.sleep(0.1)  # STARTTLS: Postfix sends ABORT, then the client's new EHLO
        assert ctx.getpriv().abort() == Milter.CONTINUE
        ctx._stage = Milter.M_HELO
        assert ctx.getpriv().hello("second.example.org") == Milter.CONTINUE
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()
    first = [deadline for name, deadline, _asked in deadlines if name == "first.example.org"]
    second = [deadline for name, deadline, _asked in deadlines if name == "second.example.org"]
    assert first and second, deadlines
    # The old code reused the first HELO's deadline, past after the 0.1 s between them: an immediate timeout.
    # (Compared with the first's, not with the clock: a stall of the machine must not fail the test.)
    assert min(second) > max(first), deadlines


def test_fix_a_second_helo_replaces_what_the_first_one_found(tmp_path: Path, conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    services, pipeline = make_pipeline(conf, BadHelo)
    try:
        ctx = connect(pipeline, monkeypatch, helo="bad.example")  # delay_reject: refused at MAIL
        milter = ctx.getpriv()
        ctx._stage = Milter.M_HELO
        assert milter.hello("good.example") == Milter.CONTINUE
        # The old code kept the first HELO's refusal and rejected MAIL FROM.
        up_to_body(ctx, "QHELO1")
        assert eom(ctx) == Milter.CONTINUE
        ctx._stage = Milter.M_HELO
        assert milter.hello("bad.example") == Milter.CONTINUE
        ctx._stage = -1
        assert milter.envfrom("<alice@example.org>") == Milter.REJECT  # the HELO in effect is refused
        assert ctx._reply[2] == "bad HELO"
        assert [h.symbol for h in milter.session.hits] == ["TEST_BAD_HELO"]  # once, not once per HELO
        Milter.close_callback(ctx)
        assert log_rows(conf, capsys)["QHELO1"]["action"] == "accept"
    finally:
        pipeline.shutdown()
        services.close()


# --- header edits: values Postfix can store ------------------------------------------


def test_fix_a_tagged_folded_subject_keeps_its_spacing(ctx: Context) -> None:
    up_to_body(ctx, "QFOLD", subject=b" SPAMME a long subject\n\tfolded once\n and twice")
    assert eom(ctx) == Milter.CONTINUE
    [value] = [value for op, name, value, _ in ctx.edits if (op, name) == ("change", "Subject")]
    # The old code sent "\n\t\tfolded once\n\t and twice": a tab more on each line.
    assert value == " [SPAM] SPAMME a long subject\n\tfolded once\n and twice"
    Milter.close_callback(ctx)


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("one\ntwo", "one\n\ttwo"),  # a bare line break becomes folding
        ("one\r\n two", "one\n two"),  # folding kept as it is
        ("nul\x00byte", "nulbyte"),
        ("trailing\n", "trailing"),  # no line of white space alone
        ("a\n \n\tb", "a\n\tb"),
        ("caf\udce9", "caf?"),  # an undecodable byte cannot reach libmilter as UTF-8
    ],
)
def test_header_values_are_made_storable(value: str, sent: str, ctx: Context) -> None:
    milter: MilterdMilter = ctx.getpriv()
    ctx._body = BytesIO()
    milter._edit("add", "X-Test", value, -1)
    assert ctx.edits == [("add", "X-Test", " " + sent, -1)]  # HDR_LEADSPC: milterd writes the space
    Milter.close_callback(ctx)


# --- several messages per connection, aborts, bad input (regression coverage) ---------


def test_abort_mid_body_frees_the_spool_and_logs_nothing(ctx: Context, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # By what the descriptors point at, not their count: the collector may close others' meanwhile.
    before = open_files()
    milter = up_to_body(ctx, "QABORT", body=b"x" * 4096)  # spooled to a file
    spool = milter.envelope.spool if milter.envelope else None
    spooled = open_files() - before
    assert spool is not None and spooled
    assert milter.abort() == Milter.CONTINUE  # RSET or a lost client
    assert not spooled & open_files() and milter.envelope is None
    assert up_to_body(ctx, "QAFTER").envelope is not spool
    assert eom(ctx) == Milter.CONTINUE
    assert milter.abort() == Milter.CONTINUE  # Postfix may abort again after end of message
    Milter.close_callback(ctx)
    rows = log_rows(conf, capsys)
    assert "QABORT" not in rows and rows["QAFTER"]["action"] == "accept"


def open_files() -> set[str]:
    """What this process's descriptors point at (a deleted temporary file's path stays unique)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the directory's own descriptor, gone
    return found


def test_a_close_mid_body_frees_the_spool(ctx: Context, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # By what the descriptors point at, not their count: the collector may close others' meanwhile (a full run did).
    before = open_files()
    up_to_body(ctx, "QCLOSE", body=b"x" * 4096)
    spooled = open_files() - before
    assert spooled  # the body went to a file
    Milter.close_callback(ctx)  # connection lost, no ABORT
    assert not spooled & open_files()
    assert "QCLOSE" not in log_rows(conf, capsys)


def test_eight_bit_envelope_and_thousands_of_recipients_are_logged(ctx: Context, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    milter: MilterdMilter = ctx.getpriv()
    ctx._stage = -1
    assert milter.envfrom_bytes(b"<caf\xe9@example.org>", b"BODY=8BITMIME") == Milter.CONTINUE
    ctx._setsymval("i", "Q8BIT")
    for i in range(3000):
        assert milter.envrcpt_bytes(b"<r%d\xff@example.com>" % i) == Milter.CONTINUE
    assert milter.data() == Milter.CONTINUE
    assert milter.header_bytes("Subject", b"caf\xe9 \x00 =?utf-8?q?broken") == Milter.CONTINUE
    assert milter.eoh() == Milter.CONTINUE
    assert milter.body(b"\xff\x00" * 100) == Milter.CONTINUE
    assert eom(ctx) == Milter.CONTINUE
    Milter.close_callback(ctx)
    row = log_rows(conf, capsys)["Q8BIT"]
    assert row["sender"] == "caf\\udce9@example.org" and len(row["recipients"]) == 3000


def test_fix_a_negotiated_connection_counts_before_its_connect(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    from milterd.milter import adapter

    class Worker(MilterdMilter):
        pass

    Worker.pipeline = pipeline
    monkeypatch.setattr(Milter, "factory", Worker)
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF, 0, 0])
    before = adapter.active
    context = Context()
    assert context._negotiate() == Milter.CONTINUE
    # Counted only at CONNECT: a reload's drain saw no connection and the stopping worker cut this one.
    assert adapter.active == before + 1
    Milter.close_callback(context)  # Postfix went away before CONNECT: libmilter calls close all the same
    assert adapter.active == before

# --- a milter connection reused after SMFIC_QUIT_NC (thirty-eighth review) --------------------------
# libmilter keeps what was negotiated over QUIT_NC (an MTA starting its next SMTP connection on the same milter
# connection); pymilter's connect_callback then makes a new object, which no negotiate ran on.  It took the class's
# defaults: header values lost their negotiated leading space (an edit read "X-Spam-Status:Yes", a logged Subject
# " hello"), and a unix-socket worker answered its no-reply stages.  It takes the worker's last negotiation (see
# MilterdMilter._agreed: libmilter's thread pool leaves nothing per milter connection to keep it in).


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

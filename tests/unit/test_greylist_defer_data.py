"""Delayed greylisting (``[greylist] defer_at = "data"``, milter-greylist's way):
every RCPT of a transaction is accepted and its triplet judged and recorded,
and the whole message is answered ``451 4.7.1`` once, at DATA, after the
triplets are stored.  With ``defer_at = "rcpt"`` (the default) each new
triplet's recipient is refused at RCPT, and Postfix counts every such reply
against smtpd_hard_error_limit.

Driven at three levels: the check's hooks, the pipeline (decisions and the
log row), and the protocol adapter with pymilter's ``TestCtx`` in place of
libmilter (negotiation over TCP and over a unix socket, the reply at DATA).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path
from typing import Any, Iterator

import Milter
import pytest
from Milter import testctx

from milterd.checks.greylist import Greylist
from milterd.cli import main
from milterd.config import Config, ConfigError, GreylistSection, load_config
from milterd.message.model import Action, Envelope, Session, Spool
from milterd.message.pipeline import Pipeline
from milterd.milter.adapter import MilterdMilter
from milterd.services import Services, build
from milterd.store import StoreError
from milterd.store.greylist import GreylistStore
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import write_config

DELAY = 300
RECIPIENTS = [f"user{i:02d}@example.com" for i in range(25)]
REPLY_START = "451 4.7.1 Greylisted, please try again in"


# --- the option -----------------------------------------------------------------------
def test_defer_at_defaults_to_rcpt_and_takes_data() -> None:
    assert GreylistSection().defer_at == "rcpt"
    assert Config().with_changes({"greylist.defer_at": "data"}).greylist.defer_at == "data"


@pytest.mark.parametrize("value", ['"eom"', '"DATA"', '""', "true", "1"])
def test_defer_at_refuses_anything_else(tmp_path: Path, value: str) -> None:
    path = tmp_path / "milter.conf"
    path.write_text(f"[greylist]\nenabled = true\ndefer_at = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "defer_at" in str(info.value)


def test_defer_at_is_read_from_milter_conf(tmp_path: Path) -> None:
    path = tmp_path / "milter.conf"
    path.write_text('[greylist]\nenabled = true\ndefer_at = "data"\n')
    assert load_config(path).greylist.defer_at == "data"


# --- the check ------------------------------------------------------------------------
def services_for(tmp_path: Path, **greylist: object) -> Services:
    changes: dict[str, object] = {
        "database.url": f"sqlite:///{tmp_path / 'store.sqlite'}", "greylist.enabled": True, "greylist.delay": DELAY,
        "greylist.whitelist_providers": False, "greylist.auto_whitelist_after": 0,
    }
    changes.update({f"greylist.{k}": v for k, v in greylist.items()})
    services = build(Config().with_changes(changes))
    services.store.upgrade()
    return services


def greylist_check(services: Services) -> Greylist:
    [check] = [c for c in services.checks if isinstance(c, Greylist)]
    return check


@pytest.fixture
def deferring(tmp_path: Path) -> Iterator[Greylist]:
    services = services_for(tmp_path, defer_at="data", whitelist_recipients=["boss@example.com"])
    yield greylist_check(services)
    services.close()


def transaction(sender: str = "alice@example.org") -> tuple[Session, Envelope]:
    return Session(client_addr="192.0.2.10"), Envelope(spool=Spool(1024), sender=sender)


def stored(check: Greylist) -> list[str]:
    return sorted(r["recipient"] for r in check.services.store.greylist.list_triplets(limit=None))


#: When each test's store clock stopped (set by :func:`frozen_clock`).
START: dict[str, dt.datetime] = {}


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's clock stopped at the test's start: the waits the replies name do not
    depend on how long the machine took between two calls (a loaded one took over half a second)."""
    START["now"] = dt.datetime.now(dt.timezone.utc)
    later(monkeypatch, 0)


def later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The store's clock *seconds* after the test's start (as after waiting out the delay)."""
    at = START["now"] + dt.timedelta(seconds=seconds)
    monkeypatch.setattr(GreylistStore, "now", lambda self: at)


def test_new_triplets_are_accepted_at_rcpt_and_deferred_once_at_data(deferring: Greylist) -> None:
    session, envelope = transaction()
    for recipient in RECIPIENTS:
        [hit] = deferring.on_rcpt(session, envelope, recipient)
        assert hit.symbol == "GREYLIST" and hit.action is None and hit.reply is None  # information only
        assert f"to=<{recipient}> new, retry in {DELAY}s" in hit.detail
        envelope.recipients.append(recipient)
    assert stored(deferring) == []  # the writes wait for DATA, in one transaction
    hits = {h.symbol: h for h in deferring.on_data(session, envelope)}
    assert stored(deferring) == sorted(RECIPIENTS)  # stored before the client is told to retry
    grey = hits["GREYLIST"]
    assert grey.action == Action.GREYLIST and str(grey.reply) == f"{REPLY_START} {DELAY} seconds"
    assert grey.detail.startswith("25 of 25 recipient(s) greylisted")
    deferred = hits["GREYLIST_DEFERRED"]
    assert deferred.action is None and deferred.detail.startswith("client=192.0.2.0/24 from=<alice@example.org>: <user00@example.com> new, ")
    assert all(f"<{r}> new" in deferred.detail for r in RECIPIENTS)  # each of the 25 named, in fewer than 1,000 characters


def test_a_long_list_of_deferred_recipients_is_cut_with_a_count(deferring: Greylist) -> None:
    session, envelope = transaction()
    many = [f"someone-with-a-long-name-{i:03d}@example.com" for i in range(200)]
    for recipient in many:
        deferring.on_rcpt(session, envelope, recipient)
    envelope.recipients += many
    hits = {h.symbol: h for h in deferring.on_data(session, envelope)}
    detail = hits["GREYLIST_DEFERRED"].detail
    shown = detail.count("@example.com>")
    assert len(detail) <= 1000 and 10 < shown < 200 and detail.endswith(f" (+{200 - shown} more)")
    assert hits["GREYLIST"].detail.startswith("200 of 200 recipient(s)") and len(stored(deferring)) == 200


def test_the_retry_after_the_delay_passes_for_every_recipient(deferring: Greylist, monkeypatch: pytest.MonkeyPatch) -> None:
    session, envelope = transaction()
    for recipient in RECIPIENTS:
        deferring.on_rcpt(session, envelope, recipient)
    assert any(h.action == Action.GREYLIST for h in deferring.on_data(session, envelope))
    session, early = transaction()
    later(monkeypatch, 100)
    for recipient in RECIPIENTS:
        [hit] = deferring.on_rcpt(session, early, recipient)
        assert "early" in hit.detail and hit.action is None
    [grey] = [h for h in deferring.on_data(session, early) if h.action is not None]
    assert str(grey.reply) == f"{REPLY_START} 200 seconds"  # the longest wait left
    session, retry = transaction()
    later(monkeypatch, DELAY + 1)
    for recipient in RECIPIENTS:
        assert [h.symbol for h in deferring.on_rcpt(session, retry, recipient)] == ["GREYLIST_PASSED"]
    assert list(deferring.on_data(session, retry)) == []
    assert list(deferring.on_symbols(session, retry, frozenset())) == []


def test_one_new_triplet_defers_the_known_and_whitelisted_recipients_too(deferring: Greylist, monkeypatch: pytest.MonkeyPatch) -> None:
    session, envelope = transaction()
    deferring.on_rcpt(session, envelope, "bob@example.com")
    deferring.on_data(session, envelope)
    later(monkeypatch, DELAY + 1)
    session, envelope = transaction()
    assert [h.symbol for h in deferring.on_rcpt(session, envelope, "bob@example.com")] == ["GREYLIST_PASSED"]
    assert list(deferring.on_rcpt(session, envelope, "boss@example.com")) == []  # whitelisted
    [new] = deferring.on_rcpt(session, envelope, "carol@example.com")
    assert new.action is None
    envelope.recipients += ["bob@example.com", "boss@example.com", "carol@example.com"]
    hits = {h.symbol: h for h in deferring.on_data(session, envelope)}
    assert hits["GREYLIST"].action == Action.GREYLIST and hits["GREYLIST"].detail.startswith("1 of 3 recipient(s)")
    assert "carol@example.com" in hits["GREYLIST_DEFERRED"].detail and "bob@" not in hits["GREYLIST_DEFERRED"].detail


def test_a_failed_write_lets_the_message_through_instead_of_deferring_it(deferring: Greylist, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 451 for triplets that were not stored would find them new again at every retry.
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise StoreError("database is locked")

    session, envelope = transaction()
    for recipient in RECIPIENTS[:3]:
        deferring.on_rcpt(session, envelope, recipient)
    monkeypatch.setattr(GreylistStore, "record", refuse)
    [error] = deferring.on_data(session, envelope)
    assert error.symbol == "GREYLIST_ERROR" and error.action is None
    assert "3 greylisted recipient(s) not recorded, not deferred: database is locked" in error.detail
    assert list(deferring.on_symbols(session, envelope, frozenset())) == []  # nobody was deferred
    monkeypatch.undo()
    # As at RCPT: after a failed write this worker greylists nobody for a while.
    session, envelope = transaction(sender="other@example.net")
    assert [h.symbol for h in deferring.on_rcpt(session, envelope, "dave@example.com")] == ["GREYLIST_ERROR"]
    assert list(deferring.on_data(session, envelope)) == []


def test_rcpt_stays_the_default(tmp_path: Path) -> None:
    services = services_for(tmp_path)
    try:
        check = greylist_check(services)
        session, envelope = transaction()
        [hit] = check.on_rcpt(session, envelope, "bob@example.com")
        assert hit.action == Action.GREYLIST and str(hit.reply) == f"{REPLY_START} {DELAY} seconds"
        assert list(check.on_data(session, envelope)) == []  # nothing left to answer at DATA
        assert stored(check) == ["bob@example.com"]
    finally:
        services.close()


def test_score_mode_ignores_defer_at(tmp_path: Path) -> None:
    services = build(Config().with_changes({
        "database.url": f"sqlite:///{tmp_path / 'store.sqlite'}", "greylist.enabled": True, "greylist.mode": "score",
        "greylist.defer_at": "data", "actions.greylist": 6,
    }))
    try:
        services.store.upgrade()
        check = greylist_check(services)
        session, envelope = transaction()
        assert list(check.on_rcpt(session, envelope, "bob@example.com")) == []
        assert list(check.on_data(session, envelope)) == []
    finally:
        services.close()


# --- the pipeline and the adapter -------------------------------------------------------
def make_conf(root: Path, defer_at: str) -> Path:
    sections = with_sections(NO_CHECKS, {
        "milter": {"hostname": "mx.test", "trusted_networks": [], "spool_memory": 1024},
        "database": {"url": f"sqlite:///{root / 'log.sqlite'}"},
        "greylist": {"enabled": True, "delay": DELAY, "defer_at": defer_at, "whitelist_providers": False, "auto_whitelist_after": 0},
    })
    return write_config(root / "milter.conf", sections)


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[tuple[Path, Pipeline]]:
    conf = make_conf(tmp_path, "data")
    services = build(load_config(conf))
    services.store.ensure_schema(True)
    built = Pipeline(services)
    yield conf, built
    built.shutdown()
    services.close()


def log_rows(conf: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["log", "-c", str(conf), "--json", "--limit", "0"]) == 0
    return list(json.loads(capsys.readouterr().out))


def test_pipeline_answers_451_at_data_and_logs_the_deferred_triplets(pipeline: tuple[Path, Pipeline], capsys: pytest.CaptureFixture[str]) -> None:
    conf, built = pipeline
    session = Session(client_addr="192.0.2.10", client_name="mail.example.org", helo="mail.example.org", family="inet")
    built.connect(session)
    built.helo(session)
    envelope = built.new_envelope(session)
    envelope.sender, envelope.queue_id = "alice@example.org", "QGREY1"
    assert built.mail(session, envelope) is None
    for recipient in RECIPIENTS:
        assert built.rcpt(session, envelope, recipient) is None  # accepted: no error for Postfix to count
    assert envelope.recipients == RECIPIENTS and envelope.rejected_recipients == []
    decision = built.data(session, envelope)
    assert decision is not None and decision.action == Action.GREYLIST
    assert str(decision.reply) == f"{REPLY_START} {DELAY} seconds"
    built.finish(session, envelope)  # Postfix's ABORT (or QUIT) after the 451
    [row] = log_rows(conf, capsys)
    assert row["action"] == "greylist" and row["reason"] == f"{REPLY_START} {DELAY} seconds"
    assert sorted(row["recipients"]) == sorted(RECIPIENTS)
    assert "client=192.0.2.0/24 from=<alice@example.org> to=<user00@example.com> new" in row["details"]["GREYLIST"]
    assert all(f"<{r}>" in row["details"]["GREYLIST_DEFERRED"] for r in RECIPIENTS)


class Context(testctx.TestCtx):  # type: ignore[misc]
    """pymilter's stand-in for libmilter."""


def connect(built: Pipeline, monkeypatch: pytest.MonkeyPatch, unix: bool) -> Context:
    """A connection negotiated as Postfix does (every protocol step offered), through CONNECT and HELO."""

    class Worker(MilterdMilter):
        pass

    Worker.pipeline = built
    Worker.unix_socket = unix
    monkeypatch.setattr(Milter, "factory", Worker)
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF, 0, 0])
    context = Context()
    assert context._negotiate() == Milter.CONTINUE
    context._stage = Milter.M_CONNECT
    assert Milter.connect_callback(context, "[192.0.2.7]", socket.AF_INET, ("192.0.2.7", 4321)) in (Milter.CONTINUE, Milter.NOREPLY)
    context._stage = Milter.M_HELO
    assert context.getpriv().hello("client.example.org") in (Milter.CONTINUE, Milter.NOREPLY)  # NOREPLY over a unix socket
    context._stage = None
    return context


@pytest.mark.parametrize("unix", [False, True], ids=["inet", "unix"])
def test_adapter_negotiates_data_with_a_reply_and_tempfails_there(pipeline: tuple[Path, Pipeline], monkeypatch: pytest.MonkeyPatch, unix: bool) -> None:
    _, built = pipeline
    ctx = connect(built, monkeypatch, unix)
    milter: MilterdMilter = ctx.getpriv()
    # Postfix sends DATA and RCPT and waits for the answer (a no-reply DATA could not refuse).
    for bit in (Milter.P_NODATA, Milter.P_NR_DATA, Milter.P_NORCPT, Milter.P_NR_RCPT):
        assert not milter._protocol & bit
    ctx._stage = -1
    assert milter.envfrom("<alice@example.org>") == Milter.CONTINUE
    ctx._setsymval("i", "QGREY2")
    for recipient in RECIPIENTS:
        assert milter.envrcpt(f"<{recipient}>") == Milter.CONTINUE
    assert milter.data() == Milter.TEMPFAIL
    code, xcode, text = ctx._reply[:3]
    assert (code, xcode) == ("451", "4.7.1") and text.startswith("Greylisted, please try again in")
    assert milter.abort() == Milter.CONTINUE
    Milter.close_callback(ctx)


def test_adapter_with_defer_at_rcpt_tempfails_every_new_recipient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = build(load_config(make_conf(tmp_path, "rcpt")))
    services.store.ensure_schema(True)
    built = Pipeline(services)
    try:
        ctx = connect(built, monkeypatch, unix=False)
        milter: MilterdMilter = ctx.getpriv()
        ctx._stage = -1
        assert milter.envfrom("<alice@example.org>") == Milter.CONTINUE
        assert [milter.envrcpt(f"<{r}>") for r in RECIPIENTS] == [Milter.TEMPFAIL] * len(RECIPIENTS)  # 25 errors for Postfix
        Milter.close_callback(ctx)
    finally:
        built.shutdown()
        services.close()

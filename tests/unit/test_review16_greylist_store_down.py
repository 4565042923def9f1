"""``[greylist] on_error``: what a recipient greylisting would judge gets when the
greylist store cannot be read, or its attempt cannot be recorded.

``accept`` (the default, postgrey's and Rspamd's way) lets it through with
GREYLIST_ERROR, as before.  ``tempfail`` answers it ``451 4.3.0`` where
greylisting would have deferred it: at RCPT (the failed read, and the minute a
worker holds greylisting off after a refused write), at DATA with
``defer_at = "data"`` (and when the attempts of recipients accepted at RCPT
cannot be recorded), and at end of data in score mode.  Clients and recipients
greylisting skips never need the store and are not affected.

Driven on the check's hooks (the store's methods made to fail) and through the
pipeline with a real failure: the SQLite store's ``greylist`` table renamed
away while milterd runs, so that every read of it fails in the driver.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from milterd.checks.greylist import STORE_DOWN_REPLY, WRITE_FAILURE_HOLD, Greylist
from milterd.cli import main
from milterd.config import Config, ConfigError, GreylistSection, load_config
from milterd.message.model import Action, Envelope, Hit, Session, Spool
from milterd.message.pipeline import Pipeline
from milterd.services import Services, build
from milterd.store import StoreError
from milterd.store.greylist import GreylistStore
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import NO_RESOLVER, write_config

TEMPFAIL_REPLY = "451 4.3.0 Greylisting unavailable, please try again later"
GREYLISTED = "451 4.7.1 Greylisted, please try again in"
STORE_METHODS = ("state", "states", "record", "client_state", "whitelist")


# --- the option ------------------------------------------------------------------------
def test_on_error_defaults_to_accept_and_takes_tempfail() -> None:
    assert GreylistSection().on_error == "accept"
    assert Config().with_changes({"greylist.on_error": "tempfail"}).greylist.on_error == "tempfail"


@pytest.mark.parametrize("value", ['"pass"', '"reject"', '"TEMPFAIL"', '""', "true"])
def test_on_error_refuses_anything_else(tmp_path: Path, value: str) -> None:
    path = tmp_path / "milter.conf"
    path.write_text(f"[greylist]\nenabled = true\non_error = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "[greylist] on_error" in str(info.value) and "'accept' or 'tempfail'" in str(info.value)


def test_the_reply_is_a_local_tempfail() -> None:
    assert str(STORE_DOWN_REPLY) == TEMPFAIL_REPLY


# --- the check ---------------------------------------------------------------------------
def services_for(tmp_path: Path, **greylist: object) -> Services:
    changes: dict[str, object] = {
        "dns.nameservers": [NO_RESOLVER],
        "database.url": f"sqlite:///{tmp_path / 'store.sqlite'}", "greylist.enabled": True, "greylist.delay": 300,
        "greylist.whitelist_providers": False, "greylist.auto_whitelist_after": 0,
        "greylist.whitelist_recipients": ["boss@example.com"], "greylist.whitelist_senders": ["@partner.example"],
        "greylist.whitelist_clients": ["198.51.100.0/24"],
    }
    changes.update({f"greylist.{k}": v for k, v in greylist.items()})
    if greylist.get("mode") == "score":
        changes["actions.greylist"] = 6.0
    services = build(Config().with_changes(changes))
    services.store.upgrade()
    return services


@pytest.fixture
def make_check(tmp_path: Path) -> Iterator[Callable[..., Greylist]]:
    built: list[Services] = []

    def make(**greylist: object) -> Greylist:
        services = services_for(tmp_path / str(len(built)), **greylist)
        built.append(services)
        [check] = [c for c in services.checks if isinstance(c, Greylist)]
        return check

    yield make
    for services in built:
        services.close()


def transaction(client: str = "192.0.2.10", sender: str = "alice@example.org") -> tuple[Session, Envelope]:
    return Session(client_addr=client), Envelope(spool=Spool(1024), sender=sender)


def store_down(monkeypatch: pytest.MonkeyPatch, *methods: str) -> list[str]:
    """The greylist store's *methods* (all of them by default) raise StoreError; the calls made, by name."""
    calls: list[str] = []
    for name in methods or STORE_METHODS:
        def refuse(*args: Any, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            raise StoreError(f"cannot {_name}: OperationalError: connection refused")
        monkeypatch.setattr(GreylistStore, name, refuse)
    return calls


def forced(hits: Any) -> list[Hit]:
    return [h for h in hits if h.action is not None]


def test_tempfail_answers_451_at_rcpt_when_the_store_cannot_be_read(make_check: Callable[..., Greylist], monkeypatch: pytest.MonkeyPatch) -> None:
    check = make_check(on_error="tempfail")
    calls = store_down(monkeypatch)
    session, envelope = transaction()
    [hit] = check.on_rcpt(session, envelope, "bob@example.com")
    assert hit.symbol == "GREYLIST_ERROR" and hit.action == Action.TEMPFAIL and str(hit.reply) == TEMPFAIL_REPLY
    assert "connection refused" in hit.detail
    # The next recipient of the transaction: the same answer, without asking the store again.
    asked = len(calls)
    [again] = check.on_rcpt(session, envelope, "carol@example.com")
    assert again.action == Action.TEMPFAIL and str(again.reply) == TEMPFAIL_REPLY and len(calls) == asked
    # At end of data (the message went on to recipients greylisting skipped) the row names them.
    [error] = check.on_symbols(session, envelope, frozenset())
    assert error.symbol == "GREYLIST_ERROR" and "<bob@example.com>, <carol@example.com>" in error.detail


def test_accept_lets_the_recipient_through_as_before(make_check: Callable[..., Greylist], monkeypatch: pytest.MonkeyPatch) -> None:
    check = make_check(on_error="accept")
    store_down(monkeypatch)
    session, envelope = transaction()
    [hit] = check.on_rcpt(session, envelope, "bob@example.com")
    assert hit.symbol == "GREYLIST_ERROR" and hit.action is None and hit.reply is None
    assert list(check.on_symbols(session, envelope, frozenset())) == []


@pytest.mark.parametrize("defer_at", ["rcpt", "data"])
def test_tempfail_holds_through_the_minute_after_a_refused_write(make_check: Callable[..., Greylist], monkeypatch: pytest.MonkeyPatch, defer_at: str) -> None:
    check = make_check(on_error="tempfail", defer_at=defer_at)
    session, envelope = transaction()
    [grey] = check.on_rcpt(session, envelope, "bob@example.com")  # read: a new triplet
    assert grey.symbol == "GREYLIST"
    store_down(monkeypatch, "record")  # reads work, writes are refused (a full disk, a read-only replica)
    if defer_at == "rcpt":
        check.on_abort(session, envelope)  # every recipient deferred: the writes at the end of the transaction
    else:
        [down] = check.on_data(session, envelope)  # a 451 for triplets not stored would find them new at every retry
        assert down.symbol == "GREYLIST_ERROR" and down.action == Action.TEMPFAIL and str(down.reply) == TEMPFAIL_REPLY
    assert check._recent_write_failure()
    # Within WRITE_FAILURE_HOLD this worker does not judge: with tempfail, nobody gets past.
    session, envelope = transaction(sender="other@example.net")
    [held] = check.on_rcpt(session, envelope, "dave@example.com")
    assert held.symbol == "GREYLIST_ERROR" and "greylist writes failed" in held.detail
    if defer_at == "rcpt":
        assert held.action == Action.TEMPFAIL and str(held.reply) == TEMPFAIL_REPLY
    else:
        assert held.action is None  # accepted at RCPT; the message waits at DATA
        envelope.recipients.append("dave@example.com")
        [down] = check.on_data(session, envelope)
        assert down.action == Action.TEMPFAIL and str(down.reply) == TEMPFAIL_REPLY and "greylist writes failed" in down.detail
    # The hold ends: judged again.
    failed_at, why = check._write_failure or (0.0, "")
    check._write_failure = (failed_at - WRITE_FAILURE_HOLD, why)
    monkeypatch.undo()
    session, envelope = transaction(sender="other@example.net")
    assert [h.symbol for h in check.on_rcpt(session, envelope, "dave@example.com")] == ["GREYLIST"]


def test_accept_holds_greylisting_off_after_a_refused_write_as_before(make_check: Callable[..., Greylist], monkeypatch: pytest.MonkeyPatch) -> None:
    check = make_check(on_error="accept")
    session, envelope = transaction()
    check.on_rcpt(session, envelope, "bob@example.com")
    store_down(monkeypatch, "record")
    check.on_abort(session, envelope)
    session, envelope = transaction(sender="other@example.net")
    [held] = check.on_rcpt(session, envelope, "dave@example.com")
    assert held.symbol == "GREYLIST_ERROR" and held.action is None


def test_tempfail_with_defer_at_data_accepts_at_rcpt_and_answers_the_message_at_data(make_check: Callable[..., Greylist], monkeypatch: pytest.MonkeyPatch) -> None:
    check = make_check(on_error="tempfail", defer_at="data")
    store_down(monkeypatch)
    session, envelope = transaction()
    for recipient in ("bob@example.com", "carol@example.com", "boss@example.com"):
        assert forced(check.on_rcpt(session, envelope, recipient)) == []  # no 4xx for Postfix to count at RCPT
        envelope.recipients.append(recipient)
    [down] = check.on_data(session, envelope)
    assert down.symbol == "GREYLIST_ERROR" and down.action == Action.TEMPFAIL and str(down.reply) == TEMPFAIL_REPLY
    assert "connection refused" in down.detail


def test_accept_with_defer_at_data_lets_the_message_through_as_before(make_check: Callable[..., Greylist], monkeypatch: pytest.MonkeyPatch) -> None:
    check = make_check(on_error="accept", defer_at="data")
    session, envelope = transaction()
    check.on_rcpt(session, envelope, "bob@example.com")
    envelope.recipients.append("bob@example.com")
    store_down(monkeypatch, "record")
    assert forced(check.on_data(session, envelope)) == []


def test_tempfail_when_a_passed_recipients_attempt_cannot_be_recorded(make_check: Callable[..., Greylist], monkeypatch: pytest.MonkeyPatch) -> None:
    check = make_check(on_error="tempfail")
    session, envelope = transaction()
    check.on_rcpt(session, envelope, "bob@example.com")
    check.on_abort(session, envelope)  # bob's triplet stored, waiting
    real_now = GreylistStore.now
    monkeypatch.setattr(GreylistStore, "now", lambda self: real_now(self) + dt.timedelta(seconds=301))
    session, envelope = transaction()
    assert [h.symbol for h in check.on_rcpt(session, envelope, "bob@example.com")] == ["GREYLIST_PASSED"]
    envelope.recipients.append("bob@example.com")
    store_down(monkeypatch, "record")  # the pass cannot be recorded
    [down] = check.on_data(session, envelope)
    assert down.action == Action.TEMPFAIL and str(down.reply) == TEMPFAIL_REPLY and "not recorded" in down.detail


def test_tempfail_not_at_data_for_the_writes_of_recipients_already_deferred_at_rcpt(make_check: Callable[..., Greylist], monkeypatch: pytest.MonkeyPatch) -> None:
    # carol was deferred at RCPT (451 4.7.1); boss (whitelisted) goes on: carol's unrecorded attempt is no reason to hold boss's copy.
    check = make_check(on_error="tempfail")
    session, envelope = transaction()
    [grey] = check.on_rcpt(session, envelope, "carol@example.com")
    assert grey.action == Action.GREYLIST
    assert list(check.on_rcpt(session, envelope, "boss@example.com")) == []
    envelope.recipients.append("boss@example.com")
    store_down(monkeypatch, "record")
    hits = list(check.on_data(session, envelope))
    assert forced(hits) == [] and [h.symbol for h in hits] == ["GREYLIST_ERROR"]


@pytest.mark.parametrize("on_error", ["accept", "tempfail"])
def test_recipients_greylisting_skips_pass_without_the_store(make_check: Callable[..., Greylist], monkeypatch: pytest.MonkeyPatch, on_error: str) -> None:
    check = make_check(on_error=on_error)
    calls = store_down(monkeypatch, "state", "states", "record", "client_state")
    cases = [
        (Session(client_addr="192.0.2.10", trusted=True), "alice@example.org", "bob@example.com"),
        (Session(client_addr="192.0.2.10", auth_user="alice"), "alice@example.org", "bob@example.com"),
        (Session(client_addr="192.0.2.10", hits=[Hit("DNSWL_HI", score=-5.0)]), "alice@example.org", "bob@example.com"),
        (Session(client_addr="192.0.2.10"), "alice@example.org", "boss@example.com"),
        (Session(client_addr="192.0.2.10"), "news@partner.example", "bob@example.com"),
        (Session(client_addr="198.51.100.7"), "alice@example.org", "bob@example.com"),
        (Session(client_addr="192.0.2.10"), "", "postmaster@example.com"),
    ]
    for session, sender, recipient in cases:
        envelope = Envelope(spool=Spool(1024), sender=sender)
        assert list(check.on_rcpt(session, envelope, recipient)) == [], (session, sender, recipient)
        envelope.recipients.append(recipient)
        assert list(check.on_data(session, envelope)) == []
    assert calls == []  # the triplets' and clients' tables were never asked


def test_score_mode_tempfail_answers_the_store_down_reply(make_check: Callable[..., Greylist], monkeypatch: pytest.MonkeyPatch) -> None:
    from milterd.config import ActionsSection
    from milterd.message.model import Hit
    from milterd.message.policy import decide

    check = make_check(on_error="tempfail", mode="score")
    store_down(monkeypatch)
    session, envelope = transaction()
    envelope.recipients.append("bob@example.com")
    status = check.on_score_greylist(session, envelope)
    assert not status.needed and "connection refused" in status.error and status.reply == STORE_DOWN_REPLY
    actions = ActionsSection(reject=15, quarantine=False, greylist=6, rewrite_subject=False, add_header=5)
    verdict = decide([Hit("SUBJ", score=9.0)], lambda _symbol: 0.0, actions, greylist=status)
    assert verdict.action == Action.TEMPFAIL and verdict.reply == STORE_DOWN_REPLY
    assert verdict.reason == "score 9 >= greylist 6; 451 4.3.0 Greylisting unavailable, please try again later: greylist store unavailable"
    assert "GREYLIST" not in verdict.symbols and "connection refused" in verdict.details["GREYLIST_ERROR"]


def test_score_mode_accept_passes_as_before(make_check: Callable[..., Greylist], monkeypatch: pytest.MonkeyPatch) -> None:
    check = make_check(on_error="accept", mode="score")
    store_down(monkeypatch)
    session, envelope = transaction()
    envelope.recipients.append("bob@example.com")
    status = check.on_score_greylist(session, envelope)
    assert not status.needed and status.error


# --- through the pipeline, the greylist table really gone ------------------------------------
def make_conf(root: Path, extra: dict[str, dict[str, Any]], **greylist: object) -> Path:
    sections = with_sections(NO_CHECKS, {
        "milter": {"hostname": "mx.test", "trusted_networks": [], "spool_memory": 1024},
        "dns": {"nameservers": [NO_RESOLVER]},
        "database": {"url": f"sqlite:///{root / 'log.sqlite'}"},
        "greylist": {"enabled": True, "delay": 300, "whitelist_providers": False, "auto_whitelist_after": 0, **greylist},
    }, extra)
    return write_config(root / "milter.conf", sections)


def take_the_greylist_table_away(root: Path) -> None:
    """What a greylist store that does not answer looks like from the driver: every read of it fails."""
    with sqlite3.connect(root / "log.sqlite") as db:
        db.execute("ALTER TABLE greylist RENAME TO greylist_away")


def log_rows(conf: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["log", "-c", str(conf), "--json", "--limit", "0"]) == 0
    return list(json.loads(capsys.readouterr().out))


@pytest.fixture
def pipeline_for(tmp_path: Path) -> Iterator[Callable[..., tuple[Path, Pipeline]]]:
    made: list[tuple[Pipeline, Services]] = []

    def make(rules: str = "", extra: dict[str, dict[str, Any]] | None = None, **greylist: object) -> tuple[Path, Pipeline]:
        root = tmp_path / str(len(made))
        (root / "rules").mkdir(parents=True)
        extra = with_sections({"rules": {"dir": str(root / "rules")}}, extra or {})
        if rules:
            (root / "rules" / "grey.toml").write_text(rules)
        conf = make_conf(root, extra, **greylist)
        services = build(load_config(conf))
        services.store.ensure_schema(True)
        built = Pipeline(services)
        made.append((built, services))
        take_the_greylist_table_away(root)
        return conf, built

    yield make
    for built, services in made:
        built.shutdown()
        services.close()


def begin(built: Pipeline, queue_id: str) -> tuple[Session, Envelope]:
    session = Session(client_addr="192.0.2.10", client_name="mail.example.org", helo="mail.example.org", family="inet")
    built.connect(session)
    built.helo(session)
    envelope = built.new_envelope(session)
    envelope.sender, envelope.queue_id = "alice@example.org", queue_id
    assert built.mail(session, envelope) is None
    return session, envelope


def test_pipeline_tempfails_at_rcpt_and_logs_it(pipeline_for: Callable[..., tuple[Path, Pipeline]], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    conf, built = pipeline_for(on_error="tempfail")
    session, envelope = begin(built, "QDOWN1")
    decision = built.rcpt(session, envelope, "bob@example.com")
    assert decision is not None and decision.action == Action.TEMPFAIL and str(decision.reply) == TEMPFAIL_REPLY
    assert "greylist store unavailable, tempfailing" in caplog.text and "no such table" in caplog.text
    built.finish(session, envelope)  # Postfix's QUIT after the only recipient was refused
    [row] = log_rows(conf, capsys)
    assert row["action"] == "tempfail" and row["recipients"] == ["bob@example.com"]
    assert TEMPFAIL_REPLY in row["reason"] and "no such table" in row["details"]["GREYLIST_ERROR"]


def test_pipeline_accepts_at_rcpt_with_accept(pipeline_for: Callable[..., tuple[Path, Pipeline]]) -> None:
    _, built = pipeline_for(on_error="accept")
    session, envelope = begin(built, "QDOWN2")
    assert built.rcpt(session, envelope, "bob@example.com") is None
    built.finish(session, envelope)


def test_pipeline_tempfails_at_data_with_defer_at_data(pipeline_for: Callable[..., tuple[Path, Pipeline]], capsys: pytest.CaptureFixture[str]) -> None:
    conf, built = pipeline_for(on_error="tempfail", defer_at="data")
    session, envelope = begin(built, "QDOWN3")
    assert built.rcpt(session, envelope, "bob@example.com") is None
    decision = built.data(session, envelope)
    assert decision is not None and decision.action == Action.TEMPFAIL and str(decision.reply) == TEMPFAIL_REPLY
    built.finish(session, envelope)
    [row] = log_rows(conf, capsys)
    assert row["action"] == "tempfail" and row["reason"] == TEMPFAIL_REPLY and "GREYLIST_ERROR" in row["symbols"]


SCORE_RULES = '[[rule]]\nname = "SUBJ_GREYME"\nheader = "Subject"\nregex = "greyme"\nscore = 50.0\n'


def send_score_message(built: Pipeline, queue_id: str) -> Any:
    session, envelope = begin(built, queue_id)
    assert built.rcpt(session, envelope, "bob@example.com") is None
    assert built.data(session, envelope) is None
    for name, value in (("From", b"alice@example.org"), ("To", b"bob@example.com"), ("Subject", b"greyme now"), ("Message-ID", b"<1@example.org>")):
        built.header(session, envelope, name, value)
    built.eoh(session, envelope)
    built.body(session, envelope, b"hello\r\n")
    try:
        return built.eom(session, envelope)
    finally:
        built.finish(session, envelope)


def score_pipeline(pipeline_for: Callable[..., tuple[Path, Pipeline]], on_error: str) -> tuple[Path, Pipeline]:
    actions = {"actions": {"rewrite_subject": 8, "greylist": 40, "quarantine": False, "reject": False}}
    return pipeline_for(rules=SCORE_RULES, extra=actions, on_error=on_error, mode="score")


def test_pipeline_score_mode_tempfails_at_end_of_data(pipeline_for: Callable[..., tuple[Path, Pipeline]], capsys: pytest.CaptureFixture[str]) -> None:
    conf, built = score_pipeline(pipeline_for, "tempfail")
    outcome = send_score_message(built, "QDOWN4")
    assert outcome.verdict.action == Action.TEMPFAIL and str(outcome.reply) == TEMPFAIL_REPLY
    [row] = log_rows(conf, capsys)
    assert row["action"] == "tempfail" and "GREYLIST_ERROR" in row["symbols"] and "GREYLIST" not in row["symbols"]
    assert "no such table" in row["details"]["GREYLIST_ERROR"] and TEMPFAIL_REPLY in row["reason"]


def test_pipeline_score_mode_accept_gives_the_action_below(pipeline_for: Callable[..., tuple[Path, Pipeline]]) -> None:
    _, built = score_pipeline(pipeline_for, "accept")
    outcome = send_score_message(built, "QDOWN5")
    assert outcome.verdict.action == Action.REWRITE_SUBJECT and "GREYLIST_ERROR" in outcome.verdict.symbols


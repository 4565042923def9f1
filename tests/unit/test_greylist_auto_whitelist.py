"""Greylisting's auto whitelist of client networks, as postgrey's
``--auto-whitelist-clients``: a client network counts its successful retries
(a triplet passing for the first time after the delay), one per message and at
most one per :data:`milterd.greylist.CLIENT_COUNT_INTERVAL`; an entry unused
for ``[greylist] expire`` no longer whitelists, purged or not.

The store tests take the module's ``database`` fixture, so that a PostgreSQL
module can collect them again with its own (as tests/integration/test_greylist_store_postgresql.py
does for tests/unit/test_greylist_store.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterator

import pytest
from sqlalchemy import insert

from milterd import greylist as gl
from milterd.config import Config, GreylistSection
from milterd.message.model import Action, Envelope, Session, Spool, Verdict
from milterd.store import Store, schema, utcnow
from tests.harness import greylist as greylist_harness

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
NETWORK = "192.0.2.0/24"
CONFIG = GreylistSection(enabled=True, delay=300, retry_window=3600, expire=86400, auto_whitelist_after=5)
SPAM = gl.Triplet(NETWORK, "spam@bulk.example", "x@example.com")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def triplet(recipient: str, sender: str = "spam@bulk.example") -> gl.Triplet:
    return gl.Triplet(NETWORK, sender, recipient)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield f"sqlite:///{tmp_path_factory.mktemp('awl') / 'store.sqlite'}"


# The fixture: the store at this module's database, greylisting's tables emptied.
store = greylist_harness.store


def message(store: Store, recipients: list[str], now: dt.datetime, sender: str = "spam@bulk.example") -> list[gl.Judgement]:
    """One message to *recipients*: read, planned and written in one transaction, as the check does."""
    states = store.greylist.states(NETWORK, sender, recipients) or {}
    steps = [gl.plan(triplet(r, sender), states.get(r), now, CONFIG) for r in recipients]
    store.greylist.record([s.write for s in steps if s.write is not None], now=now)
    return [s.judgement for s in steps]


def seed_client(store: Store, passes: int, last_seen: dt.datetime) -> None:
    with store.engine.begin() as connection:
        connection.execute(insert(schema.greylist_clients).values(network=NETWORK, passes=passes, last_seen=last_seen))


# --- what counts: the pure plan -----------------------------------------------------
def test_only_a_first_pass_counts_the_client() -> None:
    renewed = gl.plan(SPAM, gl.State(at(0), at(300), at(300), at(300 + 86400), 2, 1), at(300 + 2 * 3600), CONFIG)
    assert renewed.judgement.kind == "known" and renewed.write is not None
    assert not renewed.write.count_client  # a renewal is not a successful retry
    waited = gl.State(at(0), at(0), None, at(3600))
    passed = gl.plan(SPAM, waited, at(300), CONFIG)
    assert passed.judgement.kind == "pass" and passed.write is not None and passed.write.count_client
    assert passed.write.client_expire == CONFIG.expire


# --- what counts: the store ---------------------------------------------------------
def test_one_message_to_many_recipients_counts_once(store: Store) -> None:
    # A spammer retrying one message to 5 recipients used to whitelist its /24 at once.
    recipients = [f"r{i}@example.com" for i in range(5)]
    assert all(j.kind == "new" for j in message(store, recipients, at(0)))
    assert all(j.kind == "pass" for j in message(store, recipients, at(300)))
    assert store.greylist.client_state(NETWORK) == (1, at(300))


def test_renewals_do_not_count(store: Store) -> None:
    message(store, ["a@example.com"], at(0))
    message(store, ["a@example.com"], at(300))
    for hour in range(2, 8):  # the same passed triplet, renewed hour after hour
        [known] = message(store, ["a@example.com"], at(hour * 3600))
        assert known.kind == "known"
    assert store.greylist.client_state(NETWORK) == (1, at(300))


def test_a_client_counts_at_most_once_an_hour(store: Store) -> None:
    for n in range(5):  # five messages, each a successful retry, within the hour
        message(store, [f"r{n}@example.com"], at(n * 60))
        message(store, [f"r{n}@example.com"], at(n * 60 + 300))
    assert store.greylist.client_state(NETWORK) == (1, at(300))
    message(store, ["later@example.com"], at(3600))
    message(store, ["later@example.com"], at(300 + gl.CLIENT_COUNT_INTERVAL))
    assert store.greylist.client_state(NETWORK) == (2, at(300 + gl.CLIENT_COUNT_INTERVAL))


def test_an_expired_entry_counts_from_zero(store: Store) -> None:
    # As if the purge job had deleted it: with purge_interval = 0 it never runs.
    seed_client(store, 9, at(-CONFIG.expire - 1))
    message(store, ["a@example.com"], at(0))
    message(store, ["a@example.com"], at(300))
    assert store.greylist.client_state(NETWORK) == (1, at(300))


def test_an_entry_in_use_keeps_counting(store: Store) -> None:
    seed_client(store, 3, at(-CONFIG.expire + 3600))
    message(store, ["a@example.com"], at(0))
    message(store, ["a@example.com"], at(300))
    assert store.greylist.client_state(NETWORK) == (4, at(300))


# --- the check ----------------------------------------------------------------------
def _check(database: str, **greylist: object) -> Any:
    from milterd.checks.greylist import Greylist
    from milterd.services import build

    changes: dict[str, object] = {"database.url": database, "greylist.enabled": True, "greylist.whitelist_providers": False}
    changes.update({f"greylist.{k}": v for k, v in greylist.items()})
    services = build(Config().with_changes(changes))
    [check] = [c for c in services.checks if isinstance(c, Greylist)]
    return services, check


def _new_triplet_hits(check: Any, client_addr: str = "192.0.2.99") -> list[str]:
    session, envelope = Session(client_addr=client_addr), Envelope(spool=Spool(1024), sender="someone@else.example")
    hits = [h.symbol for h in check.on_rcpt(session, envelope, "fresh@example.com")]
    check.on_abort(session, envelope)
    return hits


def test_retrying_one_message_to_five_recipients_does_not_whitelist_the_network(store: Store, database: str) -> None:
    recipients = [f"r{i}@example.com" for i in range(5)]
    message(store, recipients, utcnow() - dt.timedelta(seconds=400))  # the first attempt
    services, check = _check(database, delay=300, auto_whitelist_after=5)
    session, envelope = Session(client_addr="192.0.2.1"), Envelope(spool=Spool(1024), sender="spam@bulk.example")
    assert [[h.symbol for h in check.on_rcpt(session, envelope, r)] for r in recipients] == [["GREYLIST_PASSED"]] * 5
    assert list(check.on_data(session, envelope)) == []
    envelope.answered = verdict(Action.ACCEPT)
    check.on_abort(session, envelope)
    assert store.greylist.client_state(NETWORK)[0] == 1
    assert _new_triplet_hits(check) == ["GREYLIST"]  # the /24 is not whitelisted
    services.close()


def verdict(action: Action, scored: bool = True) -> Verdict:
    return Verdict(action=action, score=0.0, symbols={}, details={}, reason="", scored=scored)


ACCEPTED = verdict(Action.ACCEPT)


def _retry(check: Any, recipient: str, *, data: bool = True, answered: Verdict | None = ACCEPTED) -> list[str]:
    """A retry of a greylisted triplet from 192.0.2.1: RCPT, then (with *data*) DATA and end of message
    answered with *answered* (None: end of message failed, or never came); then the transaction ends."""
    session, envelope = Session(client_addr="192.0.2.1"), Envelope(spool=Spool(1024), sender="spam@bulk.example")
    hits = [h.symbol for h in check.on_rcpt(session, envelope, recipient)]
    if data:
        check.on_data(session, envelope)
        envelope.answered = answered
    check.on_abort(session, envelope)
    return hits


def test_a_retry_that_never_sends_data_does_not_count(store: Store, database: str) -> None:
    """Five RCPT-only probes, each a triplet passing an hour apart, whitelisted the network: they count
    nothing now, though each triplet is passed (its retry was a retry)."""
    services, check = _check(database, delay=300, auto_whitelist_after=5)
    recipients = [f"probe{i}@example.com" for i in range(5)]
    message(store, recipients, utcnow() - dt.timedelta(seconds=400))
    assert [_retry(check, r, data=False) for r in recipients] == [["GREYLIST_PASSED"]] * 5
    assert store.greylist.client_state(NETWORK)[0] == 0
    states = store.greylist.states(NETWORK, "spam@bulk.example") or {}
    assert len(states) == 5 and all(state.passed_at is not None for state in states.values())
    services.close()


@pytest.mark.parametrize("answered", [verdict(Action.REJECT), verdict(Action.QUARANTINE), verdict(Action.ADD_HEADER), verdict(Action.TEMPFAIL),
                                      verdict(Action.ACCEPT, scored=False), None],
                         ids=["reject", "quarantine", "add_header", "tempfail", "unscored", "no-end-of-message"])
def test_a_retried_message_not_accepted_as_ham_does_not_count(store: Store, database: str, answered: Verdict | None) -> None:
    """Refused, quarantined, tagged as spam, tempfailed (its log row not stored, say), accepted unscored (to
    spam_lovers, whatever its content) or cut off after DATA: the client's retry proves nothing."""
    services, check = _check(database, delay=300, auto_whitelist_after=5)
    message(store, ["x@example.com"], utcnow() - dt.timedelta(seconds=400))
    assert _retry(check, "x@example.com", answered=answered) == ["GREYLIST_PASSED"]
    assert store.greylist.client_state(NETWORK)[0] == 0
    services.close()


def test_a_retried_message_accepted_counts_once(store: Store, database: str) -> None:
    services, check = _check(database, delay=300, auto_whitelist_after=5)
    message(store, ["x@example.com"], utcnow() - dt.timedelta(seconds=400))
    assert _retry(check, "x@example.com") == ["GREYLIST_PASSED"]
    assert store.greylist.client_state(NETWORK)[0] == 1
    services.close()


def test_check_ignores_an_expired_auto_whitelist_entry(store: Store, database: str) -> None:
    services, check = _check(database, expire=86400, auto_whitelist_after=5, purge_interval=0)
    seed_client(store, 50, utcnow() - dt.timedelta(seconds=86400 + 60))
    assert _new_triplet_hits(check) == ["GREYLIST"]
    services.close()


def test_check_honours_an_auto_whitelist_entry_in_use(store: Store, database: str) -> None:
    services, check = _check(database, expire=86400, auto_whitelist_after=5)
    seed_client(store, 5, utcnow() - dt.timedelta(seconds=86400 - 3600))
    assert _new_triplet_hits(check) == []
    services.close()


def test_stats_count_only_the_auto_whitelist_entries_the_check_honours(store: Store) -> None:
    seed_client(store, 5, at(0))
    now = at(CONFIG.expire + 60)  # unused for longer than expire: the check ignores it
    assert store.greylist.stats(CONFIG.auto_whitelist_after, now=now)["auto_whitelisted_clients"] == 1  # without expire, as before
    assert store.greylist.stats(CONFIG.auto_whitelist_after, now=now, expire=CONFIG.expire)["auto_whitelisted_clients"] == 0
    assert store.greylist.stats(CONFIG.auto_whitelist_after, now=at(60), expire=CONFIG.expire)["auto_whitelisted_clients"] == 1

"""Greylisting, a review of the twenty-eighth session: a sender whitelist entry matches the sender as written (an SRS
forwarder's domain, a BATV prefix), one failed read of the auto-whitelisted clients is not remembered for the session
but judged as the store's failure, the CLI finds an IPv4-mapped network, and a PostgreSQL server that accepts and
never answers is given up within [database] busy_timeout."""

from __future__ import annotations

import datetime as dt
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd.checks.greylist import Greylist
from milterd.cli import main
from milterd.config import Config, load_config
from milterd.message.model import Action, Envelope, Session, Spool
from milterd.services import Services, build
from milterd.store import Store, StoreError, schema
from milterd.store.greylist import GreylistStore


def greylist_services(tmp_path: Path, **changes: Any) -> tuple[Services, Greylist]:
    settings = {"database.url": f"sqlite:///{tmp_path / 'store.sqlite'}", "dns.nameservers": ["127.0.0.1:9"],
                "greylist.enabled": True, "greylist.whitelist_providers": False, **changes}
    services = build(Config().with_changes(settings))
    services.store.upgrade()
    return services, next(c for c in services.checks if isinstance(c, Greylist))


def rcpt(check: Greylist, session: Session, sender: str, recipient: str = "bob@example.com") -> list[tuple[str, Any]]:
    envelope = Envelope(spool=Spool(1024), sender=sender)
    try:
        return [(h.symbol, h.action) for h in check.on_rcpt(session, envelope, recipient)]
    finally:
        check.on_abort(session, envelope)


@pytest.mark.parametrize(("entry", "sender"), [
    ("@fwd.example", "SRS0=HHHH=TT=example.org=alice@fwd.example"),
    ("/^prvs=/", "prvs=1234abcd=alice@example.net"),
    ("/^bounces\\+/", "bounces+4711-bob=example.com@lists.example"),
])
def test_fix_a_sender_whitelist_entry_matches_the_sender_as_written(tmp_path: Path, entry: str, sender: str) -> None:
    services, check = greylist_services(tmp_path, **{"greylist.whitelist_senders": [entry]})
    # Matched only without its SRS, BATV and +tag parts: the forwarder's domain and the prefixes never matched.
    assert rcpt(check, Session(client_addr="192.0.2.10"), sender) == []
    assert rcpt(check, Session(client_addr="192.0.2.10"), "carol@other.example")[0][0] == "GREYLIST"
    services.store.close()


@pytest.mark.parametrize("on_error", ["accept", "tempfail"])
def test_fix_a_failed_read_of_the_auto_whitelist_is_judged_as_the_store_s_failure_and_asked_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_error: str) -> None:
    services, check = greylist_services(tmp_path, **{"greylist.auto_whitelist_after": 5, "greylist.on_error": on_error})
    with services.store.engine.begin() as connection:  # 192.0.2.0/24 auto-whitelisted: 10 passes, used now
        connection.execute(schema.greylist_clients.insert().values(network="192.0.2.0/24", passes=10, last_seen=services.store.greylist.now()))
    real, calls = GreylistStore.client_state, []

    def once_locked(self: GreylistStore, network: str) -> Any:
        calls.append(network)
        if len(calls) == 1:
            raise StoreError("database is locked")
        return real(self, network)

    monkeypatch.setattr(GreylistStore, "client_state", once_locked)
    session = Session(client_addr="192.0.2.10")
    # The failure was remembered as "not whitelisted" for the session: every transaction greylisted (451 4.7.1).
    first = rcpt(check, session, "sender0@example.org")
    assert first == ([("GREYLIST", Action.GREYLIST)] if on_error == "tempfail" else [("GREYLIST_ERROR", None)])
    assert rcpt(check, session, "sender1@example.org") == rcpt(check, session, "sender2@example.org") == []
    assert len(calls) == 2  # asked again once, then known for the session
    services.store.close()


@pytest.mark.parametrize("on_error", ["accept", "tempfail"])
def test_fix_a_passed_triplet_goes_on_when_a_whitelist_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_error: str) -> None:
    services, check = greylist_services(tmp_path, **{"greylist.auto_whitelist_after": 5, "greylist.on_error": on_error})
    now, hour = services.store.greylist.now(), dt.timedelta(hours=1)
    with services.store.engine.begin() as connection:  # alice's triplet passed an hour ago
        connection.execute(schema.greylist.insert().values(
            network="192.0.2.0/24", sender="alice@example.org", recipient="bob@example.com", first_seen=now - 2 * hour,
            last_seen=now - hour, passed_at=now - hour, expires_at=now + 720 * hour, attempts=2, passes=1))

    def locked(*_args: Any) -> Any:
        raise StoreError("database is locked")

    monkeypatch.setattr(GreylistStore, "client_state", locked)
    monkeypatch.setattr(GreylistStore, "whitelist", locked)
    # With tempfail it was answered 451 4.3.0: the whitelists can only exempt, and the triplet had passed.
    assert rcpt(check, Session(client_addr="192.0.2.10"), "alice@example.org") == []
    services.store.close()
    services.store.close()


def greylisted(tmp_path: Path, clients: list[str]) -> Path:
    """A milter.conf with a SQLite store holding one waiting triplet for each client address in *clients*."""
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[dns]\nnameservers = ["127.0.0.1:9"]\n[database]\nurl = "sqlite:///{tmp_path}/store.sqlite"\n'
                    "[greylist]\nenabled = true\nwhitelist_providers = false\n")
    services = build(load_config(conf))
    services.store.upgrade()
    check = next(c for c in services.checks if isinstance(c, Greylist))
    for client in clients:
        rcpt(check, Session(client_addr=client), "alice@example.org")
    services.store.close()
    return conf


def networks_left(conf: Path) -> list[str]:
    """The client networks of the triplets stored in *conf*'s store."""
    store = Store(load_config(conf).database)
    try:
        return sorted(row["network"] for row in store.greylist.list_triplets())
    finally:
        store.close()


def test_fix_the_cli_finds_an_ipv4_mapped_network(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = greylisted(tmp_path, ["::ffff:198.51.100.7"])
    capsys.readouterr()
    assert main(["greylist", "list", "-c", str(conf), "--client", "::ffff:198.51.100.0/120"]) == 0
    assert "198.51.100.0/24" in capsys.readouterr().out
    assert main(["greylist", "purge", "-c", str(conf), "--client", "::ffff:198.51.100.0/120"]) == 0
    assert networks_left(conf) == []


def test_fix_a_failed_read_of_the_stored_whitelist_is_judged_as_the_store_s_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services, check = greylist_services(tmp_path, **{"greylist.auto_whitelist_after": 0})

    def locked(self: GreylistStore) -> Any:
        raise StoreError("database is locked")

    monkeypatch.setattr(GreylistStore, "whitelist", locked)
    # The table was taken as empty: a sender whitelisted there was greylisted (451 4.7.1) for WHITELIST_TTL.
    assert rcpt(check, Session(client_addr="192.0.2.10"), "alice@example.org") == [("GREYLIST_ERROR", None)]
    assert rcpt(check, Session(client_addr="192.0.2.11"), "carol@example.org") == [("GREYLIST_ERROR", None)]  # not asked again
    services.store.close()


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A port that accepts connections and never answers (a stopped server, a host gone behind a balancer)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                held.append(server.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], held
    server.close()
    for connection in held:
        connection.close()


def test_fix_a_server_that_never_answers_is_given_up_within_busy_timeout(silent_server: tuple[int, list[socket.socket]]) -> None:
    pytest.importorskip("psycopg")
    port, connections = silent_server
    services = build(Config().with_changes({
        "database.url": f"postgresql+psycopg://postgres@127.0.0.1:{port}/x", "database.busy_timeout": 2.0,
        "dns.nameservers": ["127.0.0.1:9"], "greylist.enabled": True, "greylist.on_error": "accept",
        "greylist.whitelist_providers": False}))
    check = next(c for c in services.checks if isinstance(c, Greylist))
    result: list[list[list[tuple[str, Any]]]] = []
    session = Session(client_addr="192.0.2.10")

    def transaction() -> None:
        envelope = Envelope(spool=Spool(1024), sender="alice@example.org")
        result.append([[(h.symbol, h.action) for h in check.on_rcpt(session, envelope, f"r{n}@example.com")] for n in range(3)])
        check.on_abort(session, envelope)

    worker = threading.Thread(target=transaction, daemon=True)
    worker.start()
    # libpq waited for ever: the session hung until Postfix's milter_command_timeout took it all (a bound far past
    # one connection attempt of 2 s, not a measure of speed).
    worker.join(120)
    assert not worker.is_alive() and result == [[[("GREYLIST_ERROR", None)]] * 3]
    # The whitelist, the client's auto-whitelisting and the triplets each waited for the server in turn (three
    # connect timeouts, 30 s with the defaults: Postfix's milter_command_timeout); the server that let one time out
    # is not asked again by this process for busy_timeout: the other reads fail at once.
    assert len(connections) == 1
    services.store.close()


@pytest.mark.parametrize("on_error", ["accept", "tempfail"])
def test_fix_score_mode_with_a_whitelist_unread_greylists_as_on_error_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_error: str) -> None:
    services, check = greylist_services(tmp_path, **{"greylist.mode": "score", "actions.greylist": 4.0, "greylist.on_error": on_error})

    def locked(*_args: Any) -> Any:
        raise StoreError("database is locked")

    monkeypatch.setattr(GreylistStore, "whitelist", locked)
    envelope = Envelope(spool=Spool(1024), sender="alice@example.org", recipients=["carol@example.com"])
    status = check.on_score_greylist(Session(client_addr="192.0.2.1"), envelope)
    # Greylisted with a whitelist taken as empty; then (the first fix) 451 4.3.0 whatever the triplets said.
    assert status is not None and status.needed == (on_error == "tempfail") and status.reply is None
    assert bool(status.error) == (on_error == "accept")
    services.store.close()


@pytest.mark.parametrize("on_error", ["accept", "tempfail"])
def test_fix_one_failed_whitelist_read_is_asked_again_and_the_client_read_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                    on_error: str) -> None:
    services, check = greylist_services(tmp_path, **{"greylist.auto_whitelist_after": 5, "greylist.on_error": on_error})
    with services.store.engine.begin() as connection:  # 192.0.2.0/24: auto-whitelisted
        connection.execute(schema.greylist_clients.insert().values(network="192.0.2.0/24", passes=10, last_seen=services.store.greylist.now()))
    real, calls = GreylistStore.whitelist, []

    def once_locked(self: GreylistStore) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise StoreError("database is locked")
        return real(self)

    monkeypatch.setattr(GreylistStore, "whitelist", once_locked)
    # The auto-whitelisted client goes on although the whitelist could not be read (with tempfail it was greylisted:
    # a whitelist's failure stopped the client's read).
    assert rcpt(check, Session(client_addr="192.0.2.10"), "alice@example.org") == []
    # A new client in the next transaction: the whitelist is asked again (the failure was kept for 10 s, and every
    # transaction meanwhile judged as the store's failure).
    assert rcpt(check, Session(client_addr="198.51.100.7"), "carol@example.org") == [("GREYLIST", Action.GREYLIST)]
    assert len(calls) == 2
    services.store.close()

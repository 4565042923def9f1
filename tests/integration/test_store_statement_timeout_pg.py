"""A worker's statements on PostgreSQL end after [database] busy_timeout (the server's statement_timeout): a
greylist read waiting on a lock another host held (an administrator's rewrite, a long transaction) kept the SMTP
session waiting until Postfix's milter_command_timeout applied its default action to all of it, whatever
[greylist] on_error said.  The command line's and the maintenance's stores have no such bound."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import psycopg
import pytest

from milterd.checks.greylist import Greylist
from milterd.config import Config
from milterd.message.model import Envelope, Session, Spool
from milterd.services import build
from milterd.store import Store
from tests.harness import pgdb


@pytest.fixture
def database() -> Iterator[str]:
    with pgdb.required_database("the statement bound of a worker's store") as url:
        Store(Config().with_changes({"database.url": url}).database).upgrade()
        yield url


def greylist_check(url: str, statement_timeout: float | None) -> tuple[Any, Greylist]:
    services = build(Config().with_changes({
        "database.url": url, "database.busy_timeout": 2.0, "dns.nameservers": ["127.0.0.1:9"], "greylist.enabled": True,
        "greylist.on_error": "accept", "greylist.whitelist_providers": False, "greylist.auto_whitelist_after": 0}))
    services.statement_timeout = statement_timeout  # as run_worker sets it
    return services, next(c for c in services.checks if isinstance(c, Greylist))


def test_fix_a_worker_s_read_behind_another_host_s_lock_ends_as_on_error_says(database: str) -> None:
    services, check = greylist_check(database, 2.0)
    check.on_rcpt(Session(client_addr="192.0.2.9"), Envelope(spool=Spool(1024), sender="warm@example.org"), "up@example.com")  # whitelist read
    other_host = psycopg.connect(database.replace("postgresql+psycopg://", "postgresql://"))
    other_host.execute("LOCK TABLE greylist IN ACCESS EXCLUSIVE MODE")  # held until it ends its transaction
    result: list[list[tuple[str, Any]]] = []

    def rcpt() -> None:
        envelope = Envelope(spool=Spool(1024), sender="alice@example.org")
        result.append([(h.symbol, h.action) for h in check.on_rcpt(Session(client_addr="192.0.2.10"), envelope, "bob@example.com")])

    worker = threading.Thread(target=rcpt, daemon=True)
    worker.start()
    try:
        worker.join(60)  # a bound far past the 2 s statement limit, not a measure of speed
        waited = worker.is_alive()
    finally:
        other_host.rollback()
        other_host.close()
        worker.join(30)
        services.store.close()
    assert not waited and result == [[("GREYLIST_ERROR", None)]]


def test_the_command_line_s_store_has_no_statement_bound(database: str) -> None:
    services, _check = greylist_check(database, None)
    with services.store.engine.connect() as connection:
        assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
    services.store.close()
    services, _check = greylist_check(database, 2.0)
    with services.store.engine.connect() as connection:
        assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "2s"
    services.store.close()

"""Greylisting, third review: a retry window no retry can meet, SRS1 senders with a ``+`` or
``-`` separator, and the purge of a large backlog of expired triplets (SQLite)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterator

import pytest
from sqlalchemy import event

from milterd import greylist as gl
from milterd.config import Config, ConfigError, DatabaseSection, GreylistSection
from milterd.services import build
from milterd.store import Store, schema
from milterd.store import greylist as greylist_store

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def store(tmp_path: Any) -> Iterator[Store]:
    store = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 'store.sqlite'}"))
    store.upgrade()
    yield store
    store.close()


# --- a retry window that is not longer than the delay ------------------------------------------
def test_a_retry_window_no_retry_can_meet_is_a_config_error() -> None:
    # Every retry of a new triplet came after its window (first attempt + retry_window) had
    # closed, so it started again as a first attempt: mail from every new sender waited for ever.
    config = GreylistSection(delay=3600, retry_window=1800)
    first = gl.judge(None, T0, config.delay, config.retry_window)
    state = gl.State(T0, T0, None, T0 + dt.timedelta(seconds=config.retry_window))
    assert first.kind == "new" and gl.judge(state, T0 + dt.timedelta(seconds=3600), config.delay, config.retry_window).kind == "expired"

    for delay, window in ((3600, 1800), (600, 600)):
        changes = {"greylist.enabled": True, "greylist.delay": delay, "greylist.retry_window": window}
        with pytest.raises(ConfigError) as info:
            build(Config().with_changes(changes))
        assert "[greylist] retry_window" in str(info.value) and "delay" in str(info.value)
    build(Config().with_changes({"greylist.enabled": True, "greylist.delay": 600, "greylist.retry_window": 601})).close()


# --- SRS1 keeps the separator that followed SRS0 ----------------------------------------------------
@pytest.mark.parametrize("separator", ["+", "-", "="])
def test_srs1_with_any_srs0_separator_is_the_original_sender(separator: str) -> None:
    # libsrs2 (postsrsd) writes SRS1=HHH=fwd1.example=<sep>HHH=TT=domain=local@fwd2: with
    # SRS0+ or SRS0- the sender stayed 'srs1=hhh=fwd1.example=@fwd2.example' (the plus tag
    # rule then cut it), so a whitelisted sender domain did not match.
    sender = f"SRS1=Xy12=fwd1.example={separator}Ab34=T5=Example.org=Alice@fwd2.example"
    assert gl.normalise_sender(sender) == "alice@example.org"
    whitelist = gl.Whitelist.build([("sender", "@example.org")])
    assert whitelist.sender(gl.normalise_sender(sender)) == "@example.org"


# --- the purge of a backlog -------------------------------------------------------------------------
def test_purge_deletes_expired_triplets_in_bounded_transactions(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # One DELETE of every expired triplet held SQLite's only writer (and, on PostgreSQL, the
    # rows a message's upsert waits for) for the whole backlog: a botnet's new triplets
    # that never retry are millions of rows, and the workers' writes waited behind them.
    monkeypatch.setattr(greylist_store, "PURGE_BATCH", 10, raising=False)
    monkeypatch.setattr(greylist_store, "PURGE_PAUSE", 0.0, raising=False)
    expired = [gl.Write(gl.Triplet("192.0.2.0/24", "spam@bot.example", f"r{i}@example.com"), "new", T0, T0 + dt.timedelta(seconds=i))
               for i in range(25)]
    live = [gl.Write(gl.Triplet("198.51.100.0/24", "alice@example.org", f"l{i}@example.com"), "pass", T0, T0 + dt.timedelta(days=30))
            for i in range(3)]
    store.greylist.record(expired + live, now=T0)

    deletes: list[int] = []
    commits: list[int] = []

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM GREYLIST "):
            deletes.append(cursor.rowcount)

    def commit(conn: Any) -> None:
        commits.append(len(deletes))

    event.listen(store.engine, "after_cursor_execute", after)
    event.listen(store.engine, "commit", commit)
    try:
        assert store.greylist.purge(86400, now=T0 + dt.timedelta(hours=1)) == (25, 0)
    finally:
        event.remove(store.engine, "after_cursor_execute", after)
        event.remove(store.engine, "commit", commit)
    assert deletes == [10, 10, 5]
    assert commits[:3] == [1, 2, 3]  # each batch its own transaction
    with store.engine.connect() as connection:
        left = sorted(r.recipient for r in connection.execute(schema.greylist.select()))
    assert left == ["l0@example.com", "l1@example.com", "l2@example.com"]

"""The lock-order tests of tests/unit/test_store_lock_order.py on PostgreSQL (a fresh database per
test), and the crossings staged with PostgreSQL's row locks: a third transaction holds one row, so
that two writers meet exactly where their old orders crossed (a deadlock on the old code)."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import Engine, column, create_engine, func, select, table

from milterd.learner.classifier import Counts
from milterd.store import Store, schema
from milterd.store.greylist import GreylistStore
from milterd.store.learner import LearnerStore, tokens_table
from tests.harness import pgdb
from tests.unit.test_store_lock_order import *  # noqa: F403 - the same tests, on PostgreSQL
from tests.unit.test_store_lock_order import NETWORK, NOW, executed, write, written_sql


@pytest.fixture
def database() -> Iterator[str]:
    with pgdb.required_database("the lock order tests") as url:
        yield url


# --- the crossings, staged on PostgreSQL -------------------------------------------------------

_ACTIVITY = table("pg_stat_activity", column("datname"), column("wait_event_type"))


def lock_waits(engine: Engine) -> int:
    """How many sessions of this database wait for a lock."""
    query = select(func.count()).select_from(_ACTIVITY).where(_ACTIVITY.c.datname == func.current_database(), _ACTIVITY.c.wait_event_type == "Lock")
    with engine.connect() as connection:
        return int(connection.execute(query).scalar() or 0)


class Stage:
    """Transactions on threads, started one by one once the previous waits for its lock."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.results: dict[str, Any] = {}

    def start(self, name: str, work: Callable[[], Any], waits: bool = True) -> None:
        """Run *work* on a thread; return once it waits for a lock (or, if it need not wait, has ended)."""
        before = lock_waits(self.engine)
        thread = threading.Thread(target=self._run, args=(name, work), name=name)
        thread.start()
        self.threads.append(thread)
        deadline = time.monotonic() + 10
        while lock_waits(self.engine) <= before and (waits or thread.is_alive()):
            assert time.monotonic() < deadline, f"{name} never waited for its lock"
            time.sleep(0.01)

    def _run(self, name: str, work: Callable[[], Any]) -> None:
        try:
            self.results[name] = work()
        except Exception as exc:  # noqa: BLE001 - the test reports it
            self.errors.append(f"{name}: {exc}")

    def join(self) -> None:
        for thread in self.threads:
            thread.join(20)
            assert not thread.is_alive(), f"{thread.name} still waits"


@contextlib.contextmanager
def holding(engine: Engine, query: Any) -> Iterator[None]:
    """A third transaction holding the rows of *query* (SELECT … FOR UPDATE) until the block ends."""
    with engine.connect() as connection:
        transaction = connection.begin()
        assert connection.execute(query).all()
        try:
            yield
        finally:
            transaction.rollback()


def token_held(token: int) -> Any:
    return select(tokens_table.c.token).where(tokens_table.c.token == token).with_for_update()


def triplet_held(recipient: str) -> Any:
    return select(schema.greylist.c.id).where(schema.greylist.c.recipient == recipient).with_for_update()


def scanning_engine(database: str) -> Engine:
    """An engine whose statements read tables in their physical order (no index scans), as large
    IN lists (bitmap heap scans) and small tables (sequential scans) do."""
    return create_engine(database, connect_args={"options": "-c enable_indexscan=off -c enable_bitmapscan=off"})


def scanning_store(database: str) -> tuple[LearnerStore, Engine]:
    """A learner on :func:`scanning_engine`, and the engine."""
    engine = scanning_engine(database)
    return LearnerStore(engine), engine


def physically_3_then_1(learner: LearnerStore) -> None:
    """Tokens 1 and 3 (message "a", spam), stored 3 before 1, and 2 after them (spam)."""
    learner.learn("a", [1, 3], "spam", NOW)
    learner.learn("y", [1], "spam", NOW)  # 1's new version goes after 3
    learner.learn("z", [2], "spam", NOW)


def test_a_forget_and_a_learn_sharing_tokens_do_not_deadlock(store: Store, database: str) -> None:
    # The learn takes 1, 2, 3; the forget's UPDATE … WHERE token IN (1, 3) took 3, then 1.
    learner = LearnerStore(store.engine)
    physically_3_then_1(learner)
    scanning, engine = scanning_store(database)
    stage = Stage(store.engine)
    try:
        with holding(store.engine, token_held(2)):
            stage.start("learn", lambda: learner.learn("b", [3, 2, 1], "ham", NOW))  # holds 1, waits for 2
            stage.start("forget", lambda: scanning.learn("a", [1, 3], None, NOW))
        stage.join()
    finally:
        engine.dispose()
    assert stage.errors == []
    assert stage.results == {"learn": "learned", "forget": "forgotten"}
    assert learner.counts([1, 2, 3]) == {1: Counts(1, 1), 2: Counts(1, 1), 3: Counts(0, 1)}
    assert learner.totals() == Counts(2, 1)


def test_a_move_and_a_learn_sharing_a_token_expired_meanwhile_do_not_deadlock(store: Store) -> None:
    # Token 2 of the moved message was expired: decrementing 1 and 3 first, the move then
    # created 2 after holding 3, while the learn held 2 and waited for 3.
    learner = LearnerStore(store.engine)
    learner.learn("m", [1, 2, 3], "ham", NOW - dt.timedelta(days=400))
    learner.learn("p", [1, 3], "ham", NOW)
    assert learner.expire(NOW - dt.timedelta(days=1), 1, 0) == 1
    stage = Stage(store.engine)
    with holding(store.engine, token_held(3)):
        stage.start("move", lambda: learner.learn("m", [1, 2, 3], "spam", NOW))
        stage.start("learn", lambda: learner.learn("b", [2, 3], "spam", NOW))
    stage.join()
    assert stage.errors == []
    assert stage.results == {"move": "moved", "learn": "learned"}
    assert learner.counts([1, 2, 3]) == {1: Counts(1, 1), 2: Counts(2, 0), 3: Counts(2, 1)}
    assert learner.totals() == Counts(2, 1)


def test_expiry_and_a_learn_do_not_deadlock(store: Store) -> None:
    # Expiry deleted 3 then 1 (the order of atime and of the table); the learn holds 1 and wants 3.
    learner = LearnerStore(store.engine)
    learner.learn("x", [3], "spam", NOW - dt.timedelta(days=300))
    learner.learn("w", [1], "spam", NOW - dt.timedelta(days=200))
    learner.learn("v", [2], "spam", NOW)
    stage = Stage(store.engine)
    with holding(store.engine, token_held(2)):
        stage.start("learn", lambda: learner.learn("l", [1, 2, 3], "ham", NOW))
        stage.start("expire", lambda: learner.expire(NOW - dt.timedelta(days=1), 1, 0), waits=False)
    stage.join()
    assert stage.errors == []
    # Token 1, held by the learn, was left to the next expiry; 3 went, and the learn counted it again.
    assert stage.results == {"learn": "learned", "expire": 1}
    assert learner.counts([1, 2, 3]) == {1: Counts(1, 1), 2: Counts(1, 1), 3: Counts(0, 1)}
    assert learner.totals() == Counts(3, 1)


def test_clearing_the_model_while_a_learn_runs_does_not_deadlock(store: Store, database: str) -> None:
    learner = LearnerStore(store.engine)
    physically_3_then_1(learner)
    scanning, engine = scanning_store(database)
    stage = Stage(store.engine)
    try:
        with holding(store.engine, token_held(2)):
            stage.start("learn", lambda: learner.learn("b", [1, 2, 3], "ham", NOW))
            stage.start("clear", scanning.clear)
        stage.join()
    finally:
        engine.dispose()
    assert stage.errors == []
    assert (stage.results["clear"].spam, stage.results["clear"].ham, stage.results["clear"].tokens) == (3, 1, 3)
    assert learner.totals() == Counts(0, 0) and learner.size() == 0


def test_two_messages_writing_shared_triplets_as_different_kinds_do_not_deadlock(store: Store) -> None:
    # One message writes a, b, c as new; the other read a before it was made… and wrote a as
    # "early" and c as "new": by kind first, it took c, then a.
    store.greylist.record([write("a@x", "new"), write("b@x", "new")], now=NOW)
    stage = Stage(store.engine)
    with holding(store.engine, triplet_held("b@x")):
        stage.start("all new", lambda: store.greylist.record([write(r, "new") for r in ("a@x", "b@x", "c@x")], now=NOW))
        stage.start("early and new", lambda: store.greylist.record([write("a@x", "early"), write("c@x", "new")], now=NOW))
    stage.join()
    assert stage.errors == []
    assert {row["recipient"]: row["attempts"] for row in store.greylist.list_triplets(limit=None)} == {"a@x": 3, "b@x": 2, "c@x": 2}


def expired_c_and_a(store: Store) -> None:
    """Triplets c and a expired (c first, in the table and by expiry), b not."""
    store.greylist.record([write("c@x", "new", NOW - dt.timedelta(days=3))], now=NOW)
    store.greylist.record([write("a@x", "new", NOW - dt.timedelta(days=2))], now=NOW)
    store.greylist.record([write("b@x", "new")], now=NOW)


def test_the_purge_and_a_message_do_not_deadlock(store: Store) -> None:
    expired_c_and_a(store)
    stage = Stage(store.engine)
    with holding(store.engine, triplet_held("b@x")):
        stage.start("message", lambda: store.greylist.record([write(r, "early") for r in ("a@x", "b@x", "c@x")], now=NOW))
        stage.start("purge", lambda: store.greylist.purge(86400, NOW), waits=False)
    stage.join()
    assert stage.errors == []
    # a, held by the message, is left to the next purge; c went and the message made it again.
    assert stage.results["purge"] == (1, 0)
    assert {row["recipient"]: row["attempts"] for row in store.greylist.list_triplets(limit=None)} == {"a@x": 2, "b@x": 2, "c@x": 1}


def test_removing_triplets_while_a_message_writes_them_does_not_deadlock(store: Store, database: str) -> None:
    expired_c_and_a(store)
    engine = scanning_engine(database)
    stage = Stage(store.engine)
    try:
        with holding(store.engine, triplet_held("b@x")):
            stage.start("message", lambda: store.greylist.record([write(r, "early") for r in ("a@x", "b@x", "c@x")], now=NOW))
            stage.start("remove", lambda: GreylistStore(engine).remove_triplets(network=NETWORK))
        stage.join()
    finally:
        engine.dispose()
    assert stage.errors == []
    assert stage.results["remove"] == 3 and store.greylist.list_triplets(limit=None) == []


def test_housekeeping_sql_on_postgresql(store: Store) -> None:
    learner = LearnerStore(store.engine)
    learner.learn("m", list(range(20)), "spam", NOW)
    with executed(store.engine) as seen:
        assert learner.expire(NOW - dt.timedelta(days=1), 1, 10) == 10
        store.greylist.purge(86400, NOW)
    deletes = [written_sql(clause) for clause, _ in seen if written_sql(clause).startswith("DELETE")]
    assert len(deletes) == 5 and all(d.endswith("FOR UPDATE SKIP LOCKED)") for d in deletes), deletes

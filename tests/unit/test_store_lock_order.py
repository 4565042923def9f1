"""The order in which the classifier's and the greylist's writes lock rows (several workers and MX hosts on one PostgreSQL store).

Two transactions that lock the same rows in opposite orders deadlock, and
PostgreSQL aborts one of them: a failed learn, or a greylist write that fails
into GREYLIST_ERROR.  Every writer of these tables takes the rows it shares
with others in one order (a learn's digest, its tokens by token, the totals;
a message's triplets by key, whatever their kind, then its client network),
and housekeeping never waits for a row another transaction holds.

On SQLite (one writer at a time, no row locks) the tests here check the order
of the statements and the SQL they have on PostgreSQL.  The crossings need
PostgreSQL's row locks: the tests that stage them (a third transaction holding
one row, so that the two writers meet exactly where their orders crossed) are
in tests/integration/test_store_lock_order_postgresql.py, which also runs the
tests here on PostgreSQL, a fresh database per test.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import CompileError

from milterd import greylist as gl
from milterd.config import DatabaseSection
from milterd.learner.classifier import Counts
from milterd.store import Store
from milterd.store.learner import LearnerStore, tokens_table
from milterd.store.upsert import deletable

NOW = dt.datetime(2026, 12, 10, 12, 0, tzinfo=dt.timezone.utc)
NETWORK, SENDER = "192.0.2.0/24", "alice@example.org"


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'store.sqlite'}"


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    store = Store(DatabaseSection(url=database))
    store.upgrade()
    yield store
    store.close()


# --- what runs, in which order -------------------------------------------------------------

class Seen(list[tuple[Any, list[dict[str, Any]]]]):
    """The statements given to ``Connection.execute``, each with its rows of parameters, and
    in ``run`` the SQL of every statement sent to the database (``exec_driver_sql``'s too)."""

    def __init__(self) -> None:
        super().__init__()
        self.run: list[str] = []


@contextlib.contextmanager
def executed(engine: Engine) -> Iterator[Seen]:
    """The statements run on *engine* meanwhile."""
    seen = Seen()

    def record(conn: Connection, clause: Any, multiparams: Any, params: Any, options: Any) -> None:
        rows = list(multiparams) if isinstance(multiparams, (list, tuple)) else [multiparams]
        seen.append((clause, [dict(row) for row in rows if row] or [dict(params or {})]))

    def sent(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.run.append(" ".join(statement.split()))

    event.listen(engine, "before_execute", record)
    event.listen(engine, "before_cursor_execute", sent)
    try:
        yield seen
    finally:
        event.remove(engine, "before_execute", record)
        event.remove(engine, "before_cursor_execute", sent)


def as_postgresql(clause: Any) -> str:
    return " ".join(str(clause.compile(dialect=postgresql.dialect())).split())


def written_sql(clause: Any) -> str:
    """The SQL of a statement as on PostgreSQL; SQL run as it is, and SQLite's own
    constructs (its ON CONFLICT), as they are."""
    if isinstance(clause, str):
        return " ".join(clause.split())
    try:
        return as_postgresql(clause)
    except (AttributeError, CompileError):
        return " ".join(str(clause.compile(dialect=sqlite.dialect())).split())


def token_statements(seen: Seen) -> list[str]:
    """The SQL (as on PostgreSQL) of the statements that read or write learner_tokens, in order."""
    return [sql for sql in (written_sql(clause) for clause, _ in seen) if "learner_tokens" in sql]


def test_a_forget_locks_its_tokens_in_token_order_before_decrementing_them(store: Store) -> None:
    learner = LearnerStore(store.engine)
    learner.learn("m1", [30, 10, 20], "spam", NOW)
    with executed(store.engine) as seen:
        assert learner.learn("m1", [30, 10, 20], None, NOW) == "forgotten"
    statements = token_statements(seen)
    assert statements[0].startswith("SELECT learner_tokens.token FROM learner_tokens WHERE learner_tokens.token IN")
    assert statements[0].endswith("ORDER BY learner_tokens.token FOR UPDATE")
    assert statements[1].startswith("UPDATE learner_tokens SET spam=CASE")
    assert [rows for clause, rows in seen if "UPDATE learner_tokens" in written_sql(clause)] == [[{"tokens": [10, 20, 30]}]]
    assert learner.counts([10, 20, 30]) == {t: Counts(0, 0) for t in (10, 20, 30)}


def test_a_move_counts_the_new_label_before_taking_the_old_one_away(store: Store) -> None:
    # The upsert takes (and creates) every token row in token order; the decrement after it
    # changes only rows the transaction holds.  The counts are those of decrementing first.
    learner = LearnerStore(store.engine)
    learner.learn("m1", [1, 2, 3], "ham", NOW)
    learner.learn("m2", [1, 3], "ham", NOW)
    with store.engine.begin() as connection:
        connection.execute(tokens_table.delete().where(tokens_table.c.token == 2))  # expired meanwhile
    with executed(store.engine) as seen:
        assert learner.learn("m1", [3, 2, 1], "spam", NOW) == "moved"
    run = [sql.split()[0] for sql in seen.run if "learner_tokens" in sql]
    assert run[0] == "INSERT" and run[-1] == "UPDATE"
    assert token_statements(seen)[-1].startswith("UPDATE learner_tokens SET ham=CASE")
    assert learner.counts([1, 2, 3]) == {1: Counts(1, 1), 2: Counts(1, 0), 3: Counts(1, 1)}
    assert learner.totals() == Counts(1, 1)


def triplet(recipient: str) -> gl.Triplet:
    return gl.Triplet(NETWORK, SENDER, recipient)


def write(recipient: str, kind: gl.Kind, at: dt.datetime = NOW, **extra: Any) -> gl.Write:
    return gl.Write(triplet(recipient), kind, at, at + dt.timedelta(days=1), **extra)


def test_a_message_writes_its_triplets_in_key_order_whatever_their_kind(store: Store) -> None:
    # A triplet one message writes as "early" another may write as "new" (it read the row
    # before it was made): sorted by kind first, the two took shared rows in opposite orders.
    writes = [write("e@x", "known"), write("a@x", "early"), write("d@x", "new"), write("c@x", "pass"),
              write("b@x", "new"), write("f@x", "expired")]
    with executed(store.engine) as seen:
        store.greylist.record(writes, now=NOW)
    order = [row["recipient"] for clause, rows in seen if "INSERT INTO greylist " in written_sql(clause) for row in rows]
    assert order == ["a@x", "b@x", "c@x", "d@x", "e@x", "f@x"]
    stored = {row["recipient"]: (row["attempts"], row["passes"], row["passed_at"] is not None) for row in store.greylist.list_triplets(limit=None)}
    assert stored == {"a@x": (1, 0, False), "b@x": (1, 0, False), "c@x": (1, 1, True), "d@x": (1, 0, False),
                      "e@x": (1, 1, True), "f@x": (1, 0, False)}
    # Consecutive writes of one kind still go in one statement.
    with executed(store.engine) as seen:
        store.greylist.record([write(r, "early") for r in ("a@x", "b@x", "c@x")], now=NOW)
    assert [len(rows) for clause, rows in seen if "INSERT INTO greylist " in written_sql(clause)] == [3]


def bound(clause: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The values *clause* runs with: those it holds and the first row given."""
    return {**clause.compile().params, **rows[0]}


def test_the_client_networks_rows_follow_the_triplets_in_network_order(store: Store) -> None:
    other = "198.51.100.0/24"
    store.greylist.record([write("z@x", "pass", NOW - dt.timedelta(days=2), count_client=True)], now=NOW - dt.timedelta(days=2))
    writes = [gl.Write(gl.Triplet(other, SENDER, "a@x"), "pass", NOW, NOW, count_client=True), write("a@x", "pass", count_client=True)]
    with executed(store.engine) as seen:
        store.greylist.record(writes, ["203.0.113.0/24", NETWORK], now=NOW)
    written = [(sql.split()[0], sql.split()[2 if sql.startswith("INSERT") else 1], bound(clause, rows)) for clause, rows in seen
               for sql in [written_sql(clause)] if sql.startswith(("INSERT", "UPDATE"))]
    assert [(verb, name) for verb, name, _ in written] == [("INSERT", "greylist")] + [("INSERT", "greylist_clients"), ("UPDATE", "greylist_clients")] * 2
    networks = [next(v for k, v in values.items() if k.startswith("network")) for _, name, values in written if name == "greylist_clients"]
    assert networks == [NETWORK, NETWORK, other, "203.0.113.0/24"]
    assert store.greylist.client_state(NETWORK)[0] == 2 and store.greylist.client_state(other)[0] == 1


def test_housekeeping_deletes_skip_the_rows_writers_hold_on_postgresql() -> None:
    class Dialect:
        def __init__(self, name: str) -> None:
            self.name = name

    class FakeConnection:
        def __init__(self, name: str) -> None:
            self.dialect = Dialect(name)

    condition = tokens_table.c.atime < 5
    on_postgresql = deletable(FakeConnection("postgresql"), tokens_table.c.token, condition)  # type: ignore[arg-type]
    assert as_postgresql(tokens_table.delete().where(on_postgresql)) == (
        "DELETE FROM learner_tokens WHERE learner_tokens.token IN (SELECT learner_tokens.token FROM learner_tokens "
        "WHERE learner_tokens.atime < %(atime_1)s::INTEGER FOR UPDATE SKIP LOCKED)")
    assert deletable(FakeConnection("sqlite"), tokens_table.c.token, condition) is condition  # type: ignore[arg-type]


def test_learners_forgetting_and_moving_shared_tokens_at_once_count_exactly(store: Store) -> None:
    # Threads learn, move, forget and learn again messages whose tokens overlap, in random
    # orders: no transaction may fail, and the counts are those of the labels left.
    learner = LearnerStore(store.engine)
    universe = list(range(1, 301))
    labels: dict[str, str | None] = {}
    tokens: dict[str, list[int]] = {}
    errors: list[str] = []

    def worker(number: int) -> None:
        rnd = random.Random(number)
        for index in range(24):
            digest = f"t{number}-{index % 6}"
            tokens.setdefault(digest, rnd.sample(universe, 120))
            label = rnd.choice(["spam", "ham", None]) if digest in labels else rnd.choice(["spam", "ham"])
            try:
                learner.learn(digest, rnd.sample(tokens[digest], len(tokens[digest])), label, NOW)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - the test reports it
                errors.append(f"{digest}: {exc}")
                continue
            labels[digest] = label

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    expected: dict[int, list[int]] = {}
    for digest, label in labels.items():
        for token in tokens[digest]:
            counts = expected.setdefault(token, [0, 0])
            if label is not None:
                counts[0 if label == "spam" else 1] += 1
    assert {t: c for t, c in learner.counts(universe).items() if c != Counts(0, 0)} == {t: Counts(*c) for t, c in expected.items() if c != [0, 0]}
    assert learner.totals() == Counts(sum(1 for v in labels.values() if v == "spam"), sum(1 for v in labels.values() if v == "ham"))

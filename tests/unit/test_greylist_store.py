"""Greylisting's store operations on SQLite (tests/integration/test_greylist_store_postgresql.py
runs the same tests on PostgreSQL, a fresh database per run)."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Iterator

import pytest
from sqlalchemy import func, select

from milterd import greylist as gl
from milterd.config import DatabaseSection, GreylistSection
from milterd.store import Store, schema
from tests.harness import greylist as greylist_harness

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
CONFIG = GreylistSection(enabled=True, delay=300, retry_window=3600, expire=86400, auto_whitelist_after=2)
TRIPLET = gl.Triplet("192.0.2.0/24", "alice@example.org", "bob@example.com")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield f"sqlite:///{tmp_path_factory.mktemp('gl') / 'store.sqlite'}"


# The fixture: the store at this module's database, greylisting's tables emptied.
store = greylist_harness.store


def run_then_close(threads: list[threading.Thread], stores: list[Store]) -> None:
    """Start *threads* together, wait for all of them, then close each of their *stores*."""
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()



def rows(store: Store) -> list[dict]:  # type: ignore[type-arg]
    return store.greylist.list_triplets(limit=None)


def test_first_attempt_retry_and_pass(store: Store) -> None:
    first = gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(0))
    assert first.kind == "new" and first.greylisted and first.wait == 300
    early = gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(60))
    assert early.kind == "early" and early.wait == 240
    passed = gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(301))
    assert passed.kind == "pass" and not passed.greylisted
    [row] = rows(store)
    assert row["attempts"] == 3 and row["passes"] == 1
    assert row["passed_at"] == at(301) and row["expires_at"] == at(301 + 86400)
    assert store.greylist.client_state("192.0.2.0/24")[0] == 1


def test_a_triplet_of_the_longest_non_ascii_addresses_is_stored(store: Store) -> None:
    # On PostgreSQL a sender and a recipient of 500 CJK characters each (1.5 kB apiece, under Postfix's line
    # limit) passed the 2,704 bytes its unique index takes a row: every write of the message failed.
    # Characters that do not repeat: PostgreSQL compresses an index entry of one repeated.
    sender, recipient = ("".join(chr(0x4E00 + (i * 7919 + start) % 20000) for i in range(500)) for start in (0, 1))
    triplet = gl.make_triplet("203.0.113.9", sender + "@example.org", recipient + "@example.com", CONFIG)
    assert gl.check_triplet(store.greylist, triplet, CONFIG, now=at(0)).kind == "new"
    assert gl.check_triplet(store.greylist, triplet, CONFIG, now=at(301)).kind == "pass"
    [row] = rows(store)
    assert (row["sender"], row["recipient"]) == (triplet.sender, triplet.recipient)


def test_known_triplet_is_renewed_at_most_hourly(store: Store) -> None:
    gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(0))
    gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(400))
    assert gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(500)).kind == "known"
    assert rows(store)[0]["expires_at"] == at(400 + 86400)  # read only
    assert gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(400 + 3700)).kind == "known"
    [row] = rows(store)
    assert row["expires_at"] == at(4100 + 86400) and row["passes"] == 2
    assert store.greylist.client_state("192.0.2.0/24")[0] == 1  # the pass counts, the renewal does not


def test_missed_retry_window_and_expiry_start_again(store: Store) -> None:
    gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(0))
    late = gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(3601))
    assert late.kind == "expired" and late.greylisted
    assert rows(store)[0]["first_seen"] == at(3601)
    assert gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(3601 + 300)).kind == "pass"
    gone = gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(3901 + 86401))
    assert gone.kind == "expired"


def test_concurrent_first_attempts_make_one_row(store: Store, database: str) -> None:
    # Separate engines play separate workers / MX hosts.
    stores = [Store(DatabaseSection(url=database)) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    results: list[gl.Judgement] = []
    errors: list[BaseException] = []

    def attempt(s: Store) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                results.append(gl.check_triplet(s.greylist, TRIPLET, CONFIG, now=at(1)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(s,)) for s in stores]
    run_then_close(threads, stores)
    assert errors == []
    assert len(results) == 30 and all(r.greylisted for r in results)
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(schema.greylist)).scalar() == 1
    assert rows(store)[0]["attempts"] == 30


def test_purge(store: Store) -> None:
    other = gl.Triplet("198.51.100.0/24", "", "postmaster@example.com")
    gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(0))
    gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(300))  # passed: expires a day later
    gl.check_triplet(store.greylist, other, CONFIG, now=at(0))  # waiting: expires after the retry window
    assert store.greylist.purge(CONFIG.expire, now=at(3700)) == (1, 0)
    assert [r["sender"] for r in rows(store)] == ["alice@example.org"]
    assert store.greylist.purge(CONFIG.expire, now=at(300 + 86401)) == (1, 1)
    assert rows(store) == []


def test_stats_and_removal(store: Store) -> None:
    gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(0))
    second = gl.Triplet("192.0.2.0/24", "alice@example.org", "carol@example.com")
    gl.check_triplet(store.greylist, second, CONFIG, now=at(0))
    gl.check_triplet(store.greylist, second, CONFIG, now=at(400))
    counts = store.greylist.stats(CONFIG.auto_whitelist_after, now=at(500))
    assert counts["triplets"] == 2 and counts["passed"] == 1 and counts["waiting"] == 1 and counts["attempts"] == 3
    assert counts["clients"] == 1 and counts["auto_whitelisted_clients"] == 0
    assert store.greylist.remove_triplets("192.0.2.0/24", "alice@example.org", "carol@example.com") == 1
    assert store.greylist.remove_triplets() == 0
    assert len(rows(store)) == 1


def test_whitelist_table(store: Store) -> None:
    assert store.greylist.whitelist_add("sender", "@Partner.example", "our partner")
    assert not store.greylist.whitelist_add("sender", "@partner.example")
    with pytest.raises(ValueError):
        store.greylist.whitelist_add("client", "/(/")
    assert store.greylist.whitelist_add("client", "203.0.113.0/24")
    stored = store.greylist.whitelist()
    assert stored.sender("x@partner.example") == "@partner.example"
    assert stored.client("203.0.113.5", "") == "203.0.113.0/24"
    assert [r["comment"] for r in store.greylist.whitelist_rows() if r["kind"] == "sender"] == ["our partner"]
    assert store.greylist.whitelist_remove("sender", "@partner.example")
    assert not store.greylist.whitelist_remove("sender", "@partner.example")


def test_auto_whitelist_touch(store: Store) -> None:
    for start in (0, 3600):  # a client network counts at most once an hour
        triplet = gl.Triplet("192.0.2.0/24", "alice@example.org", f"r{start}@example.com")
        gl.check_triplet(store.greylist, triplet, CONFIG, now=at(start))
        gl.check_triplet(store.greylist, triplet, CONFIG, now=at(start + 300))
    assert store.greylist.client_state("192.0.2.0/24") == (2, at(3900))
    store.greylist.touch_client("192.0.2.0/24", now=at(4200))
    assert store.greylist.client_state("192.0.2.0/24")[1] == at(3900)
    store.greylist.touch_client("192.0.2.0/24", now=at(3900 + 3601))
    assert store.greylist.client_state("192.0.2.0/24")[1] == at(7501)


# --- the check and the maintenance job, on a real (SQLite or PostgreSQL) store -----
def _services(database: str, **greylist: object):  # type: ignore[no-untyped-def]
    from milterd.config import Config
    from milterd.services import build

    changes = {"database.url": database, "greylist.enabled": True, "greylist.whitelist_providers": False}
    changes.update({f"greylist.{k}": v for k, v in greylist.items()})
    return build(Config().with_changes(changes))


def test_check_skips_dnswl_and_greylists_the_rest(store: Store, database: str) -> None:
    from milterd.checks.greylist import Greylist
    from milterd.message.model import Action, Envelope, Hit, Session, Spool

    services = _services(database)
    [check] = [c for c in services.checks if isinstance(c, Greylist)]
    envelope = Envelope(spool=Spool(1024), sender="alice@example.org")
    listed = Session(client_addr="192.0.2.1", hits=[Hit("DNSWL_ORG_MED")])
    assert list(check.on_rcpt(listed, envelope, "bob@example.com")) == []
    [hit] = check.on_rcpt(Session(client_addr="192.0.2.1"), envelope, "bob@example.com")
    assert hit.symbol == "GREYLIST" and hit.action == Action.GREYLIST
    assert str(hit.reply) == "451 4.7.1 Greylisted, please try again in 300 seconds"
    assert "client=192.0.2.0/24 from=<alice@example.org> to=<bob@example.com> new" in hit.detail
    assert list(check.on_rcpt(Session(client_addr="192.0.2.1", auth_user="alice"), envelope, "bob@example.com")) == []
    services.close()


def test_score_mode_verdict(store: Store, database: str) -> None:
    from milterd.checks.greylist import Greylist
    from milterd.config import Config
    from milterd.message.model import Action, Envelope, Hit, Session, Spool
    from milterd.message.policy import decide
    from milterd.services import build

    config = Config().with_changes({
        "database.url": database, "greylist.enabled": True, "greylist.mode": "score", "greylist.delay": 0,
        "actions.greylist": 6, "actions.add_header": 5,
    })
    services = build(config)
    [check] = [c for c in services.checks if isinstance(c, Greylist)]
    envelope = Envelope(spool=Spool(1024), sender="alice@example.org", recipients=["bob@example.com"])
    session = Session(client_addr="192.0.2.1")
    assert list(check.on_rcpt(session, envelope, "bob@example.com")) == []  # nothing at RCPT
    status = check.on_score_greylist(session, envelope)
    first = decide([Hit("X", score=7.0)], services.weight, config.actions, greylist=status)
    assert first.action == Action.GREYLIST and str(first.reply).startswith("451 4.7.1 Greylisted")
    assert "to=<bob@example.com>" in first.details["GREYLIST"]
    accepted = decide([Hit("X", score=5.0)], services.weight, config.actions, greylist=status)
    assert accepted == decide([Hit("X", score=5.0)], services.weight, config.actions)
    services.close()


def test_purge_job_is_registered(store: Store, database: str) -> None:
    from milterd import maintenance

    job = next(j for j in maintenance.JOBS if j.name == "greylist-purge")
    services = _services(database, purge_interval=600)
    assert job.interval(services) == 600
    assert job.interval(_services(database, enabled=False)) == 0
    gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at(-10 * 86400))
    assert "purged 1 expired triplet" in job.run(services)
    services.close()


# --- bounded greylisting: one write transaction per message ----------------------------
class Counting:
    """Counts the commits and the SELECTs of the greylist table an engine runs."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        from sqlalchemy import event

        self.commits = 0
        self.selects = 0
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "before_cursor_execute", self._execute)

    def _commit(self, *_: object) -> None:
        self.commits += 1

    def _execute(self, _conn, _cursor, statement: str, *_: object) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "FROM greylist " in statement + " ":
            self.selects += 1


def _check(database: str, **greylist: object):  # type: ignore[no-untyped-def]
    from milterd.checks.greylist import Greylist

    services = _services(database, **greylist)
    [check] = [c for c in services.checks if isinstance(c, Greylist)]
    return services, check


def test_a_thousand_new_recipients_are_one_write_transaction(store: Store, database: str) -> None:
    from milterd.message.model import Action, Envelope, Session, Spool

    services, check = _check(database, auto_whitelist_after=0)
    counting = Counting(services.store.engine)
    session, envelope = Session(client_addr="192.0.2.1"), Envelope(spool=Spool(1024), sender="news@bulk.example")
    for i in range(1000):
        [hit] = check.on_rcpt(session, envelope, f"r{i}@example.com")
        assert hit.symbol == "GREYLIST" and hit.action == Action.GREYLIST and str(hit.reply).startswith("451 4.7.1 Greylisted")
    assert counting.commits == 0  # decided from reads: nothing written while the RCPTs come in
    assert counting.selects <= 2  # the first recipient alone, then the sender's triplets at once
    assert rows(store) == []
    check.on_abort(session, envelope)  # every recipient deferred: Postfix sends ABORT/QUIT, no DATA
    assert counting.commits == 1
    stored = rows(store)
    assert len(stored) == 1000 and all(r["attempts"] == 1 and r["passed_at"] is None for r in stored)
    check.on_abort(session, envelope)  # end of the session after the transaction: nothing left to write
    assert counting.commits == 1
    services.close()


def test_mixed_recipients_are_written_once_at_data(store: Store, database: str) -> None:
    from milterd.message.model import Envelope, Session, Spool

    gs = store.greylist
    sender, network = "alice@example.org", "192.0.2.0/24"
    from milterd.store import utcnow

    now = utcnow()
    old = now - dt.timedelta(seconds=400)
    gl.check_triplet(gs, gl.Triplet(network, sender, "waited@example.com"), CONFIG, now=old)  # retry due: passes now
    gl.check_triplet(gs, gl.Triplet(network, sender, "known@example.com"), CONFIG, now=old - dt.timedelta(seconds=400))
    gl.check_triplet(gs, gl.Triplet(network, sender, "known@example.com"), CONFIG, now=old)  # passed, renewed recently
    gl.check_triplet(gs, gl.Triplet(network, sender, "early@example.com"), CONFIG, now=now - dt.timedelta(seconds=10))

    services, check = _check(database, delay=300, auto_whitelist_after=5)
    counting = Counting(services.store.engine)
    session, envelope = Session(client_addr="192.0.2.1"), Envelope(spool=Spool(1024), sender=sender)
    answers = {}
    for rcpt in ("waited@example.com", "known@example.com", "early@example.com", "new@example.com", "new@example.com"):
        answers.setdefault(rcpt, []).append([(h.symbol, h.action is not None) for h in check.on_rcpt(session, envelope, rcpt)])
    assert answers["waited@example.com"] == [[("GREYLIST_PASSED", False)]]
    assert answers["known@example.com"] == [[]]
    assert answers["early@example.com"] == [[("GREYLIST", True)]]
    assert answers["new@example.com"] == [[("GREYLIST", True)], [("GREYLIST", True)]]  # the same answer twice
    assert counting.commits == 0
    assert list(check.on_data(session, envelope)) == []
    assert counting.commits == 1
    [deferred] = check.on_symbols(session, envelope, frozenset())
    assert deferred.symbol == "GREYLIST_DEFERRED" and "early@example.com" in deferred.detail and "new@example.com" in deferred.detail
    check.on_abort(session, envelope)
    assert counting.commits == 1
    by_rcpt = {r["recipient"]: r for r in rows(store)}
    assert by_rcpt["waited@example.com"]["passed_at"] is not None and by_rcpt["waited@example.com"]["passes"] == 1
    assert by_rcpt["waited@example.com"]["attempts"] == 2
    assert by_rcpt["known@example.com"]["attempts"] == 2  # renewed recently: only read
    assert by_rcpt["early@example.com"]["attempts"] == 2 and by_rcpt["early@example.com"]["passed_at"] is None
    assert by_rcpt["new@example.com"]["attempts"] == 1  # one write for the recipient given twice
    assert gs.client_state(network)[0] == 1  # the known one's pass 400 s ago; the waited one's within the hour does not count
    services.close()


def test_many_stored_triplets_are_read_recipient_by_recipient(store: Store, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from milterd.checks import greylist as check_module
    from milterd.message.model import Envelope, Session, Spool
    from milterd.store import utcnow

    monkeypatch.setattr(check_module, "PREFETCH_ROWS", 2)
    past = utcnow() - dt.timedelta(seconds=600)
    for i in range(5):
        gl.check_triplet(store.greylist, gl.Triplet("192.0.2.0/24", "alice@example.org", f"r{i}@example.com"), CONFIG, now=past)
    services, check = _check(database, delay=300, auto_whitelist_after=0)
    session, envelope = Session(client_addr="192.0.2.1"), Envelope(spool=Spool(1024), sender="alice@example.org")
    symbols = [[h.symbol for h in check.on_rcpt(session, envelope, f"r{i}@example.com")] for i in range(6)]
    assert symbols == [["GREYLIST_PASSED"]] * 5 + [["GREYLIST"]]
    check.on_abort(session, envelope)
    assert sum(1 for r in rows(store) if r["passed_at"] is not None) == 5 and len(rows(store)) == 6
    services.close()


def test_score_mode_reads_and_writes_once(store: Store, database: str) -> None:
    from milterd.checks.greylist import Greylist
    from milterd.config import Config
    from milterd.message.model import Envelope, Hit, Session, Spool
    from milterd.message.policy import decide
    from milterd.services import build

    services = build(Config().with_changes({
        "database.url": database, "greylist.enabled": True, "greylist.mode": "score", "greylist.auto_whitelist_after": 0,
        "actions.greylist": 6, "actions.add_header": 5,
    }))
    [check] = [c for c in services.checks if isinstance(c, Greylist)]
    counting = Counting(services.store.engine)
    recipients = [f"s{i}@example.com" for i in range(300)]
    envelope = Envelope(spool=Spool(1024), sender="alice@example.org", recipients=recipients)
    status = check.on_score_greylist(Session(client_addr="192.0.2.1"), envelope)
    verdict = decide([Hit("X", score=7.0)], services.weight, services.config.actions, greylist=status)
    assert str(verdict.reply).startswith("451 4.7.1 Greylisted")
    assert counting.commits == 1 and counting.selects == 1
    assert len(rows(store)) == 300
    services.close()


def test_concurrent_batches_share_rows(store: Store, database: str) -> None:
    # Two workers (or MX hosts) write overlapping batches at the same moment.
    stores = [Store(DatabaseSection(url=database)) for _ in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def batch(s: Store, offset: int) -> None:
        writes = [gl.Write(gl.Triplet("192.0.2.0/24", "alice@example.org", f"r{i}@example.com"), "new", at(0), at(3600))
                  for i in range(offset, offset + 200)]
        try:
            barrier.wait()
            s.greylist.record(writes)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=batch, args=(s, 100 * n)) for n, s in enumerate(stores)]
    run_then_close(threads, stores)
    assert errors == []
    stored = {r["recipient"]: r["attempts"] for r in rows(store)}
    assert len(stored) == 300
    assert [stored[f"r{i}@example.com"] for i in (0, 99, 100, 199, 200, 299)] == [1, 1, 2, 2, 1, 1]


def test_store_errors_cross_as_store_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from milterd.store import StoreError

    broken = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 'no-schema.sqlite'}"))  # no tables
    with pytest.raises(StoreError):
        broken.greylist.state(TRIPLET)
    with pytest.raises(StoreError):
        broken.greylist.record([gl.Write(TRIPLET, "new", at(0), at(60))])
    with pytest.raises(StoreError):
        broken.greylist.states(TRIPLET.network, TRIPLET.sender)
    broken.close()


def test_store_down_at_rcpt_is_asked_once_per_transaction(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from milterd.message.model import Envelope, Session, Spool

    services, check = _check(f"sqlite:///{tmp_path / 'no-schema.sqlite'}", auto_whitelist_after=0)  # no tables: every read fails
    counting = Counting(services.store.engine)
    session, envelope = Session(client_addr="192.0.2.1"), Envelope(spool=Spool(1024), sender="alice@example.org")
    hits = [list(check.on_rcpt(session, envelope, f"r{i}@example.com")) for i in range(3)]
    assert [[(h.symbol, h.action) for h in r] for r in hits] == [[("GREYLIST_ERROR", None)]] * 3  # not greylisted
    # The rest of the transaction does not ask a store that failed: once the triplets' read failed too.
    assert counting.selects == 1
    services.close()


def test_failed_write_holds_greylisting_off(store: Store, database: str) -> None:
    from sqlalchemy import text

    from milterd.message.model import Action, Envelope, Session, Spool

    with store.engine.begin() as connection:
        connection.execute(text("CREATE TRIGGER t5_refuse BEFORE INSERT ON greylist BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
    try:
        services, check = _check(database, auto_whitelist_after=0)
        session = Session(client_addr="192.0.2.1")
        first = Envelope(spool=Spool(1024), sender="alice@example.org")
        [hit] = check.on_rcpt(session, first, "bob@example.com")
        assert hit.action == Action.GREYLIST  # decided from the read
        [error] = check.on_data(session, first)
        assert error.symbol == "GREYLIST_ERROR" and error.action is None and "disk full" in error.detail
        # The next transaction: a store that cannot remember triplets must not defer them for ever.
        second = Envelope(spool=Spool(1024), sender="carol@example.org")
        [hit] = check.on_rcpt(session, second, "dave@example.com")
        assert hit.symbol == "GREYLIST_ERROR" and hit.action is None and "disk full" in hit.detail
        services.close()
    finally:
        with store.engine.begin() as connection:
            connection.execute(text("DROP TRIGGER t5_refuse"))

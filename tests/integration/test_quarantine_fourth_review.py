"""Quarantine, fourth review, on a shared PostgreSQL store (a fresh database per test, as two MX
hosts share one): a forced release racing another host's release, the retention purge against a
release in progress, and the purge of large messages in transactions of bounded size.

No mail is sent: ``reinject.send`` is replaced by a stand-in that reads the message.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest

from milterd import quarantine as quarantine_module
from milterd.config import load_config
from milterd.quarantine import Quarantine, QuarantineError, release_state
from milterd.store import Store, utcnow
from milterd.store import quarantine as store_quarantine
from tests.harness import pgdb
from tests.harness.quarantine import quarantine_config
from tests.harness.stack import Stack
from tests.integration import test_quarantine as postfix_tests
from tests.unit.test_quarantine_fourth_review import RAW, add, purge_large_messages


@pytest.fixture
def quarantine(tmp_path: Path) -> Iterator[Quarantine]:
    with pgdb.required_database("these tests") as url:
        config = load_config(quarantine_config(tmp_path / "milter.conf", url, hostname="mx1.test"))
        store = Store(config.database)
        store.upgrade()
        yield Quarantine(store, config)
        store.close()


def test_a_failed_forced_release_keeps_the_delivery_another_host_made(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    row_id = add(quarantine)
    other_store = Store(quarantine.config.database)  # the other MX host: its own engine
    other = Quarantine(other_store, quarantine.config)
    calls: list[str] = []

    def send(target: Any, sender: str, recipients: list[str], message: Iterable[bytes], helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        b"".join(message)
        calls.append("send")
        if len(calls) == 1:
            return {r: "250 2.0.0 Ok: queued as 4ABC" for r in recipients}, {}
        raise OSError("connection refused")

    monkeypatch.setattr(quarantine_module.reinject, "send", send)
    real_claim = quarantine.repo.claim
    raced: list[bool] = []

    def claim(*args: Any, **kwargs: Any) -> bool:
        if not raced:
            raced.append(True)
            assert other.release(row_id, who="a@mx1.test").ok
        return bool(real_claim(*args, **kwargs))

    monkeypatch.setattr(quarantine.repo, "claim", claim)
    try:
        report = quarantine.release(row_id, who="b@mx2.test", force=True)
        assert not report.delivered
        row = quarantine.get(row_id)
        assert release_state(row) == "released" and row["released_by"] == "a@mx1.test" and row["release_count"] == 1
        with pytest.raises(QuarantineError, match="already released"):
            other.release(row_id, who="c@mx3.test")
    finally:
        other_store.close()
    assert len(calls) == 2


def test_a_purge_during_a_release_leaves_the_message_whole(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    row_id = add(quarantine, age=dt.timedelta(days=40))
    sent: list[bytes] = []

    def send(target: Any, sender: str, recipients: list[str], message: Iterable[bytes], helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        pieces = iter(message)
        first = next(pieces)
        assert quarantine.purge(utcnow() - dt.timedelta(days=30)) == 0
        sent.append(first + b"".join(pieces))
        return {r: "250 2.0.0 Ok" for r in recipients}, {}

    monkeypatch.setattr(quarantine_module.reinject, "send", send)
    assert quarantine.release(row_id, who="admin@mx1.test").ok
    assert sent[0].split(b"\r\n", 1)[1] == RAW
    assert quarantine.repo.purge(utcnow() - dt.timedelta(days=30), now=utcnow() + dt.timedelta(days=2)) == 1


def test_a_purge_of_large_messages_deletes_a_bounded_amount_per_transaction(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    purge_large_messages(quarantine, monkeypatch)


def test_a_purge_skips_a_row_a_release_is_claiming(quarantine: Quarantine) -> None:
    """A claim not yet committed (the row locked by its UPDATE): the purge neither waits for it nor deletes it."""
    held = add(quarantine, age=dt.timedelta(days=40))
    free = add(quarantine, age=dt.timedelta(days=40))
    table = store_quarantine.schema.quarantine
    with quarantine.store.engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(table.update().where(table.c.id == held).values(released_by="claiming@mx2.test"))
        assert quarantine.purge(utcnow() - dt.timedelta(days=30)) == 1
        transaction.rollback()
    assert [r["id"] for r in quarantine.rows()] == [held] and held != free


def test_two_hosts_claiming_at_once_never_both_win(quarantine: Quarantine) -> None:
    """Found sound, kept as a regression test: the claim is one UPDATE … WHERE released_at IS NULL
    (PostgreSQL re-checks the condition once the other host's UPDATE commits), never read-then-write."""
    other_store = Store(quarantine.config.database)
    repos = [quarantine.repo, Quarantine(other_store, quarantine.config).repo]

    def claim(index: int, row_id: int, barrier: threading.Barrier, won: list[bool]) -> None:
        barrier.wait()
        won.append(repos[index].claim(row_id, f"admin{index}@mx{index}.test", utcnow(), force=False))

    try:
        for _ in range(20):
            row_id, barrier, won = add(quarantine), threading.Barrier(2), []
            threads = [threading.Thread(target=claim, args=(i, row_id, barrier, won)) for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert sorted(won) == [False, True]
    finally:
        other_store.close()


# --- through the real Postfix (a private instance and its re-injection smtpd on a unix socket) -------------
@pytest.fixture(scope="module")
def postfix_stack(make_stack: Any) -> Stack:
    return make_stack({**postfix_tests.NO_CHECKS, "database": {"busy_timeout": 1}}, postfix_tests.RULES)


def test_a_release_over_postfix_message_size_limit_is_refused_at_mail_then_goes_whole(postfix_stack: Stack) -> None:
    """Postfix's re-injection smtpd announces SIZE: the release declares the message's size, so one
    over message_size_limit is refused at MAIL ("Message size exceeds fixed limit") before any of it
    is read from the store, and stays releasable; under the limit, hostile lines (a lone dot, a
    dot-led line, 8-bit header and body bytes, a 990-octet line) arrive as the store holds them."""
    stack = postfix_stack
    tag = uuid.uuid4().hex
    body = b"".join([b".\r\n", b"..two dots\r\n", b"caf\xc3\xa9 \xe9t\xe9\r\n", b"L" * 990 + b"\r\n"]) + (b"pad " * 20 + b"\r\n") * 3000 + b"end\r\n"
    original = (
        f"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: QUARANTINE-ME {tag}\r\n".encode()
        + b"X-Eight-Bit: \xe9t\xe9\r\nDate: Thu, 03 Dec 2026 12:00:00 +0000\r\nMessage-ID: <" + tag.encode() + b"@example.org>\r\n\r\n" + body
    )
    assert stack.send(original) == {}
    [row] = [r for r in postfix_tests.listed(stack) if tag in r["subject"]]
    stored = postfix_tests.cli(stack, "show", str(row["id"]), "--raw", binary=True).stdout
    assert stored == original
    stack.postfix.postconf("message_size_limit = 200000")  # reloads, and waits for the old smtpd to go
    try:
        refused = postfix_tests.cli(stack, "release", str(row["id"]))
    finally:
        stack.postfix.postconf("message_size_limit = 10240000")
    assert refused.returncode == 1 and "552 5.3.4 Message size exceeds fixed limit" in refused.stderr, refused.stderr
    [after] = [r for r in postfix_tests.listed(stack) if r["id"] == row["id"]]
    assert after["released_at"] is None
    released = postfix_tests.cli(stack, "release", str(row["id"]))
    assert released.returncode == 0, released.stderr
    [delivered] = stack.sink.wait(1, match=lambda m: any(tag in s for s in m.header("Subject")))
    assert postfix_tests.strip_release(delivered.data) == stored

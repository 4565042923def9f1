"""``[greylist] on_error`` through the real Postfix: what the SMTP client is told
when the greylist store stops answering while milterd runs.

The failures are real, made in the database behind a running milterd:

* SQLite, the ``greylist`` table renamed away: every read of it fails in the
  driver (the message log, another table, still works, so the rows can be read);
* SQLite, a trigger refusing every write to ``greylist`` (a store that reads
  but cannot write: a full disk, a read-only replica);
* PostgreSQL, the database closed to new connections and its sessions
  terminated (as ``pg-down`` of the fault suite): a database server gone away.

``on_error = "tempfail"`` answers ``451 4.3.0`` where greylisting would have
deferred (at RCPT, at DATA with ``defer_at = "data"``, at end of data in score
mode); ``accept`` (the default) lets the mail through, as before.
"""

from __future__ import annotations

import json
import smtplib
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import message
from tests.harness import pgdb
from tests.harness.stack import Stack

GREYLIST = {"enabled": True, "delay": 3, "retry_window": "1h", "auto_whitelist_after": 0, "whitelist_providers": False,
            "whitelist_senders": ["@partner.example"]}
TEMPFAIL_TEXT = b"4.3.0 Greylisting unavailable, please try again later"
WHO = {"ADDR": "192.0.2.10", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}


def attempt(stack: Stack, recipients: list[str], subject: str, sender: str = "alice@example.org") -> dict[str, tuple[int, bytes]]:
    """One SMTP transaction: the refused recipients ({} when every one was accepted and the message too).

    A refusal at DATA or end of data is raised (smtplib.SMTPDataError)."""
    smtp = stack.postfix.smtp(xclient=WHO)
    try:
        return smtp.sendmail(sender, recipients, message(subject=subject, sender=sender))
    except smtplib.SMTPRecipientsRefused as exc:
        return exc.recipients
    finally:
        try:
            smtp.quit()
        except Exception:  # noqa: BLE001
            pass


def tempfailed(reply: tuple[int, bytes]) -> bool:
    return reply[0] == 451 and TEMPFAIL_TEXT in reply[1]


def greylisted(reply: tuple[int, bytes]) -> bool:
    return reply[0] == 451 and b"4.7.1 Greylisted, please try again in" in reply[1]


def subject() -> str:
    return f"down-{uuid.uuid4().hex[:10]}"


def database(stack: Stack) -> Path:
    return stack.milterd.root / "milterd.sqlite"


def take_the_greylist_table_away(stack: Stack) -> None:
    with sqlite3.connect(database(stack), timeout=30) as db:
        db.execute("ALTER TABLE greylist RENAME TO greylist_away")


def refuse_greylist_writes(stack: Stack) -> None:
    with sqlite3.connect(database(stack), timeout=30) as db:
        for event in ("INSERT", "UPDATE"):
            db.execute(f"CREATE TRIGGER refuse_{event.lower()} BEFORE {event} ON greylist BEGIN SELECT RAISE(ABORT, 'greylist writes refused'); END")


def delivered(stack: Stack, subject: str) -> list[str]:
    [got] = stack.sink.wait(1, match=lambda m: any(subject in s for s in m.header("Subject")))
    return list(got.recipients)


def rows(stack: Stack, subject: str = "", recipient: str = "") -> list[dict[str, Any]]:
    return [r for r in stack.milterd.log_json() if (subject and r["subject"] == subject) or (recipient and recipient in r["recipients"])]


def logged(stack: Stack, text: str, timeout: float = 10.0) -> bool:
    """Whether milterd's log (its stderr) says *text* within *timeout* seconds (a worker's lines reach it a little later)."""
    deadline = time.monotonic() + timeout
    while text not in stack.milterd.stderr():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def working_first(stack: Stack) -> None:
    """The store answers before the fault: a new triplet is greylisted, and stored (when its
    transaction ends, just after the client's QUIT) before the test breaks the store."""
    first = attempt(stack, ["first@example.com"], subject())
    assert greylisted(first["first@example.com"]), first
    deadline = time.monotonic() + 10
    while True:
        listed = stack.milterd.cli("greylist", "list", "--json", "--limit", "0", "--recipient", "first@example.com")
        if listed.returncode == 0 and json.loads(listed.stdout):
            return
        assert time.monotonic() < deadline, f"the first triplet was not stored: {listed.stderr}"
        time.sleep(0.1)


# --- mode = "triplet", defer_at = "rcpt" -------------------------------------------------
def test_tempfail_answers_451_at_rcpt_when_the_store_cannot_be_read(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack({"greylist": dict(GREYLIST, on_error="tempfail")})
    working_first(stack)
    take_the_greylist_table_away(stack)
    refused = attempt(stack, ["bob@example.com"], subject())
    assert tempfailed(refused["bob@example.com"]), refused
    # A sender greylisting skips needs no store: delivered.
    name = subject()
    assert attempt(stack, ["bob@example.com"], name, sender="news@partner.example") == {}
    assert delivered(stack, name) == ["bob@example.com"]
    # Logged as any tempfail: a row with the reply and the error, and the summary line.
    [row] = [r for r in rows(stack, recipient="bob@example.com") if r["action"] == "tempfail"]
    assert TEMPFAIL_TEXT.decode() in row["reason"] and "no such table" in row["details"]["GREYLIST_ERROR"]
    assert logged(stack, "greylist store unavailable, tempfailing"), stack.milterd.stderr()
    assert logged(stack, "action=tempfail"), stack.milterd.stderr()


def test_accept_lets_the_recipient_through_when_the_store_cannot_be_read(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack({"greylist": dict(GREYLIST, on_error="accept")})
    working_first(stack)
    take_the_greylist_table_away(stack)
    name = subject()
    assert attempt(stack, ["bob@example.com"], name) == {}
    assert delivered(stack, name) == ["bob@example.com"]
    [row] = rows(stack, subject=name)
    assert row["action"] == "accept" and "GREYLIST_ERROR" in row["symbols"]


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_after_a_refused_write(make_stack: Callable[..., Stack], on_error: str) -> None:
    # One worker, so that the second attempt meets the worker whose write was refused.
    stack = make_stack({"greylist": dict(GREYLIST, on_error=on_error), "milter": {"workers": 1}})
    refuse_greylist_writes(stack)
    first = attempt(stack, ["carol@example.com"], subject())
    assert greylisted(first["carol@example.com"]), first  # read: new; its write, when the transaction ends, refused
    assert logged(stack, "cannot record 1 greylist attempt(s)"), stack.milterd.stderr()  # the transaction ended (QUIT)
    name = subject()
    second = attempt(stack, ["dave@example.com"], name)
    if on_error == "tempfail":
        assert tempfailed(second["dave@example.com"]), second  # the minute a worker holds greylisting off: nobody passes
        assert stack.sink.with_subject(name) == []
    else:
        assert second == {}  # greylisting held off for a minute: through ungreylisted, as before
        assert delivered(stack, name) == ["dave@example.com"]


# --- defer_at = "data" ---------------------------------------------------------------------
@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_defer_at_data(make_stack: Callable[..., Stack], on_error: str) -> None:
    stack = make_stack({"greylist": dict(GREYLIST, on_error=on_error, defer_at="data")})
    name = subject()
    with pytest.raises(smtplib.SMTPDataError) as info:
        attempt(stack, ["first@example.com"], name)
    assert info.value.smtp_code == 451 and b"4.7.1 Greylisted" in info.value.smtp_error  # the store answers
    take_the_greylist_table_away(stack)
    name = subject()
    if on_error == "tempfail":
        with pytest.raises(smtplib.SMTPDataError) as info:
            attempt(stack, ["bob@example.com", "carol@example.com"], name)
        assert info.value.smtp_code == 451 and TEMPFAIL_TEXT in info.value.smtp_error
        [row] = [r for r in rows(stack, recipient="carol@example.com") if r["action"] == "tempfail"]
        assert "GREYLIST_ERROR" in row["symbols"]
    else:
        assert attempt(stack, ["bob@example.com", "carol@example.com"], name) == {}
        assert sorted(delivered(stack, name)) == ["bob@example.com", "carol@example.com"]


# --- mode = "score" ------------------------------------------------------------------------
SCORE_RULES = {"grey.toml": '[[rule]]\nname = "SUBJ_GREYME"\nheader = "Subject"\nregex = "greyme"\nscore = 50.0\n'}
SCORE_ACTIONS = {"rewrite_subject": 8, "greylist": 40, "quarantine": False, "reject": False}


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_score_mode(make_stack: Callable[..., Stack], on_error: str) -> None:
    stack = make_stack({"greylist": dict(GREYLIST, on_error=on_error, mode="score"), "actions": SCORE_ACTIONS}, rules=SCORE_RULES)
    with pytest.raises(smtplib.SMTPDataError) as info:
        attempt(stack, ["bob@example.com"], f"greyme-{uuid.uuid4().hex[:8]}")
    assert info.value.smtp_code == 451 and b"4.7.1 Greylisted" in info.value.smtp_error  # the store answers
    take_the_greylist_table_away(stack)
    name = f"greyme-{uuid.uuid4().hex[:8]}"
    if on_error == "tempfail":
        with pytest.raises(smtplib.SMTPDataError) as info:
            attempt(stack, ["bob@example.com"], name)
        assert info.value.smtp_code == 451 and TEMPFAIL_TEXT in info.value.smtp_error
        [row] = rows(stack, subject=name)
        assert row["action"] == "tempfail" and "no such table" in row["details"]["GREYLIST_ERROR"]
    else:
        assert attempt(stack, ["bob@example.com"], name) == {}
        assert delivered(stack, name) == ["bob@example.com"]
        [row] = rows(stack, subject=name)
        assert row["action"] == "rewrite_subject" and "GREYLIST_ERROR" in row["symbols"]
    # A message whose score does not greylist never needs the store.
    plain = subject()
    assert attempt(stack, ["bob@example.com"], plain) == {}
    assert delivered(stack, plain) == ["bob@example.com"]


# --- PostgreSQL: the database server gone away --------------------------------------------
@pytest.fixture
def postgres_url() -> Iterator[str]:
    with pgdb.required_database("the greylist store-down test") as url:
        yield url


def close_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with pgdb._admin() as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()")


def open_database(url: str) -> None:
    with pgdb._admin() as admin:
        admin.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" ALLOW_CONNECTIONS true')


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_postgresql_database_gone(make_stack: Callable[..., Stack], postgres_url: str, on_error: str) -> None:
    # [database] on_error = accept: the log row that cannot be written does not tempfail the message itself.
    stack = make_stack({"greylist": dict(GREYLIST, on_error=on_error), "database": {"url": postgres_url, "on_error": "accept", "busy_timeout": 2}})
    working_first(stack)
    close_database(postgres_url)
    try:
        name = subject()
        replies = attempt(stack, ["bob@example.com"], name)
        if on_error == "tempfail":
            assert tempfailed(replies["bob@example.com"]), replies
            assert stack.sink.with_subject(name) == []
            assert logged(stack, "greylist store unavailable, tempfailing"), stack.milterd.stderr()
        else:
            assert replies == {}
            assert delivered(stack, name) == ["bob@example.com"]
        # The whitelists of milter.conf need no store.
        whitelisted = subject()
        assert attempt(stack, ["bob@example.com"], whitelisted, sender="news@partner.example") == {}
        assert delivered(stack, whitelisted) == ["bob@example.com"]
    finally:
        open_database(postgres_url)

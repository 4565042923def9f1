"""The quarantine digest is bounded: after a spam wave it lists the newest DIGEST_MAX_ENTRIES
messages and says how many more there are and how to list them, reads no more rows than it
lists, and no field the sender wrote (Subject, sender, recipients, reason) makes a long line.

SQLite in a temporary file; no mail is sent: ``reinject.send`` is replaced by a recorder.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from typing import Any

import pytest
from sqlalchemy import insert

from milterd import quarantine as quarantine_module
from milterd.cli import main
from milterd.quarantine import Quarantine, format_digest
from milterd.store import schema, utcnow
from milterd.store.quarantine import QuarantineStore
from milterd.units import parse_since
from tests.harness import quarantine as quarantine_harness
from tests.harness.quarantine import Outbox, text_of

# The fixtures: a SQLite store in the test's directory (conf), its quarantine, the rows each of its reads
# returned, and what it would have mailed.
conf = quarantine_harness.conf
quarantine = quarantine_harness.quarantine
fetched = quarantine_harness.fetched
outbox = quarantine_harness.outbox

#: The bound this test expects: a sensible one (amavisd-style reports list hundreds, not all).
BOUND = getattr(quarantine_module, "DIGEST_MAX_ENTRIES", 500)
assert 100 <= BOUND <= 1000
#: Messages the spam wave of these tests quarantines: more than the bound.
WAVE = BOUND + 700
#: A digest of the wave, or of any number of messages, stays under this.
MAX_DIGEST_BYTES = 1024 * 1024
#: No line of a digest is longer than this.
MAX_LINE = 1000


def wave(quarantine: Quarantine, count: int, start: dt.datetime, subject: str = "spam wave", sender: str = "a@example.org",
         recipients: list[str] | None = None, reason: Any = None) -> None:
    """Quarantine *count* messages, one a second from *start*, in one transaction (the rows only: the digest reads no message).
    *reason*: a function of the message's number (default: one reason per score, as the pipeline's)."""
    rows = [
        {
            "time": start + dt.timedelta(seconds=n), "mta_host": "mx.test", "queue_id": f"Q{n}", "client_addr": "192.0.2.1",
            "client_name": "unknown", "helo": "h", "sender": sender, "recipients": recipients or ["bob@example.com"],
            "subject": f"{subject} {n}", "score": 12 + n / 1000, "reason": reason(n) if reason else f"score {12 + n / 1000:g} >= quarantine 12",
            "symbols": {"BAYES_SPAM": 12.0}, "size": 100, "mode": "discard", "release_count": 0, "learned_ham": False,
        }
        for n in range(count)
    ]
    with quarantine.store.engine.begin() as connection:
        connection.execute(insert(schema.quarantine), rows)


def entries(text: str) -> list[int]:
    """The ids the digest lists, in its order."""
    return [int(m.group(1)) for m in re.finditer(r"^#(\d+)  ", text, re.M)]


def test_a_spam_wave_digest_lists_the_bound_and_says_how_many_more(quarantine: Quarantine, outbox: Outbox) -> None:
    start = utcnow() - dt.timedelta(hours=2)
    wave(quarantine, WAVE, start)
    since = utcnow() - dt.timedelta(hours=3)
    summary = quarantine.digest(["postmaster@example.org"], since)
    [message] = outbox.messages
    assert len(message) < MAX_DIGEST_BYTES
    text = text_of(message)
    ids = entries(text)
    # The newest BOUND messages, in the digest's order (oldest first).
    newest = [row["id"] for row in quarantine.rows(limit=BOUND)]
    assert len(ids) == BOUND and ids == sorted(newest)
    # The counts are the whole period's.
    assert text.startswith(f"Quarantine on mx.test: {WAVE} messages\n")
    assert summary.startswith(f"{WAVE} messages reported to postmaster@example.org")
    subject = email.message_from_bytes(message, policy=email.policy.default)["Subject"]
    assert subject == f"milterd quarantine digest for mx.test: {WAVE} messages"
    # Its last line says how many more there are, and the command that lists them: a real one.
    more = WAVE - BOUND
    tail = text.rstrip("\n").splitlines()
    assert f"{more} more messages of this period" in tail[-2]
    command = tail[-1].strip()
    match = re.fullmatch(r"milterd -c \S+ quarantine list --since (\S+)", command)
    assert match, command
    assert parse_since(match.group(1)) <= since
    listed = quarantine.rows(since=parse_since(match.group(1)))
    assert len(listed) == WAVE  # every message of the period, those left out included


def test_the_digest_reads_no_more_rows_than_it_lists(quarantine: Quarantine, outbox: Outbox, fetched: list[int]) -> None:
    """Memory is bounded too: the rows are limited in the SQL, not fetched all and then cut."""
    wave(quarantine, WAVE, utcnow() - dt.timedelta(hours=2))
    fetched.clear()
    quarantine.digest(["postmaster@example.org"], utcnow() - dt.timedelta(hours=3))
    assert outbox.messages
    assert sum(fetched) <= BOUND + 1, fetched


def test_the_reasons_are_bounded_and_still_add_up(quarantine: Quarantine, outbox: Outbox) -> None:
    """Each reason holds its score: a wave has as many reasons as messages, and the digest counts the most frequent."""
    wave(quarantine, WAVE, utcnow() - dt.timedelta(hours=2), reason=lambda n: "virus Eicar-Signature" if n % 3 == 0 else f"score {12 + n / 1000:g} >= quarantine 12")
    quarantine.digest(["postmaster@example.org"], utcnow() - dt.timedelta(hours=3))
    text = text_of(outbox.messages[0])
    section = text.split("By reason:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(section) <= 30
    counts = [int(line.split()[0]) for line in section]
    assert sum(counts) == WAVE
    assert section[0].split(None, 1)[1] == "virus Eicar-Signature" and counts[0] == len(range(0, WAVE, 3))


def test_a_long_subject_sender_reason_or_recipient_list_makes_no_long_line(quarantine: Quarantine, outbox: Outbox) -> None:
    huge = "S" * 10_000 + "\u2028" * 10_000
    recipients = [f"user{n}@example.com" for n in range(2000)] + ["x" * 10_000 + "@example.com"]
    wave(quarantine, 3, utcnow() - dt.timedelta(minutes=5), subject=huge, sender="s" * 10_000 + "@example.org", recipients=recipients, reason=lambda n: "r" * 10_000)
    quarantine.digest(["postmaster@example.org"], utcnow() - dt.timedelta(hours=1))
    [message] = outbox.messages
    assert len(message) < 20_000
    text = text_of(message)
    assert max(len(line) for line in text.splitlines()) <= MAX_LINE
    assert "(+" in text and " more)" in text  # the recipients left out are counted
    assert "\u2028" not in text


def test_the_worst_case_digest_stays_small(quarantine: Quarantine) -> None:
    """Many more messages than the bound, each with every field at its longest: the text stays under MAX_DIGEST_BYTES."""
    config = quarantine.config
    now = utcnow()
    rows = [
        {
            "id": n, "time": now, "score": 99.0, "reason": "\u202e" * 10_000, "sender": "\x1b" * 10_000, "subject": "\ud800" * 10_000,
            "recipients": ["r" * 1000 + "@example.com"] * 300, "released_at": now, "released_by": "w" * 10_000,
            "release_result": [{"time": now.isoformat(), "delivered": {"a@b": "250"}}], "release_count": 1,
        }
        for n in range(1, 2 * BOUND + 1)
    ]
    text = format_digest(rows, config, now - dt.timedelta(days=1), now)
    assert len(text.encode("utf-8", "surrogateescape")) < MAX_DIGEST_BYTES
    assert max(len(line) for line in text.splitlines()) <= MAX_LINE
    assert len(entries(text)) == BOUND and entries(text) == list(range(BOUND + 1, 2 * BOUND + 1))
    assert f"{BOUND} more messages" in text


def test_a_digest_within_the_bound_is_as_before(quarantine: Quarantine, outbox: Outbox) -> None:
    wave(quarantine, 3, utcnow() - dt.timedelta(minutes=5))
    summary = quarantine.digest(["postmaster@example.org"], utcnow() - dt.timedelta(hours=1))
    assert summary == "3 messages reported to postmaster@example.org"
    text = text_of(outbox.messages[0])
    assert len(entries(text)) == 3 and "more message" not in text and "quarantine list" not in text
    assert "By reason:" in text and "(other reasons)" not in text


def test_the_digest_command_says_how_many_it_listed(conf: Any, quarantine: Quarantine, outbox: Outbox, capsys: pytest.CaptureFixture[str]) -> None:
    wave(quarantine, WAVE, utcnow() - dt.timedelta(minutes=30))
    assert main(["-c", str(conf), "quarantine", "digest", "--to", "postmaster@example.org", "--since", "1h"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{WAVE} messages reported to postmaster@example.org ({BOUND} newest listed)"]


def test_a_message_committed_during_the_digest_pushes_no_counted_one_out(quarantine: Quarantine, outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """On 78e0f78: a row committed between the count and the fetch (its time set when it was judged,
    before its commit) took a place among the newest BOUND, and the oldest counted one was neither
    listed nor among the "more" (review 16)."""
    start = utcnow() - dt.timedelta(hours=2)
    wave(quarantine, BOUND + 200, start)
    counts = QuarantineStore.reason_counts

    def then_one_more(self: QuarantineStore, *args: Any, **kwargs: Any) -> Any:
        counted = counts(self, *args, **kwargs)
        wave(quarantine, 1, utcnow() - dt.timedelta(seconds=1), subject="late")
        return counted

    monkeypatch.setattr(QuarantineStore, "reason_counts", then_one_more)
    quarantine.digest(["postmaster@example.org"], start - dt.timedelta(hours=1))
    text = text_of(outbox.messages[0])
    ids = entries(text)
    counted_ids = sorted(row["id"] for row in quarantine.rows() if not row["subject"].startswith("late"))
    assert ids == counted_ids[-BOUND:]  # the newest BOUND of those counted
    assert text.startswith(f"Quarantine on mx.test: {BOUND + 200} messages\n") and "200 more messages of this period" in text

"""The virus notices of ``quarantine digest --notify-virus-recipients`` are bounded as the digest is:
the pass reads the period's rows a page at a time (after a virus wave it never holds them all),
tells each recipient once per message as before, and no field the sender wrote (Subject, sender,
reason) makes a long line in a notice.

SQLite in a temporary file; no mail is sent: ``reinject.send`` is replaced by a recorder.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from typing import Any

import pytest
from sqlalchemy import insert

from milterd import quarantine as quarantine_module
from milterd.quarantine import Quarantine, virus_notice
from milterd.store import schema, utcnow
from tests.harness import quarantine as quarantine_harness
from tests.harness.quarantine import Outbox, text_of

# The fixtures: a SQLite store in the test's directory (conf), its quarantine, the rows each of its reads
# returned, and what it would have mailed.
conf = quarantine_harness.conf
quarantine = quarantine_harness.quarantine
fetched = quarantine_harness.fetched
outbox = quarantine_harness.outbox

#: The page this test expects at most: the digest's bound (DIGEST_MAX_ENTRIES) is of the same order.
PAGE = getattr(quarantine_module, "NOTICE_PAGE", 500)
assert 50 <= PAGE <= 1000
#: Virus rows of the wave: more than two pages, not a multiple of one.
WAVE = 2 * PAGE + 37
#: No line of a notice is longer than this.
MAX_LINE = 1000


def store_rows(quarantine: Quarantine, count: int, start: dt.datetime, **columns: Any) -> list[int]:
    """Quarantine *count* virus messages, one a second from *start* (the rows only); *columns* replace the defaults,
    a function of the message's number when callable.  Returns their ids, oldest first."""
    rows = []
    for n in range(count):
        row = {
            "time": start + dt.timedelta(seconds=n), "mta_host": "mx.test", "queue_id": f"Q{n}", "client_addr": "192.0.2.1",
            "client_name": "unknown", "helo": "h", "sender": "a@example.org", "recipients": [f"user{n}@example.com"],
            "subject": f"invoice {n}", "score": 20.0, "reason": "virus Eicar-Signature", "symbols": {"CLAMAV_VIRUS": 20.0},
            "size": 100, "mode": "discard", "release_count": 0, "learned_ham": False,
        }
        row.update({key: value(n) if callable(value) else value for key, value in columns.items()})
        rows.append(row)
    with quarantine.store.engine.begin() as connection:
        connection.execute(insert(schema.quarantine), rows)
    return [row["id"] for row in quarantine.rows(limit=count)][::-1]


def test_a_virus_wave_is_read_a_page_at_a_time(quarantine: Quarantine, outbox: Outbox, fetched: list[int]) -> None:
    """Memory is bounded: no read returns more than a page, and each row is read once.  Most
    recipients were told already (a run before this one), so that few notices go out."""
    waiting = {0, PAGE - 1, PAGE, WAVE - 1}  # those left to tell: on each side of the pages' edges
    store_rows(quarantine, WAVE, utcnow() - dt.timedelta(hours=2), notified=lambda n: None if n in waiting else [f"user{n}@example.com"])
    fetched.clear()
    assert quarantine.notify_virus_recipients(utcnow() - dt.timedelta(hours=3)) == len(waiting)
    assert max(fetched) <= PAGE, fetched
    assert sum(fetched) == WAVE, fetched  # every row of the period read, none twice
    assert sorted(outbox.sent) == sorted(f"user{n}@example.com" for n in waiting)


def test_paged_every_recipient_is_told_once_newest_first_as_before(quarantine: Quarantine, outbox: Outbox, fetched: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """With small pages: the notices are those of one read of the whole period, in its order
    (newest message first); released and non-virus rows are skipped, a mailbox told once per
    message whatever its case, and a recipient already told is not told again."""
    monkeypatch.setattr(quarantine_module, "NOTICE_PAGE", 4, raising=False)
    start = utcnow() - dt.timedelta(hours=2)
    store_rows(quarantine, 3, start - dt.timedelta(days=3))  # before the period: not told
    ids = store_rows(
        quarantine, 11, start,
        recipients=lambda n: [f"Bob{n}@example.com", f"bob{n}@example.com", f"carol{n}@example.com"],
        symbols=lambda n: {"BAYES_SPAM": 12.0} if n == 5 else {"CLAMAV_VIRUS": 20.0},
        reason=lambda n: "Antivirus-Update.exe" if n == 5 else "virus Eicar-Signature",
        released_at=lambda n: start if n == 7 else None, released_by=lambda n: "admin" if n == 7 else None,
        notified=lambda n: [f"CAROL{n}@example.com"] if n == 2 else None,
    )
    fetched.clear()
    assert quarantine.notify_virus_recipients(start - dt.timedelta(hours=1)) == 2 * 11 - 2 * 2 - 1
    expected = []
    for n in reversed(range(11)):
        if n in (5, 7):
            continue
        expected += [f"Bob{n}@example.com"] + ([] if n == 2 else [f"carol{n}@example.com"])
    assert outbox.sent == expected
    assert max(fetched) <= 4
    assert quarantine.get(ids[0])["notified"] == ["Bob0@example.com", "carol0@example.com"]
    # A second run tells no one.
    assert quarantine.notify_virus_recipients(start - dt.timedelta(hours=1)) == 0
    assert len(outbox.sent) == len(expected)


def test_a_period_of_exactly_full_pages_is_read_whole(quarantine: Quarantine, outbox: Outbox, fetched: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quarantine_module, "NOTICE_PAGE", 5, raising=False)
    store_rows(quarantine, 10, utcnow() - dt.timedelta(hours=1))
    fetched.clear()
    assert quarantine.notify_virus_recipients(utcnow() - dt.timedelta(hours=2)) == 10
    assert sorted(outbox.sent) == sorted(f"user{n}@example.com" for n in range(10))
    assert max(fetched) <= 5 and sum(fetched) == 10  # the last page is empty


def test_a_long_subject_sender_or_reason_makes_no_long_line_in_a_notice(quarantine: Quarantine, outbox: Outbox) -> None:
    huge = "S" * 10_000 + "\u2028" * 10_000
    store_rows(quarantine, 1, utcnow() - dt.timedelta(minutes=5), subject=huge, sender="s" * 10_000 + "@example.org", reason="virus " + "r" * 10_000)
    assert quarantine.notify_virus_recipients(utcnow() - dt.timedelta(hours=1)) == 1
    [message] = outbox.messages
    text = text_of(message)
    assert max(len(line) for line in text.splitlines()) <= MAX_LINE
    assert len(message) < 5_000
    assert "\u2028" not in text
    lines = {line.split(":", 1)[0].strip(): line for line in text.splitlines() if line.startswith("  ")}
    assert lines["subject"].startswith("  subject: SSSS") and lines["subject"].endswith("…")
    assert lines["from"].startswith("  from:    <ssss") and lines["from"].endswith("…>")
    assert lines["found"].startswith("  found:   virus rrrr") and lines["found"].endswith("…")
    subject = email.message_from_bytes(message, policy=email.policy.default)["Subject"]
    assert subject == "Quarantined: " + "S" * 187  # the header as before: 200 characters


def test_a_short_notice_is_as_before(quarantine: Quarantine) -> None:
    """Fields within the width are only escaped, as they were."""
    when = dt.datetime(2026, 5, 1, 12, 30, tzinfo=dt.timezone.utc)
    row = {"id": 7, "time": when, "sender": "a@example.org", "subject": "invoice\r\nBcc: x", "reason": "virus Eicar-Signature"}
    subject, text = virus_notice(row, "postmaster@mx.test")
    assert subject == "Quarantined: invoice\\r\\nBcc: x"
    assert text == (
        "A message to you was stopped because it carries a virus; it was not delivered.\n\n"
        "  date:    2026-05-01 12:30 UTC\n"
        "  from:    <a@example.org>\n"
        "  subject: invoice\\r\\nBcc: x\n"
        "  found:   virus Eicar-Signature\n\n"
        "If you expected this message, ask postmaster@mx.test (quarantine id 7).\n"
    )

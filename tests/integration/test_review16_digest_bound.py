"""The quarantine digest after a spam wave, through the real Postfix with its default message_size_limit (10 MB).

Twenty thousand quarantined messages with 2 kB Subjects: a digest listing them all was a
mail of about 50 MB, which the re-injection smtpd refused (552 5.3.4), and the command held
every row in memory.  Bounded, it lists the newest ``DIGEST_MAX_ENTRIES``, arrives, says how
many more there are and the ``quarantine list`` command that shows them, which works.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine, insert

from milterd import quarantine as quarantine_module
from milterd.store import schema, utcnow
from tests.harness import pgdb
from tests.harness.memory import quarantine_cli_peak
from tests.harness.quarantine import open_quarantine, quarantine_config
from tests.harness.stack import Stack
from tests.integration.test_quarantine import NO_CHECKS, RULES

WAVE = 20_000
BOUND = 500  # milterd.quarantine.DIGEST_MAX_ENTRIES
PEAK_ABOVE_LIST = 40 * 1024 * 1024


@pytest.fixture(scope="module")
def stack(make_stack: Any) -> Stack:
    return make_stack({**NO_CHECKS, "database": {"busy_timeout": 5}}, RULES, postfix_extra={"message_size_limit": "10240000"})


def run(stack: Stack, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """``milterd -c CONF quarantine ARGS`` in a child: its result (text) and its peak RSS (bytes)."""
    return quarantine_cli_peak(stack, *args, text=True, timeout=600)


def test_a_spam_wave_digest_is_bounded_and_goes_through_postfix(stack: Stack) -> None:
    tag = uuid.uuid4().hex
    start = utcnow() - dt.timedelta(minutes=50)
    rows = [
        {
            "time": start + dt.timedelta(milliseconds=100 * n), "mta_host": "mx.test", "queue_id": f"Q{n}", "client_addr": "192.0.2.1",
            "client_name": "unknown", "helo": "h", "sender": "spam@example.net", "recipients": ["bob@example.com"],
            "subject": f"{tag} {n} " + "x" * 2000, "score": 12 + n / 10000, "reason": f"score {12 + n / 10000:g} >= quarantine 12",
            "symbols": {"BAYES_SPAM": 12.0}, "size": 100, "mode": "discard", "release_count": 0, "learned_ham": False,
        }
        for n in range(WAVE)
    ]
    engine = create_engine(stack.milterd.sections["database"]["url"])
    with engine.begin() as connection:
        connection.execute(insert(schema.quarantine), rows)
    engine.dispose()

    baseline_result, baseline = run(stack, "list", "--limit", "1")
    assert baseline_result.returncode == 0, baseline_result.stderr
    result, peak = run(stack, "digest", "--to", "postmaster@example.org", "--since", "1h")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == f"{WAVE} messages reported to postmaster@example.org ({BOUND} newest listed)"
    print(f"digest of {WAVE}: peak RSS {peak / 1048576:.1f} MiB, {(peak - baseline) / 1048576:.1f} MiB above list --limit 1")
    assert peak - baseline < PEAK_ABOVE_LIST, f"digest peaked {(peak - baseline) / 1048576:.1f} MiB above list --limit 1"

    [digest] = stack.sink.wait(1, timeout=60, match=lambda m: m.recipients == ["postmaster@example.org"])
    assert len(digest.data) < 2 * 1024 * 1024
    parsed = email.message_from_bytes(digest.data, policy=email.policy.default)
    assert str(parsed["Subject"]).endswith(f": {WAVE} messages")
    body = parsed.get_body(("plain",))  # type: ignore[attr-defined]
    assert body is not None
    text = str(body.get_content()).replace("\r\n", "\n")
    assert text.count(tag) == BOUND
    match = re.search(rf"{WAVE - BOUND} more messages of this period.*?\n\s*(milterd -c \S+ quarantine list --since \S+)\n", text, re.S)
    assert match, text[-3000:]
    # The command it names lists every message of the wave.
    args = match.group(1).split()
    assert args[3:5] == ["quarantine", "list"]
    listing, _peak = run(stack, *args[4:], "--json")
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert listing.stdout.count(tag) == WAVE


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A throw-away PostgreSQL database's URL (without PostgreSQL on 127.0.0.1:5432, run .ci/setup: an error, not a skip)."""
    with pgdb.required_database("the bounded digest on PostgreSQL") as url:
        yield url


def test_the_bounded_digest_on_postgresql(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counts by reason (GROUP BY) and the newest rows (LIMIT) as PostgreSQL runs them."""
    quarantine = open_quarantine(quarantine_config(tmp_path / "milter.conf", pg_url))
    sent: list[bytes] = []
    monkeypatch.setattr(quarantine_module.reinject, "send", lambda target, sender, to, message, helo, **kw: (sent.append(b"".join(message)), ({r: "250" for r in to}, {}))[1])
    start = utcnow() - dt.timedelta(minutes=30)
    rows = [
        {
            "time": start + dt.timedelta(seconds=n), "sender": "spam@example.net", "recipients": ["bob@example.com"], "subject": f"s {n}",
            "score": 12.0, "reason": "virus Eicar" if n % 2 else f"score {12 + n / 1000:g} >= quarantine 12", "symbols": {}, "size": 1,
        }
        for n in range(BOUND + 100)
    ]
    with quarantine.store.engine.begin() as connection:
        connection.execute(insert(schema.quarantine), rows)
    summary = quarantine.digest(["postmaster@example.org"], utcnow() - dt.timedelta(hours=1))
    assert summary == f"{BOUND + 100} messages reported to postmaster@example.org ({BOUND} newest listed)"
    text = email.message_from_bytes(sent[0], policy=email.policy.default).get_body(("plain",)).get_content()  # type: ignore[attr-defined]
    assert f"{(BOUND + 100) // 2:5}  virus Eicar" in text and "100 more messages of this period" in text
    assert len(re.findall(r"^#\d+  ", text, re.M)) == BOUND

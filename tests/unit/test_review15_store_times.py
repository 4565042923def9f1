"""Times and filters of the store's commands: an aware time read back is shown in UTC (PostgreSQL
returns it in the session's time zone), a --since/--older-than out of Python's dates is an argparse
error (not an OverflowError traceback), and ``quarantine list --sender`` ignores case as --recipient does."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from milterd import cli
from milterd.clock import as_utc
from milterd.quarantine import Quarantine
from milterd.store import MessageRecord
from milterd.store.quarantine import QuarantineWrite
from milterd.units import parse_since
from tests.harness import quarantine as quarantine_harness

# The fixtures: a config file and the quarantine of it (its store made current).
conf = quarantine_harness.conf
quarantine = quarantine_harness.quarantine

NEW_YORK = dt.timezone(dt.timedelta(hours=-5))


# --- as_utc ------------------------------------------------------------------------------------


def test_an_aware_time_is_converted_to_utc() -> None:
    stored = dt.datetime(2026, 12, 4, 15, 33, 7, tzinfo=dt.timezone.utc)
    as_read = stored.astimezone(NEW_YORK)  # what psycopg returns with the session's TimeZone at America/New_York
    got = as_utc(as_read)
    assert got is not None
    assert got.utcoffset() == dt.timedelta(0)
    assert f"{got:%Y-%m-%d %H:%M:%S}" == "2026-12-04 15:33:07"  # as `quarantine show` prints it, labelled UTC
    assert got == stored


def test_a_naive_time_is_taken_as_utc_and_none_stays_none() -> None:
    assert as_utc(dt.datetime(2026, 1, 2, 3, 4, 5)) == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert as_utc(None) is None


# --- times out of range -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["99999999d", "9999-12-31T23:59-01:00", "0001-01-01T00:00+01:00", "9" * 400 + "d"])
def test_since_out_of_range_is_a_value_error(value: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_since(value)


@pytest.mark.parametrize("command", [
    ["log", "--since", "99999999d"],
    ["log", "--until", "9999-12-31T23:59-01:00"],
    ["rules", "stats", "--since", "99999999d"],
    ["rules", "whatif", "--since", "9999-12-31T23:59-01:00", "--set", "x=1"],
    ["quarantine", "list", "--since", "9999-12-31T23:59-01:00"],
    ["quarantine", "digest", "--to", "postmaster@example.org", "--since", "99999999d"],
    ["quarantine", "purge", "--older-than", "99999999d"],
    ["quarantine", "purge", "--dry-run", "--older-than", "99999999999d"],
])
def test_out_of_range_arguments_are_argparse_errors(conf: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["-c", str(conf), *command])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    option = next(word for word in command if word in ("--since", "--until", "--older-than"))
    assert f"error: argument {option}: out of range: a time from the year 1 to 9999 (UTC), got " in err
    assert "Traceback" not in err


# --- list --sender ----------------------------------------------------------------------------


def store(quarantine: Quarantine, sender: str) -> int:
    """Quarantine one small message from *sender*; return its id."""
    record = MessageRecord(action="quarantine", sender=sender, recipients=["r@example.org"], subject="s")
    row = record.as_row()
    write = QuarantineWrite(row={
        "time": row["time"], "mta_host": "mx.test", "queue_id": "Q", "client_addr": "", "client_name": "", "helo": "",
        "sender": row["sender"], "recipients": row["recipients"], "subject": "s", "score": 9.0, "reason": "r",
        "symbols": {}, "size": 6, "mode": "discard", "release_count": 0, "learned_ham": False,
    }, chunks=lambda: iter([b"a\r\n\r\nb\r\n"]))
    quarantine.store.log_message(record, write)
    return int(quarantine.rows(limit=1)[0]["id"])


def test_list_sender_ignores_case(quarantine: Quarantine, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mixed = store(quarantine, "Alice.Smith@Example.ORG")
    store(quarantine, "bob@example.org")
    assert [row["id"] for row in quarantine.rows(sender="alice.smith@example.org")] == [mixed]
    assert [row["id"] for row in quarantine.rows(sender="ALICE.SMITH@EXAMPLE.ORG", limit=1)] == [mixed]
    assert [row["id"] for row in quarantine.repo.rows(sender="alice.smith@EXAMPLE.org")] == [mixed]
    assert quarantine.rows(sender="alice@example.org") == []
    capsys.readouterr()
    assert cli.main(["-c", str(conf), "quarantine", "list", "--sender", "alice.smith@example.org"]) == 0
    out = capsys.readouterr().out
    assert "Alice.Smith@Example.ORG" in out and "bob@example.org" not in out

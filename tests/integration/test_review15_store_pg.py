"""On PostgreSQL: times read back are UTC whatever the session's time zone, and ``list --sender`` ignores case."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg

from tests.harness import pgdb
from tests.harness.quarantine import open_quarantine, quarantine_config
from tests.unit.test_review15_store_times import store


def test_times_are_utc_in_another_session_time_zone_and_sender_ignores_case(tmp_path: Path) -> None:
    with pgdb.required_database("reading times back in another time zone") as url:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(host=pgdb.HOST, port=pgdb.PORT, user=pgdb.USER, dbname=name, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" SET timezone TO \'America/New_York\'')
        quarantine = open_quarantine(quarantine_config(tmp_path / "milter.conf", url))
        try:
            before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
            row_id = store(quarantine, "Alice@Example.ORG")
            row = quarantine.get(row_id)
            assert row["time"].utcoffset() == dt.timedelta(0)
            assert before <= row["time"] <= before + dt.timedelta(minutes=1)
            assert [r["id"] for r in quarantine.rows(sender="alice@example.org", limit=1)] == [row_id]
        finally:
            quarantine.store.close()

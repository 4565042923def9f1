"""``--until`` for ``milterd log``, ``rules stats`` and ``rules whatif``: a period that ends.

An administrator compares last week with this one (``--since 14d --until 7d``) or
looks at the day before a change; the rows were only ever "from --since to now".
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import insert

from milterd.cli import main
from milterd.config import load_config
from milterd.store import MessageRecord, Store, schema
from tests.unit.test_log_streaming import empty_log

DAY0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """Ten days of log, one row a day at noon (queue ids D0 … D9), one out of time order (an older row with a later id)."""
    path, store = empty_log(tmp_path)
    days = [*range(10), 2]
    rows = [MessageRecord(action="reject" if day % 2 else "accept", queue_id=f"D{day}" if n < 10 else "LATE2", symbols={"DAY_ODD": 1.0} if day % 2 else {},
                          time=(DAY0 + dt.timedelta(days=day, hours=12)).replace(tzinfo=None)).as_row() for n, day in enumerate(days)]
    with store.engine.begin() as connection:
        connection.execute(insert(schema.messages), rows)
    store.close()
    return path


def _store(conf: Path) -> Store:
    return Store(load_config(conf).database)


def test_the_store_reads_a_period_that_ends(conf: Path) -> None:
    store = _store(conf)
    since, until = DAY0 + dt.timedelta(days=2), DAY0 + dt.timedelta(days=5)
    oldest_first = [r["queue_id"] for r in store.iter_messages(since=since, until=until, batch=2)]
    assert oldest_first == ["D2", "D3", "D4", "LATE2"]
    assert [r["queue_id"] for r in store.each_message(since=since, until=until, batch=2)] == ["LATE2", "D4", "D3", "D2"]
    assert [r["queue_id"] for r in store.each_message(until=until, limit=2)] == ["LATE2", "D4"]
    assert [r["queue_id"] for r in store.messages(until=DAY0 + dt.timedelta(days=1))] == ["D0"]
    assert list(store.iter_messages(until=DAY0)) == [] and list(store.each_message(until=DAY0)) == []  # before the first row
    store.close()


def test_log_until(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["log", "-c", str(conf), "--json", "--limit", "0", "--since", "2026-11-08", "--until", "2026-11-10"]) == 0
    assert [r["queue_id"] for r in json.loads(capsys.readouterr().out)] == ["D8", "D7"]


def test_rules_stats_and_whatif_until(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["rules", "stats", "-c", str(conf), "--json", "--until", "2026-11-04"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["messages"] == 4  # D0 … D3 and the late row of day 2
    assert main(["rules", "whatif", "-c", str(conf), "--json", "--set", "actions.reject=false", "--since", "2026-11-04", "--until", "2026-11-06"]) == 0
    whatif = json.loads(capsys.readouterr().out)
    assert whatif["messages"] == 2  # D4 and D5

"""``[database] log_retention`` on PostgreSQL (a fresh database): old log rows go, those quarantined mail points at
stay (tests/unit/test_log_retention.py has the rest, on SQLite)."""

from __future__ import annotations

import pytest

from tests.harness import pgdb
from tests.unit.test_log_retention import old_rows_go_but_those_of_held_messages


def test_old_rows_go_but_those_of_held_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    with pgdb.upgraded_store("the message log's retention") as store:
        old_rows_go_but_those_of_held_messages(store, monkeypatch)

"""``[database] log_retention`` on PostgreSQL (a fresh database): old log rows go, those quarantined mail points at
stay (tests/unit/test_log_retention.py has the rest, on SQLite)."""

from __future__ import annotations

import pytest

from tests.harness import pgdb
from tests.unit.test_log_retention import old_rows_go_but_those_of_held_messages, quarantine_links_are_indexed


def test_old_rows_go_but_those_of_held_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    with pgdb.upgraded_store("the message log's retention") as store:
        old_rows_go_but_those_of_held_messages(store, monkeypatch)


def test_the_quarantine_s_link_to_the_log_is_indexed() -> None:
    with pgdb.upgraded_store("the message log's retention") as store:
        quarantine_links_are_indexed(store)

"""Quarantine review (twenty-ninth session): a confirmed message is no longer a false positive, and
spamd is taught under the ``User:`` its scan used.

SQLite in a temporary file; no mail is sent (``reinject.send`` replaced) and no spamd is asked
(``SpamdClient`` replaced by a recorder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from milterd import quarantine as quarantine_module
from milterd.quarantine import Quarantine
from milterd.store import schema
from tests.harness.milterd import write_config
from tests.harness.quarantine import open_quarantine
from tests.unit.test_quarantine_lifecycle_review import add, stub_send


def delivered(target: Any, sender: str, recipients: list[str], message: Any, helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
    return {r: "250 2.0.0 Ok" for r in recipients}, {}


class Told:
    """A stand-in for SpamdClient recording each TELL's class and user."""

    calls: list[tuple[str, str]] = []

    def __init__(self, address: Any, timeout: float = 60.0, user: str = "") -> None:
        self.user = user

    def tell(self, message: bytes, message_class: str = "ham", user: str | None = None) -> bool:
        Told.calls.append((message_class, self.user if user is None else user))
        return True


def open_with(tmp_path: Path, spamd_user: str) -> Quarantine:
    conf = write_config(tmp_path / "milter.conf", {
        "milter": {"hostname": "mx.test"},
        "database": {"url": f"sqlite:///{tmp_path / 'q.sqlite'}"},
        "quarantine": {"release_smtp": "127.0.0.1:9", "report_from": "postmaster@mx.test"},
        "spamd": {"enabled": True, "address": "tcp:127.0.0.1:9", "user": spamd_user},
    })
    return open_quarantine(conf)


def flags(quarantine: Quarantine, row_id: int) -> tuple[bool, bool]:
    """(quarantine.learned_ham, messages.released_as_ham) of *row_id*."""
    q, m = schema.quarantine, schema.messages
    with quarantine.store.engine.connect() as connection:
        row = connection.execute(select(q.c.learned_ham, m.c.released_as_ham).join_from(q, m, q.c.message_log_id == m.c.id).where(q.c.id == row_id)).one()
    return bool(row[0]), bool(row[1])


@pytest.mark.parametrize(("setting", "expected"), [("milterd-bayes", "milterd-bayes"), ("@recipient", "bob@example.com"), ("", "")])
def test_release_ham_and_confirm_teach_spamd_as_the_scan_s_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, expected: str) -> None:
    """Under a per-user Bayes the lesson must land in the database that scores the user's mail: both TELLs
    went without ``User:`` (spamd's default user) while the scan sent ``[spamd] user``."""
    quarantine = open_with(tmp_path, setting)
    row_id = add(quarantine)
    stub_send(monkeypatch, delivered)
    monkeypatch.setattr(quarantine_module, "SpamdClient", Told)
    Told.calls = []
    assert quarantine.release(row_id, who="admin", ham=True).ok
    quarantine.confirm(row_id)
    assert Told.calls == [("ham", expected), ("spam", expected)]


def test_confirm_after_release_as_ham_is_no_longer_a_false_positive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`release --ham` then `confirm`: the classifier's counts moved to spam, but the log row stayed
    released_as_ham (rule statistics counted the confirmed spam as a false positive) and the row learned_ham."""
    quarantine = open_with(tmp_path, "")
    row_id = add(quarantine)
    stub_send(monkeypatch, delivered)
    monkeypatch.setattr(quarantine_module, "SpamdClient", Told)
    assert quarantine.release(row_id, who="admin", ham=True).ok
    assert flags(quarantine, row_id) == (True, True)
    quarantine.confirm(row_id)
    assert flags(quarantine, row_id) == (False, False)

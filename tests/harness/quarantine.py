"""A quarantine on a fresh store, as the quarantine's unit and PostgreSQL tests use it.

``conf`` and ``quarantine`` are pytest fixtures (a SQLite store in the test's
directory); a test module takes them with ``from tests.harness.quarantine import
conf, quarantine``.  :func:`quarantine_config` and :func:`open_quarantine` build the
same for another database URL (a PostgreSQL test database).  ``fetched`` counts the
rows each read of the store returns, ``outbox`` records what the quarantine would have
mailed (no mail is sent), and :func:`text_of` is the text of a digest or notice.
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import pytest

from milterd import quarantine as quarantine_module
from milterd.config import load_config
from milterd.quarantine import Quarantine
from milterd.store import Store
from milterd.store.quarantine import QuarantineStore
from tests.harness.milterd import write_config


def quarantine_config(path: Path, database_url: str, hostname: str = "mx.test", release_smtp: str = "127.0.0.1:9") -> Path:
    """Write at *path* a milter.conf whose quarantine sends to *release_smtp*: by default a closed port
    (tests replace the sending), else a test's SMTP server on loopback."""
    return write_config(path, {
        "milter": {"hostname": hostname},
        "database": {"url": database_url},
        "quarantine": {"release_smtp": release_smtp, "report_from": "postmaster@mx.test"},
    })


def open_quarantine(conf: Path) -> Quarantine:
    """The quarantine of the store *conf* names, its schema made current."""
    config = load_config(conf)
    store = Store(config.database)
    store.upgrade()
    return Quarantine(store, config)


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    """A milter.conf with a SQLite store in the test's directory."""
    return quarantine_config(tmp_path / "milter.conf", f"sqlite:///{tmp_path / 'q.sqlite'}")


@pytest.fixture()
def quarantine(conf: Path) -> Quarantine:
    """The quarantine of :func:`conf`'s store."""
    return open_quarantine(conf)


class Outbox:
    """The messages that would have been mailed, and to whom (every recipient accepted)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.sent: list[str] = []

    def send(self, target: Any, sender: str, recipients: list[str], message: Any, helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        self.messages.append(b"".join(message))
        self.sent.extend(recipients)
        return {r: "250 2.0.0 Ok" for r in recipients}, {}


@pytest.fixture()
def outbox(monkeypatch: pytest.MonkeyPatch) -> Outbox:
    """An :class:`Outbox` in place of the quarantine's ``reinject.send``."""
    box = Outbox()
    monkeypatch.setattr(quarantine_module.reinject, "send", box.send)
    return box


@pytest.fixture()
def fetched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many rows each read of the quarantine's store returned (a test clears it once its rows are stored)."""
    counts: list[int] = []
    fetch = QuarantineStore._fetch

    def counting(self: QuarantineStore, query: Any) -> list[dict[str, Any]]:
        rows = fetch(self, query)
        counts.append(len(rows))
        return rows

    monkeypatch.setattr(QuarantineStore, "_fetch", counting)
    return counts


def text_of(message: bytes) -> str:
    """The text/plain body of *message* (a digest or a notice the quarantine mailed), its lines ending LF."""
    part = email.message_from_bytes(message, policy=email.policy.default)
    body = part.get_body(("plain",))  # type: ignore[attr-defined]
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")

"""A quarantine on a fresh store, as the quarantine's unit and PostgreSQL tests use it.

``conf`` and ``quarantine`` are pytest fixtures (a SQLite store in the test's
directory); a test module takes them with ``from tests.harness.quarantine import
conf, quarantine``.  :func:`quarantine_config` and :func:`open_quarantine` build the
same for another database URL (a PostgreSQL test database).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.config import load_config
from milterd.quarantine import Quarantine
from milterd.store import Store
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

"""A relative SQLite path is relative to each command's working directory (review, thirty-sixth session).

README's cron line ran ``quarantine digest`` from cron's home: "has no schema yet: run milterd db upgrade", and
following that advice made a second, empty store there, which the digest then read (0 messages, exit 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.config import Config, DatabaseSection
from milterd.diagnostics import probe_database
from milterd.store import NoSchemaError, Store, relative_sqlite


def test_a_relative_store_missing_here_is_named_with_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store(DatabaseSection(url="sqlite:///milterd.sqlite"))
    try:
        with pytest.raises(NoSchemaError) as info:
            store.require_schema()
    finally:
        store.close()
    assert str(info.value) == (f"the database sqlite:///milterd.sqlite is relative to the working directory: no such file {tmp_path / 'milterd.sqlite'} "
                               "(run this command where milterd serve runs, or write an absolute path in [database] url; "
                               "where serve has not made it yet, `milterd db upgrade` here does)")
    assert not (tmp_path / "milterd.sqlite").exists()


def test_doctor_warns_of_a_relative_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store(DatabaseSection(url="sqlite:///milterd.sqlite"))
    store.upgrade()
    store.close()
    [finding] = probe_database(Config())
    assert finding.status == "warn" and f"relative to the working directory ({tmp_path / 'milterd.sqlite'})" in finding.detail
    [absolute] = probe_database(Config().with_changes({"database.url": f"sqlite:///{tmp_path / 'milterd.sqlite'}"}))
    assert absolute.status == "ok"


def test_a_removed_working_directory_is_no_place_of_a_store(monkeypatch: pytest.MonkeyPatch) -> None:
    # A second look: config show in a removed working directory ended in a traceback from Path.cwd().
    def gone() -> Path:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(Path, "cwd", gone)
    assert relative_sqlite("sqlite:///milterd.sqlite") is None

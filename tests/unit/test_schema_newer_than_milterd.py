"""A store whose schema a newer milterd upgraded (another MX host): every path says so, none with a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from milterd.cli import main
from milterd.config import DatabaseSection, load_config
from milterd.diagnostics import probe_database
from milterd.store import Store, StoreError

NEWER = "0999"


@pytest.fixture
def newer(tmp_path: Path) -> Path:
    """A milter.conf whose SQLite store is at a schema version this milterd has no migration for."""
    store = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 'log.sqlite'}"))
    store.upgrade()
    with store.engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :newer"), {"newer": NEWER})
    store.close()
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "log.sqlite"}"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    return conf


def _store(conf: Path) -> Store:
    return Store(DatabaseSection(url=f"sqlite:///{conf.parent / 'log.sqlite'}"))


@pytest.mark.parametrize("auto_upgrade", [True, False])
def test_serve_is_refused_with_the_reason(newer: Path, auto_upgrade: bool) -> None:
    with pytest.raises(StoreError) as refused:
        _store(newer).ensure_schema(auto_upgrade)
    message = str(refused.value)
    assert f"at {NEWER}, which this milterd does not know" in message and "newer milterd" in message
    assert "db upgrade" not in message  # upgrading the database cannot help: this milterd is the older one


def test_upgrade_refuses_and_leaves_the_version(newer: Path) -> None:
    store = _store(newer)
    with pytest.raises(StoreError, match="does not know"):
        store.upgrade()
    assert store.schema_version() == NEWER
    assert store.known_version(store.head_version()) and not store.known_version(NEWER)


def test_db_commands_say_so(newer: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade", "-c", str(newer)]) == 1
    err = capsys.readouterr().err
    assert "does not know" in err and "cannot reach" not in err and "Traceback" not in err
    assert main(["db", "version", "-c", str(newer)]) == 1
    captured = capsys.readouterr()
    assert f"schema at {NEWER}" in captured.out and "does not know" in captured.err


def test_doctor_fails_it_instead_of_promising_an_upgrade(newer: Path) -> None:
    finding = probe_database(load_config(newer))[0]
    assert finding.status == "fail" and "does not know" in finding.detail and "will upgrade" not in finding.detail

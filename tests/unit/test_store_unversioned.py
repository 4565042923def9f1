"""milterd's tables in a database without a schema version (thirty-eighth review).

``db version`` and ``log`` said "no schema yet: run milterd db upgrade", ``doctor`` that serve would upgrade
it; ``db upgrade`` and ``serve`` then failed on "table messages already exists": advice that went in a circle.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from milterd.cli import main
from milterd.config import DatabaseSection, load_config
from milterd.diagnostics import probe_database
from milterd.store import Store, StoreError
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import write_config

SAID = "holds milterd's tables but no schema version"


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "store.sqlite"
    store = Store(DatabaseSection(url=f"sqlite:///{path}"))
    store.upgrade()
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE alembic_version")
    return write_config(tmp_path / "milter.conf", with_sections(NO_CHECKS, {"database": {"url": f"sqlite:///{path}"}}))


@pytest.mark.parametrize("command", [["db", "version"], ["db", "upgrade"], ["log"]])
def test_the_cli_says_the_tables_carry_no_version(conf: Path, command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "-c", str(conf)]) == 1
    err = capsys.readouterr().err
    assert SAID in err and "no schema yet" not in err and "already exists" not in err


@pytest.mark.parametrize("auto_upgrade", [False, True])
def test_serve_s_schema_check_and_doctor_say_so_too(conf: Path, auto_upgrade: bool) -> None:
    config = load_config(conf)
    store = Store(config.database)
    try:
        with pytest.raises(StoreError, match=SAID):
            store.ensure_schema(auto_upgrade)
        with pytest.raises(StoreError, match=SAID):
            store.require_schema()
    finally:
        store.close()
    [finding] = probe_database(config)
    assert finding.status == "fail" and SAID in finding.detail


def test_a_missing_file_is_still_not_made_by_asking(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "none.sqlite"
    conf = write_config(tmp_path / "milter.conf", with_sections(NO_CHECKS, {"database": {"url": f"sqlite:///{path}"}}))
    assert main(["db", "version", "-c", str(conf)]) == 1
    assert "no schema yet" in capsys.readouterr().err
    assert not path.exists()

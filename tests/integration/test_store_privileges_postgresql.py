"""A PostgreSQL login that may read milterd's tables but not write them (thirty-eighth review).

PostgreSQL grants per table: such a login passed every check at start (the schema current, ``doctor`` OK), the
socket opened, and every message was answered 451 (with ``on_error = "accept"``, accepted with no log row);
the housekeeping jobs logged tracebacks.  ``serve`` now refuses to start, and ``doctor`` fails, naming what
the login lacks.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import make_url

from milterd.config import DatabaseSection, load_config
from milterd.diagnostics import probe_database
from milterd.store import Store, StoreError
from tests.conftest import NO_CHECKS, with_sections
from tests.harness import pgdb
from tests.harness.milterd import Milterd, write_config

pytestmark = pytest.mark.integration


@pytest.fixture()
def reader() -> Iterator[tuple[str, str, str]]:
    """(owner's URL, a reader's URL, the reader's role): a current schema, the reader granted SELECT only."""
    role = f"milterd_test_reader_{uuid.uuid4().hex[:8]}"
    with pgdb.upgraded_store("a login without write privileges") as store:
        owner = store.engine.url.render_as_string(hide_password=False)
        database = store.engine.url.database
        with pgdb._admin() as admin:  # noqa: SLF001 - the harness's superuser connection
            admin.execute(f'CREATE ROLE "{role}" LOGIN')
        with store.engine.begin() as connection:
            connection.exec_driver_sql(f'GRANT USAGE ON SCHEMA public TO "{role}"')
            connection.exec_driver_sql(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
        try:
            yield owner, make_url(owner).set(username=role).render_as_string(hide_password=False), role
        finally:
            with store.engine.begin() as connection:
                connection.exec_driver_sql(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{role}"')
                connection.exec_driver_sql(f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM "{role}"')
                connection.exec_driver_sql(f'REVOKE ALL ON SCHEMA public FROM "{role}"')
            store.close()
            with pgdb._admin() as admin:  # noqa: SLF001
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_a_login_that_cannot_write_is_refused_with_what_it_lacks(reader: tuple[str, str, str], tmp_path: Path) -> None:
    owner, url, role = reader
    for auto_upgrade in (False, True):
        store = Store(DatabaseSection(url=url))
        try:
            with pytest.raises(StoreError) as info:
                store.ensure_schema(auto_upgrade)
        finally:
            store.close()
        assert "may not write milterd's tables" in str(info.value)
        assert "INSERT, UPDATE, DELETE on messages;" in str(info.value) and "USAGE on public.messages_id_seq" in str(info.value)
        assert "SELECT" not in str(info.value)

    config = load_config(write_config(tmp_path / "milter.conf", with_sections(NO_CHECKS, {"database": {"url": url}})))
    [finding] = probe_database(config)
    assert finding.status == "fail" and "INSERT, UPDATE, DELETE on quarantine;" in finding.detail

    milterd = Milterd(tmp_path / "serve", with_sections(NO_CHECKS, {"database": {"url": url}}))
    with pytest.raises(RuntimeError) as started:
        milterd.start()
    assert "may not write milterd's tables" in str(started.value) and "INSERT, UPDATE, DELETE on messages;" in str(started.value)
    assert "Traceback" not in str(started.value)

    # Granted what it needs, the same login passes.
    owner_store = Store(DatabaseSection(url=owner))
    try:
        with owner_store.engine.begin() as connection:
            connection.exec_driver_sql(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"')
            connection.exec_driver_sql(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    finally:
        owner_store.close()
    store = Store(DatabaseSection(url=url))
    try:
        store.ensure_schema(False)
        assert store.missing_privileges() == []
    finally:
        store.close()
    [finding] = probe_database(config)
    assert finding.status == "ok", finding.detail

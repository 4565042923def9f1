"""Two MX hosts share one PostgreSQL store and one was upgraded first: its milterd
upgraded the schema to a version the other host's milterd does not know.  The
older milterd, really started as ``milterd serve`` in front of a real Postfix,
refuses to start with the reason (no traceback), and one already running keeps
filtering mail when a reload meets that schema."""

from __future__ import annotations

import signal
import time
import uuid
from typing import Callable, Iterator

import pytest
import sqlalchemy as sa

from milterd.config import DatabaseSection
from milterd.store import Store
from tests.conftest import message
from tests.harness import pgdb
from tests.harness.milterd import Milterd
from tests.harness.stack import Stack, stack_root

#: A schema version no milterd release has (yet).
NEWER = "0999"
REASON = f"the database schema is at {NEWER}, which this milterd does not know"


@pytest.fixture
def shared_url() -> Iterator[str]:
    with pgdb.required_database("the shared-store tests") as url:
        yield url


def upgraded_by_a_newer_host(url: str) -> None:
    """Stamp the shared store as a newer milterd's upgrade would leave it."""
    store = Store(DatabaseSection(url=url))
    try:
        store.upgrade()
        with store.engine.begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = :newer"), {"newer": NEWER})
    finally:
        store.close()


def test_an_older_milterd_refuses_to_start_with_the_reason(shared_url: str) -> None:
    upgraded_by_a_newer_host(shared_url)
    milterd = Milterd(stack_root() / "milterd", {"database": {"url": shared_url}})
    with pytest.raises(RuntimeError) as refused:
        milterd.start()
    assert "milterd exited with 1" in str(refused.value)
    assert REASON in milterd.stderr() and "install that version on this host too" in milterd.stderr()
    assert "Traceback" not in milterd.stderr()


def test_a_running_milterd_keeps_filtering_when_a_reload_meets_a_newer_schema(make_stack: Callable[..., Stack], shared_url: str) -> None:
    stack = make_stack({"database": {"url": shared_url}})
    assert stack.send(message(subject="before")) == {}
    upgraded_by_a_newer_host(shared_url)  # the other host's milterd, upgraded, started
    stack.milterd.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reload refused" not in stack.milterd.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"reload refused, the running configuration stays: {REASON}" in stack.milterd.stderr()
    subject = f"after-{uuid.uuid4().hex[:8]}"
    assert stack.send(message(subject=subject)) == {}
    [delivered] = stack.sink.wait(1, match=lambda m: any(subject in s for s in m.header("Subject")))
    assert delivered.header("X-Spam-Status"), "scanned by the running milterd"
    assert [r["subject"] for r in stack.milterd.log_json() if r["subject"] == subject] == [subject]
    assert "Traceback" not in stack.milterd.stderr()

"""A worker whose every end-of-message thread is stuck (checks in calls that never return) is wedged: each later
message that needs one waits its whole budget for a 451 (supervisor review, thirtieth session).  The worker's
heartbeat stops then, and the supervisor replaces it (tests/integration/test_supervisor_review30.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from milterd.message.model import Session
from milterd.message.pipeline import EOM_THREADS
from tests.harness.pipeline import scanner_pipeline
from tests.harness.postfix import free_port


def test_every_eom_thread_held_past_twice_the_budget_is_wedged(tmp_path: Path) -> None:
    down = f"tcp:127.0.0.1:{free_port()}"
    pipeline = scanner_pipeline(tmp_path, down, down)
    check = pipeline.services.checks[0]
    release = threading.Event()
    try:
        pipeline.eom_budget = 0.0  # so a call held at all is held past it
        held = [pipeline._executor.submit(pipeline._pooled, check, Session(client_addr="192.0.2.1"), lambda _c: release.wait(30) and []) for _ in range(EOM_THREADS - 1)]  # noqa: SLF001
        for future in held:
            assert not future.done()
        assert not pipeline.wedged()  # one thread still free
        held.append(pipeline._executor.submit(pipeline._pooled, check, Session(client_addr="192.0.2.1"), lambda _c: release.wait(30) and []))  # noqa: SLF001
        while len(pipeline._running) < EOM_THREADS:  # noqa: SLF001 - the last one started
            threading.Event().wait(0.01)
        assert pipeline.wedged()
        pipeline.eom_budget = 3600.0
        assert not pipeline.wedged()  # held, but not for twice the budget
    finally:
        release.set()
        pipeline.shutdown()
    for future in held:
        assert future.result(10) == []
    assert not pipeline.wedged() and pipeline._running == {}  # noqa: SLF001


def test_one_check_held_in_a_milter_thread_past_twice_the_budget_is_wedged(tmp_path: Path) -> None:
    """Thirty-first session's fuzzing: a zip made the attachments check loop for hours in the milter's own
    thread, where no end-of-message budget reaches and the heartbeat went on; such a worker is wedged now."""
    from typing import ClassVar

    from milterd.checks import Check, Hits
    from milterd.message.model import Envelope, Spool

    release = threading.Event()

    class Looping(Check):
        name: ClassVar[str] = "test_looping"

        def on_eom(self, session: Session, envelope: Envelope) -> Hits:
            release.wait(30)
            return []

    down = f"tcp:127.0.0.1:{free_port()}"
    pipeline = scanner_pipeline(tmp_path, down, down)
    session = Session(client_addr="192.0.2.1")
    milter_thread = threading.Thread(target=pipeline._eom_tier, args=(session, Envelope(spool=Spool(1024)), [Looping(pipeline.services)]))  # noqa: SLF001
    try:
        pipeline.eom_budget = 3600.0
        milter_thread.start()
        while not pipeline._running_here:  # noqa: SLF001 - the check started
            threading.Event().wait(0.01)
        assert not pipeline.wedged()  # held, but not for twice the budget
        pipeline.eom_budget = 0.0
        assert pipeline.wedged()
    finally:
        release.set()
        milter_thread.join(10)
        pipeline.shutdown()
    assert not pipeline.wedged() and pipeline._running_here == {}  # noqa: SLF001

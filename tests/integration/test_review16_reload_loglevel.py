"""Review 16, through the real Postfix: a reload (SIGHUP) applies a changed ``[milter] log_level``
to the supervisor and to the workers it starts, as ``postfix reload`` applies most of main.cf.

On the old code (5071120) the reload only warned "[milter] log_level changed; that takes a
restart" and kept the running level: an administrator raising it to diagnose a problem saw
nothing more until a restart.  Here the level goes from warning (no summary lines) to info (a
summary line per message, written by the workers) and back.
"""

from __future__ import annotations

import signal
import time
import uuid
from typing import Any, Callable

from tests.conftest import NO_CHECKS, message
from tests.harness.stack import Stack


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _delivered(stack: Stack, sender: str) -> None:
    """Send a message from *sender* and wait until it is delivered and its row is in the store."""
    stack.send(message(subject=sender), sender=sender)
    assert stack.sink.wait(1, match=lambda m: m.sender == sender), sender
    assert _wait_for(lambda: any(r["sender"] == sender for r in stack.milterd.log_json()))


def _reload_to(stack: Stack, old: str, new: str) -> None:
    """Rewrite log_level from *old* to *new*, SIGHUP, and wait until every worker was replaced."""
    before = set(stack.milterd.workers())
    text = stack.milterd.config.read_text()
    assert f'log_level = "{old}"' in text
    stack.milterd.config.write_text(text.replace(f'log_level = "{old}"', f'log_level = "{new}"'))
    stack.milterd.signal(signal.SIGHUP)
    assert _wait_for(lambda: len(stack.milterd.workers()) == 2 and not set(stack.milterd.workers()) & before, timeout=60), stack.milterd.stderr()
    time.sleep(0.3)  # the new workers reach accept()


def test_fix_a_reload_applies_a_new_log_level(make_stack: Any) -> None:
    stack = make_stack({**NO_CHECKS, "milter": {"workers": 2, "log_level": "warning"}})
    quiet = f"quiet-{uuid.uuid4().hex[:12]}@example.org"
    _delivered(stack, quiet)
    assert f"from=<{quiet}>" not in stack.milterd.stderr()  # at warning: no summary line

    _reload_to(stack, "warning", "info")
    log = stack.milterd.stderr()
    assert "takes a restart" not in log, log  # the old code: "[milter] log_level changed; that takes a restart, keeping warning"
    # The supervisor logs at info now: its own lines of this reload, from the switch on.
    assert "reload: [milter] log_level is now info (was warning)" in log, log
    assert _wait_for(lambda: "reload done" in stack.milterd.stderr()), stack.milterd.stderr()
    # The workers too: the summary line of each message (several connections, so that both workers serve).
    loud = [f"loud{n}-{uuid.uuid4().hex[:12]}@example.org" for n in range(4)]
    for sender in loud:
        _delivered(stack, sender)
    assert _wait_for(lambda: all(f"from=<{sender}>" in stack.milterd.stderr() for sender in loud)), stack.milterd.stderr()[-3000:]

    # And back down: the next reload's workers write no summary line again.
    _reload_to(stack, "info", "warning")
    again = f"again-{uuid.uuid4().hex[:12]}@example.org"
    _delivered(stack, again)
    time.sleep(0.5)
    assert f"from=<{again}>" not in stack.milterd.stderr()

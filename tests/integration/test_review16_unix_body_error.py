"""Review 16, through the real Postfix: an internal error while milterd receives the body (its
spool directory gone, so the body cannot be spooled past spool_memory) is answered 451 4.3.0 and
*logged*: a row with action tempfail and the error as reason, as an internal error at end of
message is.

On the old code (5071120) the client got the 451 but milterd wrote no row (the README said "no
row, since end of data was not reached"): ``milterd log`` and rule tuning never saw the attempt.
Over a unix socket the body gets no reply, so the 451 waits for end of message; over TCP it is
answered at the body.  Both are tested: the defect did not depend on the socket.
"""

from __future__ import annotations

import shutil
import smtplib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NO_CHECKS, message
from tests.harness.stack import Stack, stack_root


@pytest.fixture(scope="module", params=["unix", "inet"])
def stack(make_stack: Any, request: pytest.FixtureRequest) -> Stack:
    root = stack_root()
    spool = root / "spool"
    spool.mkdir()
    milter: dict[str, Any] = {"workers": 1, "spool_memory": 1024, "spool_dir": str(spool)}
    socket = None
    if request.param == "unix":
        milter["socket_mode"] = "0666"  # Postfix's smtpd (user postfix) must reach the socket
        socket = f"unix:{root}/run/milterd.sock"
    built: Stack = make_stack({**NO_CHECKS, "milter": milter}, socket=socket)
    return built


def logged(stack: Stack, subject: str, timeout: float = 30.0) -> dict[str, Any]:
    """The one log row of the message with *subject*."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in stack.milterd.log_json() if subject in (r.get("subject") or "")]
        if rows or time.monotonic() > deadline:
            assert len(rows) == 1, f"rows for {subject}: {rows}\n{stack.milterd.stderr()[-3000:]}"
            return rows[0]
        time.sleep(0.3)


def test_fix_an_internal_error_in_the_body_is_answered_451_and_logged(stack: Stack) -> None:
    spool = Path(stack.milterd.sections["milter"]["spool_dir"])
    tag = f"body-error-{uuid.uuid4().hex}"
    big = "x" * 76 + "\r\n"
    shutil.rmtree(spool)  # the temporary directory gone while milterd runs
    try:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            stack.send(message(subject=tag, body=big * 100))  # 7.8 KB: past spool_memory
    finally:
        spool.mkdir()
    assert caught.value.smtp_code == 451 and b"4.3.0" in caught.value.smtp_error, caught.value
    assert "internal error at body" in stack.milterd.stderr()
    row = logged(stack, tag)  # the old code: no row at all
    assert row["action"] == "tempfail", row
    assert row["reason"].startswith("internal error: FileNotFoundError"), row
    assert row["sender"] == "alice@example.org" and row["recipients"] == ["bob@example.com"], row
    assert row["queue_id"], row  # Postfix's queue id, as for any row: grep-able in mail.log
    # The summary line in milterd's log, keyed by that queue id as Postfix's own lines are.
    assert f"{row['queue_id']}: action=tempfail " in stack.milterd.stderr()
    assert stack.sink.with_subject(tag) == []  # never delivered

    # The directory back: the next message, on a new connection, passes and is logged as usual.
    after = f"body-after-{uuid.uuid4().hex}"
    stack.send(message(subject=after, body=big * 100))
    assert stack.sink.wait(1, match=lambda m: any(after in s for s in m.header("Subject")))
    assert logged(stack, after)["action"] == "accept"
    assert logged(stack, tag)["action"] == "tempfail"  # still one row: not logged again when the transaction ended

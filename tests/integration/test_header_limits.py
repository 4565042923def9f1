"""milterd's own header limits through the real Postfix: too many header fields,
one field too large, a header section too large.

Postfix's own limits are set far above milterd's here (its header_size_limit
would otherwise cut a long header silently), so what the client sees is
milterd's answer: a 5xx at end of data, a log row that says why, and normal
mail still passing.
"""

from __future__ import annotations

import smtplib
import time
import uuid
from typing import Any

import pytest

from tests.conftest import NO_CHECKS, message
from tests.harness.stack import Stack, stack_root

LIMITS = {"max_headers": 50, "max_header_size": "8K", "max_header_section": "32K"}


@pytest.fixture(scope="module", params=["inet", "unix"])
def stack(make_stack: Any, request: pytest.FixtureRequest) -> Stack:
    # Over a unix socket the headers get no reply (SMFIP_NR_HDR): the refusal is answered at end of headers.
    milter: dict[str, Any] = {"workers": 1, **LIMITS}
    socket = None
    if request.param == "unix":
        milter["socket_mode"] = "0666"  # Postfix's smtpd (user postfix) must reach the socket
        socket = f"unix:{stack_root()}/run/milterd.sock"
    return make_stack(
        {**NO_CHECKS, "milter": milter},
        postfix_extra={"header_size_limit": "4096000", "message_size_limit": str(80 * 1024 * 1024)},
        socket=socket,
    )


def refused(stack: Stack, raw: bytes) -> smtplib.SMTPResponseException:
    with pytest.raises(smtplib.SMTPResponseException) as caught:
        stack.send(raw)
    return caught.value


def logged(stack: Stack, subject: str, timeout: float = 30.0) -> dict[str, Any]:
    """The log row of the message with *subject* (refused at a header, logged when its transaction ends)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in stack.milterd.log_json() if subject in (r.get("subject") or "")]
        if rows or time.monotonic() > deadline:
            assert len(rows) == 1, rows
            return rows[0]
        time.sleep(0.3)


def test_too_many_headers_is_refused_with_554(stack: Stack) -> None:
    tag = f"many-{uuid.uuid4().hex}"
    extra = {f"X-Many-{i}": f"value {i}" for i in range(60)}
    error = refused(stack, message(subject=tag, headers=extra))
    assert error.smtp_code == 554 and b"5.6.0" in error.smtp_error and b"Too many headers" in error.smtp_error, error
    row = logged(stack, tag)
    assert row["action"] == "reject" and "Too many headers" in row["reason"]
    assert "HDR_TOO_MANY" in row["symbols"] and "max_headers 50" in row["details"]["HDR_TOO_MANY"]
    assert stack.sink.with_subject(tag) == []
    # Logged with Postfix's queue id, as Postfix's own line for the refusal: over a unix socket (DATA skipped) the
    # id reaches the milter first with end of headers' macros, and the row had none.
    assert row["queue_id"] and f"{row['queue_id']}: milter-reject: " in stack.postfix.maillog.read_text()


def test_one_header_too_large_is_refused_with_552(stack: Stack) -> None:
    tag = f"large-{uuid.uuid4().hex}"
    # 20 KB in one folded field: far under Postfix's header_size_limit here, over max_header_size.
    error = refused(stack, message(subject=tag, headers={"X-Large": "\r\n ".join(["y" * 76] * 260)}))
    assert error.smtp_code == 552 and b"5.3.4" in error.smtp_error and b"Message header too large" in error.smtp_error, error
    row = logged(stack, tag)
    assert row["action"] == "reject" and "HDR_TOO_LARGE" in row["symbols"]
    assert "X-Large" in row["details"]["HDR_TOO_LARGE"] and "max_header_size" in row["details"]["HDR_TOO_LARGE"]


def test_header_section_too_large_is_refused_with_552(stack: Stack) -> None:
    tag = f"section-{uuid.uuid4().hex}"
    # Ten fields of 5 KB: each under max_header_size, together over max_header_section.
    error = refused(stack, message(subject=tag, headers={f"X-Part-{i}": "z" * 5000 for i in range(10)}))
    assert error.smtp_code == 552 and b"5.3.4" in error.smtp_error, error
    row = logged(stack, tag)
    assert "HDR_TOO_LARGE" in row["symbols"] and "max_header_section" in row["details"]["HDR_TOO_LARGE"]


def test_mail_under_the_limits_passes(stack: Stack) -> None:
    tag = f"fine-{uuid.uuid4().hex}"
    assert stack.send(message(subject=tag, headers={f"X-Fine-{i}": "v" * 1000 for i in range(20)})) == {}
    assert stack.sink.wait(1, match=lambda m: any(tag in s for s in m.header("Subject")))
    assert logged(stack, tag)["action"] == "accept"

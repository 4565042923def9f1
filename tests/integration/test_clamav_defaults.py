"""ClamAV's defaults through the private Postfix: what clamav-milter scans, milterd scans.

``[clamav] scan_trusted`` is not set here, so its default holds: mail from an
SMTP AUTH login and from ``trusted_networks`` is scanned like any other (EICAR
from either once reached the sink).  A message over ``max_size`` still has
its first ``max_size`` bytes judged, whether Postfix passed MAIL FROM's
``SIZE=`` (the spool is read from its start) or not (the stream is cut).
"""

from __future__ import annotations

import smtplib
import uuid
from typing import Any, Callable

import pytest

from tests.conftest import message
from tests.harness.scanners import EICAR, EICAR_NAME, Clamd
from tests.harness.stack import Stack, row_for

TRUSTED = {"ADDR": "192.0.2.10", "NAME": "mail.example.org", "HELO": "mail.example.org"}
LOGIN = {"ADDR": "198.51.100.7", "NAME": "[UNAVAILABLE]", "HELO": "laptop.example.org", "LOGIN": "alice"}
OUTSIDE = {"ADDR": "198.51.100.8", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}
MAX_SIZE = 64 * 1024


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack], clamd: Clamd) -> Stack:
    """clamd on, its other settings (scan_trusted among them) left to the defaults but for a small max_size."""
    sections: dict[str, dict[str, Any]] = {
        "milter": {"trusted_networks": ["127.0.0.1/32", "192.0.2.0/24"]},
        "clamav": {"enabled": True, "address": clamd.address, "max_size": str(MAX_SIZE), "timeout": 20},
    }
    return make_stack(sections)


def virus_mail(title: str, padding: int = 0) -> bytes:
    """A message with EICAR near its start, then *padding* bytes of ordinary text."""
    line = "Nothing to see in this line of padding text, only words.\r\n"
    body = "Hello,\r\n" + EICAR.decode() + "\r\n" + line * (padding // len(line) + 1 if padding else 0)
    return message(subject=title, body=body)


def refused(stack: Stack, raw: bytes, xclient: dict[str, str]) -> tuple[int, str]:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw, xclient=xclient)
    return info.value.smtp_code, info.value.smtp_error.decode("utf-8", "replace")


@pytest.mark.parametrize("client", [TRUSTED, LOGIN], ids=["trusted-network", "smtp-auth"])
def test_eicar_from_a_trusted_or_authenticated_client_is_rejected(stack: Stack, client: dict[str, str]) -> None:
    title = "eicar " + uuid.uuid4().hex[:12]
    code, text = refused(stack, virus_mail(title), client)
    assert code == 550 and "Virus found: " + EICAR_NAME in text
    assert not stack.sink.with_subject(title)
    assert row_for(stack, title)["action"] == "reject"


def test_eicar_padded_past_max_size_with_size_declared_is_rejected(stack: Stack) -> None:
    title = "padded " + uuid.uuid4().hex[:12]
    code, text = refused(stack, virus_mail(title, padding=4 * MAX_SIZE), OUTSIDE)  # smtplib sends SIZE=
    assert code == 550 and "Virus found: " + EICAR_NAME in text
    assert not stack.sink.with_subject(title)
    logged = row_for(stack, title)
    assert logged["action"] == "reject" and logged["details"]["CLAMAV_VIRUS"].startswith(EICAR_NAME)


def test_eicar_padded_past_max_size_without_size_is_rejected(stack: Stack) -> None:
    title = "streamed " + uuid.uuid4().hex[:12]
    client = stack.postfix.smtp(xclient=OUTSIDE)
    try:
        client.mail("alice@example.org")  # no SIZE=: the stream is cut at max_size, and what was sent is judged
        client.rcpt("bob@example.com")
        code, text = client.data(virus_mail(title, padding=4 * MAX_SIZE))
    finally:
        client.quit()
    assert code == 550 and "Virus found: " + EICAR_NAME in text.decode("utf-8", "replace")
    assert not stack.sink.with_subject(title)
    assert row_for(stack, title)["details"]["CLAMAV_VIRUS"].startswith(EICAR_NAME)


def test_a_clean_message_over_max_size_is_delivered_with_its_skip_noted(stack: Stack) -> None:
    title = "clean big " + uuid.uuid4().hex[:12]
    line = "Nothing to see in this line of padding text, only words.\r\n"
    assert stack.send(message(subject=title, body=line * (4 * MAX_SIZE // len(line))), xclient=OUTSIDE) == {}
    assert stack.sink.wait(1, match=lambda m: title in m.headers)
    logged = row_for(stack, title)
    assert logged["action"] == "accept" and "CLAMAV_SKIPPED_SIZE" in logged["symbols"]
    assert "CLAMAV_VIRUS" not in logged["symbols"]

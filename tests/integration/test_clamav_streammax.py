"""clamd's StreamMaxLength under ``[clamav] max_size`` (review 4): a virus at the very start of a larger message.

clamd refuses the stream part-way (``INSTREAM size limit exceeded``); the start it took is scanned again from
the spool, so EICAR followed by 2 MB of padding is rejected, not delivered as a size skip.
"""

from __future__ import annotations

import smtplib
import uuid
from typing import Callable, Iterator

import pytest

from tests.conftest import message
from tests.harness.scanners import EICAR, EICAR_NAME, Clamd
from tests.harness.stack import Stack, row_for

OUTSIDE = {"ADDR": "198.51.100.7", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}


@pytest.fixture(scope="module")
def small_clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    daemon = Clamd(tmp_path_factory.mktemp("clamd1m"), stream_max="1M")
    try:
        yield daemon.start()
    finally:
        daemon.stop()


def test_eicar_first_then_padding_past_clamds_stream_limit_is_rejected(make_stack: Callable[..., Stack], small_clamd: Clamd) -> None:
    stack = make_stack({"clamav": {"enabled": True, "address": small_clamd.address, "timeout": 20}})  # max_size: 25M
    title = "streammax " + uuid.uuid4().hex[:12]
    padding = "x" * 998 + "\r\n"
    raw = message(subject=title, body="Hello,\r\n" + EICAR.decode() + "\r\n" + padding * 2000)
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw, xclient=OUTSIDE)
    assert info.value.smtp_code == 550 and "Virus found: " + EICAR_NAME in info.value.smtp_error.decode("utf-8", "replace")
    assert not stack.sink.with_subject(title)
    logged = row_for(stack, title)
    assert logged["action"] == "reject" and logged["details"]["CLAMAV_VIRUS"].startswith(EICAR_NAME)
    assert "CLAMAV_SKIPPED_SIZE" not in logged["details"]

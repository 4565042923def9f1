"""Every refusal leaves a log row, whatever the stage it happens at.

A check that refuses at end of headers (here: the From header in a local
domain from a client that neither authenticated nor is trusted, with
``[checks.local_domains] action = "reject"``) answers 550 before the body;
Postfix then aborts the transaction, and the row must still be written.
"""

from __future__ import annotations

import smtplib
from typing import Callable

import pytest

from tests.conftest import NO_CHECKS, message
from tests.harness.stack import Stack


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    checks = {**NO_CHECKS.get("checks", {}), "local_domains": {"enabled": True, "action": "reject"}}
    return make_stack({**NO_CHECKS, "milter": {"trusted_networks": [], "local_domains": ["ours.test"]}, "checks": checks})


def test_refusal_at_end_of_headers_is_logged(stack: Stack) -> None:
    spoof = message(subject="from header spoof", sender="ceo@ours.test")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(spoof, sender="someone@elsewhere.example")
    assert info.value.smtp_code == 550
    rows = [r for r in stack.milterd.log_json() if r["sender"] == "someone@elsewhere.example"]
    assert len(rows) == 1, rows
    assert rows[0]["action"] == "reject" and "LOCAL_FROM_SPOOF" in rows[0]["symbols"]
    assert "please authenticate" in rows[0]["reason"]


def test_a_from_outside_the_local_domains_is_accepted(stack: Stack) -> None:
    stack.send(message(subject="honest"), sender="someone@elsewhere.example")
    [row] = [r for r in stack.milterd.log_json() if r["subject"] == "honest"]
    assert row["action"] == "accept"

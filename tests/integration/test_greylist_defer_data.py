"""Delayed greylisting (``[greylist] defer_at = "data"``) through the real Postfix.

Postfix counts every 4xx it relays from the milter at RCPT as an error: past
``smtpd_soft_error_limit`` (10) it slows its replies, and at
``smtpd_hard_error_limit`` (20; ``${stress?1}``: 1 when Postfix is under stress)
it answers ``421 4.7.0 Error: too many errors`` and hangs up, so the later
recipients of a message to many new recipients are never seen by milterd and
their triplets are not recorded: the message needs several retry cycles.  With
``defer_at = "data"`` every RCPT is accepted, every triplet recorded, and the
message gets one ``451 4.7.1`` at DATA.

Postfix's own defaults are used for the error limits here (the harness raises
them to 1000 for the other tests), except ``smtpd_error_sleep_time = 0``: the
second a refused recipient past the soft limit would cost only slows the test.
"""

from __future__ import annotations

import json
import smtplib
import time
import uuid
from typing import Any, Callable

import pytest

from tests.conftest import message
from tests.harness.stack import Stack

DELAY = 3.0
RECIPIENTS = [f"user{i:02d}@example.com" for i in range(25)]
GREYLIST = {"enabled": True, "delay": DELAY, "retry_window": "1h", "auto_whitelist_after": 0, "whitelist_providers": False}
#: Postfix's defaults (postconf.5), which the harness raises to 1000.
ERROR_LIMITS = {"smtpd_soft_error_limit": "10", "smtpd_hard_error_limit": "20", "smtpd_error_sleep_time": "0"}
#: What Postfix's ``smtpd_hard_error_limit = ${stress?1}${stress:20}`` gives under stress.
UNDER_STRESS = {**ERROR_LIMITS, "smtpd_hard_error_limit": "1"}
REPLY = b"4.7.1 Greylisted, please try again in"


def client(addr: str) -> dict[str, str]:
    return {"ADDR": addr, "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}


def send(stack: Stack, xclient: dict[str, str], recipients: list[str], subject: str, sender: str, rcpt_replies: list[tuple[int, bytes]]) -> dict[str, tuple[int, bytes]]:
    """One SMTP transaction (smtplib's sendmail); every RCPT reply appended to *rcpt_replies*.

    Returns the refused recipients; smtplib raises SMTPDataError for a refusal
    at DATA and SMTPRecipientsRefused when every recipient was refused or
    Postfix hung up (421) during RCPT.
    """
    smtp = stack.postfix.smtp(xclient=xclient)
    rcpt = smtp.rcpt

    def recording(address: str, options: Any = ()) -> tuple[int, bytes]:
        reply = rcpt(address, options)
        rcpt_replies.append(reply)
        return reply

    smtp.rcpt = recording  # type: ignore[method-assign]
    try:
        return smtp.sendmail(sender, recipients, message(subject=subject, sender=sender))
    finally:
        try:
            smtp.quit()
        except Exception:  # noqa: BLE001 - Postfix may have hung up (421)
            pass


def stored(stack: Stack, network: str, sender: str) -> list[str]:
    """The recipients of the triplets stored for *network* and *sender*."""
    result = stack.milterd.cli("greylist", "list", "--json", "--client", network, "--sender", sender, "--limit", "0")
    assert result.returncode == 0, result.stderr
    return sorted(row["recipient"] for row in json.loads(result.stdout))


def delivered(stack: Stack, subject: str, count: int) -> list[str]:
    """The recipients the sink received the message with *subject* for (waiting for *count* of them)."""
    deadline = time.monotonic() + 30
    while True:
        messages = stack.sink.with_subject(subject)
        recipients = sorted(r for m in messages for r in m.recipients)
        if len(recipients) >= count or time.monotonic() > deadline:
            return recipients
        time.sleep(0.1)


@pytest.fixture(scope="module", params=["default_limits", "under_stress"])
def deferring(request: pytest.FixtureRequest, make_stack: Callable[..., Stack]) -> Stack:
    limits = ERROR_LIMITS if request.param == "default_limits" else UNDER_STRESS
    return make_stack({"greylist": dict(GREYLIST, defer_at="data")}, postfix_extra=limits)


def test_defer_at_data_one_451_at_data_then_the_retry_delivers_to_all(deferring: Stack) -> None:
    who, sender = client("192.0.2.10"), f"bulk-x{uuid.uuid4().hex[:6]}@example.org"
    subject = f"defer-data-{uuid.uuid4().hex[:8]}"
    replies: list[tuple[int, bytes]] = []
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(deferring, who, RECIPIENTS, subject, sender, replies)
    assert [code for code, _ in replies] == [250] * 25, replies  # none refused at RCPT: no error for Postfix to count
    assert info.value.smtp_code == 451 and REPLY in info.value.smtp_error, info.value
    assert stored(deferring, "192.0.2.0/24", sender) == sorted(RECIPIENTS)  # every triplet recorded at the first attempt
    assert deferring.sink.with_subject(subject) == []
    [row] = [r for r in deferring.milterd.log_json("--action", "greylist") if r["sender"] == sender]
    assert sorted(row["recipients"]) == sorted(RECIPIENTS) and REPLY.decode() in row["reason"]
    assert f"client=192.0.2.0/24 from=<{sender}>" in row["details"]["GREYLIST"]
    assert all(f"<{r}> new" in row["details"]["GREYLIST_DEFERRED"] for r in RECIPIENTS)

    time.sleep(DELAY + 0.5)
    replies.clear()
    assert send(deferring, who, RECIPIENTS, subject, sender, replies) == {}
    assert [code for code, _ in replies] == [250] * 25
    assert delivered(deferring, subject, 25) == sorted(RECIPIENTS)
    [passed] = [r for r in deferring.milterd.log_json() if r["sender"] == sender and r["action"] != "greylist"]
    assert passed["action"] == "accept" and "GREYLIST_PASSED" in passed["symbols"]


def send_bdat(stack: Stack, xclient: dict[str, str], recipients: list[str], subject: str, sender: str) -> tuple[list[int], tuple[int, bytes]]:
    """One transaction with CHUNKING (RFC 3030: ``BDAT n LAST`` instead of DATA); the RCPT codes and BDAT's reply."""
    smtp = stack.postfix.smtp(xclient=xclient)
    try:
        assert smtp.has_extn("chunking"), "Postfix offers CHUNKING by default"
        assert smtp.mail(sender)[0] == 250
        codes = [smtp.rcpt(r)[0] for r in recipients]
        body = message(subject=subject, sender=sender)
        smtp.send(f"BDAT {len(body)} LAST\r\n".encode() + body)
        return codes, smtp.getreply()
    finally:
        try:
            smtp.quit()
        except Exception:  # noqa: BLE001
            pass


def test_defer_at_data_also_answers_bdat(deferring: Stack) -> None:
    # Postfix sends the milter its DATA event at the first BDAT: CHUNKING clients (Exchange, Exim) are deferred too.
    who, sender = client("192.0.2.20"), f"bulk-x{uuid.uuid4().hex[:6]}@example.org"
    subject = f"defer-bdat-{uuid.uuid4().hex[:8]}"
    codes, (code, text) = send_bdat(deferring, who, RECIPIENTS, subject, sender)
    assert codes == [250] * 25 and code == 451 and REPLY in text, (codes, code, text)
    assert stored(deferring, "192.0.2.0/24", sender) == sorted(RECIPIENTS)
    time.sleep(DELAY + 0.5)
    codes, (code, text) = send_bdat(deferring, who, RECIPIENTS, subject, sender)
    assert codes == [250] * 25 and code == 250, (code, text)
    assert delivered(deferring, subject, 25) == sorted(RECIPIENTS)


@pytest.fixture(scope="module")
def refusing(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack({"greylist": dict(GREYLIST, defer_at="rcpt")}, postfix_extra=ERROR_LIMITS)


def test_defer_at_rcpt_meets_postfix_error_limit(refusing: Stack) -> None:
    """Why the option exists: at RCPT, Postfix hangs up on the 21st recipient, and the
    triplets of the recipients after it are not recorded; under stress, after the first."""
    who, sender = client("198.51.100.10"), f"bulk-x{uuid.uuid4().hex[:6]}@example.org"
    replies: list[tuple[int, bytes]] = []
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        send(refusing, who, RECIPIENTS, f"defer-rcpt-{uuid.uuid4().hex[:8]}", sender, replies)
    codes = [code for code, _ in replies]
    assert codes == [451] * 20 + [421], replies
    assert b"too many errors" in replies[-1][1]
    assert len(info.value.recipients) == 21
    assert stored(refusing, "198.51.100.0/24", sender) == sorted(RECIPIENTS[:20])  # 5 triplets wait for the next cycle

    refusing.postfix.postconf(*(f"{k} = {v}" for k, v in UNDER_STRESS.items()))
    sender = f"bulk-x{uuid.uuid4().hex[:6]}@example.org"
    replies.clear()
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(refusing, who, RECIPIENTS, f"defer-rcpt-{uuid.uuid4().hex[:8]}", sender, replies)
    assert [code for code, _ in replies] == [451, 421], replies
    assert stored(refusing, "198.51.100.0/24", sender) == RECIPIENTS[:1]  # one recipient per retry cycle

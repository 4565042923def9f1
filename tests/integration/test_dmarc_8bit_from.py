"""DMARC of a From with a raw byte that is not UTF-8, through the real Postfix, with real DNS (review 33).

``security@bank<0xAD>.test``: a mail client reading the field in windows-1252 shows an invisible soft hyphen,
security@bank.test; milterd read the byte as U+FFFD, judged the domain "bank" (no policy) and delivered it.
"""

from __future__ import annotations

import smtplib
from typing import Callable, Iterator

import pytest

from tests.harness.dns import LocalDns
from tests.harness.stack import Stack, row_for

CLIENT = {"ADDR": "192.0.2.10", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}


@pytest.fixture(scope="module")
def local_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDns]:
    data = ["client.example.org. A 192.0.2.10", '_dmarc.bank.test. TXT "v=DMARC1; p=reject"']
    server = LocalDns(tmp_path_factory.mktemp("dns"), data, {}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack], local_dns: LocalDns) -> Stack:
    sections = {"dns": {"nameservers": [local_dns.nameserver], "timeout": 3.0}, "milter": {"authserv_id": "mx.test"}}
    return make_stack(sections, postfix_extra={"local_header_rewrite_clients": ""})


def eight_bit(subject: str, author: bytes) -> bytes:
    """A plain windows-1252 message from *author* (raw bytes, as a spammer's mailer writes them)."""
    return (b"From: Security <" + author + b">\r\nTo: bob@example.com\r\nSubject: " + subject.encode()
            + b"\r\nDate: Mon, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <" + subject.replace(" ", ".").encode()
            + b"@attacker.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=windows-1252\r\n\r\nClick here.\r\n")


@pytest.mark.parametrize(("subject", "author"), [("shy inside", b"security@bank\xad.test"), ("shy first", b"security@\xadbank.test")])
def test_a_soft_hyphen_in_the_from_domain_gets_its_p_reject(stack: Stack, subject: str, author: bytes) -> None:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(eight_bit(subject, author), sender="x@attacker.test", xclient=CLIENT)
    error = info.value.smtp_error
    assert info.value.smtp_code == 550 and "bank.test" in (error.decode() if isinstance(error, bytes) else error)
    row = row_for(stack, subject)
    assert row["action"] == "reject" and "DMARC_FAIL_REJECT" in row["symbols"]


def utf8_from(subject: str, author: str) -> bytes:
    """A UTF-8 message from *author* (SMTPUTF8-style raw UTF-8, as a spammer's mailer writes it)."""
    return eight_bit(subject, author.encode()).replace(b"windows-1252", b"utf-8")


@pytest.mark.parametrize(("subject", "author"), [
    ("one dot leader", "security@bank\u2024test"), ("small full stop", "security@bank\ufe52test"),
    ("narrow nbsp", "security@bank.\u202ftest"), ("leading leader", "security@\u2024bank.test"),
    # Second look: one IDN label to UTS #46 (bank·test), a thin space before the dot, an encoded-word address.
    ("middle dot", "security@bank\u00b7test"), ("thin space dot", "security@bank\u2009.test"),
    ("encoded address", "=?utf-8?q?security@bank=2Etest?="),
])
def test_a_dot_look_alike_in_the_from_domain_gets_its_p_reject(stack: Stack, subject: str, author: str) -> None:
    # Review, thirty-fourth session: read up to the look-alike, the domain was "bank" (no policy): delivered
    # with dmarc=none header.from=bank.  It is bank.test to the reader.
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(utf8_from(subject, author), sender="x@attacker.test", xclient=CLIENT)
    error = info.value.smtp_error
    assert info.value.smtp_code == 550 and "bank.test" in (error.decode() if isinstance(error, bytes) else error)
    assert row_for(stack, subject)["action"] == "reject"


def test_a_look_alike_before_a_domain_of_no_policy_is_held(stack: Stack) -> None:
    # other<U+2024>example: neither "other" nor other.example publishes a policy; no genuine mailer writes it.
    stack.send(utf8_from("leader no policy", "security@other\u2024example"), sender="x@attacker.test", xclient=CLIENT)
    row = row_for(stack, "leader no policy")
    assert row["action"] == "quarantine" and "DMARC_FAIL_QUARANTINE" in row["symbols"]

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

"""SPF's ``ptr`` mechanism when the client's own DNS fails, through the real Postfix and real DNS.

RFC 7208 §5.5: a DNS error on the client's PTR lookup makes ``ptr`` fail to match, and one on the address
lookup of a PTR name skips that name.  pyspf made both a temperror; both zones are the sending client's, so a
forger from a silent reverse zone turned a ``v=spf1 ptr -all`` domain's DMARC ``p=reject`` into
DMARC_TEMPFAIL, and the forged mail was delivered.
"""

from __future__ import annotations

import smtplib
import uuid
from typing import Callable, Iterator

import pytest

from tests.conftest import NO_CHECKS, message, with_sections
from tests.harness.dns import LocalDns
from tests.harness.stack import Stack, row_for
from tests.integration.test_authentication import POSTFIX, txt

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDns]:
    data = [
        txt("bank.test", "v=spf1 ptr -all"),
        txt("_dmarc.bank.test", "v=DMARC1; p=reject"),
        "PTR 203.0.113.9 host.silent-forward.test",  # a PTR name whose address lookup never answers
        "PTR 203.0.113.10 mail.bank.test",
        "mail.bank.test. A 203.0.113.10",
    ]
    silent = ("100.51.198.in-addr.arpa", "silent-forward.test")  # 198.51.100.0/24's reverse zone never answers
    server = LocalDns(tmp_path_factory.mktemp("dns"), data, {}, silent=silent).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack], local_dns: LocalDns) -> Stack:
    checks = {name: {"enabled": True} for name in ("spf", "dkim", "dmarc")}
    sections = with_sections(NO_CHECKS, {"checks": checks, "dns": {"nameservers": [local_dns.nameserver], "timeout": 2.0}})
    return make_stack(sections, postfix_extra=POSTFIX)


@pytest.mark.parametrize("client", ["198.51.100.7", "203.0.113.9"], ids=["ptr-lookup-silent", "ptr-name-address-silent"])
def test_a_forger_whose_dns_fails_gets_the_domains_reject(stack: Stack, client: str) -> None:
    tag = f"ptr forged {uuid.uuid4().hex[:8]}"
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(message(tag, sender="ceo@bank.test"), sender="ceo@bank.test",
                   xclient={"ADDR": client, "NAME": "[UNAVAILABLE]", "HELO": "mail.attacker.test"})
    assert info.value.smtp_code == 550 and b"bank.test" in info.value.smtp_error
    row = row_for(stack, tag)
    assert "SPF_FAIL" in row["symbols"] and "DMARC_FAIL_REJECT" in row["symbols"], row["symbols"]
    assert not stack.sink.with_subject(tag)


def test_the_domains_own_server_passes(stack: Stack) -> None:
    tag = f"ptr genuine {uuid.uuid4().hex[:8]}"
    stack.send(message(tag, sender="ceo@bank.test"), sender="ceo@bank.test",
               xclient={"ADDR": "203.0.113.10", "NAME": "mail.bank.test", "HELO": "mail.bank.test"})
    assert "SPF_PASS" in row_for(stack, tag)["symbols"]

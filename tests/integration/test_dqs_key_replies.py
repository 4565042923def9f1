"""A keyed DNS list (Spamhaus DQS: ``KEY.zen.dq.spamhaus.net``) is never named with its key in a reply
(review, thirty-fourth session).

A reject reply goes to the client: ``blocked using KEY.zen.dq.spamhaus.net`` gave every rejected client the
subscription key, which the list's terms ask to keep secret.  The log keeps the zone asked."""

from __future__ import annotations

import smtplib
from typing import Callable, Iterator

import pytest

from tests.conftest import NO_CHECKS, message, with_sections
from tests.harness.dns import LocalDns
from tests.harness.stack import Stack

pytestmark = pytest.mark.integration

KEY = "0123456789abcdefdqskey4567"
SBL_CLIENT = "192.0.2.91"
LISTS = {
    f"{KEY}.zen.dq.spamhaus.net": ("ip4set", f"{SBL_CLIENT} :127.0.0.2:SBL listed\n"),
    f"{KEY}.dbl.dq.spamhaus.net": ("dnset", "phish-domain.test :127.0.1.4:Phishing domain\n"),
    "bl.example.net": ("ip4set", "192.0.2.92 :127.0.0.2:listed\n"),
}
RULES = {
    "lists.toml": f"""
[[dnsbl]]
name = "SPAMHAUS"
zone = "{KEY}.zen.dq.spamhaus.net"
codes = [{{ name = "SBL", answers = ["127.0.0.2"], score = 5.0, action = "reject" }}]

[[dnsbl]]
name = "OWN"
zone = "bl.example.net"
reply_zone = "bl.example.org"
action = "reject"

[[uribl]]
name = "DBL"
zone = "{KEY}.dbl.dq.spamhaus.net"
codes = [{{ name = "PHISH", answers = ["127.0.1.4"], score = 5.0, action = "reject" }}]
""",
}


@pytest.fixture(scope="module")
def local_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDns]:
    server = LocalDns(tmp_path_factory.mktemp("dns"), [], LISTS).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack], local_dns: LocalDns) -> Stack:
    sections = with_sections(NO_CHECKS, {"dns": {"nameservers": [local_dns.nameserver], "timeout": 3.0},
                                         "checks": {"dnsbl": {"enabled": True}, "uribl": {"enabled": True}}})
    return make_stack(sections, RULES)


def client(addr: str) -> dict[str, str]:
    return {"ADDR": addr, "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}


def test_a_listed_client_is_not_told_the_key(stack: Stack) -> None:
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        stack.send(message("dqs client"), xclient=client(SBL_CLIENT))
    reply = info.value.smtp_error.decode()
    assert info.value.smtp_code == 554 and KEY not in reply
    assert f"client [{SBL_CLIENT}] blocked using zen.dq.spamhaus.net; SBL listed" in reply
    row = next(r for r in stack.milterd.log_json() if r["client_addr"] == SBL_CLIENT)
    assert row["details"]["DNSBL_SPAMHAUS_SBL"].startswith(f"{KEY}.zen.dq.spamhaus.net")  # the log keeps the zone asked


def test_reply_zone_names_a_list_as_the_administrator_chose(stack: Stack) -> None:
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        stack.send(message("own list client"), xclient=client("192.0.2.92"))
    assert "blocked using bl.example.org;" in info.value.smtp_error.decode()


def test_a_link_to_a_listed_domain_is_not_answered_with_the_key(stack: Stack) -> None:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(message("dqs link", "Log in at https://phish-domain.test/account now.\r\n"), xclient=client("192.0.2.10"))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected: it links to phish-domain.test, listed in dbl.dq.spamhaus.net"

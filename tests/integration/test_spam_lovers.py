"""[milter] spam_lovers through the real Postfix: a phishing report forwarded to the abuse mailbox is delivered,
its link looked up and logged but not scored (to abuse+spamcop@ too, the delimiter set); the same report to anyone
else is refused by its score."""

from __future__ import annotations

import base64
import smtplib
from typing import Callable, Iterator

import pytest

from tests.conftest import NO_CHECKS, message, with_sections
from tests.harness.dns import LocalDns
from tests.harness.stack import Stack, row_for
from tests.integration.test_uribl import FORWARDED, LISTS

pytestmark = pytest.mark.integration

# The reject comes from the score (no code forces it): spam_lovers lifts what thresholds do.
RULES = {"lists.toml": """
[[uribl]]
name = "DBL"
zone = "dbl.spamhaus.org"
score = 2.5
codes = [{ name = "PHISH", answers = ["127.0.1.4"], score = 20.0 }]
"""}


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server = LocalDns(tmp_path_factory.mktemp("dns"), [], LISTS).start()
    sections = with_sections(NO_CHECKS, {"dns": {"nameservers": [server.nameserver], "timeout": 3.0}, "checks": {"uribl": {"enabled": True}, "local_domains": {"recipient_delimiter": "+"}},
                                         "milter": {"spam_lovers": ["abuse@", "phishing-reports@example.com"]}})
    yield make_stack(sections, RULES)
    server.stop()


def report(subject: str) -> bytes:
    body = ("--B\r\nContent-Type: text/plain\r\n\r\nPhishing, see the attached.\r\n--B\r\nContent-Type: message/rfc822\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(FORWARDED).decode().replace("\n", "\r\n") + "--B--\r\n")
    return message(subject, body, headers={"Content-Type": "multipart/mixed; boundary=B"}, to="abuse@example.com")


def test_a_phishing_report_to_the_abuse_mailbox_is_delivered_unscored(stack: Stack) -> None:
    stack.send(report("report to abuse"), recipients=["abuse@example.com", "Phishing-Reports@example.com"])
    [delivered] = stack.sink.wait(1, match=lambda m: "report to abuse" in " ".join(m.header("Subject")))
    assert sorted(delivered.recipients) == ["Phishing-Reports@example.com", "abuse@example.com"]
    assert not delivered.header("X-Spam-Status") and not delivered.header("X-Spam-Flag")
    row = row_for(stack, "report to abuse")
    assert row["action"] == "accept" and row["symbols"]["URIBL_DBL_PHISH"] == 20.0


def test_the_same_report_to_another_recipient_too_is_refused_by_its_score(stack: Stack) -> None:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(report("report to more"), recipients=["abuse@example.com", "bob@example.com"])
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected as spam (score 20)"
    assert row_for(stack, "report to more")["action"] == "reject"


def test_an_address_extension_of_the_abuse_mailbox_is_one_too(stack: Stack) -> None:
    stack.send(report("report to an extension"), recipients=["Abuse+SpamCop@example.com"])
    [delivered] = stack.sink.wait(1, match=lambda m: "report to an extension" in " ".join(m.header("Subject")))
    assert delivered.recipients == ["Abuse+SpamCop@example.com"] and not delivered.header("X-Spam-Status")
    row = row_for(stack, "report to an extension")
    assert row["action"] == "accept" and row["symbols"]["URIBL_DBL_PHISH"] == 20.0

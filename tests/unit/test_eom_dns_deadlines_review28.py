"""The link lookups and the ARC chain's key lookups have DNS deadlines of their own, started when they are asked: the
end of message's was started by the DKIM check's key lookups (names the sender chose), and time these checks then
waited for a thread of the pipeline's pool was charged to them.  A listed link went unasked (URIBL_TEMPFAIL only)
whenever a burst of messages with silent DKIM keys kept the pool busy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from milterd.checks.arc import Arc
from milterd.checks.uribl import UriBlockLists
from milterd.config import Config
from milterd.dns import Answer
from milterd.message.model import Session
from milterd.services import build
from tests.harness.messages import envelope_of

SPENT = -1.0  # the end of message's deadline, a second gone when the check got its thread


@pytest.fixture
def services(tmp_path: Path) -> Any:
    services = build(Config().with_changes({"dns.nameservers": ["127.0.0.1:9"], "database.url": f"sqlite:///{tmp_path / 's.sqlite'}"}))
    yield services
    services.store.close()


def test_fix_the_link_lookups_are_asked_with_a_deadline_of_their_own(services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    check = next(c for c in services.checks if isinstance(c, UriBlockLists))
    envelope = envelope_of(b"From: a@sender.test\r\nSubject: invoice\r\n\r\nPay here: http://evil-shop.example/pay\r\n")
    envelope.dns_deadlines["eom"] = time.monotonic() + SPENT
    asked: list[float] = []

    def query_many(questions: list[tuple[str, str]], deadline: float) -> list[Answer]:
        asked.append(deadline - time.monotonic())
        return [Answer(name, rdtype, "nxdomain", []) for name, rdtype in questions]  # type: ignore[arg-type]

    monkeypatch.setattr(services.resolver, "query_many", query_many)
    check.on_eom(Session(client_addr="192.0.2.7"), envelope)
    # The resolver answered "timeout" for every lookup without sending one: its deadline had passed.
    assert asked and asked[0] > 0


def test_fix_the_arc_key_lookups_are_asked_with_a_deadline_of_their_own(services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    check = next(c for c in services.checks if isinstance(c, Arc))
    sealed = (b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=list.example; s=s1; t=1700000000; b=AAAA\r\n"
              b"ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=list.example; s=s1; h=from; bh=AAAA; b=AAAA\r\n"
              b"ARC-Authentication-Results: i=1; list.example; spf=pass smtp.mailfrom=a@sender.test\r\n"
              b"From: a@sender.test\r\nSubject: hi\r\n\r\nhello\r\n")
    envelope = envelope_of(sealed)
    envelope.dns_deadlines["eom"] = time.monotonic() + SPENT
    asked: list[float] = []

    def txt(name: str, deadline: float) -> Answer:
        asked.append(deadline - time.monotonic())
        return Answer(name, "TXT", "nxdomain", [])  # type: ignore[arg-type]

    monkeypatch.setattr(services.resolver, "txt", txt)
    check.on_eom(Session(client_addr="192.0.2.7"), envelope)
    assert asked and asked[0] > 0


def test_fix_a_dns_timeout_of_0_is_refused_at_start(tmp_path: Path) -> None:
    from milterd.config import ConfigError, load_config

    conf = tmp_path / "milter.conf"
    conf.write_text("[dns]\ntimeout = 0\n")
    # Accepted, it made every lookup time out at once: DNSBL, SPF, DKIM and the link lists all *_TEMPFAIL, listed
    # clients let through (the scanners' timeouts refuse 0 already).
    with pytest.raises(ConfigError, match=r"milter.conf: \[dns\] timeout: Input should be greater than 0"):
        load_config(conf)


def test_fix_the_classifier_leaves_out_rspamd_s_x_spam_field_too() -> None:
    from milterd.learner import tokenizer

    fields = [("x-spam", "Yes"), ("x-spam-status", "No"), ("subject", "hello there"), ("x-spamd-result", "default")]
    # Every verdict field the header edits remove (policy.spam_verdict_field): "X-Spam: Yes", an upstream filter's or a
    # forger's verdict, was learned and scored.
    assert tokenizer.header_text(fields) == "subject: hello there\nx-spamd-result: default"

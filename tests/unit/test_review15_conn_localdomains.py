"""Local domains (review 15): From values the strict parser refuses still spoof a local domain;
an authenticated user's own extension address and absolute domain are hers."""

from __future__ import annotations

from typing import Any

import pytest

from milterd.checks.localdomains import LocalSpoof, SenderLogin, owners
from milterd.config import Config
from milterd.message.model import Action, Envelope, Session, Spool
from milterd.services import Services


def services(**changes: Any) -> Services:
    return Services(config=Config().with_changes({"milter.hostname": "mx.test", **changes}))


def envelope(sender: str, headers: list[tuple[str, bytes]] | None = None) -> Envelope:
    env = Envelope(spool=Spool(1024), headers=headers or [])
    env.sender = sender
    return env


@pytest.mark.parametrize("value", [
    b"CEO <ceo@EXAMPLE.ORG.>", b"CEO <<ceo@example.org>", b"a\rb <ceo@example.org>", b"CEO <ceo@example.org\x00>",
    b"ceo@example.org\xff", b"CEO <ceo@example.org>",
])
def test_local_from_read_leniently_is_spoof(value: bytes) -> None:
    check = LocalSpoof(services(**{"milter.local_domains": ["example.org"], "checks.local_domains": {"action": "reject"}}))
    hits = list(check.on_eoh(Session(client_addr="198.51.100.7", family="inet"), envelope("x@evil.example", [("From", value)])))
    assert [hit.symbol for hit in hits] == ["LOCAL_FROM_SPOOF", "LOCAL_FROM_SPOOF"]
    assert hits[0].action == Action.REJECT and hits[0].reply is not None and str(hits[0].reply).startswith("550")


def test_idn_local_domain_matches_its_a_label_from() -> None:
    check = LocalSpoof(services(**{"milter.local_domains": ["ex\u00e4mple.org"]}))
    for value in ("ceo@ex\u00e4mple.org".encode(), b"ceo@xn--exmple-cua.org"):
        hits = check.on_eoh(Session(client_addr="198.51.100.7", family="inet"), envelope("x@evil.example", [("From", value)]))
        assert [hit.symbol for hit in hits] == ["LOCAL_FROM_SPOOF"], value


def test_foreign_from_is_no_spoof() -> None:
    check = LocalSpoof(services(**{"milter.local_domains": ["example.org"]}))
    hits = check.on_eoh(Session(client_addr="198.51.100.7", family="inet"), envelope("x@evil.example", [("From", b"CEO <<ceo@example.org.evil.example>")]))
    assert list(hits) == []


def login_check(delimiter: str = "") -> SenderLogin:
    options: dict[str, Any] = {"sender_logins": {"alice@example.org": ["alice"], "@example.net": ["admin"]}}
    if delimiter:
        options["recipient_delimiter"] = delimiter
    return SenderLogin(services(**{"checks.local_domains": options}))


def as_alice(check: SenderLogin, sender: str) -> list[tuple[str, str]]:
    session = Session(client_addr="198.51.100.7", helo="laptop.example", family="inet", auth_user="alice")
    return [(hit.symbol, str(hit.reply)) for hit in check.on_mail(session, envelope(sender)) if hit.action == Action.REJECT]


@pytest.mark.parametrize("sender", ["alice+lists@example.org", "Alice+Lists@Example.ORG", "alice+a+b@example.org."])
def test_own_extension_address_is_accepted_with_recipient_delimiter(sender: str) -> None:
    assert as_alice(login_check("+"), sender) == []


def test_own_address_with_trailing_dot_is_accepted() -> None:
    assert as_alice(login_check(), "alice@example.org.") == []


def test_extension_without_delimiter_and_someone_elses_address_are_refused() -> None:
    assert as_alice(login_check(), "alice+lists@example.org") == [
        ("SENDER_LOGIN_MISMATCH", "553 5.7.1 <alice+lists@example.org>: Sender address rejected: not owned by user alice")]
    assert as_alice(login_check("+"), "bob+alice@example.org")[0][0] == "SENDER_LOGIN_MISMATCH"
    assert as_alice(login_check("+"), "+alice@example.org")[0][0] == "SENDER_LOGIN_MISMATCH"  # no empty user (Postfix)


def test_owners_lookup_order() -> None:
    from milterd.checks.localdomains import without_extension

    table = {"alice@example.org": {"alice"}, "alice+x@example.org": {"x"}, "@example.org": {"admin"}}
    assert owners(table, "alice+x@example.org", "+") == {"x"}  # the whole address first
    assert owners(table, "alice-y@example.org", "+-") == {"alice"}  # each character is a delimiter
    assert owners(table, "bob+y@example.org.", "+") == {"admin"}  # then @domain
    assert without_extension("owner-list", "-") is None and without_extension("list-request", "-") is None
    assert without_extension("mailer-daemon", "-") is None and without_extension("a-b+c", "+-") == "a"

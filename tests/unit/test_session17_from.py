"""Session 17: the From domains a mail client shows.

An encoded-word in the address (``<sec@=?utf-8?q?bank.example?=>``, which Thunderbird shows as
sec@bank.example) and a line folded inside it (``<sec@bank`` CRLF `` .example>``) named no From
domain, or "bank": DMARC said none and a local domain's From was no spoof.  MAIL FROM in a local
domain was compared with ``str.lower()``: ``x@example.τεστσ`` was not ``example.ΤΕΣΤΣ``, nor
``x@xn--bcher-kva.example`` ``bücher.example``.
"""

from __future__ import annotations

import pytest

from milterd.checks.dmarc import from_domain, from_domains
from milterd.checks.localdomains import LocalSpoof
from milterd.config import Config
from milterd.message.model import Action, Envelope, Session, Spool
from milterd.services import Services

from .test_dmarc_review import ATTACKER_SIGNED, POLICIES, run_dmarc


def local_spoof(domains: list[str]) -> LocalSpoof:
    config = Config().with_changes({"milter.hostname": "mx.test", "dns.nameservers": ["127.0.0.1:9"], "milter.local_domains": domains})
    return LocalSpoof(Services(config=config))


def spoof_hits(check: LocalSpoof, sender: str, from_value: bytes | None = None) -> tuple[list[str], list[str]]:
    """The symbols of MAIL FROM *sender* and of the From field *from_value* from an unauthenticated client."""
    envelope = Envelope(spool=Spool(1024), headers=[("From", from_value)] if from_value is not None else [])
    envelope.sender = sender
    session = Session(client_addr="198.51.100.7", family="inet")
    return [h.symbol for h in check.on_mail(session, envelope)], [h.symbol for h in check.on_eoh(session, envelope)]


# --- 1. an encoded-word in the address: judged as the client shows it ----------------------------

ENCODED_DOMAINS = [
    b"Bank Security <sec@=?utf-8?q?bank.example?=>",
    b"Bank Security <sec@=?utf-8?b?YmFuay5leGFtcGxl?=>",
    b"sec@=?utf-8?q?bank.example?=",
    b"Bank Security <sec@bank=?utf-8?q?.example?=>",
    b"Bank Security <sec@=?utf-8?q?bank?= =?utf-8?q?.example?=>",
    b"Bank Security <=?utf-8?q?sec?=@=?iso-8859-1?q?BANK.example?=>",
    b"Bank Security <sec@=?utf-8?q?bank.example x?=>",  # Thunderbird: "sec@bank.example x"
]


@pytest.mark.parametrize("from_value", ENCODED_DOMAINS)
def test_an_encoded_word_in_the_from_domain_gets_the_domains_policy(from_value: bytes) -> None:
    [hit], envelope = run_dmarc([from_value], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    assert envelope.check_state("dmarc")["result"].domain == "bank.example"


@pytest.mark.parametrize("from_value", ENCODED_DOMAINS)
def test_an_encoded_word_in_a_local_from_domain_is_a_spoof(from_value: bytes) -> None:
    check = local_spoof(["bank.example"])
    assert spoof_hits(check, "x@attacker.example", from_value) == ([], ["LOCAL_FROM_SPOOF"])


def test_an_encoded_display_name_naming_an_address_stays_a_name() -> None:
    # A list's rewritten From: decoded, the name mentions the poster's address; the client shows the list's.
    for value in ("=?utf-8?q?alice=40bank.example_via_List?= <list@lists.example>",
                  "=?utf-8?b?YWxpY2VAYmFuay5leGFtcGxlIHZpYSBMaXN0?= <list@lists.example>",
                  "\"=?utf-8?q?alice=40bank.example?= via List\" <list@lists.example>"):
        assert from_domains([value]) == ("lists.example",), value
    [hit], _ = run_dmarc([b"=?utf-8?q?alice=40bank.example_via_List?= <me@attacker.example>"], POLICIES, ATTACKER_SIGNED)
    assert hit.symbol == "DMARC_PASS"


def test_decoded_text_is_not_parsed_again() -> None:
    from milterd.content.headertext import shown_addresses

    # As Thunderbird: the decoded word is one word of the field, its "<", "," and "@" no syntax.
    assert shown_addresses("=?utf-8?q?a=2C_b=3Cc=40d=3E?= <list@lists.example>") == ["list@lists.example", "list@lists.example"]
    # A marker character already in the value does not stand for an encoded-word.
    assert shown_addresses("\ue0000\ue000 <sec@=?utf-8?q?bank.example?=>")[-1] == "sec@bank.example"


# --- 2. a line folded inside the address ----------------------------------------------------------


@pytest.mark.parametrize("from_value", [b"Bank Security <sec@bank\r\n .example>", b"Bank Security <sec@bank\n\t.example>", b"sec@bank.\r\n example"])
def test_a_from_folded_inside_its_domain_gets_the_domains_policy(from_value: bytes) -> None:
    [hit], envelope = run_dmarc([from_value], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    assert envelope.check_state("dmarc")["result"].domain == "bank.example"
    assert from_domains([from_value.decode()])[0] == "bank.example"
    if b"\n" in from_value.partition(b".")[0]:  # (Thunderbird shows "sec@bank. example" for the third: "bank" too)
        assert from_domain(from_value.decode()) == "bank.example"  # the domain DKIM signing picks a key by
    # The local domains' From check reads the same (it unfolded already).
    assert spoof_hits(local_spoof(["bank.example"]), "x@attacker.example", from_value) == ([], ["LOCAL_FROM_SPOOF"])


# --- 3. MAIL FROM in a local domain, however either is written ----------------------------------


@pytest.mark.parametrize(("local", "sender"), [
    ("example.ΤΕΣΤΣ", "x@example.τεστσ"),
    ("example.ΤΕΣΤΣ", "x@example.ΤΕΣΤΣ"),
    ("example.τεστσ", "x@EXAMPLE.ΤΕΣΤΣ."),
    ("bücher.example", "x@xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "x@bücher.example"),
    ("BÜCHER.Example.", "x@XN--BCHER-KVA.example"),
    ("Example.ORG.", "x@EXAMPLE.org."),
    ("example.org", "x@example.org"),
])
def test_mail_from_in_a_local_domain_is_a_spoof_however_written(local: str, sender: str) -> None:
    mail, _ = spoof_hits(local_spoof([local]), sender)
    assert mail == ["LOCAL_SENDER_SPOOF"]


@pytest.mark.parametrize(("local", "sender"), [
    ("example.ΤΕΣΤΣ", "x@example.τεστς"),  # final sigma: another domain, with its own owner
    ("bücher.example", "x@bucher.example"),
    ("example.org", "x@example.net"),
    ("example.org", "x@sub.example.org"),
    ("example.org", ""),
])
def test_mail_from_in_another_domain_is_no_spoof(local: str, sender: str) -> None:
    mail, _ = spoof_hits(local_spoof([local]), sender)
    assert mail == []


def test_a_local_domain_idna_refuses_still_matches_itself_at_mail_from() -> None:
    # As before: compared case folded, as the From check cannot (from_domains gives no such domain).
    refused = "x" * 70 + "ü.example"
    mail, _ = spoof_hits(local_spoof([refused]), f"a@{refused.upper()}")
    assert mail == ["LOCAL_SENDER_SPOOF"]


# --- 4. where Python's parser and Thunderbird's disagree: Thunderbird's address is judged too -----

THUNDERBIRD_READS = [
    b"Bank\\(Security <sec@bank.example>",  # a backslash escapes outside a quoted string too
    b"[Bank (Support] <sec@bank.example>",  # "[" opens a domain literal: "(" there opens no comment
    b"sec@bank.example (Bank \"Security) x",  # '"' opens a quoted string inside a comment
    b"sec@bank.example (Bank [Security) @evil.example",
    b"<x@evil.example \"a\" <sec@bank.example>",  # a second "<" starts the address again
]


@pytest.mark.parametrize("from_value", THUNDERBIRD_READS)
def test_the_address_thunderbird_shows_gets_its_domains_policy(from_value: bytes) -> None:
    [hit], envelope = run_dmarc([from_value], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    assert envelope.check_state("dmarc")["result"].domain == "bank.example"
    assert spoof_hits(local_spoof(["bank.example"]), "x@attacker.example", from_value) == ([], ["LOCAL_FROM_SPOOF"])


@pytest.mark.parametrize("value", [
    '"alice@paypal.com via List" <list@lists.example>',
    '"Alice (alice@paypal.com)" <list@lists.example>',
    "Alice (alice@paypal.com) <list@lists.example>",
    "list@lists.example (alice@paypal.com)",
    'list@lists.example (Alice "x" <alice@paypal.com>)',
    '"=?utf-8?q?J=C3=B6rg?= via List" <list@lists.example>',
    "Alice [PayPal] <list@lists.example>",
    '"alice@paypal.com" <list@lists.example>',
    '"Alice\\" <alice@paypal.com>" <list@lists.example>',
    '"=?utf-8?b?YWxpY2VAcGF5cGFsLmNvbQ==?=" <list@lists.example>',
    "=?utf-8?b?YWxpY2VAcGF5cGFsLmNvbQ==?= <list@lists.example>",
])
def test_an_address_only_in_a_display_name_or_comment_is_not_judged(value: str) -> None:
    # A mailing list's rewritten From: judging the poster's domain would reject the list's mail.
    assert from_domains([value]) == ("lists.example",)


def test_long_hostile_from_values_still_give_their_address() -> None:
    # Their cost is measured in bench/RESULTS.md (seventeenth session), not timed here: each is read once,
    # and the address after the padding is still the one judged.
    for padding in ("(a)" * 10000, "(" * 16000 + ")" * 16000, "=?" * 16000, "=?a" * 10000, "=?" + " " * 32000, "\\" * 16000):
        value = padding + " <sec@bank.test>"
        assert "bank.test" in from_domains([value]), padding[:20]


@pytest.mark.parametrize("value", ["sec@bank.test\r\n @", "sec@bank.test\n\t@", "sec@bank.test @"])
def test_a_stray_at_after_the_address_still_judges_its_domain(value: str) -> None:
    # The second review's case: unfolded, "sec@bank.test @" is shown as "sec@bank.test"@ and the last "@"
    # left no domain (DMARC_NONE); the folded forms were judged before the From was unfolded.
    assert from_domains([value]) == ("bank.test",)


def test_a_quoted_local_part_holding_an_address_is_not_its_authors_domain() -> None:
    assert from_domains(['"ceo@paypal.test"@lists.example']) == ("lists.example",)

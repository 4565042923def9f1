"""Local domains review (twenty-ninth session): MAIL FROM that Postfix rewrites into a local domain after the
milter has seen it.

Postfix appends ``@$myorigin`` to an address without a domain (``append_at_myorigin``) and turns ``site!user``
into ``user@site`` (``swap_bangpath``), both on by default: ``MAIL FROM:<ceo>`` from an outside client was
delivered from ``ceo@example.org`` with no LOCAL_SENDER_SPOOF (a review drove it through Postfix).
"""

from __future__ import annotations

import pytest

from .test_session17_from import local_spoof, spoof_hits


@pytest.mark.parametrize("sender", ["ceo", "<ceo>", "example.org!boss", "EXAMPLE.ORG!boss", "ceo@example.org"])
def test_a_sender_postfix_rewrites_into_a_local_domain_is_a_spoof(sender: str) -> None:
    mail, _ = spoof_hits(local_spoof(["example.org"]), sender)
    assert mail == ["LOCAL_SENDER_SPOOF"]


@pytest.mark.parametrize("sender", ["", "<>", "other.example!boss", "ceo@other.example", "a!b@other.example"])
def test_a_sender_of_another_domain_or_the_null_sender_is_not(sender: str) -> None:
    mail, _ = spoof_hits(local_spoof(["example.org"]), sender)
    assert mail == []


def test_sender_domain() -> None:
    from milterd.checks.localdomains import sender_domain

    assert sender_domain("ceo") is None
    assert sender_domain("site.example!relay!user") == "site.example"
    assert sender_domain("") == "" and sender_domain("a@B.Example") == "b.example"


@pytest.mark.parametrize("sender", ["<@relay.example:ceo>", "@a.example,@b.example:ceo", "@relay.example:example.org!ceo",
                                    "@relay.example:ceo%example.org", '"example.org!ceo"', "ceo%example.org"])
def test_a_routed_or_quoted_sender_postfix_rewrites_into_a_local_domain_is_a_spoof(sender: str) -> None:
    """A second look: Postfix delivered each of these as ceo@example.org, with no LOCAL_SENDER_SPOOF."""
    mail, _ = spoof_hits(local_spoof(["example.org"]), sender)
    assert mail == ["LOCAL_SENDER_SPOOF"]


@pytest.mark.parametrize("sender", ["MAILER-DAEMON", "<mailer-daemon>", "Mailer-Daemon"])
def test_mailer_daemon_is_the_null_sender_not_a_spoof(sender: str) -> None:
    """Postfix takes MAIL FROM:<MAILER-DAEMON> as the null sender (a bounce): the first version rejected it as a spoof."""
    mail, _ = spoof_hits(local_spoof(["example.org"]), sender)
    assert mail == []


@pytest.mark.parametrize(("sender", "spoof"), [
    ('<"@relay:ceo">', True), ('<"@relay:example.org!ceo">', True), ('<"ceo"@"example.org">', True),
    ("<ceo%evil.test>", False), ("<ceo%example.org>", True), ("<@relay:>", False), ('<"">', False),
])
def test_quotes_routes_and_the_percent_hack_read_as_postfix_reads_them(sender: str, spoof: bool) -> None:
    """A third look, against what the harness's Postfix relays: <"@relay:ceo"> and <"ceo"@"example.org"> went out as
    ceo@example.org unflagged; <ceo%evil.test> goes out as ceo@evil.test (allow_percent_hack), flagged as local."""
    mail, _ = spoof_hits(local_spoof(["example.org"]), sender)
    assert mail == (["LOCAL_SENDER_SPOOF"] if spoof else [])

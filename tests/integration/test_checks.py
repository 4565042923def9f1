"""Connection, HELO, sender, SPF and header checks through the real Postfix, with real DNS.

rbldnsd serves a block list (bl.test, IPv4; bl6.test, IPv6) and an allow
list (wl.test); unbound in front of it answers the test domains' A, MX, TXT
(SPF) and PTR records.  XCLIENT lets each test be the client it needs.
"""

from __future__ import annotations

import json
import smtplib
import socket
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import message, with_sections
from tests.harness.dns import LocalDns
from tests.harness.stack import Stack
from tests.integration.test_greylist import GREYLIST, attempt, greylisted, wait_out_the_delay

LOCAL_DATA = [
    "example.org. A 192.0.2.1",
    "example.org. MX 10 mx.example.org.",
    "client.example.org. A 192.0.2.10",
    "PTR 192.0.2.10 client.example.org",
    'pass.test. TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    "pass.test. MX 10 mx.example.org.",
    'fail.test. TXT "v=spf1 ip4:203.0.113.0/24 -all"',
    "fail.test. MX 10 mx.example.org.",
    'soft.test. TXT "v=spf1 ip4:203.0.113.0/24 ~all"',
    "soft.test. MX 10 mx.example.org.",
    "ours.test. MX 10 mx.example.org.",
    # straße.test in IDNA2008 (its own domain) and strasse.test (what IDNA2003 maps it to: another owner).
    'xn--strae-oqa.test. TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    "xn--strae-oqa.test. MX 10 mx.example.org.",
    'strasse.test. TXT "v=spf1 ip4:203.0.113.0/24 -all"',
    "strasse.test. MX 10 mx.example.org.",
    # A sender-dependent record, as pyspf expands it from the local part: a backslash there is a literal one.
    'macro.test. TXT "v=spf1 exists:%{l}._spf.%{d} -all"',
    "macro.test. MX 10 mx.example.org.",
]
LISTS = {
    "bl.test": ("ip4set", ":127.0.0.2:Listed for spam, see http://bl.test/$\n192.0.2.66\n192.0.2.67 :127.0.0.4:Low-weight listing\n"),
    "bl6.test": ("ip6trie", "2001:db8::66/128 :127.0.0.2:IPv6 listed\n"),
    "wl.test": ("ip4set", ":127.0.0.2:Allowed\n192.0.2.77\n"),
}
RULES = {
    "lists.toml": """
[[dnsbl]]
name = "TEST"
zone = "bl.test"
score = 1.0
ipv6 = false
codes = [
  { name = "SPAM", answers = ["127.0.0.2"], score = 5.0, action = "reject" },
  { name = "LOW", answers = ["127.0.0.4"], score = 1.5 },
]

[[dnsbl]]
name = "TEST6"
zone = "bl6.test"
ipv4 = false
score = 2.0

[[dnswl]]
name = "TEST"
zone = "wl.test"
score = -10.0
""",
    "rules.toml": '[[rule]]\nname = "SUBJ_TAGME"\nheader = "Subject"\nregex = "TAGME"\nscore = 6\n',
}


#: IPv6 clients through XCLIENT; no headers added by Postfix for "local" clients
#: (the XCLIENT session starts on loopback), so the milter sees a missing From.
POSTFIX = {"inet_protocols": "all", "local_header_rewrite_clients": ""}


@pytest.fixture(scope="module")
def local_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDns]:
    server = LocalDns(tmp_path_factory.mktemp("dns"), LOCAL_DATA, LISTS).start()
    yield server
    server.stop()


def sections(nameserver: str, logins: str, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
    return {
        "dns": {"nameservers": [nameserver], "timeout": timeout},
        "milter": {"local_domains": ["ours.test"]},
        "checks": {
            "spf": {"fail_action": "reject"},
            "local_domains": {"sender_login_maps": logins},
        },
    }


@pytest.fixture(scope="module")
def logins(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("logins") / "sender_logins"
    path.write_text("alice@ours.test  alice\n")
    return str(path)


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack], local_dns: LocalDns, logins: str) -> Stack:
    return make_stack(sections(local_dns.nameserver, logins), RULES, postfix_extra=POSTFIX)


def client(addr: str = "192.0.2.10", helo: str = "client.example.org", **extra: str) -> dict[str, str]:
    return {"ADDR": addr, "NAME": "[UNAVAILABLE]", "HELO": helo, **extra}


def row_for(stack: Stack, subject: str = "", client_addr: str = "") -> dict[str, Any]:
    for row in stack.milterd.log_json():
        if (subject and row["subject"] == subject) or (client_addr and not subject and row["client_addr"] == client_addr):
            return row
    raise AssertionError(f"no log row for {subject or client_addr}")


def delivered(stack: Stack, subject: str) -> Any:
    [found] = stack.sink.wait(1, match=lambda m: any(subject == s for s in m.header("Subject")))
    return found


def test_listed_client_is_rejected_with_the_zones_reason(stack: Stack) -> None:
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        stack.send(message("listed"), xclient=client("192.0.2.66"))
    assert info.value.smtp_code == 554
    text = info.value.smtp_error.decode()
    assert text.startswith("5.7.1 Service unavailable; client [192.0.2.66] blocked using bl.test;")
    assert "Listed for spam, see http://bl.test/192.0.2.66" in text
    row = row_for(stack, client_addr="192.0.2.66")
    assert row["action"] == "reject" and "DNSBL_TEST_SPAM" in row["symbols"]


def test_lower_weight_listing_is_only_scored(stack: Stack) -> None:
    stack.send(message("low listing"), xclient=client("192.0.2.67"))
    assert delivered(stack, "low listing")
    row = row_for(stack, "low listing")
    assert row["symbols"]["DNSBL_TEST_LOW"] == 1.5 and row["action"] == "accept"


def test_dnswl_client_passes_what_would_be_tagged(stack: Stack) -> None:
    stack.send(message("TAGME control"), xclient=client("192.0.2.10"))
    stack.send(message("TAGME allowed"), xclient=client("192.0.2.77"))
    assert delivered(stack, "TAGME control").header("X-Spam-Flag") == ["YES"]
    allowed = delivered(stack, "TAGME allowed")
    assert allowed.header("X-Spam-Flag") == []
    assert row_for(stack, "TAGME allowed")["symbols"]["DNSWL_TEST"] == -10.0


def test_ipv6_client_is_looked_up_in_nibble_form(stack: Stack, local_dns: LocalDns) -> None:
    stack.send(message("ipv6 client"), xclient=client("IPV6:2001:db8::66", helo="client.example.org"))
    assert delivered(stack, "ipv6 client")
    assert "DNSBL_TEST6" in row_for(stack, "ipv6 client")["symbols"]
    assert "6.6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl6.test. A IN" in local_dns.log()


def test_a_nat64_client_is_judged_as_the_ipv4_address_it_stands_for(stack: Stack) -> None:
    # An IPv6-only MX behind NAT64/SIIT sees 192.0.2.66 as 64:ff9b::c000:242: the DNS lists asked its IPv6
    # nibble name (never listed), SPF failed pass.test's ip4: range (found by review).
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        stack.send(message("nat64 listed"), xclient=client("IPV6:64:ff9b::c000:242"))
    assert info.value.smtp_code == 554
    assert info.value.smtp_error.decode().startswith("5.7.1 Service unavailable; client [192.0.2.66] blocked using bl.test;")
    stack.send(message("nat64 low", sender="x@pass.test"), sender="x@pass.test", xclient=client("IPV6:64:ff9b::c000:243"))
    assert delivered(stack, "nat64 low")
    row = row_for(stack, "nat64 low")
    assert row["client_addr"] == "192.0.2.67"
    assert row["symbols"]["DNSBL_TEST_LOW"] == 1.5 and "SPF_PASS" in row["symbols"]


def test_spf_fail_is_rejected_at_rcpt(stack: Stack) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        stack.send(message("spf fail", sender="x@fail.test"), sender="x@fail.test", xclient=client())
    code, text = info.value.recipients["bob@example.com"]
    assert code == 550 and text.startswith(b"5.7.23")
    row = next(r for r in stack.milterd.log_json() if r["sender"] == "x@fail.test")
    assert row["action"] == "reject" and "SPF_FAIL" in row["symbols"]


def test_spf_softfail_is_scored_and_pass_is_in_authentication_results(stack: Stack) -> None:
    stack.send(message("spf soft", sender="x@soft.test"), sender="x@soft.test", xclient=client())
    forged = {"Authentication-Results": "mx.test; spf=pass smtp.mailfrom=x@pass.test", "X-Other": "1"}
    raw = message("spf pass", sender="x@pass.test", headers=forged).replace(b"X-Other: 1\r\n", b"Authentication-Results: other.example; dkim=pass\r\n")
    stack.send(raw, sender="x@pass.test", xclient=client())
    soft = delivered(stack, "spf soft")
    assert row_for(stack, "spf soft")["symbols"]["SPF_SOFTFAIL"] > 0
    # One header of ours carries every method (no signature, no ARC chain, no DMARC policy here).
    assert soft.header("Authentication-Results") == ["mx.test; spf=softfail smtp.mailfrom=x@soft.test; dkim=none; arc=none; dmarc=none header.from=soft.test"]
    passed = delivered(stack, "spf pass")
    # Ours on top; the forged one claiming mx.test is gone; the other host's is kept.
    assert passed.header("Authentication-Results") == ["mx.test; spf=pass smtp.mailfrom=x@pass.test; dkim=none; arc=none; dmarc=none header.from=pass.test", "other.example; dkim=pass"]
    assert "SPF_PASS" in row_for(stack, "spf pass")["symbols"]


def test_a_quoted_sender_s_domain_is_in_authentication_results(stack: Stack) -> None:
    # The address was left out whole (no dot-atom local part may be written safely): the header named no identity.
    stack.send(message("spf quoted", sender="x@pass.test"), sender='"john doe"@pass.test', xclient=client())
    assert delivered(stack, "spf quoted").header("Authentication-Results") == [
        "mx.test; spf=pass smtp.mailfrom=pass.test; dkim=none; arc=none; dmarc=none header.from=pass.test"]
    assert "SPF_PASS" in row_for(stack, "spf quoted")["symbols"]


def test_a_u_label_sender_is_judged_by_its_own_domains_spf(stack: Stack) -> None:
    """MAIL FROM:<x@straße.test> SMTPUTF8: SPF is straße.test's (its IDNA2008 A-label, which passes
    this client), never strasse.test's (IDNA2003's mapping, another domain, whose record fails it)."""
    client_ = stack.postfix.smtp(xclient=client())
    try:
        raw = message("u-label sender", sender="x@stra\u00dfe.test").replace(b"x@stra\xc3\x9fe.test", b"x@xn--strae-oqa.test")
        client_.sendmail("x@stra\u00dfe.test", ["bob@example.com"], raw, mail_options=["SMTPUTF8"])
    finally:
        client_.quit()
    assert delivered(stack, "u-label sender")
    row = row_for(stack, "u-label sender")
    assert row["sender"] == "x@stra\u00dfe.test"
    assert "SPF_PASS" in row["symbols"] and "SPF_FAIL" not in row["symbols"], row


def test_helo_bare_ip_and_ip_literal_sender_are_scored(stack: Stack) -> None:
    stack.send(message("bare helo"), xclient=client(helo="192.0.2.10"))
    stack.send(message("literal sender", sender="user@[1.2.3.4]"), sender="user@[1.2.3.4]", xclient=client())
    assert delivered(stack, "bare helo") and delivered(stack, "literal sender")
    assert "HELO_BARE_IP" in row_for(stack, "bare helo")["symbols"]
    assert "MAIL_FROM_IP_LITERAL" in row_for(stack, "literal sender")["symbols"]


def test_a_forwarder_s_srs_sender_past_64_octets_is_a_valid_address(stack: Stack) -> None:
    # postsrsd rewrote an Amazon SES bounce address past RFC 5321's 64 octets (a floor, not a limit receivers
    # enforce): forwarded mail scored MAIL_FROM_INVALID.
    srs = "SRS0=abcd=TT=amazonses.com=0100018e7a1b2c3d-4e5f6a7b-8c9d-0e1f-2a3b-4c5d6e7f8a9b-000000@pass.test"
    stack.send(message("srs sender", sender=srs), sender=srs, xclient=client())
    assert delivered(stack, "srs sender")
    symbols = row_for(stack, "srs sender")["symbols"]
    assert "MAIL_FROM_INVALID" not in symbols and "SPF_PASS" in symbols, symbols


def test_no_from_and_two_subjects_are_scored(stack: Stack) -> None:
    raw = message("twice", headers={"From": None}).replace(b"Subject: twice\r\n", b"Subject: twice\r\nSubject: twice again\r\n")
    stack.send(raw, xclient=client())
    assert delivered(stack, "twice")
    symbols = row_for(stack, "twice")["symbols"]
    assert "HDR_FROM_MISSING" in symbols and "HDR_DUPLICATE" in symbols


def test_clean_client_gets_no_dns_symbols(stack: Stack) -> None:
    stack.send(message("clean", sender="x@pass.test"), sender="x@pass.test", xclient=client())
    assert delivered(stack, "clean")
    assert row_for(stack, "clean")["symbols"] == {"SPF_PASS": -0.5, "DKIM_NONE": 0.0, "DMARC_NONE": 0.0}


def test_local_domain_spoof_and_sender_login(stack: Stack) -> None:
    stack.send(message("spoofed local", sender="bob@ours.test"), sender="bob@ours.test", xclient=client())
    assert "LOCAL_SENDER_SPOOF" in row_for(stack, "spoofed local")["symbols"]
    # Authenticated (XCLIENT LOGIN): the listed address is exempt, the login map is not.
    stack.send(message("own address", sender="alice@ours.test"), sender="alice@ours.test", xclient=client("192.0.2.66", LOGIN="alice"))
    assert delivered(stack, "own address")
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        stack.send(message("not mine", sender="bob@ours.test"), sender="bob@ours.test", xclient=client(LOGIN="alice"))
    assert info.value.smtp_code == 553 and b"not owned by user alice" in info.value.smtp_error


def test_resolver_down_is_no_hang_and_is_recorded(make_stack: Callable[..., Stack], logins: str) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes queries, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        down = make_stack(sections(f"127.0.0.1:{silent.getsockname()[1]}", logins, timeout=1.0), RULES)
        down.send(message("resolver down", sender="x@pass.test"), sender="x@pass.test", xclient=client("192.0.2.66"))
        assert delivered(down, "resolver down")
        symbols = row_for(down, "resolver down")["symbols"]
        assert {"DNSBL_TEMPFAIL", "SPF_TEMPERROR", "MAIL_FROM_TEMPFAIL"} <= set(symbols)
    finally:
        silent.close()



def test_a_recipient_refused_for_spf_is_not_greylisted_nor_counted(make_stack: Callable[..., Stack], local_dns: LocalDns, logins: str) -> None:
    # Greylisting ran after SPF had refused the recipient: the triplet was stored and passed at the retry, and,
    # with auto_whitelist_after = 1, a forger's refused retry whitelisted its /24 for everyone's mail.
    greylisting = {"greylist": {**GREYLIST, "auto_whitelist_after": 1}}
    stack = make_stack(with_sections(sections(local_dns.nameserver, logins), greylisting), RULES, postfix_extra=POSTFIX)
    forger = client("192.0.2.10")
    for _ in range(2):
        refused = attempt(stack, forger, ["bob@example.com"], sender="x@fail.test")
        assert refused["bob@example.com"][0] == 550 and refused["bob@example.com"][1].startswith(b"5.7.23")
        wait_out_the_delay()
    assert json.loads(stack.milterd.cli("greylist", "list", "--json", "--limit", "0").stdout) == []
    later = attempt(stack, client("192.0.2.78"), ["carol@example.com"], sender="someone@pass.test")
    assert greylisted(later["carol@example.com"])


def test_a_backslash_in_the_local_part_is_no_escape_to_spf(stack: Stack) -> None:
    # pyspf expands exists:%{l} to the name '"ceo\\1"._spf.macro.test', which was parsed as DNS's text form: a bad
    # escape, a temporary error; the fail became SPF_TEMPERROR (and a p=reject DMARC_TEMPFAIL: the forgery delivered).
    smtp = stack.postfix.smtp(xclient=client())
    try:
        code, _ = smtp.docmd('MAIL FROM:<"ceo\\1"@macro.test>')
        assert code == 250
        code, reply = smtp.docmd("RCPT TO:<bob@example.com>")
    finally:
        smtp.close()
    assert code == 550 and reply.startswith(b"5.7.23"), reply

"""Sixteenth review, DNS lists, through the real Postfix: a client at a private address that the
local rbldnsd lists (set to reject) is not looked up, so not refused, with ``[checks.dnsbl]
skip_private`` (the default): no query for it reaches the resolver, and milterd's log says why.
With ``skip_private = false`` the same kind of client is asked about and refused, as before.

A client of a documentation network is still looked up (and refused) with the default.
XCLIENT lets each test be the client it needs.
"""

from __future__ import annotations

import smtplib
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import message
from tests.harness.dns import LocalDns
from tests.harness.stack import Stack, row_for

LOCAL_DATA = ["example.org. A 192.0.2.1", "example.org. MX 10 mx.example.org."]
LISTS = {
    "bl.test": (
        "ip4set",
        ":127.0.0.2:Listed for spam\n10.66.0.66\n10.66.0.67\n100.64.0.66\n192.168.66.66\n192.0.2.66\n",
    ),
    "bl6.test": ("ip6trie", "fd00::66/128 :127.0.0.2:IPv6 listed\nfd00::67/128 :127.0.0.2:IPv6 listed\n"),
    "wl.test": ("ip4set", ":127.0.0.2:Allowed\n192.168.77.77\n"),
}
RULES = {
    "lists.toml": """
[[dnsbl]]
name = "TEST"
zone = "bl.test"
score = 1.0
ipv6 = false
codes = [{ name = "SPAM", answers = ["127.0.0.2"], score = 5.0, action = "reject" }]

[[dnsbl]]
name = "TEST6"
zone = "bl6.test"
ipv4 = false
score = 1.0
codes = [{ name = "SPAM", answers = ["127.0.0.2"], score = 5.0, action = "reject" }]

[[dnswl]]
name = "TEST"
zone = "wl.test"
score = -10.0
""",
}
#: IPv6 clients through XCLIENT (see test_checks.py).
POSTFIX = {"inet_protocols": "all", "local_header_rewrite_clients": ""}


@pytest.fixture(scope="module")
def local_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDns]:
    server = LocalDns(tmp_path_factory.mktemp("dns"), LOCAL_DATA, LISTS).start()
    yield server
    server.stop()


def sections(nameserver: str, **dnsbl: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {"dns": {"nameservers": [nameserver], "timeout": 2.0}}
    if dnsbl:
        found["checks"] = {"dnsbl": dnsbl}
    return found


@pytest.fixture(scope="module")
def default_stack(make_stack: Callable[..., Stack], local_dns: LocalDns) -> Stack:
    return make_stack(sections(local_dns.nameserver), RULES, postfix_extra=POSTFIX)


@pytest.fixture(scope="module")
def lookup_stack(make_stack: Callable[..., Stack], local_dns: LocalDns) -> Stack:
    return make_stack(sections(local_dns.nameserver, skip_private=False), RULES, postfix_extra=POSTFIX)


def client(addr: str) -> dict[str, str]:
    return {"ADDR": addr, "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}


def delivered(stack: Stack, subject: str) -> Any:
    [found] = stack.sink.wait(1, match=lambda m: any(subject == s for s in m.header("Subject")))
    return found


@pytest.mark.parametrize(
    ("addr", "shown", "reversed_"),
    [
        ("10.66.0.66", "10.66.0.66", "66.0.66.10"),
        ("100.64.0.66", "100.64.0.66", "66.0.64.100"),
        ("192.168.66.66", "192.168.66.66", "66.66.168.192"),
        ("IPV6:fd00::66", "fd00::66", "6.6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f"),
    ],
)
def test_a_listed_private_client_is_not_looked_up(default_stack: Stack, local_dns: LocalDns, addr: str, shown: str, reversed_: str) -> None:
    subject = f"private {shown}"
    default_stack.send(message(subject), xclient=client(addr))  # before: 554 5.7.1 ... blocked using bl.test
    assert delivered(default_stack, subject)
    row = row_for(default_stack, subject)
    assert row["action"] == "accept" and [s for s in row["symbols"] if s.startswith(("DNSBL_", "DNSWL_"))] == ["DNSBL_SKIPPED_PRIVATE"], row["symbols"]
    # No query was needed: the resolver was never asked about this client in any list (bl.test, bl6.test, wl.test).
    log = local_dns.log()
    assert f"{reversed_}.bl" not in log and f"{reversed_}.wl" not in log
    assert f"client [{shown}] not looked up in the DNS lists: a private address" in default_stack.milterd.stderr()


def test_a_private_dnswl_client_gets_no_allow_listing(default_stack: Stack, local_dns: LocalDns) -> None:
    default_stack.send(message("private allowed"), xclient=client("192.168.77.77"))
    assert delivered(default_stack, "private allowed")
    assert "DNSWL_TEST" not in row_for(default_stack, "private allowed")["symbols"]
    assert "77.77.168.192.wl.test." not in local_dns.log()


def test_a_documentation_network_client_is_still_looked_up(default_stack: Stack, local_dns: LocalDns) -> None:
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        default_stack.send(message("documentation net"), xclient=client("192.0.2.66"))
    assert info.value.smtp_code == 554
    assert info.value.smtp_error.decode().startswith("5.7.1 Service unavailable; client [192.0.2.66] blocked using bl.test;")
    assert "66.2.0.192.bl.test. A IN" in local_dns.log()


@pytest.mark.parametrize(
    ("addr", "shown", "zone", "queried"),
    [
        ("10.66.0.67", "10.66.0.67", "bl.test", "67.0.66.10.bl.test. A IN"),
        ("IPV6:fd00::67", "fd00::67", "bl6.test", "7.6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.bl6.test. A IN"),
    ],
)
def test_with_skip_private_false_the_private_client_is_looked_up(lookup_stack: Stack, local_dns: LocalDns, addr: str, shown: str, zone: str, queried: str) -> None:
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        lookup_stack.send(message(f"looked up {shown}"), xclient=client(addr))
    assert info.value.smtp_code == 554
    assert info.value.smtp_error.decode().startswith(f"5.7.1 Service unavailable; client [{shown}] blocked using {zone};")
    assert queried in local_dns.log()
    assert "not looked up in the DNS lists" not in lookup_stack.milterd.stderr()

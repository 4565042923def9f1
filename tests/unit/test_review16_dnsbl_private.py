"""Sixteenth review, DNS lists: a client at a private address (RFC 1918, shared address space,
link-local, unique local and the like) is asked of no [[dnsbl]] or [[dnswl]] zone
(``[checks.dnsbl] skip_private``, on by default), and the log says so; loopback and the
documentation networks, which the lists' test points and the tests use, are still asked.

Before, every client was looked up: 10.66.0.66 in zen.spamhaus.org told Spamhaus an address of
the local network, and could never be listed there.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import pytest

from milterd.checks.dnsbl import DnsLists
from milterd.config import Config, ConfigError
from milterd.dns import Answer
from milterd.message.model import Action, Envelope, Session, Spool
from milterd.services import Services, build

ZONES = """
[[dnsbl]]
name = "TEST"
zone = "bl.test"
score = 1.0
codes = [{ name = "SPAM", answers = ["127.0.0.2"], score = 5.0, action = "reject" }]

[[dnswl]]
name = "TEST"
zone = "wl.test"
score = -10.0
"""

#: Never looked up with skip_private (the default).
PRIVATE = [
    "10.0.0.1", "10.66.0.66", "10.255.255.255", "172.16.0.1", "172.31.255.255", "192.168.0.1", "192.168.255.255",
    "100.64.0.1", "100.127.255.255", "169.254.1.1", "198.18.0.1", "198.19.255.255",
    "fc00::1", "fd12:3456:789a::66", "fe80::1", "fe80::1%eth0", "febf::1", "fec0::1", "feff::1",
    "::ffff:10.66.0.66", "::ffff:192.168.1.1", "::ffff:100.64.0.1",
]
#: Still looked up: loopback (every list's test point), the documentation networks the tests
#: use, public addresses, and the neighbours just outside each private range.
LOOKED_UP = [
    "127.0.0.1", "127.0.0.2", "192.0.2.10", "192.0.2.66", "198.51.100.3", "203.0.113.5", "8.8.8.8",
    "9.255.255.255", "11.0.0.0", "172.15.255.255", "172.32.0.0", "192.167.255.255", "192.169.0.0",
    "100.63.255.255", "100.128.0.0", "169.253.255.255", "169.255.0.0", "198.17.255.255", "198.20.0.0",
    "::1", "2001:db8::66", "2a00:1450:4001::1", "fbff::1", "fe7f::1", "ff02::1", "::ffff:192.0.2.66", "::ffff:127.0.0.2",
]


@pytest.mark.parametrize("address", PRIVATE)
def test_private_addresses_are_found(address: str) -> None:
    from milterd.checks.dnsbl import private_network

    assert private_network(ipaddress.ip_address(address)) is not None, address


@pytest.mark.parametrize("address", LOOKED_UP)
def test_loopback_documentation_and_public_addresses_are_not_private(address: str) -> None:
    from milterd.checks.dnsbl import private_network

    assert private_network(ipaddress.ip_address(address)) is None, address


def test_the_ranges_are_named_one_by_one() -> None:
    """Not is_private/is_global wholesale: 127/8 and the documentation networks are "private" to ipaddress."""
    from milterd.checks.dnsbl import PRIVATE_NETWORKS

    assert {str(n) for n in PRIVATE_NETWORKS} >= {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10"}
    for kept in ("127.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "::1/128", "2001:db8::/32"):
        assert not any(n.overlaps(ipaddress.ip_network(kept)) for n in PRIVATE_NETWORKS if n.version == ipaddress.ip_network(kept).version), kept


class RecordingResolver:
    """Lists every address in bl.test (127.0.0.2, reason "Listed") and wl.test; records each name asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def stage_deadline(self, deadlines: dict[str, float], stage: str) -> float:
        return deadlines.setdefault(stage, 1e18)

    def answer(self, name: str, rdtype: str) -> Answer:
        self.asked.append((name, rdtype))
        if rdtype == "TXT":
            return Answer(name, rdtype, "ok", ("Listed",))
        return Answer(name, rdtype, "ok", ("127.0.0.2",))

    def submit(self, name: str, rdtype: str, deadline: float | None = None) -> Answer:
        return self.answer(name, rdtype)

    def collect(self, pending: list[Answer], queries: Any, deadline: float) -> list[Answer]:
        return list(pending)

    def query_many(self, queries: list[tuple[str, str]], deadline: float | None = None) -> list[Answer]:
        return [self.answer(n, t) for n, t in queries]


def services_for(tmp_path: Path, **dnsbl: Any) -> Services:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "lists.toml").write_text(ZONES)
    # A [[dnsbl]] named SPAMHAUS etc. stays shipped: switched off, so only the test zones are asked.
    (rules / "off.toml").write_text(
        "".join(f'[[{kind}]]\nname = "{name}"\nenabled = false\n\n' for kind, name in (("dnsbl", "SPAMHAUS"), ("dnsbl", "SPAMCOP"), ("dnsbl", "BARRACUDA"), ("dnswl", "ORG")))
    )
    settings: dict[str, Any] = {"rules": {"dir": str(rules)}, "dns": {"nameservers": ["127.0.0.1:9"]}}
    if dnsbl:
        settings["checks"] = {"dnsbl": dnsbl}
    services = build(Config.model_validate(settings))
    services._resolver = RecordingResolver()
    return services


def looked_up(services: Services, address: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The symbols DnsLists gives a client at *address* (at connect and MAIL FROM) and the names it asked."""
    check = DnsLists(services)
    assert {z.zone for z in check.zones} == {"bl.test", "wl.test"}
    session = Session(client_addr=address, family="inet6" if ":" in address else "inet")
    hits = [*check.on_connect(session), *check.on_mail(session, Envelope(spool=Spool(1024)))]
    return [h.symbol + (":reject" if h.action == Action.REJECT else "") for h in hits], services.resolver.asked


@pytest.mark.parametrize("address", ["10.66.0.66", "172.20.1.2", "192.168.77.77", "100.64.1.1", "169.254.9.9", "fd00::66", "fe80::66", "::ffff:10.66.0.66"])
def test_a_private_client_is_not_looked_up_and_the_log_says_why(tmp_path: Path, address: str, caplog: pytest.LogCaptureFixture) -> None:
    services = services_for(tmp_path)
    with caplog.at_level(logging.INFO, logger="milterd"):
        symbols, asked = looked_up(services, address)
    assert symbols == ["DNSBL_SKIPPED_PRIVATE"] and asked == [], (address, symbols, asked)
    shown = str(ipaddress.ip_address(address.split("%")[0]))
    [line] = [r.getMessage() for r in caplog.records if "not looked up in the DNS lists" in r.getMessage()]
    assert f"client [{shown}]" in line and "private address" in line and "skip_private" in line, line


@pytest.mark.parametrize("address", ["10.66.0.66", "fd00::66", "::ffff:192.168.1.1"])
def test_skip_private_false_looks_a_private_client_up_again(tmp_path: Path, address: str, caplog: pytest.LogCaptureFixture) -> None:
    services = services_for(tmp_path, skip_private=False)
    with caplog.at_level(logging.INFO, logger="milterd"):
        symbols, asked = looked_up(services, address)
    assert {"DNSBL_TEST_SPAM:reject", "DNSBL_TEST_SPAM", "DNSWL_TEST"} <= set(symbols), symbols
    assert {".".join(name.split(".")[-2:]) for name, rdtype in asked if rdtype == "A"} == {"bl.test", "wl.test"}
    assert not any("not looked up in the DNS lists" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("address", ["127.0.0.2", "192.0.2.66", "198.51.100.3", "203.0.113.5", "2001:db8::66", "::1"])
def test_loopback_and_documentation_clients_are_still_looked_up(tmp_path: Path, address: str) -> None:
    symbols, asked = looked_up(services_for(tmp_path), address)
    assert "DNSBL_TEST_SPAM:reject" in symbols and "DNSWL_TEST" in symbols, (address, symbols)
    assert len([a for a in asked if a[1] == "A"]) == 2


def test_the_option_is_a_boolean_defaulting_to_true() -> None:
    assert Config().checks.dnsbl.skip_private is True
    assert Config.model_validate({"checks": {"dnsbl": {"skip_private": False}}}).checks.dnsbl.skip_private is False
    with pytest.raises(ConfigError):
        Config().with_changes({"checks.dnsbl.skip_private": "sometimes"})

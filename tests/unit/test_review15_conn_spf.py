"""SPF and MAIL FROM on evasive senders (review 15): a trailing dot, a quoted local part with "@",
a domain DNS cannot encode."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import spf

from milterd.checks.sender import Sender, address_problem
from milterd.checks.spf import Spf
from milterd.config import Config, DnsSection
from milterd.dns import Answer, Resolver
from milterd.message.model import Action, Envelope, Session, Spool
from milterd.services import Services


class Zone:
    """TXT records served by a fake upstream; anything else is NXDOMAIN."""

    def __init__(self) -> None:
        self.txt: dict[str, list[str]] = {}

    def resolve(self, name: str, rdtype: str, lifetime: float) -> Answer:
        values = self.txt.get(name.lower().rstrip(".")) if rdtype == "TXT" else None
        if values is None:
            return Answer(name, rdtype, "nxdomain", ttl=60.0)
        rdata = tuple(SimpleNamespace(strings=(v.encode(),)) for v in values)
        return Answer(name, rdtype, "ok", tuple(values), rdata, 300.0)


def spf_check(monkeypatch: pytest.MonkeyPatch, **changes: object) -> Spf:
    """The SPF check asking a fake zone where only 192.0.2.10 may send for example.org and mx.example.org."""
    zone = Zone()
    zone.txt["example.org"] = ["v=spf1 ip4:192.0.2.10 -all"]
    zone.txt["mx.example.org"] = ["v=spf1 ip4:192.0.2.10 -all"]
    services = Services(config=Config().with_changes({"milter.hostname": "mx.test", **changes}))
    resolver = Resolver(DnsSection(nameservers=["127.0.0.1:1"], timeout=2.0))
    monkeypatch.setattr(resolver, "_servers", [])
    monkeypatch.setattr(resolver, "_resolve", zone.resolve)
    services._resolver = resolver  # noqa: SLF001
    monkeypatch.setattr(spf, "DNSLookup", spf.DNSLookup)  # the check points pyspf at its resolver: restored after
    return Spf(services)


def mail(check: Spf | Sender, sender: str, helo: str = "client.example.net") -> tuple[list[str], Envelope, Session]:
    session = Session(client_addr="198.51.100.7", helo=helo, family="inet")
    envelope = Envelope(spool=Spool(1024))
    envelope.sender = sender
    return [hit.symbol for hit in check.on_mail(session, envelope)], envelope, session


@pytest.mark.parametrize("sender", ["alice@example.org.", '"x@y"@example.org', '"a@b@c"@example.org.'])
def test_forged_sender_is_spf_fail(monkeypatch: pytest.MonkeyPatch, sender: str) -> None:
    symbols, envelope, _ = mail(spf_check(monkeypatch), sender)
    assert symbols == ["SPF_FAIL"]
    # Authentication-Results shows the identity judged: the domain without its trailing dot.
    assert envelope.check_state("spf")["evaluation"]["sender"] == sender.removesuffix(".")


def test_forged_sender_with_trailing_dot_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    check = spf_check(monkeypatch, **{"checks.spf": {"fail_action": "reject"}})
    symbols, envelope, session = mail(check, "alice@example.org.")
    assert symbols == []  # refused recipient by recipient
    [hit] = check.on_rcpt(session, envelope, "bob@example.com")
    assert hit.action == Action.REJECT
    assert hit.reply is not None and str(hit.reply).startswith("550 5.7.23 <alice@example.org>: SPF validation failed for example.org")


def test_null_sender_helo_with_trailing_dot_is_spf_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    symbols, envelope, _ = mail(spf_check(monkeypatch), "", helo="mx.example.org.")
    assert symbols == ["SPF_FAIL"]
    evaluation = envelope.check_state("spf")["evaluation"]
    assert (evaluation["identity"], evaluation["helo"]) == ("helo", "mx.example.org")


UNENCODABLE = ["a@" + "\u00e4" * 60 + ".example", "a@\udcff.example"]  # > 63 octets as an A-label; a byte not UTF-8


def local_dns_services(monkeypatch: pytest.MonkeyPatch) -> Services:
    """Services with the real resolver asking a closed port on 127.0.0.1 only: these names cannot
    reach the wire anyway (IDNA refuses them first, which the resolver answers as a DNS error)."""
    monkeypatch.setattr(spf, "DNSLookup", spf.DNSLookup)
    return Services(config=Config().with_changes({"milter.hostname": "mx.test", "dns.nameservers": ["127.0.0.1:1"], "dns.timeout": 1.0}))


@pytest.mark.parametrize("sender", UNENCODABLE)
def test_unencodable_domain_is_mail_from_invalid(monkeypatch: pytest.MonkeyPatch, sender: str) -> None:
    assert mail(Sender(local_dns_services(monkeypatch)), sender)[0] == ["MAIL_FROM_INVALID"]
    assert address_problem(sender) == "invalid"


@pytest.mark.parametrize("sender", UNENCODABLE)
def test_unencodable_domain_is_spf_none(monkeypatch: pytest.MonkeyPatch, sender: str) -> None:
    symbols, envelope, _ = mail(Spf(local_dns_services(monkeypatch)), sender)
    assert symbols == ["SPF_NONE"]
    assert envelope.check_state("spf")["evaluation"]["result"] == "none"


def test_encodable_idn_is_fine() -> None:
    assert address_problem("a@" + "\u00e4" * 10 + ".example") == ""
    assert address_problem("j\u00f6rg@ex\u00e4mple.org") == ""

"""SPF at MAIL FROM has a DNS deadline of its own: the MAIL stage's is spent by lookups of names the client
chose (its HELO name), and a forged MAIL FROM domain's SPF timed out: an aligned temperror, and DMARC's p=reject
gave way to DMARC_TEMPFAIL (found by review).  The real checks and Resolver; only the wire is stubbed."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, Iterator, Sequence

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
import spf

from milterd.checks.dmarc import Dmarc
from milterd.checks.helo import Helo
from milterd.checks.sender import Sender
from milterd.checks.spf import Spf
from milterd.config import Config
from milterd.dns import Answer, Resolver, use_for_spf
from milterd.message.model import Envelope, Session, Spool

TABLE = {("_dmarc.bank.example", "TXT"): "v=DMARC1; p=reject", ("bank.example", "TXT"): "v=spf1 ip4:198.51.100.0/24 -all",
         ("bank.example", "MX"): "10 mx.bank.example.", ("mx.attacker.example", "A"): "192.0.2.7"}
CONFIG = Config.model_validate({"dns": {"nameservers": ["127.0.0.1:9"], "timeout": 1.0}})


class Wire(Resolver):
    """slow.attacker.example never answers; bank.example answers after 100 ms (not cached yet); the rest at once."""

    def _resolve_many(self, keys: Sequence[tuple[str, str]], deadline: float) -> list[Answer]:
        answers = []
        for name, rdtype in keys:
            delay = float("inf") if name.endswith("slow.attacker.example") else 0.1 if name.endswith("bank.example") else 0.0
            if time.monotonic() + delay > deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                answers.append(Answer(name, rdtype, "error", error="timeout"))
                continue
            time.sleep(delay)
            text = TABLE.get((name, rdtype))
            if text is None:
                answers.append(Answer(name, rdtype, "nxdomain"))
                continue
            rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), f'"{text}"' if rdtype == "TXT" else text)
            answers.append(Answer(name, rdtype, "ok", (text,), (rdata,), 300.0))
        return answers


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    resolver = Wire(CONFIG.dns)
    monkeypatch.setattr(spf, "DNSLookup", spf.DNSLookup)  # given back after the test
    use_for_spf(lambda: resolver)
    yield SimpleNamespace(config=CONFIG, resolver=resolver)


@pytest.mark.parametrize("helo", ["mx.attacker.example", "mx.slow.attacker.example"])
def test_a_helo_name_whose_dns_never_answers_does_not_hold_back_spf_and_dmarc(services: Any, helo: str) -> None:
    checks = [Helo(services), Sender(services), Spf(services)]
    session = Session(client_addr="192.0.2.7")
    session.helo = helo
    for check in checks:
        check.on_helo(session)
    envelope = Envelope(spool=Spool(1 << 20))
    envelope.sender = "ceo@bank.example"
    for check in checks:
        check.on_mail(session, envelope)
    assert envelope.check_state("spf")["evaluation"]["result"] == "fail"
    envelope.headers.append(("From", b"<ceo@bank.example>"))
    assert [h.symbol for h in Dmarc(services).on_eom(session, envelope)] == ["DMARC_FAIL_REJECT"]

"""Review 16: every DNS question names a U-label domain by its IDNA2008 A-labels, as DMARC aligns it.

dnspython encodes a U-label with IDNA2003 unless the ``idna`` package happens to be installed, and
IDNA2003 maps ``ß`` to ``ss`` and ``ς`` to ``σ``: SPF of ``a@straße.example`` was evaluated against
``strasse.example``'s record, another domain with its own owner, while DMARC aligned the sender with
``xn--strae-oqa.example``.  The owner of ``strasse.example`` could then pass SPF, and DMARC through
that alignment, for mail from ``straße.example``.
"""

from __future__ import annotations

from typing import Any

import pytest

from milterd.checks.sender import dns_name
from milterd.checks.spf import SpfResults, evaluate
from milterd.config import Config
from milterd.dns import Answer, Resolver, a_label, cache_key, use_for_spf


@pytest.fixture()
def asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The questions a real Resolver sends (answered NXDOMAIN), with pyspf pointed at it."""
    resolver = Resolver(Config().with_changes({"dns.nameservers": ["127.0.0.1:9"]}).dns)
    questions: list[tuple[str, str]] = []

    def resolve_many(keys: Any, deadline: float) -> list[Answer]:
        questions.extend(keys)
        return [Answer(name, rdtype, "nxdomain") for name, rdtype in keys]

    monkeypatch.setattr(resolver, "_resolve_many", resolve_many)
    use_for_spf(lambda: resolver)
    yield questions
    resolver.close()


@pytest.mark.parametrize(("sender", "idna2008", "idna2003"), [
    ("a@straße.example", "xn--strae-oqa.example", "strasse.example"),
    ("a@ς.example", "xn--3xa.example", "xn--4xa.example"),
])
def test_spf_of_a_deviation_domain_asks_its_idna2008_name(asked: list[tuple[str, str]], sender: str, idna2008: str, idna2003: str) -> None:
    evaluate("192.0.2.1", sender, "mx.example", 2.0, SpfResults())
    names = {name for name, _ in asked}
    assert idna2008 in names and idna2003 not in names, asked


def test_the_cache_key_is_the_question_asked() -> None:
    assert cache_key("Straße.Example.", "txt") == ("xn--strae-oqa.example", "TXT")
    assert cache_key("bücher.example", "A") == ("xn--bcher-kva.example", "A")
    assert cache_key("mail.example.", "mx") == ("mail.example", "MX")
    assert a_label("straße.example") == "xn--strae-oqa.example"


def test_the_sender_check_measures_the_name_asked() -> None:
    """A label of 40 × ß: 86 octets as IDNA2003's 'ss' (refused), 47 as the A-label asked (a name)."""
    assert dns_name("straße.example") == "xn--strae-oqa.example"
    assert dns_name("ß" * 40 + ".example") == "xn--" + "zca" + "a" * 39 + ".example"
    assert dns_name("a..b") is None and dns_name("\udcff.example") is None


# --- review of the above: a capital final sigma, URI-list hosts, names IDNA refuses -----------------
def test_a_capital_sigma_is_asked_as_sigma_not_final_sigma() -> None:
    """str.lower() makes a word-final Σ into ς (another IDNA2008 label); UTS #46 maps Σ to σ."""
    from milterd.checks.dmarc import from_domains

    assert cache_key("ΤΕΣΤΣ-1.example", "TXT")[0] == "xn---1-n9b0dadc.example"  # τεστσ-1, not τεστς-1 (xn---1-n9b6ceec)
    assert from_domains(["a@ΤΕΣΤΣ-1.example"]) == ("xn---1-n9b0dadc.example",)
    assert cache_key("τεστς-1.example", "TXT")[0] == "xn---1-n9b6ceec.example"  # written ς stays ς


@pytest.mark.parametrize(("link", "host"), [
    ("http://faß.example/", "xn--fa-hia.example"),  # IDNA2003 read it as fass.example
    ("http://ΤΕΣΤΣ-1.example/x", "xn---1-n9b0dadc.example"),
    ("https://user@Bücher.Example:8080/", "xn--bcher-kva.example"),
])
def test_uri_list_hosts_are_the_names_a_browser_visits(link: str, host: str) -> None:
    from milterd.checks.uribl import link_host

    assert link_host(link) == host


def test_a_name_idna_refuses_is_no_domain_and_never_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """'a' * 58 + 'ß' is a 64-octet A-label: dnspython's IDNA2003 would have asked about '…ass' instead."""
    resolver = Resolver(Config().with_changes({"dns.nameservers": ["127.0.0.1:9"]}).dns)
    sent: list[str] = []
    monkeypatch.setattr(resolver, "_ask_udp", lambda keys, deadline, answers: sent.extend(n for (n, _), a in zip(keys, answers, strict=True) if a is None))
    monkeypatch.setattr(resolver, "_fallback", lambda key, deadline: sent.append(key[0]) or Answer(key[0], key[1], "nxdomain"))
    try:
        answer = resolver.query("a" * 58 + "ß._spf.sender.example", "A")
    finally:
        resolver.close()
    assert answer.status == "nxdomain" and sent == []

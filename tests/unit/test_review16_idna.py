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

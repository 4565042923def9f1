"""Work on hostile ARC sets bounded (32nd review).

An ARC-Message-Signature (or ed25519 DKIM signature) naming 8,000 absent fields in h= made dkimpy's
select_headers scan every field for each name: a second of CPU per set, 30 s for a message of 28 sets through
Postfix.  And sealing parsed every foreign Authentication-Results with authres (quadratic in a field's length)
twice: 30 fields of 32 KB, 70 s.  Work is counted here, not timed."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import authres
import dkim
import pytest

from milterd import dkimfast
from milterd.checks import arc as arc_check

from .test_arc_seal_review import keys, lookup, sealer_services, through_milterd  # noqa: F401 - keys: the fixture
from .test_dkim import MESSAGE


class Name(bytes):
    """A field name that counts how often it is lower-cased (dkimpy's select_headers does so per h= name)."""

    calls = 0

    def lower(self) -> bytes:
        Name.calls += 1
        return bytes(self).lower()


def test_select_headers_picks_what_dkimpy_picks() -> None:
    rng = random.Random(32)
    names = [b"From", b"from", b"To", b"Subject", b"X-A", b"x-a", b"Date"]
    for _ in range(2000):
        headers = [(rng.choice(names), b"v%d" % i) for i in range(rng.randrange(0, 12))]
        include = [rng.choice(names + [b"absent"]).lower() for _ in range(rng.randrange(0, 15))]
        assert dkimfast.select_headers(headers, list(include)) == dkimfast.PURE_SELECT_HEADERS(headers, list(include))


def test_an_h_list_of_absent_names_costs_one_pass_over_the_fields() -> None:
    dkimfast.install()
    assert dkimfast.installed() and dkim.select_headers is dkimfast.select_headers  # ARC's and ed25519's hash_headers use it
    headers = [(Name(b"X-Pad-%d" % i), b"x") for i in range(900)]
    include = [b"absent-%d" % i for i in range(8000)]
    Name.calls = 0
    assert dkim.select_headers(headers, include) == []
    assert Name.calls == 900  # once a field; dkimpy's: once a field for each absent name, 7.2 million
    Name.calls = 0
    dkimfast.PURE_SELECT_HEADERS(headers, include[:10])
    assert Name.calls == 9000  # what the bound is about


def test_sealing_never_parses_another_host_s_authentication_results(tmp_path: Path, keys: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    parsed: list[str] = []
    parse = authres.AuthenticationResultsHeader.parse.__func__  # type: ignore[attr-defined]

    def counted(cls: Any, text: str) -> Any:
        parsed.append(text)
        return parse(cls, text)

    monkeypatch.setattr(authres.AuthenticationResultsHeader, "parse", classmethod(counted))
    foreign = b"".join(b"Authentication-Results: other%d.example;" % i + b"a=b;" * 200 + b"\r\n" for i in range(30))
    services = sealer_services(tmp_path, keys["seal"])
    verdict, out = through_milterd(services, keys, foreign + MESSAGE)
    assert "ARC_SEALED" in verdict.symbols
    assert dkim.arc_verify(out, dnsfunc=lookup(keys))[0] == dkim.CV_Pass
    assert [text for text in parsed if "other" in text] == []  # each of the 30 was parsed twice
    assert out.count(b"other0.example") == 1  # the fields are delivered all the same
    services.close()


def test_a_huge_newest_arc_authentication_results_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    monkeypatch.setattr(authres, "parse_value", lambda text: parsed.append(text))
    big = b"i=1; list.test; " + b"dkim=pass header.d=bank.example; " * 400
    chain: Any = type("Arc", (), {"sorted_arc_headers": lambda self: (1, [(1, (b"ARC-Authentication-Results", big))])})()
    assert arc_check.newest_results(chain) == () and parsed == []
    assert len(big) > arc_check.MAX_RECORDED_RESULTS

"""Each signature dkimpy verifies canonicalised the whole body again: 50 junk ARC sets over a 10 MB body
cost 20 s of a worker's CPU (found by review).  Within one verification a body is canonicalised once per
body algorithm; the verdicts stay dkimpy's."""

from __future__ import annotations

import time
from typing import Any

import dkim
import dkim.canonicalization
import pytest

from milterd import dkimfast, dkimsign
from milterd.checks.arc import verify_chain
from milterd.checks.dkim import DnsRecorder, verify_all

from .test_dkim import MESSAGE
from .test_dkim_arc_leftovers_review import Table, list_hop


@pytest.fixture(scope="module")
def key() -> bytes:
    return dkimsign.generate("rsa", 1024)


HEAD = b"From: a@evil.example\r\nSubject: x\r\n\r\n"
BODY = b"a \t b  c\r\n" * 2000


def junk_sets(count: int) -> bytes:
    sets = []
    for i in range(count, 0, -1):
        c = (b"relaxed/relaxed", b"relaxed/simple")[i % 2]
        sets.append(b"ARC-Seal: i=%d; cv=pass; a=rsa-sha256; d=evil.example; s=k; b=AAAA\r\n" % i)
        sets.append(b"ARC-Message-Signature: i=%d; a=rsa-sha256; c=%s; d=evil.example; s=k; h=from; bh=AAAA; b=AAAA\r\n" % (i, c))
        sets.append(b"ARC-Authentication-Results: i=%d; x.example; none\r\n" % i)
    return b"".join(sets)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    dkimfast.install()
    calls: list[str] = []
    for algorithm in (dkim.canonicalization.Simple, dkim.canonicalization.Relaxed):
        original = algorithm.canonicalize_body

        def counting(content: bytes, original: Any = original, name: str = algorithm.__name__) -> bytes:
            calls.append(name)
            return original(content)  # type: ignore[no-any-return]

        monkeypatch.setattr(algorithm, "canonicalize_body", staticmethod(counting))
    return calls


def test_fifty_arc_sets_canonicalise_the_body_once(counted: list[str], key: bytes) -> None:
    table = Table({"k._domainkey.evil.example": dkimsign.public_record("rsa", key)})
    result = verify_chain(junk_sets(50) + HEAD + BODY, DnsRecorder(table, time.monotonic() + 5), 1024)
    assert (result.result, result.reason) == ("fail", "Most recent ARC-Message-Signature did not validate")
    assert sorted(counted) == ["Relaxed", "Simple"]  # 50 before


def test_five_dkim_signatures_canonicalise_the_body_once(counted: list[str], key: bytes) -> None:
    table = Table({"k._domainkey.evil.example": dkimsign.public_record("rsa", key)})
    signatures = b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=evil.example; s=k; h=from; bh=AAAA; b=AAAA\r\n" * 5
    results = verify_all(signatures + HEAD + BODY, DnsRecorder(table, time.monotonic() + 5), 5, 1024)
    assert [r.result for r in results] == ["fail"] * 5
    assert counted == ["Relaxed"]
    counted.clear()
    assert dkimfast.canonicalize_body(dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed"), BODY) == \
        dkim.canonicalization.Relaxed.canonicalize_body(BODY)  # outside a verification: not remembered
    assert counted == ["Relaxed", "Relaxed"]


def test_a_valid_chain_still_passes(key: bytes) -> None:
    table = Table({"arc._domainkey.list.test": dkimsign.public_record("rsa", key)})
    sealed = list_hop(MESSAGE, key)
    assert verify_chain(sealed, DnsRecorder(table, time.monotonic() + 5), 1024).result == "pass"

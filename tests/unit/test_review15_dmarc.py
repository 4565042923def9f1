"""Fifteenth session's review of DMARC: policy discovery that must stop at the From domain (RFC 7489
§6.6.3), a From domain with junk after it, a trusted ARC sealer that recorded a failure, and a junk
DKIM signature on a message too large to verify.

DNS is an in-memory TXT table (tests/unit/test_dmarc_review.py); keys are generated here.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import dkim
import pytest

from milterd import dkimsign
from milterd.checks.arc import verify_chain
from milterd.checks.dkim import DnsRecorder
from milterd.checks.dmarc import Dmarc, from_domains
from milterd.config import Config
from milterd.dns import Answer
from milterd.message.model import Action, Envelope, Session, Spool

from .test_dkim import FakeResolver
from .test_dkim_followups import LONG, OVER, POLICY, run_checks
from .test_dmarc_review import TxtTable, run_dmarc


class Records(TxtTable):
    """A TXT table whose names may hold several records."""

    def __init__(self, txt: dict[str, tuple[str, ...]]) -> None:
        super().__init__({})
        self.records = txt

    def txt(self, name: str, deadline: float | None = None) -> Answer:
        self.asked.append(name)
        return Answer(name, "TXT", "ok", self.records[name]) if name in self.records else Answer(name, "TXT", "nxdomain")


def dmarc_hits(froms: list[bytes], resolver: Any, config: dict[str, Any] | None = None, arc: Any = None) -> list[Any]:
    services: Any = SimpleNamespace(config=Config.model_validate(config or {}), resolver=resolver)
    envelope = Envelope(spool=Spool(1 << 20))
    envelope.headers.extend(("From", value) for value in froms)
    envelope.check_state("dkim")["result"] = []
    if arc is not None:
        envelope.check_state("arc")["result"] = arc
    return list(Dmarc(services).on_eom(Session(client_addr="192.0.2.7"), envelope))


# 1. Policy discovery (RFC 7489 §6.6.3 steps 5 and 6).


def test_several_records_at_the_from_domain_mean_no_dmarc_not_the_organizational_domains() -> None:
    resolver = Records({"_dmarc.sub.bank.example": ("v=DMARC1; p=none", "v=DMARC1; p=none; rua=mailto:x@bank.example"), "_dmarc.bank.example": ("v=DMARC1; p=reject",)})
    [hit] = dmarc_hits([b"news@sub.bank.example"], resolver)
    assert (hit.symbol, hit.action) == ("DMARC_NONE", None)
    assert hit.detail == "sub.bank.example: _dmarc.sub.bank.example publishes 2 DMARC records"
    assert resolver.asked == ["_dmarc.sub.bank.example"]


def test_a_record_without_a_valid_p_at_the_from_domain_means_no_dmarc() -> None:
    [hit], _ = run_dmarc([b"news@sub.bank.example"], {"_dmarc.sub.bank.example": "v=DMARC1; p=bogus", "_dmarc.bank.example": "v=DMARC1; p=reject"})
    assert (hit.symbol, hit.detail) == ("DMARC_NONE", "sub.bank.example: _dmarc.sub.bank.example: no valid p= or sp=")


def test_other_txt_records_at_the_from_domain_still_lead_to_the_organizational_domain() -> None:
    resolver = Records({"_dmarc.sub.bank.example": ("google-site-verification=abc",), "_dmarc.bank.example": ("v=DMARC1; p=reject",)})
    [hit] = dmarc_hits([b"news@sub.bank.example"], resolver)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)


def test_a_bad_p_with_rua_is_monitoring_as_before() -> None:
    [hit], _ = run_dmarc([b"news@bank.example"], {"_dmarc.bank.example": "v=DMARC1; p=bogus; rua=mailto:d@bank.example"})
    assert hit.symbol == "DMARC_FAIL_NONE"


# 2. A From domain with junk after it is judged as the domain a reader sees.


@pytest.mark.parametrize("junk", ["\x01", "\x7f", "\x1b", "!", "/evil", "\u200b"])
def test_junk_after_the_from_domain_does_not_switch_dmarc_off(junk: str) -> None:
    value = f"Bank Security <security@bank.example{junk}>"
    assert from_domains([value]) == ("bank.example",)
    [hit], _ = run_dmarc([value.encode()], {"_dmarc.bank.example": "v=DMARC1; p=reject"})
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)


@pytest.mark.parametrize("value", ["x@[192.0.2.1]", "x@!bank.example", "undisclosed-recipients:;", "x@"])
def test_an_address_that_names_no_domain_still_names_none(value: str) -> None:
    assert from_domains([value]) == ()


# 3. A trusted ARC sealer overrides a failure only when it recorded a pass for the From domain.

LIST_KEY = "arc._domainkey.lists.example"
FORGED = (
    b"From: CEO <ceo@bank.example>\r\nTo: list@lists.example\r\nSubject: wire the money\r\n"
    b"Date: Fri, 04 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@evil.example>\r\n\r\npay now\r\n"
)


@pytest.fixture(scope="module")
def list_key() -> bytes:
    return dkimsign.generate("rsa", 1024)


def sealed_chain(key: bytes, recorded: bytes) -> Any:
    """FORGED as lists.example (trusted) sealed it, having recorded *recorded*, and its verified chain."""
    stamped = b"Authentication-Results: mx.lists.example; " + recorded + b"\r\n" + FORGED
    message = b"".join(dkim.arc_sign(stamped, b"arc", b"lists.example", key, b"mx.lists.example")) + stamped
    chain = verify_chain(message, DnsRecorder(FakeResolver({LIST_KEY: dkimsign.public_record("rsa", key)}), time.monotonic() + 5), 1024)
    assert chain.result == "pass"
    return chain


TRUSTED = {"checks": {"arc": {"trusted_sealers": ["lists.example"]}}}


@pytest.mark.parametrize(
    "recorded",
    [b"spf=fail smtp.mailfrom=evil.example; dkim=none; dmarc=fail header.from=bank.example", b"arc=none", b"dkim=pass header.d=evil.example"],
)
def test_a_trusted_sealer_that_recorded_no_pass_for_the_from_domain_overrides_nothing(list_key: bytes, recorded: bytes) -> None:
    hits = dmarc_hits([b"CEO <ceo@bank.example>"], TxtTable({"_dmarc.bank.example": "v=DMARC1; p=reject"}), TRUSTED, sealed_chain(list_key, recorded))
    assert [(h.symbol, h.action) for h in hits] == [("DMARC_FAIL_REJECT", Action.REJECT)]


@pytest.mark.parametrize(
    ("recorded", "vouched"),
    [
        (b"dkim=fail; dmarc=pass header.from=bank.example", "dmarc=pass header.from=bank.example"),
        (b"dkim=pass header.d=mail.bank.example header.s=s1", "dkim=pass header.d=mail.bank.example"),
        (b"spf=pass smtp.mailfrom=bounces@bank.example", "spf=pass smtp.mailfrom=bank.example"),
    ],
)
def test_a_trusted_sealer_that_recorded_an_aligned_pass_overrides_the_failure(list_key: bytes, recorded: bytes, vouched: str) -> None:
    hits = dmarc_hits([b"CEO <ceo@bank.example>"], TxtTable({"_dmarc.bank.example": "v=DMARC1; p=reject"}), TRUSTED, sealed_chain(list_key, recorded))
    assert [(h.symbol, h.score, h.action) for h in hits] == [("DMARC_FAIL_REJECT", 0.0, None), ("DMARC_ARC_OVERRIDE", None, None)]
    assert hits[1].detail == f"bank.example: sealed by lists.example, who recorded {vouched}"


# 4. A junk signature with the From domain's d= on a message over [checks.dkim] max_size.


def test_a_junk_aligned_signature_on_a_large_message_does_not_escape_p_reject() -> None:
    junk = b"DKIM-Signature: v=1; a=rsa-sha256; d=signed.test; s=x; h=from; bh=AAAA; b=AAAA\r\n"
    [dkim_hit], [hit], _ = run_checks(junk + LONG, POLICY, OVER)  # no key published: nothing to verify it with
    assert dkim_hit.symbol == "DKIM_NONE"
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_QUARANTINE", Action.QUARANTINE)

"""DKIM and ARC leftovers: key names that are no DNS names (a permerror, not a temperror), an
ARC-Message-Signature whose l= leaves appended text unsigned, and DKIM_VALID_AUTHOR with several From domains.

DNS is an in-memory table answering, as milterd's Resolver does, an "error" at once for a name
dnspython cannot build; keys are generated here.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import dkim
import dns.exception
import dns.name
import pytest

from milterd import dkimsign
from milterd.authresults import build
from milterd.checks.arc import Arc, ArcResult, verify_chain
from milterd.checks.dkim import Dkim, DnsRecorder, SignatureResult, hits_for, verify_all
from milterd.checks.dmarc import Dmarc
from milterd.config import Config
from milterd.dns import Answer
from milterd.message.model import Action, Envelope, Session

from .test_arc_seal_review import envelope_of
from .test_dkim import MESSAGE, FakeResolver, signed

#: Text an attacker appends after the signed length.
APPENDED = b"--\r\nURGENT: wire the money to IBAN XX00 0000 today.\r\n"
#: SPF passed for a domain not aligned with From: only DKIM or a trusted ARC sealer could save DMARC.
UNALIGNED_SPF = {"result": "pass", "sender": "bounce@esp.example"}
LIST_KEY = "arc._domainkey.list.test"
SIGNED_KEY = "sel._domainkey.signed.test"
POLICIES = {"_dmarc.signed.test": "v=DMARC1; p=reject", "_dmarc.bank.example": "v=DMARC1; p=reject"}


class UnaskableNames:
    """Mixin for a fake resolver: a name dnspython cannot build is an "error" answer at once, as milterd's
    Resolver gives; other names go to the next class's ``txt``."""

    asked: list[str]

    def txt(self, name: str, deadline: float | None = None) -> Answer:
        try:
            dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            self.asked.append(name)
            return Answer(name, "TXT", "error", error=str(exc))
        return super().txt(name, deadline)  # type: ignore[misc,no-any-return]  # the next class in the MRO answers


class Table(UnaskableNames, FakeResolver):
    """TXT records from a table; a name dnspython cannot build is an "error" answer, as milterd's Resolver gives."""

    def stage_deadline(self, deadlines: dict[str, float], stage: str) -> float:
        return time.monotonic() + 5

    def deadline(self) -> float:
        return time.monotonic() + 5

    def cached(self, name: str, rtype: str) -> bool:
        return False


@pytest.fixture(scope="module")
def key() -> bytes:
    return dkimsign.generate("rsa", 1024)


def services_for(txt: dict[str, str], **checks: Any) -> Any:
    return SimpleNamespace(config=Config.model_validate({"checks": checks}), resolver=Table(txt))


def run(services: Any, message: bytes, *checks: type[Any]) -> tuple[dict[str, Any], Envelope]:
    """*checks* at end of message in order; their hits by symbol."""
    envelope = envelope_of(message)
    envelope.check_state("spf")["evaluation"] = UNALIGNED_SPF
    hits: dict[str, Any] = {}
    for check in checks:
        hits.update((hit.symbol, hit) for hit in check(services).on_eom(Session(client_addr="192.0.2.7"), envelope))
    return hits, envelope


# 1. A key name that is no DNS name: RFC 6376 §6.1.1, the signature can never verify.

BAD_SELECTORS = ["a..b", "x" * 64, ".".join(["x" * 63] * 4), "a\\999b"]


@pytest.mark.parametrize("selector", BAD_SELECTORS)
def test_a_key_name_that_is_no_dns_name_is_a_permerror_not_a_temperror(key: bytes, selector: str) -> None:
    table = Table({})
    [result] = verify_all(signed(key, selector=selector), DnsRecorder(table, time.monotonic() + 5), 5, 1024)
    assert (result.result, result.domain) == ("permerror", "signed.test")
    assert result.reason.startswith("key name is no valid DNS name: ")
    assert table.asked == []  # not asked: no "DNS error" to record
    assert [h.symbol for h in hits_for([result], "signed.test")] == ["DKIM_INVALID"]


@pytest.mark.parametrize("selector", BAD_SELECTORS)
def test_the_check_logs_dkim_invalid_and_authentication_results_say_permerror(key: bytes, selector: str) -> None:
    hits, envelope = run(services_for(POLICIES), signed(key, selector=selector), Dkim, Dmarc)
    assert "DKIM_INVALID" in hits and "DKIM_TEMPFAIL" not in hits
    assert (hits["DMARC_FAIL_REJECT"].action) == Action.REJECT
    header = build("mx.test", dkim=envelope.check_state("dkim")["result"])
    assert "dkim=permerror" in header and "temperror" not in header


def test_a_genuine_dns_error_stays_a_temperror(key: bytes) -> None:
    table = Table({}, failing=(SIGNED_KEY,))
    [result] = verify_all(signed(key), DnsRecorder(table, time.monotonic() + 5), 5, 1024)
    assert result.result == "temperror"
    assert [h.symbol for h in hits_for([result], "signed.test")] == ["DKIM_TEMPFAIL"]


def test_a_u_label_signing_domain_is_asked_for_not_refused_as_no_dns_name(key: bytes) -> None:
    # RFC 8616 §4: a d= with U-labels is looked up (as A-labels, by the resolver); it must not become a permerror.
    message = MESSAGE.replace(b"alice@signed.test", "alice@bücher.test".encode())
    table = Table({"sel._domainkey.bücher.test": dkimsign.public_record("rsa", key)})
    [result] = verify_all(dkim.sign(message, b"sel", "bücher.test".encode(), key) + message, DnsRecorder(table, time.monotonic() + 5), 5, 1024)
    assert (result.result, result.domain) == ("pass", "bücher.test")
    assert table.asked == ["sel._domainkey.bücher.test"]


def test_an_arc_seal_key_name_that_is_no_dns_name_fails_the_chain_not_tempfails_it(key: bytes) -> None:
    message = list_hop(MESSAGE, key, selector=b"a..b")
    hits, envelope = run(services_for({}), message, Arc)
    assert "ARC_FAIL" in hits and "ARC_TEMPFAIL" not in hits
    assert envelope.check_state("arc")["result"].temporary is False


# 2. ARC-Message-Signature l=: text appended after the newest sealer signed.


def list_hop(message: bytes, key: bytes, *, length: bool = False, selector: bytes = b"arc", recorded: bytes = b"arc=none") -> bytes:
    """*message* sealed by list.test (i=1), which *recorded* these results on receipt; with *length*
    its AMS carries l= (the whole body as sealed)."""
    stamped = b"Authentication-Results: list.test; " + recorded + b"\r\n" + message
    arc = dkim.ARC(stamped)
    if length:
        body = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").canonicalize_body(arc.body)
        gen_header = arc.gen_header

        def with_length(fields: list[tuple[bytes, bytes]], *args: Any, **kwargs: Any) -> Any:
            if args[2] == b"ARC-Message-Signature":
                fields = [*fields[:-1], (b"l", str(len(body)).encode()), fields[-1]]
            return gen_header(fields, *args, **kwargs)

        arc.gen_header = with_length  # type: ignore[method-assign]
    return b"".join(arc.sign(selector, b"list.test", key, b"list.test")) + stamped


def forged_from_bank(key: bytes, *, length: bool) -> bytes:
    """A list post from bank.example (p=reject, no DKIM now) sealed by the trusted list.test, which
    recorded bank.example's DKIM and DMARC pass on receipt (the list's footer broke the signature)."""
    recorded = b"dkim=pass header.d=bank.example; dmarc=pass header.from=bank.example"
    return list_hop(MESSAGE.replace(b"alice@signed.test", b"alice@bank.example"), key, length=length, recorded=recorded)


ARC_TRUSTED_CONF = {"arc": {"trusted_sealers": ["list.test"]}}


def test_text_appended_after_a_trusted_sealers_ams_l_fails_the_chain_and_dmarc_is_enforced(key: bytes) -> None:
    message = forged_from_bank(key, length=True) + APPENDED
    services = services_for({LIST_KEY: dkimsign.public_record("rsa", key), **POLICIES}, **ARC_TRUSTED_CONF)
    hits, envelope = run(services, message, Arc, Dmarc)
    assert "ARC_FAIL" in hits and "ARC_PASS" not in hits and "ARC_TRUSTED" not in hits
    assert hits["ARC_FAIL"].detail == f"list.test: ARC-Message-Signature i=1: l= leaves {len(APPENDED)} bytes of the body unsigned"
    assert "DMARC_ARC_OVERRIDE" not in hits
    assert hits["DMARC_FAIL_REJECT"].action == Action.REJECT
    assert "arc=fail" in build("mx.test", arc=envelope.check_state("arc")["result"])


def test_an_ams_l_covering_the_whole_body_still_passes_and_overrides(key: bytes) -> None:
    message = forged_from_bank(key, length=True)
    services = services_for({LIST_KEY: dkimsign.public_record("rsa", key), **POLICIES}, **ARC_TRUSTED_CONF)
    hits, _ = run(services, message, Arc, Dmarc)
    assert {"ARC_PASS", "ARC_TRUSTED", "DMARC_ARC_OVERRIDE"} <= set(hits)
    assert hits["DMARC_FAIL_REJECT"].score == 0.0


def test_a_trusted_sealers_pass_for_one_from_domain_overrides_no_other(key: bytes) -> None:
    # The list recorded a pass for bank.example alone; signed.test (p=reject too) is also in the From and failed.
    # Only the strictest domain was looked for in the sealer's results: both failures went unscored (found by review).
    two = MESSAGE.replace(b"From: Alice <alice@signed.test>", b"From: Alice <alice@bank.example>, CEO <ceo@signed.test>")
    recorded = b"dkim=pass header.d=bank.example; dmarc=pass header.from=bank.example"
    services = services_for({LIST_KEY: dkimsign.public_record("rsa", key), **POLICIES}, **ARC_TRUSTED_CONF)
    hits, envelope = run(services, list_hop(two, key, recorded=recorded), Arc, Dmarc)
    assert "ARC_TRUSTED" in hits and "DMARC_ARC_OVERRIDE" not in hits
    assert hits["DMARC_FAIL_REJECT"].action == Action.REJECT and hits["DMARC_FAIL_REJECT"].detail.startswith("signed.test p=reject")
    assert envelope.check_state("dmarc")["result"].domain == "signed.test"
    # Vouched for both, it is overridden, both named.
    both = recorded + b"; dmarc=pass header.from=signed.test"
    hits, _ = run(services, list_hop(two, key, recorded=both), Arc, Dmarc)
    assert hits["DMARC_FAIL_REJECT"].score == 0.0 and hits["DMARC_FAIL_REJECT"].action is None
    assert hits["DMARC_ARC_OVERRIDE"].detail == ("bank.example: sealed by list.test, who recorded dkim=pass header.d=bank.example; "
                                                 "signed.test: sealed by list.test, who recorded dmarc=pass header.from=signed.test")


def test_unsigned_body_pass_lets_an_ams_l_pass_as_it_lets_a_dkim_signature(key: bytes) -> None:
    message = forged_from_bank(key, length=True) + APPENDED
    table = Table({LIST_KEY: dkimsign.public_record("rsa", key)})
    assert verify_chain(message, DnsRecorder(table, time.monotonic() + 5), 1024, unsigned_body="pass").result == "pass"
    services = services_for({LIST_KEY: dkimsign.public_record("rsa", key), **POLICIES}, dkim={"unsigned_body": "pass"}, **ARC_TRUSTED_CONF)
    hits, _ = run(services, message, Arc)
    assert {"ARC_PASS", "ARC_TRUSTED"} <= set(hits)


def test_appended_text_without_l_fails_the_chain_as_before(key: bytes) -> None:
    message = forged_from_bank(key, length=False) + APPENDED
    table = Table({LIST_KEY: dkimsign.public_record("rsa", key)})
    result = verify_chain(message, DnsRecorder(table, time.monotonic() + 5), 1024)
    assert isinstance(result, ArcResult) and result.result == "fail"


# 3. DKIM_VALID_AUTHOR and several From domains.


def two_froms(key: bytes, second: bytes) -> bytes:
    """MESSAGE with a second From field after its own, signed by signed.test (both From fields signed):
    whoever holds a key of any domain can sign such a message."""
    message = MESSAGE.replace(b"From: Alice <alice@signed.test>\r\n", b"From: Alice <alice@signed.test>\r\nFrom: " + second + b"\r\n")
    return signed(key, message=message, include_headers=[b"from", b"from", b"to", b"subject"])


def test_a_forged_second_from_field_gets_no_valid_author_bonus(key: bytes) -> None:
    hits, _ = run(services_for({SIGNED_KEY: dkimsign.public_record("rsa", key)}), two_froms(key, b"Security <security@bank.example>"), Dkim)
    assert "DKIM_VALID" in hits and "DKIM_VALID_AUTHOR" not in hits


def test_a_second_from_field_of_the_signers_organizational_domain_keeps_the_bonus(key: bytes) -> None:
    hits, _ = run(services_for({SIGNED_KEY: dkimsign.public_record("rsa", key)}), two_froms(key, b"Bob <bob@mail.signed.test>"), Dkim)
    assert {"DKIM_VALID", "DKIM_VALID_AUTHOR"} <= set(hits)


def test_valid_author_needs_an_aligned_signature_for_every_from_domain() -> None:
    ours = SignatureResult("signed.test", "s", "pass")
    theirs = SignatureResult("bank.example", "s", "pass")
    assert [h.symbol for h in hits_for([ours], ("signed.test", "bank.example"))] == ["DKIM_VALID"]
    assert [h.symbol for h in hits_for([ours, theirs], ("signed.test", "bank.example"))] == ["DKIM_VALID", "DKIM_VALID_AUTHOR"]
    assert [h.symbol for h in hits_for([ours], ())] == ["DKIM_VALID"]
    assert [h.symbol for h in hits_for([ours], "signed.test")] == ["DKIM_VALID", "DKIM_VALID_AUTHOR"]

"""DMARC forgery review: From domains as IDNA2008 A-labels (RFC 7489 §6.6.1); DNS "errors" a forger
makes (a key name or MAIL FROM no resolver can ask about) that held back a p=reject policy; an encoded
word in place of the From address; dmarc=none in Authentication-Results for a From without domain."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from milterd import dkimsign
from milterd.authresults import build
from milterd.checks.dkim import DnsRecorder, SignatureResult, verify_all
from milterd.checks.dmarc import Dmarc, Record, aligned, evaluate
from milterd.config import Config
from milterd.message.model import Action, Envelope, Session, Spool

from .test_dkim import signed
from .test_dkim_arc_leftovers_review import UnaskableNames
from .test_dmarc_review import ATTACKER_SIGNED, POLICIES, TxtTable, run_dmarc

#: faß.example is xn--fa-hia.example (IDNA2008); fass.example is another domain with another owner.
SHARP_S = {"_dmarc.xn--fa-hia.example": "v=DMARC1; p=reject", "_dmarc.fass.example": "v=DMARC1; p=reject"}


def test_a_forged_sharp_s_from_domain_gets_its_own_reject_policy() -> None:
    # IDNA2003 (Python's "idna" codec) maps ß to "ss": the policy of fass.example was applied, or none.
    [hit], envelope = run_dmarc(["Bank <security@faß.example>".encode()], {"_dmarc.xn--fa-hia.example": "v=DMARC1; p=reject"}, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    assert "xn--fa-hia.example" in str(hit.reply)
    assert envelope.check_state("dmarc")["result"].domain == "xn--fa-hia.example"


def test_a_sharp_s_domain_signing_its_own_mail_passes() -> None:
    own = [SignatureResult("xn--fa-hia.example", "s", "pass")]
    [hit], _ = run_dmarc(["anna@faß.example".encode()], SHARP_S, own)
    assert hit.symbol == "DMARC_PASS"
    # ...and a signature of the IDNA2003 look-alike does not align with it.
    [hit], _ = run_dmarc(["anna@faß.example".encode()], SHARP_S, [SignatureResult("fass.example", "s", "pass")])
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)


def test_final_sigma_and_sharp_s_align_as_idna2008_a_labels() -> None:
    assert aligned("xn--fa-hia.example", "faß.example", "s")
    assert not aligned("fass.example", "faß.example", "r")
    assert aligned("xn--3xa.example", "ς.example", "s") and not aligned("xn--4xa.example", "ς.example", "r")
    assert aligned("xn--bcher-kva.example", "Bücher.example", "s")


def test_an_invisible_joiner_in_the_from_domain_still_gets_the_look_alike_policy() -> None:
    # "bank\u200d.example" shows as bank.example: it keeps being judged by bank.example's policy.
    [hit], _ = run_dmarc(["security@bank\u200d.example".encode()], {"_dmarc.bank.example": "v=DMARC1; p=reject"}, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)


class DnsTable(UnaskableNames, TxtTable):
    """TxtTable answering as milterd's Resolver does a name dnspython cannot build: an "error" answer, at once."""


def dmarc_hits(froms: list[bytes], resolver: Any, dkim: list[SignatureResult], spf: dict[str, str] | None = None) -> list[Any]:
    """Dmarc.on_eom for a message with these From fields, DKIM results and SPF evaluation."""
    services: Any = SimpleNamespace(config=Config.model_validate({}), resolver=resolver)
    envelope = Envelope(spool=Spool(1 << 20))
    envelope.headers.extend(("From", value) for value in froms)
    envelope.check_state("dkim")["result"] = dkim
    if spf is not None:
        envelope.check_state("spf")["evaluation"] = spf
    return list(Dmarc(services).on_eom(Session(client_addr="192.0.2.7"), envelope))


@pytest.mark.parametrize("selector", ["a..b", ".".join(["x" * 63] * 4), "x" * 64, "a\\999b"])
def test_a_forged_signature_whose_key_name_cannot_be_asked_does_not_hold_back_p_reject(selector: str) -> None:
    # Anyone can add "DKIM-Signature: d=signed.test; s=a..b; ...": the key lookup fails before any
    # query is sent, the signature is a temperror, and it aligns with From: DMARC was a temperror.
    key = dkimsign.generate("rsa", 1024)
    table = DnsTable({"_dmarc.signed.test": "v=DMARC1; p=reject"})
    results = verify_all(signed(key, selector=selector), DnsRecorder(table, time.monotonic() + 5), 5, 1024)
    assert [(r.result, r.domain) for r in results] == [("permerror", "signed.test")]
    [hit] = dmarc_hits([b"Alice <alice@signed.test>"], table, results)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)


def test_a_genuine_key_lookup_failure_of_an_aligned_signature_is_still_a_temperror() -> None:
    table = DnsTable({"_dmarc.signed.test": "v=DMARC1; p=reject"})
    [hit] = dmarc_hits([b"alice@signed.test"], table, [SignatureResult("signed.test", "sel", "temperror", "key lookup failed: timeout")])
    assert (hit.symbol, hit.action) == ("DMARC_TEMPFAIL", None)


LONG = "a." * 122 + "bank.example"  # 256 octets: no resolver can ask for it, yet its organizational domain is bank.example


@pytest.mark.parametrize("sender", [f"x@{LONG}", "x@a\\999.bank.example"])
def test_an_spf_error_for_a_mail_from_no_resolver_can_ask_does_not_hold_back_p_reject(sender: str) -> None:
    # pyspf through our resolver says temperror ("A DNS name is > 255 octets long") for such a MAIL FROM.
    spf = {"result": "temperror", "sender": sender, "identity": "mailfrom", "helo": "h.example"}
    assert evaluate("bank.example", Record("reject", "reject"), "bank.example", spf, [], 0).result == "fail"
    [hit] = dmarc_hits([b"security@bank.example"], DnsTable({"_dmarc.bank.example": "v=DMARC1; p=reject"}), [], spf)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    genuine = {**spf, "sender": "bounce@mail.bank.example"}
    assert evaluate("bank.example", Record("reject", "reject"), "bank.example", genuine, [], 0).result == "temperror"


def test_a_from_subdomain_too_long_for_its_dmarc_name_gets_the_organizational_policy() -> None:
    # _dmarc.<From domain> over 253 octets cannot be asked (a DNS "error"): there is no record there.
    long_from = "a." * 120 + "bank.example"  # 252 octets, a valid name
    table = DnsTable({"_dmarc.bank.example": "v=DMARC1; p=none; sp=reject"})
    [hit] = dmarc_hits([f"security@{long_from}".encode()], table, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    assert table.asked == ["_dmarc.bank.example"]


@pytest.mark.parametrize(
    "from_value",
    [
        b"=?utf-8?b?c2VjdXJpdHlAYmFuay5leGFtcGxl?=",  # "security@bank.example", base64
        b"Bank Security <=?utf-8?q?security=40bank.example?=>",
        b"=?x-unknown?q?security=40bank.example?=",
    ],
)
def test_an_encoded_word_in_place_of_the_address_is_judged_as_mail_clients_show_it(from_value: bytes) -> None:
    # RFC 2047 §5 forbids it, so the parser found no address and DMARC said none; clients decode it.
    [hit], envelope = run_dmarc([from_value], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    assert envelope.check_state("dmarc")["result"].domain == "bank.example"


def test_an_encoded_display_name_beside_a_real_address_is_not_judged() -> None:
    # A list's rewritten From: the address is the list's, the encoded name mentions the poster.
    [hit], _ = run_dmarc([b"=?utf-8?q?security=40bank.example_via_List?= <me@attacker.example>"], POLICIES, ATTACKER_SIGNED)
    assert hit.symbol == "DMARC_PASS"


def test_a_message_without_a_from_domain_says_dmarc_none_in_authentication_results() -> None:
    [hit], envelope = run_dmarc([b"undisclosed-sender:;"], POLICIES)
    assert hit.symbol == "DMARC_NONE"
    assert build("mx.test", dmarc=envelope.check_state("dmarc").get("result")) == "mx.test; dmarc=none"


def test_an_encoded_address_beside_a_real_one_is_judged_too() -> None:
    [hit], _ = run_dmarc([b"=?utf-8?b?c2VjdXJpdHlAYmFuay5leGFtcGxl?=, me@attacker.example"], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)


def test_a_from_padded_past_the_looked_up_domains_is_not_passed_unjudged() -> None:
    """Ten domains without policy ahead of the forged one used to leave bank.example unlooked-at: DMARC_NONE."""
    padded = ", ".join(f"u{i}@d{i}.example" for i in range(10)) + ", security@bank.example"
    [hit], envelope = run_dmarc([padded.encode()], {"_dmarc.bank.example": "v=DMARC1; p=reject"}, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_QUARANTINE", Action.QUARANTINE)
    assert hit.detail == "11 From domains: more than 10 are not looked up"
    assert envelope.check_state("dmarc")["result"].result == "fail"
    # Ten domains are still each looked up and judged as before.
    [hit], _ = run_dmarc([", ".join(f"u{i}@d{i}.example" for i in range(9)).encode() + b", security@bank.example"], {"_dmarc.bank.example": "v=DMARC1; p=reject"}, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)

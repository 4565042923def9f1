"""DMARC review: the From domains evaluated (RFC 7489 §6.6.1) and forged Authentication-Results (RFC 8601 §5)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from milterd.authresults import authserv_id_of, forged_indexes
from milterd.checks.dkim import SignatureResult
from milterd.checks.dmarc import Dmarc, Record, aligned, evaluate
from milterd.config import Config
from milterd.dns import Answer
from milterd.message.model import Action, Envelope, Session, Spool


class TxtTable:
    """The resolver interface Dmarc uses, answering TXT from a table."""

    def __init__(self, txt: dict[str, str]) -> None:
        self.txt_records = txt
        self.asked: list[str] = []

    def stage_deadline(self, deadlines: dict[str, float], stage: str) -> float:
        return 0.0

    def txt(self, name: str, deadline: float | None = None) -> Answer:
        self.asked.append(name)
        if name not in self.txt_records:
            return Answer(name, "TXT", "nxdomain")
        return Answer(name, "TXT", "ok", (self.txt_records[name],))


def run_dmarc(froms: list[bytes], txt: dict[str, str], dkim: list[SignatureResult] | None = None) -> tuple[list[Any], Envelope]:
    """Dmarc.on_eom for a message with these From header fields, signatures and policies."""
    services: Any = SimpleNamespace(config=Config.model_validate({}), resolver=TxtTable(txt))
    envelope = Envelope(spool=Spool(1 << 20))
    envelope.headers.extend(("From", value) for value in froms)
    envelope.headers.append(("Subject", b"hello"))
    envelope.check_state("dkim")["result"] = dkim or []
    return list(Dmarc(services).on_eom(Session(client_addr="192.0.2.7"), envelope)), envelope


POLICIES = {"_dmarc.bank.example": "v=DMARC1; p=reject", "_dmarc.attacker.example": "v=DMARC1; p=none"}
ATTACKER_SIGNED = [SignatureResult("attacker.example", "s", "pass")]


def test_a_second_address_in_from_does_not_switch_dmarc_off() -> None:
    # RFC 7489 §6.6.1: each domain of a multi-valued From is evaluated, the strictest failing policy applies.
    [hit], envelope = run_dmarc([b"security@bank.example, me@attacker.example"], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    assert "bank.example" in str(hit.reply)
    assert envelope.check_state("dmarc")["result"].domain == "bank.example"


def test_an_unusable_second_address_does_not_switch_dmarc_off() -> None:
    [hit], _ = run_dmarc([b"security@bank.example, x@[192.0.2.1]"], POLICIES)
    assert hit.symbol == "DMARC_FAIL_REJECT"


def test_a_second_from_field_is_evaluated_too() -> None:
    # Two From fields (forbidden by RFC 5322 §3.6): MUAs differ in which they show; neither escapes DMARC.
    [hit], _ = run_dmarc([b"me@attacker.example", b"security@bank.example"], POLICIES, ATTACKER_SIGNED)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)


def test_a_single_from_domain_still_passes_and_several_aligned_ones_pass() -> None:
    [hit], _ = run_dmarc([b"Me <me@attacker.example>"], POLICIES, ATTACKER_SIGNED)
    assert hit.symbol == "DMARC_PASS"
    both = [SignatureResult("attacker.example", "s", "pass"), SignatureResult("bank.example", "s", "pass")]
    [hit], _ = run_dmarc([b"me@attacker.example, security@bank.example"], POLICIES, both)
    assert hit.symbol == "DMARC_PASS"


def test_a_from_domain_without_policy_beside_a_passing_one_gets_no_pass_bonus() -> None:
    [hit], _ = run_dmarc([b"me@attacker.example, x@nopolicy.example"], POLICIES, ATTACKER_SIGNED)
    assert hit.symbol == "DMARC_NONE"


def test_idn_from_domain_is_looked_up_and_aligned_as_its_a_label() -> None:
    # RFC 7489 §6.6.1: a U-label From domain is converted to an A-label; DKIM d= is the A-label.
    txt = {"_dmarc.xn--bcher-kva.example": "v=DMARC1; p=reject"}
    [hit], _ = run_dmarc(["Anna <anna@Bücher.example>".encode()], txt, [SignatureResult("xn--bcher-kva.example", "s", "pass")])
    assert hit.symbol == "DMARC_PASS"
    assert aligned("xn--bcher-kva.example", "bücher.example", "s")
    [hit], _ = run_dmarc(["anna@bücher.example".encode()], txt, ATTACKER_SIGNED)
    assert hit.symbol == "DMARC_FAIL_REJECT" and "xn--bcher-kva.example" in str(hit.reply)


def test_authserv_id_after_comments_with_semicolons_or_nesting() -> None:
    # RFC 8601 §2.2: CFWS may precede the authserv-id; comments nest and may hold ';'.
    assert authserv_id_of("(spoof; here) mx.test; dmarc=pass") == "mx.test"
    assert authserv_id_of("(a (b) c) MX.Test 1; dmarc=pass") == "mx.test"
    assert authserv_id_of(r"(a \) b) mx.test; dmarc=pass") == "mx.test"
    assert authserv_id_of('"mx.test"; dmarc=pass') == "mx.test"
    assert authserv_id_of("mx.test(c); dmarc=pass") == "mx.test"
    assert authserv_id_of(" mx.test 1 ; none") == "mx.test"
    assert authserv_id_of("") == "" and authserv_id_of("(unterminated mx.test; x") == ""


def test_forged_header_hidden_behind_a_comment_is_removed() -> None:
    headers = [("Authentication-Results", b"(x;y) mx.test; dmarc=pass header.from=bank.example"), ("Authentication-Results", b"other.test; spf=pass")]
    assert forged_indexes(headers, "MX.test") == [1]


def test_dns_error_of_an_unaligned_dkim_signature_does_not_turn_a_failure_into_temperror() -> None:
    # An attacker adds a signature for a domain whose DNS never answers: it could not make DMARC pass,
    # so it must not hold back bank.example's p=reject (RFC 7489 §4.2: only aligned identifiers count).
    slow = [SignatureResult("slow.attacker.example", "s", "temperror")]
    [hit], _ = run_dmarc([b"security@bank.example"], POLICIES, slow)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    [hit], _ = run_dmarc([b"security@bank.example"], POLICIES, [SignatureResult("mail.bank.example", "s", "temperror")])
    assert hit.symbol == "DMARC_TEMPFAIL"


def test_dns_error_of_an_unaligned_spf_domain_does_not_turn_a_failure_into_temperror() -> None:
    record = Record("reject", "reject")
    slow = {"result": "temperror", "sender": "x@slow.attacker.example"}
    assert evaluate("bank.example", record, "bank.example", slow, [], 0).result == "fail"
    aligned_slow = {"result": "temperror", "sender": "bounce@mail.bank.example"}
    assert evaluate("bank.example", record, "bank.example", aligned_slow, [], 0).result == "temperror"

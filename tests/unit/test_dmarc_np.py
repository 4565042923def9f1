"""DMARC ``np`` (RFC 9091 §4.1, kept by DMARCbis): the policy for a From domain that does not exist.

A forger writes From: billing@billing.bank.example, a subdomain with no DNS at all, to get
bank.example's ``sp=none``; ``np=reject`` refuses that.  "Does not exist" is NXDOMAIN or no data for
A, AAAA and MX alike (RFC 9091 §2.7); a DNS error leaves ``sp`` in force, never a tempfail.
"""

from __future__ import annotations

from typing import Any, Sequence

import pytest

from milterd.checks.dkim import SignatureResult
from milterd.dns import Answer, Status
from milterd.message.model import Action

from .test_dmarc_forgery_review import dmarc_hits
from .test_dmarc_review import ATTACKER_SIGNED, TxtTable

NP_REJECT = {"_dmarc.bank.example": "v=DMARC1; p=reject; sp=none; np=reject"}
FORGED = [b"Billing <billing@billing.bank.example>"]
HOST_QUESTIONS = [("billing.bank.example", "A"), ("billing.bank.example", "AAAA"), ("billing.bank.example", "MX")]


class HostTable(TxtTable):
    """TxtTable that also answers A, AAAA and MX (:meth:`Resolver.query_many`), NXDOMAIN unless *hosts* says otherwise."""

    def __init__(self, txt: dict[str, str], hosts: dict[tuple[str, str], Status] | None = None) -> None:
        super().__init__(txt)
        self.hosts = hosts or {}
        self.questions: list[tuple[str, str]] = []

    def query_many(self, queries: Sequence[tuple[str, str]], deadline: float | None = None) -> list[Answer]:
        self.questions.extend(queries)
        return [self._answer(name, rdtype) for name, rdtype in queries]

    def _answer(self, name: str, rdtype: str) -> Answer:
        status = self.hosts.get((name, rdtype), "nxdomain")
        if status == "ok":
            return Answer(name, rdtype, "ok", ("192.0.2.1" if rdtype == "A" else "10 mx.bank.example",))
        return Answer(name, rdtype, status, error="timeout" if status == "error" else "")


def run(froms: list[bytes], table: HostTable, dkim: list[SignatureResult] | None = None) -> Any:
    [hit] = dmarc_hits(froms, table, ATTACKER_SIGNED if dkim is None else dkim)
    return hit


@pytest.mark.parametrize("missing", ["nxdomain", "nodata"])
def test_np_reject_refuses_a_from_subdomain_that_does_not_exist(missing: Status) -> None:
    table = HostTable(NP_REJECT, {(name, rdtype): missing for name, rdtype in HOST_QUESTIONS})
    hit = run(FORGED, table)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    assert hit.detail == "billing.bank.example policy np=reject applied=reject (billing.bank.example does not exist)"
    assert "billing.bank.example does not exist" in str(hit.reply)
    assert table.questions == HOST_QUESTIONS


def test_np_is_sampled_by_pct_like_sp() -> None:
    # pct=0: every message is left out of the sample and gets the next milder policy.
    hit = run(FORGED, HostTable({"_dmarc.bank.example": "v=DMARC1; p=none; np=reject; pct=0"}))
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_QUARANTINE", Action.QUARANTINE)
    assert "np=reject applied=quarantine" in hit.detail


def test_a_from_domain_too_long_to_exist_gets_np_without_a_query() -> None:
    # 256 octets: no resolver can ask about it (nor about its _dmarc name), so it cannot exist.
    long_from = "a." * 122 + "bank.example"
    table = HostTable(NP_REJECT)
    hit = run([f"x@{long_from}".encode()], table)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    assert table.questions == []


@pytest.mark.parametrize("found", [("billing.bank.example", "A"), ("billing.bank.example", "MX")])
def test_an_existing_subdomain_gets_sp(found: tuple[str, str]) -> None:
    # An A record, or only an MX (a mail-only domain), and the domain exists: np is not for it.
    table = HostTable(NP_REJECT, {found: "ok"})
    hit = run(FORGED, table)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_NONE", None)
    assert hit.detail == "billing.bank.example sp=none of bank.example applied=none"
    assert table.questions == HOST_QUESTIONS


@pytest.mark.parametrize("rdtype", ["A", "AAAA", "MX"])
def test_a_dns_error_on_one_lookup_leaves_sp_and_is_no_tempfail(rdtype: str) -> None:
    table = HostTable(NP_REJECT, {("billing.bank.example", rdtype): "error"})
    hit = run(FORGED, table)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_NONE", None)
    assert table.questions == HOST_QUESTIONS


def test_a_record_at_the_from_domain_itself_applies_p_never_np() -> None:
    table = HostTable({"_dmarc.billing.bank.example": "v=DMARC1; p=none; np=reject"})
    hit = run(FORGED, table)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_NONE", None)
    assert table.questions == []


@pytest.mark.parametrize("record", ["v=DMARC1; p=reject; sp=none", "v=DMARC1; p=reject; sp=none; np=bogus", "v=DMARC1; p=none; np=none"])
def test_without_a_valid_np_that_changes_the_policy_sp_applies_without_a_query(record: str) -> None:
    table = HostTable({"_dmarc.bank.example": record})
    hit = run(FORGED, table)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_NONE", None)
    assert table.questions == []


def test_a_passing_message_makes_no_existence_query() -> None:
    table = HostTable(NP_REJECT)
    hit = run(FORGED, table, [SignatureResult("bank.example", "s", "pass")])
    assert hit.symbol == "DMARC_PASS"
    assert table.questions == []


def test_a_domain_of_several_in_from_that_does_not_exist_decides() -> None:
    # RFC 7489 §6.6.1: the strictest evaluation wins, np's included.
    table = HostTable({**NP_REJECT, "_dmarc.attacker.example": "v=DMARC1; p=none"})
    hit = run([b"me@attacker.example, billing@billing.bank.example"], table)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)


def test_a_subdomain_judged_by_sp_is_logged_and_refused_naming_the_record() -> None:
    """A review: the detail and the 550 said the subdomain published "p=reject", which it does not (sp= of its
    organizational domain judged it), and a domain with p=reject; sp=none was logged as p=none."""
    from milterd.checks.dmarc import Evaluation, _refusal, describe

    evaluation = Evaluation("fail", "news.org.example", "reject", "reject", organizational="org.example")
    assert describe(evaluation) == "news.org.example sp=reject of org.example applied=reject"
    assert _refusal(evaluation) == ("org.example publishes a DMARC policy of reject for its subdomains such as "
                                    "news.org.example and this message failed it")

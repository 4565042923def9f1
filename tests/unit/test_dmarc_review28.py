"""DMARC, a review of the twenty-eighth session: a failure applied as quarantine because an aligned signature was
left unverified is never rejected, whatever quarantine_action says; a reject names the policy published; a
record with an invalid sp= is treated as one with an invalid p= (RFC 7489 §6.6.3)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from milterd.checks.dkim import SignatureResult
from milterd.checks.dmarc import Dmarc, parse_record
from milterd.config import Config
from milterd.dns import Answer
from milterd.message.model import Action, Envelope, Hit, Session, Spool


class Records:
    """A resolver answering TXT from a table, everything else NXDOMAIN."""

    def __init__(self, txt: dict[str, str]) -> None:
        self.txt_records = txt

    def stage_deadline(self, _deadlines: Any, _stage: str) -> float:
        return 0.0

    def txt(self, name: str, deadline: float | None = None) -> Answer:
        value = self.txt_records.get(name)
        return Answer(name, "TXT", "nxdomain") if value is None else Answer(name, "TXT", "ok", (value,))  # type: ignore[arg-type]

    def query_many(self, questions: list[tuple[str, str]], deadline: float | None = None) -> list[Answer]:
        return [Answer(name, rdtype, "nxdomain") for name, rdtype in questions]  # type: ignore[arg-type]


def judged(txt: dict[str, str], quarantine_action: str, unverified: tuple[str, ...] = (), dkim: tuple[SignatureResult, ...] = (),
           author: bytes = b"ceo@bank.example") -> Hit:
    config = Config.model_validate({"checks": {"dmarc": {"quarantine_action": quarantine_action}}})
    envelope = Envelope(spool=Spool(1 << 20))
    envelope.headers.append(("From", author))
    envelope.check_state("dkim")["result"] = list(dkim)
    if unverified:
        envelope.check_state("dkim")["unverified"] = list(unverified)  # what the DKIM check keeps for a message over max_size
    [hit] = Dmarc(SimpleNamespace(config=config, resolver=Records(txt))).on_eom(Session(client_addr="192.0.2.7"), envelope)  # type: ignore[arg-type]
    return hit


def test_fix_a_failure_lowered_for_an_unverified_aligned_signature_is_never_rejected() -> None:
    hit = judged({"_dmarc.bank.example": "v=DMARC1; p=reject"}, "reject", unverified=("bank.example",))
    # quarantine_action = "reject" turned the lowered policy into a 550: genuine large signed mail refused.
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_QUARANTINE", Action.QUARANTINE)


def test_fix_a_reject_names_the_policy_published() -> None:
    hit = judged({"_dmarc.bank.example": "v=DMARC1; p=reject; pct=0"}, "reject", dkim=(SignatureResult("evil.example", "s", "pass"),))
    # "bank.example publishes a DMARC policy of quarantine": it publishes reject, applied as quarantine (pct=0).
    assert hit.action == Action.REJECT
    assert "bank.example publishes a DMARC policy of reject (applied as quarantine) and this message failed it" in str(hit.reply)


def test_fix_an_invalid_sp_is_no_policy_without_rua_and_monitoring_with_it() -> None:
    # The bad sp= was replaced by p=: "sp=rejct" rejected every subdomain's mail.
    assert parse_record("v=DMARC1; p=reject; sp=rejct") is None
    record = parse_record("v=DMARC1; p=reject; sp=1; rua=mailto:d@bank.example")
    assert record is not None and (record.p, record.sp) == ("none", "none")
    valid = parse_record("v=DMARC1; p=reject; sp=quarantine")
    assert valid is not None and (valid.p, valid.sp) == ("reject", "quarantine")


def test_fix_np_neither_undoes_the_lowering_nor_outlives_an_invalid_sp() -> None:
    # A From domain that does not exist (every lookup NXDOMAIN here): np= applies.
    lowered = judged({"_dmarc.bank.example": "v=DMARC1; p=reject; sp=quarantine; np=reject"}, "quarantine",
                     unverified=("bank.example",), author=b"ceo@ghost.bank.example")
    # np= set reject again after the lowering: DMARC_FAIL_REJECT logged (and scored) for a message held.
    assert (lowered.symbol, lowered.action) == ("DMARC_FAIL_QUARANTINE", Action.QUARANTINE)
    monitored = judged({"_dmarc.bank.example": "v=DMARC1; p=reject; sp=rejct; np=reject; rua=mailto:d@bank.example"}, "quarantine",
                       author=b"ceo@ghost.bank.example")
    # As if only p=none were published: the np=reject kept beside it still refused the mail.
    assert (monitored.symbol, monitored.action) == ("DMARC_FAIL_NONE", None)

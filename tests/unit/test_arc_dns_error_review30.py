"""ARC review (thirtieth session): a DNS error on a trusted sealer's key turned a genuine list post from a
``p=reject`` domain into a permanent 550 (DMARC_FAIL_REJECT), where the README promises that an outage rejects
nothing.  It is now DMARC_TEMPFAIL; a DNS error anywhere else (a forger's own silent domain) holds nothing back.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import dkim
import pytest

from milterd import dkimsign
from milterd.checks.arc import Arc
from milterd.checks.dmarc import Dmarc
from milterd.config import Config
from milterd.dns import Answer
from milterd.message.model import Action, Session

from .test_arc_seal_review import envelope_of
from .test_dkim import MESSAGE
from .test_dkim_arc_leftovers_review import ARC_TRUSTED_CONF, LIST_KEY, POLICIES, UNALIGNED_SPF, Table, forged_from_bank

EVIL_KEY = "arc._domainkey.evil.test"


@pytest.fixture(scope="module")
def key() -> bytes:
    return dkimsign.generate("rsa", 1024)


class FirstAskFails(Table):
    """*failing* names time out the first time they are asked, then answer: the shared deadline spent on
    a forger's silent domain first, so the key was never asked, as the review's real resolver showed."""

    def txt(self, name: str, deadline: float | None = None) -> Answer:
        if name in self.failing:
            self.failing = tuple(n for n in self.failing if n != name)
            return Answer(name, "TXT", "error", error="timeout")
        return super().txt(name, deadline)


def judge(message: bytes, txt: dict[str, str], failing: tuple[str, ...], resolver: type[Table] = Table, **checks: Any) -> tuple[dict[str, Any], Any]:
    services = SimpleNamespace(config=Config.model_validate({"checks": checks}), resolver=resolver(txt, failing=failing))
    envelope = envelope_of(message)
    envelope.check_state("spf")["evaluation"] = UNALIGNED_SPF
    hits: dict[str, Any] = {}
    for check in (Arc, Dmarc):
        hits.update((hit.symbol, hit) for hit in check(services).on_eom(Session(client_addr="192.0.2.7"), envelope))
    return hits, envelope.check_state("dmarc")["result"]


def test_a_dns_error_on_a_trusted_sealers_key_is_a_dmarc_tempfail_not_a_reject(key: bytes) -> None:
    txt = {LIST_KEY: dkimsign.public_record("rsa", key), **POLICIES}
    hits, evaluation = judge(forged_from_bank(key, length=False), txt, (LIST_KEY,), **ARC_TRUSTED_CONF)
    assert "ARC_TEMPFAIL" in hits and "DMARC_FAIL_REJECT" not in hits
    assert hits["DMARC_TEMPFAIL"].detail.startswith("bank.example: the ARC seal of trusted sealer list.test could not be verified")
    assert evaluation.result == "temperror"
    # The same post with DNS answering is vouched for, as before.
    hits, _ = judge(forged_from_bank(key, length=False), txt, (), **ARC_TRUSTED_CONF)
    assert "DMARC_ARC_OVERRIDE" in hits


def test_a_dns_error_on_an_untrusted_sealers_key_still_applies_the_policy(key: bytes) -> None:
    txt = {LIST_KEY: dkimsign.public_record("rsa", key), **POLICIES}
    hits, _ = judge(forged_from_bank(key, length=False), txt, (LIST_KEY,))
    assert hits["DMARC_FAIL_REJECT"].action == Action.REJECT and "DMARC_TEMPFAIL" not in hits


def test_a_silent_domain_of_the_forgers_own_holds_back_no_reject(key: bytes) -> None:
    """The newest set's ARC-Message-Signature in evil.test (whose DNS never answers), its ARC-Seal claiming
    the trusted list.test: the failed lookup is not the sealer's, so p=reject is applied."""
    stamped = b"Authentication-Results: evil.test; dmarc=pass header.from=bank.example\r\n" + MESSAGE.replace(b"alice@signed.test", b"alice@bank.example")
    fields = dkim.ARC(stamped).sign(b"arc", b"evil.test", key, b"evil.test")
    seal = next(f for f in fields if f.lower().startswith(b"arc-seal:"))
    forged = [seal.replace(b"d=evil.test", b"d=list.test") if f is seal else f for f in fields]
    assert forged != fields
    txt = {LIST_KEY: dkimsign.public_record("rsa", key), **POLICIES}
    hits, _ = judge(b"".join(forged) + stamped, txt, (EVIL_KEY,), **ARC_TRUSTED_CONF)
    assert hits["DMARC_FAIL_REJECT"].action == Action.REJECT and "DMARC_TEMPFAIL" not in hits


def test_a_sealers_key_left_unasked_by_a_forgers_silent_domain_holds_back_no_reject(key: bytes) -> None:
    """The second look's bypass: the newest ARC-Message-Signature in evil.test (silent) spends the shared deadline,
    so the ARC-Seal's key in list.test (s=nocache1, never cached) is a timeout never asked; asked again on its
    own it answers (no such key), so the chain failed and p=reject applies."""
    stamped = b"Authentication-Results: evil.test; dmarc=pass header.from=bank.example\r\n" + MESSAGE.replace(b"alice@signed.test", b"alice@bank.example")
    fields = dkim.ARC(stamped).sign(b"arc", b"evil.test", key, b"evil.test")
    seal = next(f for f in fields if f.lower().startswith(b"arc-seal:"))
    forged_seal = seal.replace(b"d=evil.test", b"d=list.test").replace(b"s=arc", b"s=nocache1")
    assert forged_seal.count(b"d=list.test") == 1 and forged_seal.count(b"s=nocache1") == 1
    message = b"".join(forged_seal if f is seal else f for f in fields) + stamped
    txt = {LIST_KEY: dkimsign.public_record("rsa", key), **POLICIES}
    failing = (EVIL_KEY, "nocache1._domainkey.list.test")
    hits, _ = judge(message, txt, failing, FirstAskFails, **ARC_TRUSTED_CONF)
    assert hits["DMARC_FAIL_REJECT"].action == Action.REJECT and "DMARC_TEMPFAIL" not in hits


def test_a_trusted_sealers_key_that_answers_when_asked_again_validates_the_chain(key: bytes) -> None:
    """A rereading: the key timed out once, then answered; the chain was left failed and p=reject applied (550)
    to a genuine post, worse than a full outage.  It is validated again with the key now known."""
    txt = {LIST_KEY: dkimsign.public_record("rsa", key), **POLICIES}
    hits, _ = judge(forged_from_bank(key, length=False), txt, (LIST_KEY,), FirstAskFails, **ARC_TRUSTED_CONF)
    assert "ARC_PASS" in hits and "DMARC_ARC_OVERRIDE" in hits and "ARC_TEMPFAIL" not in hits
    assert hits["DMARC_FAIL_REJECT"].action is None  # logged, not enforced


def test_a_forgers_silent_signature_beside_the_sealers_real_selector_still_gets_the_policy(key: bytes) -> None:
    """The sealer's real key (s=arc) answers when asked again, so the chain is validated again: the forger's
    evil.test signature fails it again, and nothing is held."""
    stamped = b"Authentication-Results: evil.test; dmarc=pass header.from=bank.example\r\n" + MESSAGE.replace(b"alice@signed.test", b"alice@bank.example")
    fields = dkim.ARC(stamped).sign(b"arc", b"evil.test", key, b"evil.test")
    seal = next(f for f in fields if f.lower().startswith(b"arc-seal:"))
    message = b"".join(seal.replace(b"d=evil.test", b"d=list.test") if f is seal else f for f in fields) + stamped
    txt = {LIST_KEY: dkimsign.public_record("rsa", key), **POLICIES}

    class EvilSilent(FirstAskFails):
        def txt(self, name: str, deadline: float | None = None) -> Answer:
            if name == EVIL_KEY:
                return Answer(name, "TXT", "error", error="timeout")
            return super().txt(name, deadline)

    hits, _ = judge(message, txt, (LIST_KEY,), EvilSilent, **ARC_TRUSTED_CONF)
    assert hits["DMARC_FAIL_REJECT"].action == Action.REJECT and "DMARC_TEMPFAIL" not in hits

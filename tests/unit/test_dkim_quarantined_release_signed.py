"""An authenticated sender's mail quarantined in discard mode is released signed: Postfix drops the message with the
signature the milter added, and a release sends the stored copy, which had none (logged DKIM_SIGNED all the same; at a
p=reject domain the released mail bounced).  The copy is now stored with signatures made over it as stored (its
Subject untagged, where the delivered copy's would have been tagged)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import dkim
import pytest

from milterd import dkimsign
from milterd.checks import Check, Hits, Symbol
from milterd.message.model import Action, Envelope, Hit, Session
from milterd.quarantine import Quarantine
from tests.unit.test_adapter_pipeline_review import connect, make_conf, make_pipeline

RSA = dkimsign.generate("rsa", 1024)
ED = dkimsign.generate("ed25519").strip()


class QuarantineAuthenticated(Check):
    """Quarantines what an authenticated client sends (as clamd with scan_trusted does a virus), scored 8 besides
    (over rewrite_subject: the delivered Subject would be tagged)."""

    name: ClassVar[str] = "test_quarantine_authenticated"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_QUARANTINED", 8.0, "test"),)
    applies_to_trusted: ClassVar[bool] = True
    applies_to_authenticated: ClassVar[bool] = True

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        return [Hit("TEST_QUARANTINED", score=8.0, action=Action.QUARANTINE)]


def _dnsfunc() -> Any:
    records = {f"{selector}._domainkey.example.org.".encode(): dkimsign.public_record(*dkimsign.parse_key(data)).encode()
               for selector, data in (("rsa1", RSA), ("ed1", ED))}
    return lambda name, timeout=5: records.get(name)


@pytest.mark.parametrize("rewrite_subject", [False, True])
def test_a_quarantined_message_of_an_authenticated_sender_is_released_signed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rewrite_subject: bool) -> None:
    entries = []
    for selector, data in (("rsa1", RSA), ("ed1", ED)):
        dkimsign.write_private(tmp_path / f"{selector}.key", data)
        entries.append({"domain": "example.org", "selector": selector, "key_file": str(tmp_path / f"{selector}.key")})
    actions = {"rewrite_subject": 5.0} if rewrite_subject else {"rewrite_subject": False}
    conf = make_conf(tmp_path, extra={"dkim_signing": {"enabled": True, "keys": entries}, "milter": {"skip_authenticated": False},
                                      "actions": actions})
    services, pipeline = make_pipeline(conf, QuarantineAuthenticated)
    try:
        context = connect(pipeline, monkeypatch)
        milter = context.getpriv()
        context._stage = -1
        context._setsymval("{auth_authen}", "alice")
        milter.envfrom("<alice@example.org>")
        context._setsymval("i", "QTEST")
        milter.envrcpt("<bob@example.com>")
        milter.data()
        for name, value in (("From", b" Alice <alice@example.org>"), ("To", b" bob@example.com"), ("Subject", b" invoice")):
            milter.header_bytes(name, value)
        milter.eoh()
        milter.body(b"See the attached invoice.\r\n")
        milter.eom()
        verdict = milter.outcome.verdict
        assert verdict.action == Action.QUARANTINE and "DKIM_SIGNED" in verdict.symbols
        quarantine = Quarantine(services.store, services.config)
        [row] = quarantine.rows(limit=5)
        released = b"".join(quarantine._delivered_chunks(quarantine.get(row["id"])))
        verifier = dkim.DKIM(released)
        assert released.count(b"DKIM-Signature:") == 2
        assert verifier.verify(0, dnsfunc=_dnsfunc()) and verifier.verify(1, dnsfunc=_dnsfunc())
        assert b"Subject: invoice" in released  # as stored: a release does not tag it
    finally:
        pipeline.shutdown()
        services.close()

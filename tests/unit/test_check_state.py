"""Typed transaction state: the pipeline's fields on the envelope, each check's own namespace."""

from __future__ import annotations

from milterd.message.model import Envelope, Session, Spool


def test_checks_state_cannot_collide_with_each_other_or_the_pipeline() -> None:
    envelope = Envelope(spool=Spool(1024))
    envelope.check_state("spf")["result"] = "pass"
    envelope.check_state("dkim")["result"] = []
    envelope.check_state("decision")["result"] = "a check named like a pipeline field"
    assert envelope.check_state("spf") == {"result": "pass"} and envelope.check_state("dkim") == {"result": []}
    assert envelope.decision is None and envelope.forced_hit is None and not envelope.logged and not envelope.store_error
    assert envelope.check_state("spf") is envelope.check_state("spf")
    assert not hasattr(envelope, "state")  # no free dict shared by the pipeline and the checks
    session = Session()
    session.check_state("rdns")["ptr"] = "x"
    assert session.check_state("helo") == {} and not hasattr(session, "state")
    assert Envelope(spool=Spool(1024)).check_state("spf") == {}  # per transaction

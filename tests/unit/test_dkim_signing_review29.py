"""DKIM signing review (twenty-ninth session), through the real Postfix by a review helper, here in process:

- a From naming two domains went out unsigned, and nothing recorded why: it is signed with each domain's keys;
- a line over 998 octets is broken by Postfix's smtp client after the signature: the log row says so;
- an 8-bit HELO or login in a message that is not SMTPUTF8 made our Authentication-Results 8-bit (unparseable).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from milterd import dkimsign
from milterd.checks.dkim import DnsRecorder, has_long_line, verify_all
from milterd.checks.spf import Spf
from milterd.message.model import Action, Envelope, Session, Verdict
from tests.harness.messages import envelope_of

from .test_dkim import FakeResolver
from .test_dkim_review import KEY_NAME, delivered, rsa_key, signer  # noqa: F401 - fixtures


def envelope_with(head: bytes, body: bytes) -> Envelope:
    return envelope_of(head + b"\r\n\r\n" + body)


def test_a_from_naming_two_domains_is_signed_with_the_keys_of_each(signer: Any, rsa_key: bytes) -> None:  # noqa: F811
    check, _services = signer
    envelope = envelope_with(b"From: Carol <carol@signed.test>, Eve <eve@loose.test>\r\nSender: carol@signed.test\r\nTo: b@example.org\r\nSubject: hi",
                             b"hello\r\n")
    verdict = check.on_verdict(Session(auth_user="carol"), envelope, Verdict(Action.ACCEPT, 0.0, {}, {}, ""))
    assert verdict.details.get("DKIM_SIGNED") == "d=signed.test s=sel"
    results = verify_all(delivered(envelope, envelope.edits), DnsRecorder(FakeResolver({KEY_NAME: dkimsign.public_record("rsa", rsa_key)}), time.monotonic() + 5), 5, 1024)
    assert [r.result for r in results] == ["pass"]


def test_a_line_postfix_will_break_is_said_in_the_log_row(signer: Any) -> None:  # noqa: F811
    check, _services = signer
    short = check.on_verdict(Session(auth_user="carol"), envelope_with(b"From: carol@signed.test\r\nSubject: hi", b"hello\r\n"), Verdict(Action.ACCEPT, 0.0, {}, {}, ""))
    assert "998" not in short.details["DKIM_SIGNED"]
    body = b"<p>" + b"x" * 1200 + b"</p>\r\n"
    verdict = check.on_verdict(Session(auth_user="carol"), envelope_with(b"From: carol@signed.test\r\nSubject: hi", body), Verdict(Action.ACCEPT, 0.0, {}, {}, ""))
    assert "over 998 octets" in verdict.details["DKIM_SIGNED"]


def test_has_long_line() -> None:
    assert not has_long_line([b"a" * 998 + b"\r\n"]) and has_long_line([b"a" * 999 + b"\r\n"])
    assert has_long_line([b"a" * 500, b"a" * 499, b"\r\n"]) and not has_long_line([b"a" * 500, b"a" * 498, b"\r\n"])
    assert has_long_line([b"a" * 999]) and not has_long_line([b"a" * 998])


def test_an_8bit_helo_in_a_message_that_is_not_smtputf8_stays_out_of_authentication_results(tmp_path: Path) -> None:
    from .test_arc_seal_review import envelope_of, sealer_services
    from .test_dkim import MESSAGE

    services = sealer_services(tmp_path, dkimsign.generate("rsa", 1024))
    for utf8 in (False, True):
        envelope = envelope_of(MESSAGE)
        if utf8:
            envelope.mail_args["SMTPUTF8"] = None
        envelope.check_state("spf")["evaluation"] = {"result": "none", "explanation": "", "identity": "helo", "sender": "", "helo": "hé.example.org"}
        Spf(services).on_verdict(Session(), envelope, Verdict(Action.ACCEPT, 0.0, {}, {}, ""))
        [ours] = [e.value for e in envelope.edits if e.name == "Authentication-Results"]
        assert ours.isascii() != utf8, ours
    services.close()

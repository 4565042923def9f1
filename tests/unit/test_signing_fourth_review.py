"""Fourth review of outgoing authentication: forged Authentication-Results, ARC sealing, keygen's key file."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import dkim
import pytest

from milterd import dkimsign
from milterd.authresults import forged_indexes
from milterd.checks.arc import ArcResult, ArcSealer
from milterd.checks.spf import Spf
from milterd.config import DkimKey, DkimSigningSection
from milterd.message.model import Action, Session, Verdict

from .test_arc_seal_review import envelope_of, keys, list_hop, lookup, sealer_services, through_milterd  # noqa: F401 - keys is a fixture
from .test_dkim import MESSAGE
from .test_dkim_review import delivered


@pytest.mark.parametrize("value", ["mx.test.; dkim=pass", "MX.Test. ; dkim=pass", "(c) mx.test.; dmarc=pass"])
def test_our_id_with_a_trailing_dot_is_ours(value: str) -> None:
    # The same DNS name: a reader trusting mx.test may trust it too (RFC 8601 §5).
    assert forged_indexes([("Authentication-Results", value.encode())], "mx.test") == [1]
    assert forged_indexes([("Authentication-Results", b"mx.test; dkim=pass")], "mx.test.") == [1]


def test_another_id_is_kept() -> None:
    headers = [("Authentication-Results", b"mx.test.example; dkim=pass"), ("Authentication-Results", b"mx.tes; dkim=pass")]
    assert forged_indexes(headers, "mx.test") == []


def test_a_forged_header_with_a_trailing_dot_is_not_delivered(tmp_path: Path, keys: dict[str, bytes]) -> None:  # noqa: F811
    services = sealer_services(tmp_path, keys["seal"])
    forged = b"Authentication-Results: mx.test.; dkim=pass header.d=bank.example; dmarc=pass\r\n" + MESSAGE
    verdict, out = through_milterd(services, keys, forged)
    results = [v.decode() for n, v in dkim.rfc822_parse(out)[0] if n.lower() == b"authentication-results"]
    assert len(results) == 1 and "bank.example" not in results[0]
    assert "ARC_SEALED" in verdict.symbols
    services.close()


def test_a_chain_not_validated_for_its_size_says_so(tmp_path: Path, keys: dict[str, bytes]) -> None:  # noqa: F811
    # Over [checks.dkim] max_size the ARC check leaves no result: our header has no arc=, nothing can be sealed.
    services = sealer_services(tmp_path, keys["seal"])
    envelope = envelope_of(list_hop(MESSAGE, keys["list"], "none"))
    envelope.check_state("spf")["evaluation"] = {"result": "pass", "explanation": "", "identity": "mailfrom", "sender": "a@list.test", "helo": "mx.list.test"}
    verdict = Verdict(Action.ACCEPT, 0.0, {}, {}, "")
    for check in (Spf(services), ArcSealer(services)):
        verdict = check.on_verdict(Session(), envelope, verdict)
    assert "ARC_SEALED" not in verdict.symbols
    assert "not validated" in verdict.details["ARC_SEAL_ERROR"] and "max_size" in verdict.details["ARC_SEAL_ERROR"]
    services.close()


def test_a_key_file_whose_write_fails_is_not_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def __enter__(self) -> "Full":
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    path = tmp_path / "example.org.s1.key"
    with pytest.raises(OSError):
        dkimsign.write_private(path, dkimsign.generate("ed25519"))
    assert not path.exists()
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    dkimsign.write_private(path, dkimsign.generate("ed25519"))  # a second attempt is not refused as "exists"
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_u_label_from_domain_is_signed_with_its_a_label_key(tmp_path: Path) -> None:
    # SMTPUTF8 mail says From: a@bücher.example; the key is configured either way, d= is the A-label receivers align with.
    key = dkimsign.generate("ed25519")
    dkimsign.write_private(tmp_path / "k.key", key)
    for configured in ("xn--bcher-kva.example", "Bücher.example"):
        section = DkimSigningSection(enabled=True, keys=[DkimKey(domain=configured, selector="s1", key_file="k.key")])
        [loaded] = dkimsign.load_keys(section, tmp_path / "milter.conf")
        assert loaded.domain == "xn--bcher-kva.example"
        for from_domain in ("bücher.example", "mail.bücher.example", "xn--bcher-kva.example"):
            assert dkimsign.keys_for([loaded], from_domain) == [loaded]
    # IDNA2008, as DMARC reads the From domain: faß.example is not fass.example.
    fass = dkimsign.SigningKey("fass.example", "s1", "ed25519", key)
    assert dkimsign.keys_for([fass], "faß.example") == []


def test_a_u_label_signature_verifies(tmp_path: Path) -> None:
    key = dkimsign.generate("ed25519")
    signing = dkimsign.SigningKey("xn--bcher-kva.example", "s1", "ed25519", key.strip())
    head, body = "From: Anna <anna@bücher.example>\r\nTo: b@example.org\r\nSubject: hi\r\n\r\n".encode(), b"hello\r\n"
    message = head + body
    [value] = dkimsign.sign(head, [body], dkimsign.keys_for([signing], "bücher.example"), [])
    signed = b"DKIM-Signature: " + value.replace("\n", "\r\n").encode() + b"\r\n" + message
    record = dkimsign.public_record("ed25519", key.strip()).encode()
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record if name == b"s1._domainkey.xn--bcher-kva.example." else None)


@pytest.mark.parametrize("sender, login", [("jürgen@bücher.example", ""), ("anna@example.org", "jürgen")])
def test_an_smtputf8_sender_or_login_is_still_sealed(tmp_path: Path, keys: dict[str, bytes], sender: str, login: str) -> None:  # noqa: F811
    # Our header holds the UTF-8 value; dkimpy reads it with authres (ASCII only): the seal must still be made.
    services = sealer_services(tmp_path, keys["seal"])
    envelope = envelope_of(MESSAGE)
    envelope.mail_args["SMTPUTF8"] = None  # a UTF-8 header value only in an SMTPUTF8 message (RFC 6532)
    envelope.check_state("spf")["evaluation"] = {"result": "pass", "explanation": "", "identity": "mailfrom", "sender": sender, "helo": "mx.example.org"}
    envelope.check_state("arc")["result"] = ArcResult("none")
    verdict = Verdict(Action.ACCEPT, 0.0, {}, {}, "")
    session = Session(auth_user=login)
    for check in (Spf(services), ArcSealer(services)):
        verdict = check.on_verdict(session, envelope, verdict)
    assert "ARC_SEALED" in verdict.symbols, verdict.details
    ours = [e.value for e in envelope.edits if e.name == "Authentication-Results"]
    assert len(ours) == 1 and "jürgen" in ours[0]  # the delivered header keeps the value
    [aar] = [e.value for e in envelope.edits if e.name == "ARC-Authentication-Results"]
    assert aar.startswith("i=1; mx.test") and "spf=pass" in aar and ("auth=pass" in aar) == bool(login)
    cv, _, reason = dkim.arc_verify(delivered(envelope, envelope.edits), dnsfunc=lookup(keys))
    assert cv == dkim.CV_Pass, reason
    services.close()


@pytest.mark.parametrize("headers", [["From", " Subject"], [" from ", "subject ", "To"], ["From", "", "Subject"]])
def test_header_names_with_white_space_still_give_a_signature_that_verifies(headers: list[str]) -> None:
    # [dkim_signing] headers accepts " Subject" (its check strips it); a verifier strips h='s names too.
    assert DkimSigningSection(headers=[h for h in headers if h]).headers
    key = dkimsign.generate("ed25519").strip()
    head, body = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\n", b"hello\r\n"
    message = head + body
    [value] = dkimsign.sign(head, [body], [dkimsign.SigningKey("example.org", "s1", "ed25519", key)], headers)
    signed = b"DKIM-Signature: " + value.replace("\n", "\r\n").encode() + b"\r\n" + message
    record = dkimsign.public_record("ed25519", key).encode()
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)
    assert "subject" in value


def test_a_header_name_with_a_colon_is_an_error_not_a_broken_signature() -> None:
    key = dkimsign.SigningKey("example.org", "s1", "ed25519", dkimsign.generate("ed25519").strip())
    with pytest.raises(ValueError, match="not a header field name"):
        dkimsign.sign(b"From: a@example.org\r\nSubject: hi\r\n\r\n", [b"hello\r\n"], [key], ["From", "Subject:To"])

"""DKIM and ARC edge cases: From left out of h=, a key lookup failing for two signatures,
ARC chains over RFC 8617's 50 sets, and signing mail whose Subject milterd tags afterwards.

DNS is the in-memory table of tests/unit/test_dkim.py; keys are generated here.
"""

from __future__ import annotations

import base64
import hashlib
import time
import types
from pathlib import Path
from typing import Any

import dkim
import dkim.crypto
import pytest

from milterd import dkimsign
from milterd.checks.arc import verify_chain
from milterd.checks.dkim import DkimSigner, DnsRecorder, hits_for, verify_all
from milterd.config import load_config
from milterd.message.model import Action, Envelope, HeaderEdit, Session, Spool, Verdict
from milterd.message.policy import plan_headers
from milterd.services import build as build_services

from .test_dkim import MESSAGE, FakeResolver, signed, verify

KEY_NAME = "sel._domainkey.signed.test"


@pytest.fixture(scope="module")
def rsa_key() -> bytes:
    return dkimsign.generate("rsa", 1024)


def sign_without_from(key: bytes, message: bytes) -> bytes:
    """A valid rsa-sha256 DKIM-Signature line whose h= leaves out From (dkimpy's sign refuses to make one)."""
    signer = dkim.DKIM(message)
    policy = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    body_hash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(signer.body)).digest())
    include = (b"subject", b"to", b"date")
    fields = [
        (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/simple"), (b"d", b"signed.test"), (b"s", b"sel"),
        (b"t", str(int(time.time())).encode()), (b"h", b" : ".join(include)), (b"bh", body_hash), (b"b", b"0" * 60),
    ]
    signer.hasher = hashlib.sha256
    value = signer.gen_header(fields, include, policy, b"DKIM-Signature", dkim.crypto.parse_pem_private_key(key))
    return b"DKIM-Signature: " + value  # type: ignore[no-any-return]


def test_a_signature_that_leaves_from_unsigned_is_a_permerror_not_an_author_pass(rsa_key: bytes) -> None:
    record = {KEY_NAME: dkimsign.public_record("rsa", rsa_key)}
    forged = MESSAGE.replace(b"From: Alice <alice@signed.test>", b"From: Mallory <ceo@signed.test>")
    # RFC 6376 §6.1.1: h= without From: ignore the signature, PERMFAIL (From field not signed).
    [result] = verify(sign_without_from(rsa_key, MESSAGE) + forged, record)
    assert (result.result, result.domain) == ("permerror", "signed.test") and "From" in result.reason
    assert [h.symbol for h in hits_for([result], "signed.test")] == ["DKIM_INVALID"]


def test_a_signature_that_signs_from_still_passes(rsa_key: bytes) -> None:
    record = {KEY_NAME: dkimsign.public_record("rsa", rsa_key)}
    assert [r.result for r in verify(signed(rsa_key, include_headers=[b"from", b"subject"]), record)] == ["pass"]


def test_a_key_lookup_failing_for_two_signatures_is_a_temperror_for_both(rsa_key: bytes) -> None:
    record = {KEY_NAME: dkimsign.public_record("rsa", rsa_key)}
    twice = signed(rsa_key, message=signed(rsa_key))  # e.g. signed again by the same signer on the way
    results = verify(twice, record, failing=(KEY_NAME,))
    assert [(r.result, r.reason) for r in results] == [("temperror", "key lookup failed: timeout")] * 2


def arc_seal_all(message: bytes, key: bytes, sets: int) -> bytes:
    """*message* with *sets* ARC sets by list.test, each hop attesting the chain before it; dkimpy's own
    sealing code, its instance limit (50) raised to *sets* so that a chain past RFC 8617's limit can be made."""
    code = dkim.ARC.sign.__code__
    limit = code.replace(co_consts=tuple(sets if type(c) is int and c == 50 else c for c in code.co_consts))
    seal = types.FunctionType(limit, dkim.ARC.sign.__globals__, "sign", dkim.ARC.sign.__defaults__)
    for instance in range(1, sets + 1):
        authserv_id = f"hop{instance}.list.test"
        stamped = f"Authentication-Results: {authserv_id}; arc={'none' if instance == 1 else 'pass'}\r\n".encode() + message
        message = b"".join(seal(dkim.ARC(stamped), b"arc", b"list.test", key, authserv_id.encode())) + stamped
    return message


def test_an_arc_chain_of_more_than_50_sets_fails_without_a_lookup(rsa_key: bytes) -> None:
    chain50 = arc_seal_all(MESSAGE, rsa_key, 50)
    resolver = FakeResolver({"arc._domainkey.list.test": dkimsign.public_record("rsa", rsa_key)})
    assert verify_chain(chain50, DnsRecorder(resolver, time.monotonic() + 5), 1024).result == "pass"
    chain51 = arc_seal_all(MESSAGE, rsa_key, 51)
    resolver.asked.clear()
    result = verify_chain(chain51, DnsRecorder(resolver, time.monotonic() + 5), 1024)
    # RFC 8617 §5.2: at most 50 ARC sets; with more the chain fails "and the algorithm stops here".
    assert result.result == "fail" and "more than 50" in result.reason
    assert resolver.asked == []


def delivered(envelope: Envelope, edits: list[HeaderEdit]) -> bytes:
    """The message after *edits*, made as Postfix makes libmilter's header changes."""
    headers = [(name, value) for name, value in envelope.headers]
    for edit in edits:
        value = edit.value.encode("utf-8")
        if edit.op == "insert":
            headers.insert(edit.index, (edit.name, b" " + value))
        elif edit.op == "add":
            headers.append((edit.name, b" " + value))
        else:
            at = [i for i, (name, _) in enumerate(headers) if name.lower() == edit.name.lower()][edit.index - 1]
            if edit.value:
                headers[at] = (edit.name, b" " + value)
            else:
                del headers[at]
    head = b"".join(name.encode() + b":" + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n" for name, value in headers)
    return head + b"\r\n" + envelope.spool.read()


@pytest.fixture()
def signer(tmp_path: Path, rsa_key: bytes) -> Any:
    dkimsign.write_private(tmp_path / "out.key", rsa_key)
    conf = tmp_path / "milter.conf"
    conf.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "m.sqlite"}"\n'
        '[dkim_signing]\nenabled = true\nkeys = [{ domain = "signed.test", selector = "sel", key_file = "out.key" }]\n'
    )
    services = build_services(load_config(conf))
    yield DkimSigner(services), services
    services.close()


@pytest.mark.parametrize("action, score", [(Action.QUARANTINE, 13.0), (Action.ACCEPT, 0.0)])
def test_the_signature_covers_the_subject_as_delivered(signer: Any, rsa_key: bytes, action: Action, score: float) -> None:
    check, services = signer
    head, _, body = MESSAGE.partition(b"\r\n\r\n")
    envelope = Envelope(spool=Spool(1 << 20))
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        envelope.headers.append((name.decode(), value.lstrip()))
    envelope.spool.write(body)
    verdict = check.on_verdict(Session(auth_user="carol"), envelope, Verdict(action, score, {}, {}, ""))
    assert "DKIM_SIGNED" in verdict.symbols
    # What the pipeline hands the adapter: the checks' edits, then the policy's (the Subject tagged over rewrite_subject).
    edits = envelope.edits + plan_headers(verdict, {}, envelope.header("Subject"), services.config.actions)
    assert any(e.name == "Subject" for e in edits) == (action == Action.QUARANTINE)
    message = delivered(envelope, edits)
    results = verify_all(message, DnsRecorder(FakeResolver({KEY_NAME: dkimsign.public_record("rsa", rsa_key)}), time.monotonic() + 5), 5, 1024)
    assert [(r.result, r.reason) for r in results] == [("pass", "")]

"""[checks.dkim] unsigned_body: a signature whose l= leaves part of the body unsigned, and dkimfast's RSA key cache.

RFC 6376 §8.2: whoever holds one genuine l=-signed message can append their own
text and the signature still verifies.  With ``unsigned_body = "policy"`` (the
default) such a signature is the RFC 8601 result ``policy``: not DKIM_VALID, not
counted by DMARC.  DNS is the in-memory table of tests/unit/test_dkim.py.
"""

from __future__ import annotations

import base64
import hashlib
import time
from types import SimpleNamespace
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from milterd import dkimfast, dkimsign
from milterd.authresults import build
from milterd.checks.dkim import RESULTS, Dkim, DkimChecks, DnsRecorder, SignatureResult, hits_for, verify_all
from milterd.checks.dmarc import Dmarc
from milterd.config import Config
from milterd.message.model import Session

from .test_dkim import MESSAGE, FakeResolver, signed
from .test_dkim_followups import KEY_NAME, POLICY, Resolver, envelope_of
from .test_dkimfast_parse import dkimpys_own

#: Text an attacker appends after the signed length.
APPENDED = b"--\r\nURGENT: wire the money to IBAN XX00 0000 today.\r\n"
#: SPF passed for a domain not aligned with From: only DKIM could make DMARC pass.
UNALIGNED_SPF = {"result": "pass", "sender": "bounce@esp.example"}


@pytest.fixture(scope="module")
def rsa_key() -> bytes:
    return dkimsign.generate("rsa", 1024)


def txt_for(key: bytes, algorithm: dkimsign.Algorithm = "rsa") -> dict[str, str]:
    return {KEY_NAME: dkimsign.public_record(algorithm, key), **POLICY}


def verify(message: bytes, txt: dict[str, str], **kwargs: Any) -> list[SignatureResult]:
    return verify_all(message, DnsRecorder(FakeResolver(txt), time.monotonic() + 5), 5, 1024, **kwargs)


def run_checks(message: bytes, txt: dict[str, str], **dkim_options: Any) -> tuple[list[Any], list[Any], Any]:
    """Dkim then Dmarc on *message* with these [checks.dkim] options and an unaligned SPF pass."""
    config = Config.model_validate({"checks": {"dkim": dkim_options}})
    services: Any = SimpleNamespace(config=config, resolver=Resolver(txt))
    envelope = envelope_of(message)
    envelope.check_state("spf")["evaluation"] = UNALIGNED_SPF
    dkim_hits = list(Dkim(services).on_eom(Session(), envelope))
    dmarc_hits = list(Dmarc(services).on_eom(Session(), envelope))
    return dkim_hits, dmarc_hits, envelope


def signed_length(message: bytes) -> int:
    """The l= value of the (first) signature of *message*."""
    tags = dict(part.strip().split("=", 1) for part in "".join(message.decode().split("\r\n\r\n")[0].split()).split(";") if "=" in part)
    return int(tags["l"])


def test_the_option_defaults_to_policy_and_policy_is_a_dkim_result() -> None:
    assert DkimChecks().unsigned_body == "policy"
    assert Config.model_validate({}).checks.dkim.unsigned_body == "policy"
    assert "policy" in RESULTS


def test_appended_text_after_l_is_a_policy_result_not_a_pass(rsa_key: bytes) -> None:
    message = signed(rsa_key, length=True) + APPENDED
    length = signed_length(message)
    [result] = verify(message, txt_for(rsa_key), unsigned_body="policy")
    assert (result.result, result.domain, result.selector) == ("policy", "signed.test", "sel")
    assert result.reason == f"l={length} leaves {len(APPENDED)} bytes of the body unsigned"
    [hit] = hits_for([result], "signed.test")
    assert hit.symbol == "DKIM_INVALID"
    assert hit.detail == f"d=signed.test s=sel: l={length} leaves {len(APPENDED)} bytes of the body unsigned"


def test_by_default_the_check_gives_dkim_invalid_and_dmarc_fails(rsa_key: bytes) -> None:
    # The attack: a genuine l=-signed message from signed.test with the attacker's text appended.
    dkim_hits, [dmarc_hit], envelope = run_checks(signed(rsa_key, length=True) + APPENDED, txt_for(rsa_key))
    assert [h.symbol for h in dkim_hits] == ["DKIM_INVALID"]
    assert "bytes of the body unsigned" in dkim_hits[0].detail
    assert dmarc_hit.symbol == "DMARC_FAIL_REJECT"
    [result] = envelope.check_state("dkim")["result"]
    assert result.result == "policy"
    value = build("mx.test", dkim=[result], dmarc=envelope.check_state("dmarc")["result"])
    assert f'dkim=policy reason="l={signed_length(signed(rsa_key, length=True))} leaves {len(APPENDED)} bytes of the body unsigned"' in value
    assert "header.d=signed.test header.s=sel" in value and "dmarc=fail" in value


def test_unsigned_body_pass_keeps_rfc_6376s_verdict(rsa_key: bytes) -> None:
    message = signed(rsa_key, length=True) + APPENDED
    assert [r.result for r in verify(message, txt_for(rsa_key), unsigned_body="pass")] == ["pass"]
    dkim_hits, [dmarc_hit], _ = run_checks(message, txt_for(rsa_key), unsigned_body="pass")
    assert [h.symbol for h in dkim_hits] == ["DKIM_VALID", "DKIM_VALID_AUTHOR"]
    assert dmarc_hit.symbol == "DMARC_PASS"


def test_l_covering_the_whole_body_passes(rsa_key: bytes) -> None:
    message = signed(rsa_key, length=True)
    assert signed_length(message) == len(MESSAGE.partition(b"\r\n\r\n")[2])
    # Empty lines at the end are not in the canonicalized body (RFC 6376 §3.4.3): nothing unsigned either.
    for whole in (message, message + b"\r\n\r\n"):
        assert [(r.result, r.reason) for r in verify(whole, txt_for(rsa_key), unsigned_body="policy")] == [("pass", "")]
        dkim_hits, [dmarc_hit], _ = run_checks(whole, txt_for(rsa_key))
        assert [h.symbol for h in dkim_hits] == ["DKIM_VALID", "DKIM_VALID_AUTHOR"]
        assert dmarc_hit.symbol == "DMARC_PASS"
    # A signature without l= and a tampered l= signature are what they were.
    assert [r.result for r in verify(signed(rsa_key), txt_for(rsa_key), unsigned_body="policy")] == ["pass"]
    tampered = (signed(rsa_key, length=True) + APPENDED).replace(b"see you", b"pay me")
    assert [r.result for r in verify(tampered, txt_for(rsa_key), unsigned_body="policy")] == ["fail"]


def test_another_full_signature_still_passes_but_not_for_the_author(rsa_key: bytes) -> None:
    # The ESP signs the whole message after the text was appended: its signature passes, the author's is policy.
    inner = signed(rsa_key, length=True) + APPENDED
    message = signed(rsa_key, domain="esp.example", message=inner)
    txt = {**txt_for(rsa_key), "sel._domainkey.esp.example": dkimsign.public_record("rsa", rsa_key)}
    assert [(r.domain, r.result) for r in verify(message, txt, unsigned_body="policy")] == [("esp.example", "pass"), ("signed.test", "policy")]
    dkim_hits, [dmarc_hit], _ = run_checks(message, txt)
    assert [(h.symbol, h.detail) for h in dkim_hits] == [("DKIM_VALID", "d=esp.example s=sel")]
    assert dmarc_hit.symbol == "DMARC_FAIL_REJECT"


@pytest.mark.parametrize("canonicalize", [(b"relaxed", b"simple"), (b"relaxed", b"relaxed"), (b"simple", b"simple")])
def test_dkimpys_own_code_gives_the_same_verdict(rsa_key: bytes, canonicalize: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    base = MESSAGE.replace(b"tomorrow.", b"tomorrow.  \t\r\n\r\n")
    messages = [
        signed(rsa_key, message=base, length=True, canonicalize=canonicalize) + tail
        for tail in (b"", b"\r\n", b"  \r\n", APPENDED, b"x", b"\r\n\r\nlate \t text  \r\n\r\n")
    ]
    fast = [[(r.result, r.reason) for r in verify(m, txt_for(rsa_key), unsigned_body="policy")] for m in messages]
    with monkeypatch.context() as m:
        dkimpys_own(m)
        pure = [[(r.result, r.reason) for r in verify(raw, txt_for(rsa_key), unsigned_body="policy")] for raw in messages]
        assert not dkimfast.installed()
    assert fast == pure
    assert {verdict[0][0] for verdict in fast} == {"pass", "policy"}


def test_an_ed25519_signature_with_unsigned_text_is_a_policy_result() -> None:
    # ed25519 signatures go through dkimpy's own body hash check: milterd works the length out itself.
    key = dkimsign.generate("ed25519")
    header = dkim.sign(MESSAGE, b"sel", b"signed.test", key, length=True, signature_algorithm=b"ed25519-sha256")
    txt = txt_for(key, "ed25519")
    assert [r.result for r in verify(header + MESSAGE, txt, unsigned_body="policy")] == ["pass"]
    [result] = verify(header + MESSAGE + APPENDED, txt, unsigned_body="policy")
    assert result.result == "policy" and result.reason.endswith(f" leaves {len(APPENDED)} bytes of the body unsigned")
    assert [r.result for r in verify(header + MESSAGE + APPENDED, txt, unsigned_body="pass")] == ["pass"]


class Digest:
    """A SHA-256 hash as dkimpy hands it to its RSA check."""

    name = "sha256"

    def __init__(self, data: bytes) -> None:
        self.value = hashlib.sha256(data).digest()

    def digest(self) -> bytes:
        return self.value


def test_the_openssl_key_object_is_reused_per_modulus_and_exponent(monkeypatch: pytest.MonkeyPatch) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = private.public_key().public_numbers()
    public = {"modulus": numbers.n, "publicExponent": numbers.e}
    signature = private.sign(b"genuine", padding.PKCS1v15(), hashes.SHA256())
    dkimfast._public_key.cache_clear()
    built: list[tuple[int, int]] = []
    make = rsa.RSAPublicNumbers.public_key
    monkeypatch.setattr(rsa.RSAPublicNumbers, "public_key", lambda self, *a: (built.append((self.n, self.e)), make(self, *a))[1])
    monkeypatch.setattr(dkimfast, "PURE_PYTHON", lambda *a: pytest.fail("dkimpy's own RSA check was used"))
    first = dkimfast._public_key(numbers.n, numbers.e)
    assert first is not None and dkimfast._public_key(numbers.n, numbers.e) is first
    # The same verdicts, every time from the one object OpenSSL made.
    for _ in range(3):
        assert dkimfast.verify(Digest(b"genuine"), signature, public) is True
        assert dkimfast.verify(Digest(b"tampered"), signature, public) is False
        # The last byte flipped: the first could make the signature larger than the modulus, which dkimfast rightly hands to dkimpy.
        assert dkimfast.verify(Digest(b"genuine"), signature[:-1] + bytes([signature[-1] ^ 1]), public) is False
    assert built == [(numbers.n, numbers.e)]
    # Another key gets its own object; a key OpenSSL refuses is remembered as None.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()
    assert dkimfast._public_key(other.n, other.e) not in (None, first)
    assert dkimfast._public_key(numbers.n, 1) is None  # an exponent below 3
    assert dkimfast._public_key(numbers.n, 1) is None
    assert built == [(numbers.n, numbers.e), (other.n, other.e), (numbers.n, 1)]
    assert dkimfast._public_key.cache_info().maxsize == dkimfast.KEY_CACHE_SIZE


def test_verify_all_reuses_the_key_of_a_signer_seen_before(rsa_key: bytes) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    txt = {KEY_NAME: "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()}
    dkimfast._public_key.cache_clear()
    for _ in range(3):
        assert [r.result for r in verify(signed(pem), txt)] == ["pass"]
        assert [r.result for r in verify(signed(pem).replace(b"Subject: signed", b"Subject: paid"), txt)] == ["fail"]
    info = dkimfast._public_key.cache_info()
    assert (info.misses, info.hits) == (1, 5)

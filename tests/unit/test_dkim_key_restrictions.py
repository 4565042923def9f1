"""What a DKIM signature must not pass on, though dkimpy verifies it: rsa-sha1 (RFC 8301 §3.1) and the
restrictions of its key record dkimpy does not read, h= and t=s (RFC 6376 §3.6.1, PERMFAIL by §6.1.2).

DNS is the in-memory table of tests/unit/test_dkim.py.
"""

from __future__ import annotations

import dkim
import pytest

from milterd import dkimsign
from milterd.checks.dkim import hits_for

from .test_dkim import MESSAGE, signed, verify

KEY_NAME = "sel._domainkey.signed.test"


@pytest.fixture(scope="module")
def rsa_key() -> bytes:
    return dkimsign.generate("rsa", 1024)


def record(key: bytes, tags: str = "") -> str:
    """The key's TXT record with *tags* inserted after ``v=DKIM1;``."""
    published = dkimsign.public_record("rsa", key)
    return published.replace("v=DKIM1;", f"v=DKIM1; {tags}", 1) if tags else published


def test_rsa_sha1_signature_is_a_permerror_never_a_pass(rsa_key: bytes) -> None:
    message = dkim.sign(MESSAGE, b"sel", b"signed.test", rsa_key, signature_algorithm=b"rsa-sha1") + MESSAGE
    [result] = verify(message, {KEY_NAME: record(rsa_key)})
    assert (result.result, result.reason) == ("permerror", "rsa-sha1 signatures are not accepted (RFC 8301)")
    assert [h.symbol for h in hits_for([result], "signed.test")] == ["DKIM_INVALID"]


@pytest.mark.parametrize(
    ("tags", "identity", "reason"),
    [
        ("h=sha1;", None, "the key record's h= does not allow sha256"),
        ("t=s;", b"u@sub.signed.test", "the key record's t=s does not allow an i= domain other than d="),
        ("t=y:s;", b"u@sub.signed.test", "the key record's t=s does not allow an i= domain other than d="),
    ],
)
def test_a_key_record_restriction_makes_a_verified_signature_a_permerror(rsa_key: bytes, tags: str, identity: bytes | None, reason: str) -> None:
    message = signed(rsa_key, identity=identity) if identity else signed(rsa_key)
    [result] = verify(message, {KEY_NAME: record(rsa_key, tags)})
    assert (result.result, result.reason) == ("permerror", reason)


@pytest.mark.parametrize(
    ("tags", "identity"),
    [
        ("h=sha256;", None),
        ("h = SHA1 : sha256 ;", None),
        ("s=email;", None),
        ("s=*;", None),
        ("t=s;", b"u@signed.test"),
        ("t=s;", None),
        ("t=y;", b"u@sub.signed.test"),
    ],
)
def test_restrictions_the_signature_meets_let_it_pass(rsa_key: bytes, tags: str, identity: bytes | None) -> None:
    message = signed(rsa_key, identity=identity) if identity else signed(rsa_key)
    [result] = verify(message, {KEY_NAME: record(rsa_key, tags)})
    assert result.result == "pass", result.reason


@pytest.mark.parametrize(
    ("tags", "identity", "reason"),
    [
        ("h=sha1;", None, "the key record's h= does not allow sha256"),
        ("t=s;", b"u@sub.signed.test.", "the key record's t=s does not allow an i= domain other than d="),
        ("p=;", None, "key revoked"),
    ],
)
def test_a_d_domain_with_a_trailing_dot_meets_the_same_key_record(rsa_key: bytes, tags: str, identity: bytes | None, reason: str) -> None:
    # Was: the record was kept under the name without the dot, looked for with it: no restriction applied (a pass),
    # a revoked key a fail.
    record_text = record(rsa_key, tags) if tags != "p=;" else "v=DKIM1; k=rsa; p="
    message = dkim.sign(MESSAGE, b"sel", b"signed.test.", rsa_key, identity=identity) + MESSAGE
    [result] = verify(message, {KEY_NAME: record_text})
    assert (result.result, result.reason) == ("permerror", reason)

"""A key in testing mode (t=y, RFC 6376 §3.6.1): "Verifiers MUST NOT treat messages from Signers in testing mode
differently from unsigned email, even should the signature fail to verify" (thirtieth session's review: a failing
t=y signature was DKIM_INVALID and dkim=fail)."""

from __future__ import annotations

from milterd import dkimsign
from milterd.authresults import build
from milterd.checks import dkim as dkim_check
from milterd.checks.dkim import hits_for

from .test_dkim import rsa_key, signed, verify  # noqa: F401 - rsa_key is a fixture

BROKEN = (b"tomorrow", b"Tuesday")


def test_a_failing_signature_of_a_testing_key_counts_as_none(rsa_key: bytes) -> None:  # noqa: F811
    record = {"sel._domainkey.signed.test": "v=DKIM1; t=y; " + dkimsign.public_record("rsa", rsa_key).removeprefix("v=DKIM1; ")}
    results = verify(signed(rsa_key).replace(*BROKEN), record)
    assert [r.result for r in results] == ["neutral"] and "t=y" in results[0].reason
    assert [hit.symbol for hit in hits_for(results, "signed.test")] == ["DKIM_NONE"]
    assert "dkim=neutral" in build("mx.test", dkim=results)
    # Passing, it passes as before; without t=y, the failure is DKIM_INVALID as before.
    assert [r.result for r in verify(signed(rsa_key), record)] == ["pass"]
    plain = {"sel._domainkey.signed.test": dkimsign.public_record("rsa", rsa_key)}
    assert [hit.symbol for hit in hits_for(verify(signed(rsa_key).replace(*BROKEN), plain), "signed.test")] == ["DKIM_INVALID"]


def test_testing_mode_flags() -> None:
    assert dkim_check.testing_mode(b"v=DKIM1; t=y; p=AAAA") and dkim_check.testing_mode(b"v=DKIM1; t = s:y; p=AAAA")
    assert not dkim_check.testing_mode(b"v=DKIM1; t=s; p=AAAA") and not dkim_check.testing_mode(b"v=DKIM1; p=AAAA")


def test_key_record_tag_names_are_case_sensitive() -> None:
    # Thirty-eighth review: "H=sha1" and "T=s" were read as h= and t=s, failing signatures dkimpy passes (RFC 6376
    # §3.2: tag names are case-sensitive, an unknown tag is ignored).
    sig = {b"a": b"rsa-sha256", b"d": b"example.com", b"i": b"@mail.example.com"}
    assert dkim_check.key_restriction(b"v=DKIM1; p=AAAA; H=sha1", sig) == ""
    assert dkim_check.key_restriction(b"v=DKIM1; p=AAAA; T=s", sig) == ""
    assert dkim_check.key_restriction(b"v=DKIM1; p=AAAA; h=sha1", sig) == "the key record's h= does not allow sha256"
    assert dkim_check.key_restriction(b"v=DKIM1; p=AAAA; t=s", sig) == "the key record's t=s does not allow an i= domain other than d="
    assert not dkim_check.testing_mode(b"v=DKIM1; T=y; p=AAAA")

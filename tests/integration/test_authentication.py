"""DKIM, DMARC, ARC, DKIM signing and Authentication-Results through the real Postfix, with real DNS.

unbound serves the ``_domainkey`` and ``_dmarc`` TXT records of keys the
tests generate; messages are signed (and ARC-sealed) by dkimpy.  What is
asserted is what a user sees: the SMTP reply, the headers of the copy the
sink received, the log row.
"""

from __future__ import annotations

import base64
import json
import math
import re
import smtplib
import socket
from typing import Any, Callable, Iterator

import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from milterd import dkimsign
from tests.conftest import message
from tests.harness.dns import LocalDns
from tests.harness.milterd import Milterd
from tests.harness.stack import Stack, row_for

POSTFIX = {"local_header_rewrite_clients": ""}
CLIENT = {"ADDR": "192.0.2.10", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}


def txt(name: str, record: str) -> str:
    """A local-data TXT record, split into strings of at most 200 bytes."""
    strings = " ".join(f'"{record[i:i + 200]}"' for i in range(0, len(record), 200))
    return f"{name}. TXT {strings}"


def big_exponent_key() -> tuple[bytes, str]:
    """An RSA-2048 key (PEM) with a 1,500-bit public exponent, and its key record: valid to dkimpy's own
    arithmetic, refused by OpenSSL for its size. No real key has one (they use 65537)."""
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    p, q = numbers.p, numbers.q
    phi = (p - 1) * (q - 1)
    e = (1 << 1500) + 1
    while math.gcd(e, phi) != 1:
        e += 2
    d = pow(e, -1, phi)
    private = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, p * q))
    key = private.private_key(unsafe_skip_rsa_key_validation=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()


@pytest.fixture(scope="module")
def big_exponent() -> tuple[bytes, str]:
    return big_exponent_key()


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    return {
        "signed": dkimsign.generate("rsa", 2048),
        "loose": dkimsign.generate("rsa", 2048),
        "wrong": dkimsign.generate("rsa", 2048),
        "list": dkimsign.generate("rsa", 2048),
        "otherlist": dkimsign.generate("rsa", 2048),
        "out_rsa": dkimsign.generate("rsa", 2048),
        "out_ed": dkimsign.generate("ed25519").strip(),
        "seal": dkimsign.generate("rsa", 2048),
    }


@pytest.fixture(scope="module")
def local_dns(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, bytes], big_exponent: tuple[bytes, str]) -> Iterator[LocalDns]:
    data = [
        "client.example.org. A 192.0.2.10",
        "list.test. MX 10 mx.list.test.",
        "otherlist.test. MX 10 mx.list.test.",
        txt("sel._domainkey.signed.test", dkimsign.public_record("rsa", keys["signed"])),
        txt("_dmarc.signed.test", "v=DMARC1; p=reject"),
        txt("sel._domainkey.loose.test", dkimsign.public_record("rsa", keys["loose"])),
        txt("_dmarc.loose.test", "v=DMARC1; p=none"),
        txt("_dmarc.np.test", "v=DMARC1; p=reject; sp=none; np=reject"),
        txt("_dmarc.tabbed.test", r"v\009=\009DMARC1;\009p=reject"),  # RFC 1035's \DDD: tabs, RFC 7489's other WSP
        "mail.np.test. MX 10 mx.list.test.",
        txt("arc._domainkey.list.test", dkimsign.public_record("rsa", keys["list"])),
        txt("arc._domainkey.otherlist.test", dkimsign.public_record("rsa", keys["otherlist"])),
        txt("rsa1._domainkey.out.test", dkimsign.public_record("rsa", keys["out_rsa"])),
        txt("ed1._domainkey.out.test", dkimsign.public_record("ed25519", keys["out_ed"])),
        txt("arc._domainkey.seal.test", dkimsign.public_record("rsa", keys["seal"])),
        txt("big._domainkey.loose.test", big_exponent[1]),
    ]
    server = LocalDns(tmp_path_factory.mktemp("dns"), data, {}, silent=("slow.test",)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack], local_dns: LocalDns, keys: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> Stack:
    key_dir = tmp_path_factory.mktemp("dkimkeys")
    for name in ("out_rsa", "out_ed", "seal"):
        dkimsign.write_private(key_dir / f"{name}.key", keys[name])
    sections: dict[str, dict[str, Any]] = {
        "dns": {"nameservers": [local_dns.nameserver], "timeout": 3.0},
        "milter": {"authserv_id": "mx.test"},
        "checks": {"arc": {"trusted_sealers": ["list.test"], "seal": True, "seal_domain": "seal.test", "seal_selector": "arc", "seal_key_file": str(key_dir / "seal.key")}},
        "dkim_signing": {
            "enabled": True,
            "keys": [
                {"domain": "out.test", "selector": "rsa1", "key_file": str(key_dir / "out_rsa.key")},
                {"domain": "out.test", "selector": "ed1", "key_file": str(key_dir / "out_ed.key")},
            ],
        },
    }
    return make_stack(sections, postfix_extra=POSTFIX)


def sign(raw: bytes, key: bytes, domain: str, selector: str = "sel") -> bytes:
    return dkim.sign(raw, selector.encode(), domain.encode(), key) + raw  # type: ignore[no-any-return]


def delivered(stack: Stack, subject: str) -> Any:
    [found] = stack.sink.wait(1, match=lambda m: any(subject == s for s in m.header("Subject")))
    return found


def our_results(found: Any) -> str:
    [value] = [v for v in found.header("Authentication-Results") if v.split(";")[0].strip() == "mx.test"]
    return " ".join(str(value).split())


def test_valid_signature_passes_dkim_and_dmarc(stack: Stack, keys: dict[str, bytes]) -> None:
    raw = sign(message("dkim valid", sender="alice@signed.test"), keys["signed"], "signed.test")
    stack.send(raw, sender="alice@signed.test", xclient=CLIENT)
    results = our_results(delivered(stack, "dkim valid"))
    assert "dkim=pass header.d=signed.test header.s=sel" in results
    assert "dmarc=pass header.from=signed.test" in results
    row = row_for(stack, "dkim valid")
    assert {"DKIM_VALID", "DKIM_VALID_AUTHOR", "DMARC_PASS"} <= set(row["symbols"])
    assert row["details"]["DKIM_VALID"] == "d=signed.test s=sel"


def test_a_key_with_an_exponent_openssl_refuses_fails_the_signature(stack: Stack, big_exponent: tuple[bytes, str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # dkimpy's pure-Python pow verified such a signature (a 16384-bit exponent: 7 s of a worker's CPU a
    # signature); it now fails at once, the message judged as for any failed signature.
    raw = sign(message("dkim big exponent", sender="alice@loose.test"), big_exponent[0], "loose.test", "big")
    # Valid to dkimpy's own arithmetic (its own function: a unit test run in this process may have installed dkimfast's).
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_verify", dkim.crypto.RSASSA_PKCS1_v1_5_verify)
    assert dkim.verify(raw, dnsfunc=lambda _name, timeout=5: big_exponent[1].encode())
    stack.send(raw, sender="alice@loose.test", xclient=CLIENT)
    results = our_results(delivered(stack, "dkim big exponent"))
    assert "dkim=fail" in results and "header.s=big" in results
    row = row_for(stack, "dkim big exponent")
    assert "DKIM_INVALID" in row["symbols"] and "DKIM_VALID" not in row["symbols"]
    assert row["details"]["DKIM_INVALID"].startswith("d=loose.test s=big: ")


def test_broken_body_hash_is_invalid(stack: Stack, keys: dict[str, bytes]) -> None:
    raw = sign(message("dkim body", sender="alice@loose.test"), keys["loose"], "loose.test").replace(b"tomorrow", b"on Tuesday")
    stack.send(raw, sender="alice@loose.test", xclient=CLIENT)
    results = our_results(delivered(stack, "dkim body"))
    assert "dkim=fail" in results and "header.d=loose.test" in results and "dmarc=fail" in results
    row = row_for(stack, "dkim body")
    assert "DKIM_INVALID" in row["symbols"] and "DKIM_VALID" not in row["symbols"]
    assert "d=loose.test s=sel: body hash mismatch" in row["details"]["DKIM_INVALID"]
    assert "DMARC_FAIL_NONE" in row["symbols"] and row["action"] != "reject"


def test_wrong_key_is_invalid(stack: Stack, keys: dict[str, bytes]) -> None:
    raw = sign(message("dkim wrong key", sender="alice@loose.test"), keys["wrong"], "loose.test")
    stack.send(raw, sender="alice@loose.test", xclient=CLIENT)
    assert "dkim=fail header.d=loose.test" in re.sub(r' reason="[^"]*"', "", our_results(delivered(stack, "dkim wrong key")))
    row = row_for(stack, "dkim wrong key")
    assert "DKIM_INVALID" in row["symbols"] and "d=loose.test s=sel" in row["details"]["DKIM_INVALID"]


def test_forged_from_under_p_reject_is_refused_naming_the_domain(stack: Stack) -> None:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(message("dmarc forged", sender="ceo@signed.test"), sender="ceo@signed.test", xclient=CLIENT)
    assert info.value.smtp_code == 550
    assert "signed.test" in info.value.smtp_error.decode() and "DMARC" in info.value.smtp_error.decode()
    row = row_for(stack, "dmarc forged")
    assert row["action"] == "reject" and "DMARC_FAIL_REJECT" in row["symbols"] and "DKIM_NONE" in row["symbols"]


def test_a_p_reject_record_written_with_tabs_is_applied(stack: Stack) -> None:
    # "v<TAB>=<TAB>DMARC1" was taken for a DMARC record but not parsed: no policy, the forgery delivered (found by review).
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(message("dmarc tabbed", sender="ceo@tabbed.test"), sender="ceo@tabbed.test", xclient=CLIENT)
    assert info.value.smtp_code == 550 and "tabbed.test" in info.value.smtp_error.decode()
    assert row_for(stack, "dmarc tabbed")["action"] == "reject"


@pytest.mark.parametrize("aligned_signature", [False, True])
def test_a_signature_whose_dns_never_answers_does_not_hold_back_a_p_reject(stack: Stack, keys: dict[str, bytes], aligned_signature: bool) -> None:
    # A forger's top signature names a key in a domain whose nameserver never answers: its lookup spent the end
    # of message's DNS deadline, and the From domain's key (when signed for it) and DMARC record then timed out
    # unasked: DMARC_TEMPFAIL, 0 points, delivered (found by review).  They have deadlines of their own.
    subject = f"dmarc slow dns {aligned_signature}"
    raw = message(subject, sender="ceo@signed.test")
    if aligned_signature:
        raw = sign(raw, keys["wrong"], "signed.test")
    raw = sign(raw, keys["loose"], "slow.test", f"s{int(aligned_signature)}")  # a name of its own: unbound's answer is not cached
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw, sender="x@evil.example", xclient=CLIENT)
    assert info.value.smtp_code == 550 and "signed.test" in info.value.smtp_error.decode()
    row = row_for(stack, subject)
    assert row["action"] == "reject" and "DMARC_FAIL_REJECT" in row["symbols"]
    assert any(f"d=slow.test s=s{int(aligned_signature)}: key lookup failed" in str(detail) for detail in row["details"].values()), row["details"]


@pytest.mark.parametrize("signed", [False, True])
def test_a_from_domain_whose_dns_never_answers_first_does_not_hold_back_a_p_reject(stack: Stack, keys: dict[str, bytes], signed: bool) -> None:
    # The sender's own domain first in From, its nameserver silent: its _dmarc record (and, signed, its key)
    # spent the deadline the From domains shared, and signed.test's record and key were never asked (second review).
    subject = f"dmarc slow first from {signed}"
    own = f"x@v{int(signed)}.slow.test"  # names of its own: unbound's answers are not cached
    raw = message(subject, sender="ceo@signed.test", headers={"From": f"<{own}>, CEO <ceo@signed.test>"})
    if signed:
        raw = sign(sign(raw, keys["wrong"], "signed.test"), keys["loose"], own.partition("@")[2], "own")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw, sender="x@evil.example", xclient=CLIENT)
    assert info.value.smtp_code == 550 and "signed.test" in info.value.smtp_error.decode()
    row = row_for(stack, subject)
    assert row["action"] == "reject" and row["details"]["DMARC_FAIL_REJECT"].startswith("signed.test p=reject")


def test_a_second_from_address_does_not_hide_a_p_reject_domain(stack: Stack, keys: dict[str, bytes]) -> None:
    # Signed and aligned for loose.test (p=none), but the From also names signed.test (p=reject),
    # which nothing authenticates: RFC 7489 §6.6.1 evaluates both, and the strictest failure decides.
    raw = message("dmarc two from", sender="alice@loose.test", headers={"From": "Alice <alice@loose.test>, CEO <ceo@signed.test>"})
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(sign(raw, keys["loose"], "loose.test"), sender="alice@loose.test", xclient=CLIENT)
    assert info.value.smtp_code == 550 and "signed.test" in info.value.smtp_error.decode()
    row = row_for(stack, "dmarc two from")
    assert row["action"] == "reject" and "DMARC_FAIL_REJECT" in row["symbols"] and "DKIM_VALID" in row["symbols"]


def test_a_malformed_from_does_not_hide_a_p_reject_domain(stack: Stack) -> None:
    # Pythons with the fix of CVE-2023-27043 (Debian 12's own among them) read this From strictly as no
    # address at all, and milterd then saw no From domain (DMARC_NONE, delivered).  Mail clients show it
    # as from ceo@signed.test; both its domains are judged and signed.test's p=reject decides.
    forged = message("dmarc malformed from", sender="ceo@signed.test", headers={"From": "ceo@signed.test <x@evil.example>"})
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(forged, sender="x@evil.example", xclient=CLIENT)
    assert info.value.smtp_code == 550 and "signed.test" in info.value.smtp_error.decode()
    row = row_for(stack, "dmarc malformed from")
    assert row["action"] == "reject" and "DMARC_FAIL_REJECT" in row["symbols"]


def test_comments_nested_deep_in_from_do_not_hide_a_p_reject_domain(stack: Stack) -> None:
    # Comments may nest (RFC 5322 §3.2.2); the standard library's address parser recursed once per level
    # and raised RecursionError, DMARC failed as CHECK_ERROR (0 points) and the forgery was delivered.
    nested = "(" * 900 + ")" * 900 + " CEO <ceo@signed.test>"  # one line under Postfix's line_length_limit (2048)
    forged = message("dmarc nested comments", sender="ceo@signed.test", headers={"From": nested})
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(forged, sender="x@evil.example", xclient=CLIENT)
    assert info.value.smtp_code == 550 and "signed.test" in info.value.smtp_error.decode()
    row = row_for(stack, "dmarc nested comments")
    assert row["action"] == "reject" and "DMARC_FAIL_REJECT" in row["symbols"] and "CHECK_ERROR" not in row["symbols"]


@pytest.mark.parametrize(("subject", "from_", "invalid"), [
    ("dmarc encoded domain", "CEO <ceo@=?utf-8?q?signed.test?=>", True),  # Thunderbird decodes it where it stands
    ("dmarc backslash name", "CEO\\(Office <ceo@signed.test>", True),  # a backslash escapes outside quotes to Thunderbird
    ("dmarc folded domain", "CEO <ceo@signed\r\n .test>", False),  # folded inside the domain: one domain once unfolded
    ("dmarc leading dot", "CEO <ceo@.signed.test>", True),  # an empty label: IDNA refused the name, no domain judged
    ("dmarc double dot", "ceo@signed..test", True),
])
def test_a_from_a_client_shows_as_a_p_reject_domain_is_refused(stack: Stack, subject: str, from_: str, invalid: bool) -> None:
    # Found by differential fuzzing against Thunderbird's address parser: each was DMARC_NONE (or a
    # wrong domain) and delivered, at most HDR_FROM_INVALID's 2 points.
    forged = message(subject, sender="x@evil.example", headers={"From": from_})
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(forged, sender="x@evil.example", xclient=CLIENT)
    assert info.value.smtp_code == 550 and "signed.test" in info.value.smtp_error.decode()
    row = row_for(stack, subject)
    assert row["action"] == "reject" and "DMARC_FAIL_REJECT" in row["symbols"]
    # The header check scores the malformed ones (an encoded-word in an address: RFC 2047 section 5).
    assert ("HDR_FROM_INVALID" in row["symbols"]) is invalid


def test_np_reject_refuses_a_from_subdomain_that_does_not_exist(stack: Stack) -> None:
    # np.test: sp=none, np=reject (RFC 9091).  billing.np.test has no A, AAAA or MX: refused; mail.np.test
    # has an MX only, so it exists and gets sp=none.  (MAIL FROM is loose.test: its SPF aligns with neither.)
    forged = message("dmarc np forged", sender="billing@billing.np.test")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(forged, sender="alice@loose.test", xclient=CLIENT)
    assert info.value.smtp_code == 550 and "billing.np.test does not exist" in info.value.smtp_error.decode()
    row = row_for(stack, "dmarc np forged")
    assert row["action"] == "reject" and "np=reject" in row["details"]["DMARC_FAIL_REJECT"]
    stack.send(message("dmarc np exists", sender="news@mail.np.test"), sender="alice@loose.test", xclient=CLIENT)
    delivered(stack, "dmarc np exists")
    assert "DMARC_FAIL_NONE" in row_for(stack, "dmarc np exists")["symbols"]


def test_text_appended_after_a_body_length_signature_is_not_a_dmarc_pass(stack: Stack, keys: dict[str, bytes]) -> None:
    # A genuine signed.test (p=reject) message signed with l=, then text appended after the signed length
    # (RFC 6376 §8.2): the signature still verifies over its l= bytes, but the appended text is nobody's.
    raw = message("dkim appended", sender="alice@signed.test")
    signed = dkim.sign(raw, b"sel", b"signed.test", keys["signed"], length=True) + raw
    appended = signed + b"\r\nURGENT: confirm your account at https://attacker.example/login\r\n"
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(appended, sender="alice@signed.test", xclient=CLIENT)
    assert info.value.smtp_code == 550 and "signed.test" in info.value.smtp_error.decode()
    row = row_for(stack, "dkim appended")
    assert row["action"] == "reject" and "DMARC_FAIL_REJECT" in row["symbols"]
    assert "DKIM_INVALID" in row["symbols"] and "DKIM_VALID" not in row["symbols"]
    assert "bytes of the body unsigned" in row["details"]["DKIM_INVALID"]


def list_message(subject: str, keys: dict[str, bytes], sealer: str, sealer_key: bytes, forged: bool = False, from_: str = "") -> bytes:
    """A signed.test message re-sent by a mailing list: Subject tagged (the author's signature breaks), ARC-sealed by the list,
    which recorded the DKIM and DMARC pass it found on receipt; *forged*: a message from signed.test nobody signed, and the
    list's record says so.  *from_*: the From field, if not Alice's at signed.test alone."""
    original = message(subject, sender="alice@signed.test", headers={"From": from_} if from_ else None)
    original = original if forged else sign(original, keys["signed"], "signed.test")
    relayed = original.replace(f"Subject: {subject}".encode(), f"Subject: [list] {subject}".encode())
    recorded = "spf=fail smtp.mailfrom=signed.test; dkim=none; dmarc=fail header.from=signed.test" if forged else "dkim=pass header.d=signed.test; dmarc=pass header.from=signed.test"
    relayed = f"Authentication-Results: lists.{sealer}; {recorded}\r\n".encode() + relayed
    arc_headers = dkim.arc_sign(relayed, b"arc", sealer.encode(), sealer_key, f"lists.{sealer}".encode())
    return b"".join(arc_headers) + relayed


def test_arc_sealed_list_message_from_a_trusted_sealer_passes(stack: Stack, keys: dict[str, bytes]) -> None:
    raw = list_message("arc trusted", keys, "list.test", keys["list"])
    stack.send(raw, sender="bounces@list.test", xclient=CLIENT)
    found = delivered(stack, "[list] arc trusted")
    assert "arc=pass" in our_results(found) and "dmarc=fail" in our_results(found)
    row = row_for(stack, "[list] arc trusted")
    assert {"ARC_PASS", "ARC_TRUSTED", "DMARC_ARC_OVERRIDE", "DKIM_INVALID"} <= set(row["symbols"])
    assert row["symbols"]["DMARC_FAIL_REJECT"] == 0.0 and row["action"] == "accept"


def test_a_forgery_a_trusted_sealer_relayed_and_recorded_as_failed_is_refused(stack: Stack, keys: dict[str, bytes]) -> None:
    raw = list_message("arc relayed forgery", keys, "list.test", keys["list"], forged=True)
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw, sender="bounces@list.test", xclient=CLIENT)
    assert info.value.smtp_code == 550 and "signed.test" in info.value.smtp_error.decode()
    row = row_for(stack, "[list] arc relayed forgery")
    assert {"ARC_PASS", "ARC_TRUSTED", "DMARC_FAIL_REJECT"} <= set(row["symbols"]) and "DMARC_ARC_OVERRIDE" not in row["symbols"]


def test_a_trusted_sealers_pass_for_one_from_domain_does_not_override_anothers_failure(stack: Stack, keys: dict[str, bytes]) -> None:
    # The list recorded a pass for signed.test; np.test (p=reject), also in the From, was overridden with it (found by review).
    raw = list_message("arc two from", keys, "list.test", keys["list"], from_="Alice <alice@signed.test>, CEO <ceo@np.test>")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw, sender="bounces@list.test", xclient=CLIENT)
    assert info.value.smtp_code == 550 and "np.test" in info.value.smtp_error.decode()
    row = row_for(stack, "[list] arc two from")
    assert {"ARC_PASS", "ARC_TRUSTED", "DMARC_FAIL_REJECT"} <= set(row["symbols"]) and "DMARC_ARC_OVERRIDE" not in row["symbols"]
    assert row["details"]["DMARC_FAIL_REJECT"].startswith("np.test p=reject")


def test_arc_sealed_list_message_from_an_untrusted_sealer_is_refused(stack: Stack, keys: dict[str, bytes]) -> None:
    raw = list_message("arc untrusted", keys, "otherlist.test", keys["otherlist"])
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw, sender="bounces@otherlist.test", xclient=CLIENT)
    assert info.value.smtp_code == 550 and "signed.test" in info.value.smtp_error.decode()
    row = row_for(stack, "[list] arc untrusted")
    assert "ARC_PASS" in row["symbols"] and "ARC_TRUSTED" not in row["symbols"] and "DMARC_FAIL_REJECT" in row["symbols"]


def test_forged_authentication_results_are_replaced_by_one_of_ours(stack: Stack) -> None:
    raw = message("ar forged", sender="alice@loose.test", headers={"Authentication-Results": "mx.test; dkim=pass header.d=loose.test; dmarc=pass"})
    stack.send(raw, sender="alice@loose.test", xclient=CLIENT)
    found = delivered(stack, "ar forged")
    ours = [v for v in found.header("Authentication-Results") if str(v).startswith("mx.test")]
    assert len(ours) == 1 and "dkim=none" in ours[0] and "dmarc=fail" in " ".join(str(ours[0]).split())


def sink_lookup(local_dns: LocalDns) -> Callable[..., bytes | None]:
    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        reply = dns.query.udp(dns.message.make_query(name.decode().rstrip("."), "TXT"), "127.0.0.1", port=local_dns.port, timeout=timeout)
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(rrset[0].strings)
        return None

    return lookup


def test_mail_from_an_authenticated_client_is_signed_with_both_keys(stack: Stack, local_dns: LocalDns) -> None:
    raw = message("dkim signing", sender="carol@out.test")
    stack.send(raw, sender="carol@out.test", xclient={**CLIENT, "LOGIN": "carol"})
    found = delivered(stack, "dkim signing")
    signatures = found.header("DKIM-Signature")
    assert len(signatures) == 2
    lookup = sink_lookup(local_dns)
    verifier = dkim.DKIM(found.data)
    assert verifier.verify(0, dnsfunc=lookup) and verifier.verify(1, dnsfunc=lookup)
    assert {verifier.verify(i, dnsfunc=lookup) and verifier.selector for i in (0, 1)} == {b"rsa1", b"ed1"}
    row = row_for(stack, "dkim signing")
    assert row["details"]["DKIM_SIGNED"] == "d=out.test s=rsa1, d=out.test s=ed1"


def test_mail_from_an_unauthenticated_client_is_not_signed(stack: Stack) -> None:
    stack.send(message("dkim not signed", sender="carol@out.test"), sender="carol@out.test", xclient=CLIENT)
    assert delivered(stack, "dkim not signed").header("DKIM-Signature") == []



def test_accepted_mail_is_arc_sealed_over_our_authentication_results(stack: Stack, local_dns: LocalDns, keys: dict[str, bytes]) -> None:
    stack.send(message("arc seal", sender="alice@loose.test"), sender="alice@loose.test", xclient=CLIENT)
    stack.send(list_message("arc seal list", keys, "list.test", keys["list"]), sender="bounces@list.test", xclient=CLIENT)
    lookup = sink_lookup(local_dns)
    for subject, instances in (("arc seal", 1), ("[list] arc seal list", 2)):
        found = delivered(stack, subject)
        cv, results, reason = dkim.arc_verify(found.data, dnsfunc=lookup)
        assert cv == dkim.CV_Pass, reason
        assert len(results) == instances and results[0]["as-domain"] == b"seal.test"
        [aar] = [v for v in found.header("ARC-Authentication-Results") if v.startswith(f"i={instances};")]
        assert "mx.test" in aar and "dmarc=" in aar
        assert row_for(stack, subject)["details"]["ARC_SEALED"] == "d=seal.test s=arc"


def test_doctor_checks_that_the_published_record_matches_the_key(tmp_path_factory: pytest.TempPathFactory, local_dns: LocalDns, keys: dict[str, bytes]) -> None:
    root = tmp_path_factory.mktemp("doctor-dkim")
    dkimsign.write_private(root / "good.key", keys["out_rsa"])
    dkimsign.write_private(root / "stale.key", keys["wrong"])  # not the key published at ed1._domainkey.out.test
    sections: dict[str, dict[str, Any]] = {
        "dns": {"nameservers": [local_dns.nameserver]},
        "dkim_signing": {
            "enabled": True,
            "keys": [
                {"domain": "out.test", "selector": "rsa1", "key_file": str(root / "good.key")},
                {"domain": "out.test", "selector": "ed1", "key_file": str(root / "stale.key")},
                {"domain": "out.test", "selector": "unpublished", "key_file": str(root / "good.key")},
            ],
        },
    }
    result = Milterd(root / "milterd", sections).cli("doctor", "--no-postfix", "--json")
    findings = {f["name"]: f for f in json.loads(result.stdout)["findings"]}
    assert findings["dkim rsa1._domainkey.out.test"]["status"] == "ok"
    assert findings["dkim ed1._domainkey.out.test"]["status"] == "fail"
    assert "not this private key's" in findings["dkim ed1._domainkey.out.test"]["detail"]
    assert findings["dkim unpublished._domainkey.out.test"]["status"] == "fail"
    assert "v=DKIM1; k=rsa; p=" in findings["dkim unpublished._domainkey.out.test"]["detail"]
    assert result.returncode != 0


def test_a_silent_first_nameserver_leaves_the_lookups_to_the_second(make_stack: Callable[..., Stack], local_dns: LocalDns, keys: dict[str, bytes]) -> None:
    """A first nameserver that never answers (a host that is down): every key lookup was a timeout, the
    second nameserver never asked, and a valid signature was DKIM_TEMPFAIL with DMARC temperror."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # open, never read: no ICMP refusal, no answer
        port = silent.getsockname()[1]
        stack = make_stack({"dns": {"nameservers": [f"127.0.0.1:{port}", local_dns.nameserver], "timeout": 4.0}, "milter": {"authserv_id": "mx.test"}}, postfix_extra=POSTFIX)
        raw = sign(message("silent first nameserver", sender="alice@signed.test"), keys["signed"], "signed.test")
        stack.send(raw, sender="alice@signed.test", xclient=CLIENT)
        results = our_results(delivered(stack, "silent first nameserver"))
    assert "dkim=pass header.d=signed.test" in results and "dmarc=pass" in results
    assert {"DKIM_VALID", "DMARC_PASS"} <= set(row_for(stack, "silent first nameserver")["symbols"])
    assert f"nameserver [127.0.0.1]:{port} did not answer in time: {local_dns.nameserver.replace('127.0.0.1', '[127.0.0.1]')} is asked first" in stack.milterd.stderr()


def test_resolver_down_is_a_temporary_error_not_a_failure(stack: Stack, local_dns: LocalDns, keys: dict[str, bytes]) -> None:
    """Last in this module: it stops unbound.  A DNS outage must not turn into DKIM fail or a DMARC reject."""
    local_dns.stop_resolver()
    raw = sign(message("dns down", sender="bob@signed.test"), keys["signed"], "signed.test", selector="other")
    stack.send(raw, sender="bob@signed.test", xclient=CLIENT)
    results = our_results(delivered(stack, "dns down"))
    # Refused, or silent: the kernel tells of a closed port by an ICMP message it sends at most 1,000 a second
    # (a burst of 50), so under load a question to the stopped resolver may go unanswered to its deadline instead.
    assert re.search(r'dkim=temperror reason="key lookup failed: (connection refused|timeout)" header\.d=signed\.test header\.s=other', results), results
    assert "dmarc=temperror" in results
    row = row_for(stack, "dns down")
    assert {"DKIM_TEMPFAIL", "DMARC_TEMPFAIL"} <= set(row["symbols"]) and row["action"] != "reject"

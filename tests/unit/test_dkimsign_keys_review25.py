"""DKIM signing keys refused at start (twenty-fifth session's review): an RSA key under 1,024 bits or one whose
numbers do not fit together, and a selector DNS cannot hold; doctor's DKIM probe that breaks is a failed finding."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from milterd import diagnostics
from milterd.config import Config, DkimKey, DkimSigningSection
from milterd.dkimsign import load_keys, parse_key
from milterd.options import ConfigError


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


#: A 512-bit key (``openssl genrsa -traditional 512``): cryptography no longer makes keys under 1,024 bits.
WEAK_KEY = b"""-----BEGIN RSA PRIVATE KEY-----
MIIBOgIBAAJBALS48fNuur1Z+ypPq6NpozWNqV2Xqq23geD6ETtCWW6fncrXY7IH
hdnzFR13AT5V4TZpOyMAjjw7pQrYKINiqVkCAwEAAQJAR0tGt+AQ7y4WNaTkczzz
U+ckz3VLsehY5mYAcj5EhazsnMNOsXsb8vm3UuO1aBCL1oi6kSlpT12YnBxTLDlQ
uQIhANmB7z4cmD7MObc0Kn2mQo0AGTiHPodUpqVz6KbBGNH7AiEA1LR69KQ1xheh
EKHMSIrOwBdLbLd7qRFg1hCFFwM4JbsCIQCLOc7INUmGuPcgu/WO5EOpOazrMDbo
LVlWgvEi/GtEzQIgDaXK4dmLbbtkZTnMbrchTufvufkH4TAxQ2rp7zEQsDMCIHgZ
sJ1E2TCkdODET46E/vuMk9sLZwMjj/5PrP0VWvK3
-----END RSA PRIVATE KEY-----
"""


def _der_int(n: int) -> bytes:
    data = n.to_bytes((n.bit_length() + 8) // 8 or 1, "big")
    return b"\x02" + _der_len(len(data)) + data


def _der_len(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    data = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(data)]) + data


def _inconsistent_key() -> bytes:
    """A 2,048-bit PKCS#1 key whose CRT exponent dP is wrong: it parses, and signs what no receiver verifies."""
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    body = b"".join(_der_int(x) for x in (0, k.public_numbers.n, k.public_numbers.e, k.d, k.p, k.q, k.dmp1 + 2, k.dmq1, k.iqmp))
    der = b"\x30" + _der_len(len(body)) + body
    return b"-----BEGIN RSA PRIVATE KEY-----\n" + base64.encodebytes(der) + b"-----END RSA PRIVATE KEY-----\n"


def test_a_good_rsa_key_is_taken() -> None:
    assert parse_key(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))[0] == "rsa"


@pytest.mark.parametrize(("key", "reason"), [
    (lambda: WEAK_KEY, "an RSA key of 512 bits: receivers refuse fewer than 1024"),
    (_inconsistent_key, "not a usable RSA private key"),
])
def test_an_rsa_key_receivers_cannot_verify_is_refused_at_start(tmp_path: Path, key: object, reason: str) -> None:
    # Both loaded without a word (dkimpy's parser is lenient, and signs with them in Python where OpenSSL
    # refuses): every message was logged DKIM_SIGNED with a signature no receiver accepts.
    (tmp_path / "k.key").write_bytes(key())  # type: ignore[operator]
    section = DkimSigningSection(enabled=True, keys=[DkimKey(domain="example.org", selector="s1", key_file="k.key")])
    with pytest.raises(ConfigError) as info:
        load_keys(section, tmp_path / "milter.conf")
    assert "[dkim_signing] keys[0].key_file" in str(info.value) and reason in str(info.value)


@pytest.mark.parametrize("selector", ["", "s1.", "s 1", "s1;x", "s\u00e9lect", "-s1", "sel\n"])
def test_a_selector_dns_cannot_hold_is_refused_at_start(tmp_path: Path, selector: str) -> None:
    # Each started cleanly: then every message went out unsigned (DKIM_SIGN_ERROR) or with an s= no lookup reaches.
    (tmp_path / "k.key").write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    section = DkimSigningSection(enabled=True, keys=[DkimKey(domain="example.org", selector=selector, key_file="k.key")])
    with pytest.raises(ConfigError) as info:
        load_keys(section, tmp_path / "milter.conf")
    assert "[dkim_signing] keys[0].selector" in str(info.value) and "is not a selector" in str(info.value)


def test_doctor_s_dkim_probe_that_breaks_is_a_failed_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "k.key").write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    config = Config().with_changes({
        "dkim_signing.enabled": True, "dns.nameservers": ["127.0.0.1:9"],
        "dkim_signing.keys": [{"domain": "example.org", "selector": "s1", "key_file": str(tmp_path / "k.key")}],
    })

    def broken(*_args: object) -> None:
        raise ValueError("Invalid private key")

    monkeypatch.setattr(diagnostics, "judge_dkim_key", broken)
    [finding] = diagnostics.probe_dkim_keys(config)
    assert (finding.status, finding.name) == ("fail", "dkim s1._domainkey.example.org")
    assert "ValueError: Invalid private key" in finding.detail


@pytest.mark.parametrize("domain", ["example .org", "exa;mple.org", "-x.example.org", "a..example", "example.org\n"])
def test_a_domain_dns_cannot_hold_is_refused_at_start(tmp_path: Path, domain: str) -> None:
    # Each was taken as d= (only IDNA was asked): every signature named a domain no key lookup reaches.
    (tmp_path / "k.key").write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    section = DkimSigningSection(enabled=True, keys=[DkimKey(domain=domain, selector="s1", key_file="k.key")])
    with pytest.raises(ConfigError) as info:
        load_keys(section, tmp_path / "milter.conf")
    assert "[dkim_signing] keys[0].domain" in str(info.value) and "is not a domain name" in str(info.value)

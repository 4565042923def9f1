"""dkimpy's RSA check by OpenSSL (milterd/dkimfast.py): the same verdicts as dkimpy's pure Python."""

from __future__ import annotations

import base64
import hashlib
import math
import random
from typing import Any, Callable, Iterator

import dkim
import dkim.canonicalization
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from milterd import dkimfast
from milterd.checks.dkim import DnsRecorder, verify_all
from milterd.dns import Answer

MESSAGE = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: hello\r\n"
    b"Date: Sat, 28 Nov 2026 09:51:17 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n"
    b"Hello Bob,\r\n\r\nsee http://www.example.org/x today.\r\n"
)


def _probable_prime(rnd: random.Random, bits: int) -> int:
    while True:
        candidate = rnd.getrandbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if all(pow(a, candidate - 1, candidate) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
            return candidate


def small_key(bits: int, seed: int) -> rsa.RSAPrivateKey:
    """An RSA key of *bits* bits (OpenSSL will not generate keys under 1024 bits; dkimpy still meets them)."""
    rnd = random.Random(seed)
    e = 65537
    while True:
        p, q = _probable_prime(rnd, bits // 2), _probable_prime(rnd, bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e and (p * q).bit_length() == bits:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


@pytest.fixture(scope="module")
def keys() -> dict[str, rsa.RSAPrivateKey]:
    return {
        "2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "1024": rsa.generate_private_key(public_exponent=65537, key_size=1024),
        "e3": rsa.generate_private_key(public_exponent=3, key_size=2048),
        "512": small_key(512, 512),
    }


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def record(key: rsa.RSAPrivateKey) -> bytes:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def signed(key: rsa.RSAPrivateKey, message: bytes = MESSAGE, algorithm: bytes = b"rsa-sha256") -> bytes:
    return dkim.sign(message, b"sel", b"example.org", pem(key), canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=algorithm) + message


class Txt:
    """A resolver answering the selector's TXT with *text*."""

    def __init__(self, text: bytes) -> None:
        self.text = text

    def txt(self, name: str, deadline: float) -> Answer:
        rdata = type("Rdata", (), {"strings": (self.text,)})()
        return Answer(name, "TXT", "ok", (self.text.decode(),), (rdata,), 60.0)


class Counting:
    """Counts the calls of dkimpy's pure-Python function (the fallback)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, hash: Any, signature: bytes, public_key: dict[str, int]) -> bool:  # noqa: A002
        self.calls += 1
        return dkim.crypto.RSASSA_PKCS1_v1_5_verify(hash, signature, public_key)


@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counting]:
    counting = Counting()
    monkeypatch.setattr(dkimfast, "PURE_PYTHON", counting)
    yield counting


def verdicts(raw: bytes, published: bytes, patched: bool, monkeypatch: pytest.MonkeyPatch, min_key_bits: int = 1024) -> list[tuple[str, str]]:
    """(result, reason) of each signature, with OpenSSL's RSA (*patched*) or dkimpy's own."""
    with monkeypatch.context() as m:
        m.setattr(dkimfast, "install", (lambda: None) if not patched else dkimfast.install)
        m.setattr(dkim, "RSASSA_PKCS1_v1_5_verify", dkim.crypto.RSASSA_PKCS1_v1_5_verify)
        m.setattr(dkim.canonicalization, "compress_whitespace", dkimfast.PURE_COMPRESS)
        m.setattr(dkim.canonicalization, "strip_trailing_whitespace", dkimfast.PURE_STRIP)
        m.setattr(dkim, "evaluate_pk", dkimfast.PURE_EVALUATE_PK)
        results = verify_all(raw, DnsRecorder(Txt(published), 1e18), 5, min_key_bits)
        assert dkimfast.installed() is patched
    return [(r.result, r.reason) for r in results]


def tamper_signature(raw: bytes) -> bytes:
    head, _, rest = raw.partition(b" b=")
    return head + b" b=" + (b"A" if rest[:1] != b"A" else b"B") + rest[1:]


CASES: dict[str, Callable[[dict[str, rsa.RSAPrivateKey]], tuple[bytes, bytes]]] = {
    "valid": lambda k: (signed(k["2048"]), record(k["2048"])),
    "valid, 1024 bits": lambda k: (signed(k["1024"]), record(k["1024"])),
    "valid, e = 3": lambda k: (signed(k["e3"]), record(k["e3"])),
    "rsa-sha1": lambda k: (signed(k["2048"], algorithm=b"rsa-sha1"), record(k["2048"])),
    "signed header changed": lambda k: (signed(k["2048"]).replace(b"Subject: hello", b"Subject: hellO"), record(k["2048"])),
    "body changed": lambda k: (signed(k["2048"]).replace(b"today", b"tomorrow"), record(k["2048"])),
    "signature changed": lambda k: (tamper_signature(signed(k["2048"])), record(k["2048"])),
    "wrong key": lambda k: (signed(k["2048"]), record(k["other"])),
    "short key (512 bits)": lambda k: (signed(k["512"]), record(k["512"])),
    "short key, wrong": lambda k: (signed(k["512"]).replace(b"Subject: hello", b"Subject: hellO"), record(k["512"])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_verdicts_as_dkimpy(case: str, keys: dict[str, rsa.RSAPrivateKey], monkeypatch: pytest.MonkeyPatch, fallback: Counting) -> None:
    raw, published = CASES[case](keys)
    for min_key_bits in (1024, 512):
        pure = verdicts(raw, published, False, monkeypatch, min_key_bits)
        fast = verdicts(raw, published, True, monkeypatch, min_key_bits)
        assert fast == pure, (case, min_key_bits)
    expected = {"valid": "pass", "signed header changed": "fail", "signature changed": "fail", "wrong key": "fail", "body changed": "fail"}
    if case in expected:
        assert verdicts(raw, published, True, monkeypatch)[0][0] == expected[case]
    if case == "rsa-sha1":  # refused before its key is asked for (RFC 8301), by dkimpy or OpenSSL alike
        assert verdicts(raw, published, True, monkeypatch) == [("permerror", "rsa-sha1 signatures are not accepted (RFC 8301)")]
    if case == "short key (512 bits)":
        assert verdicts(raw, published, True, monkeypatch) == [("permerror", "public key too small: 512")]
        assert verdicts(raw, published, True, monkeypatch, 512)[0][0] == "pass"
    # OpenSSL answered these itself; the 512-bit key is dkimpy's.
    fast_cases = ("valid", "valid, 1024 bits", "valid, e = 3", "signed header changed", "body changed")  # a wrong key's modulus may be below the signature
    if case in fast_cases:
        assert fallback.calls == 0
    if case in ("short key (512 bits)", "short key, wrong"):
        assert fallback.calls > 0


def block(key: rsa.RSAPrivateKey, digest: Any) -> tuple[dict[str, int], bytes]:
    """dkimpy's public key dict for *key* and a valid raw signature of *digest* (the textbook RSA of the PKCS #1 block)."""
    numbers = key.private_numbers()
    n = numbers.public_numbers.n
    k = (n.bit_length() + 7) // 8
    encoded = dkim.crypto.EMSA_PKCS1_v1_5_encode(digest, k)
    return {"modulus": n, "publicExponent": numbers.public_numbers.e}, pow(int.from_bytes(encoded, "big"), numbers.d, n).to_bytes(k, "big")


def outcome(function: Callable[..., bool], *args: Any) -> Any:
    try:
        return function(*args)
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        return type(exc)


def test_the_fast_path_answers_what_dkimpy_answers(keys: dict[str, rsa.RSAPrivateKey], fallback: Counting) -> None:
    digest = hashlib.sha256(b"the canonical headers")
    public, signature = block(keys["2048"], digest)
    rnd = random.Random(14)
    samples = [signature, bytes(len(signature)), b"\xff" * len(signature)]
    for _ in range(200):
        flipped = bytearray(signature)
        flipped[rnd.randrange(len(flipped))] ^= 1 << rnd.randrange(8)
        samples.append(bytes(flipped))
    samples += [rnd.randbytes(len(signature)) for _ in range(50)]
    below = [s for s in samples if int.from_bytes(s, "big") < public["modulus"]]
    for sample in below:
        assert dkimfast.verify(digest, sample, public) is dkim.crypto.RSASSA_PKCS1_v1_5_verify(digest, sample, public)
    assert fallback.calls == 0  # every one of these was answered by OpenSSL
    assert dkimfast.verify(digest, signature, public) is True
    assert sum(dkimfast.verify(digest, s, public) for s in below) == 1


def test_a_signature_not_of_the_modulus_s_length_is_reduced_as_dkimpy_reduces_it(keys: dict[str, rsa.RSAPrivateKey], fallback: Counting) -> None:
    digest = hashlib.sha256(b"the canonical headers")
    public, signature = block(keys["2048"], digest)
    n = public["modulus"]
    k = len(signature)
    s = int.from_bytes(signature, "big")
    reduced = [
        b"\x00" + signature,  # one byte too long, the same number: dkimpy takes it
        (s + n).to_bytes(k + 1, "big"),  # s + n: dkimpy reduces it
        signature[1:] if signature[0] == 0 else signature[:-1],  # one byte short
        b"\xff" * k,  # not below the modulus
        (s + n * 255).to_bytes(k + 1, "big"),  # s + 255 n
        b"\x01" + signature,  # another number, reduced
    ]
    for index, sig in enumerate(reduced):
        assert outcome(dkimfast.verify, digest, sig, public) == outcome(dkim.crypto.RSASSA_PKCS1_v1_5_verify, digest, sig, public), index
    assert dkimfast.verify(digest, b"\x00" + signature, public) is True  # dkimpy's verdict, not OpenSSL's refusal
    assert dkimfast.verify(digest, (s + n).to_bytes(k + 1, "big"), public) is True
    # Thirty-eighth review: a b= of 40 KB cost dkimpy's quadratic conversion 0.2 s of CPU; reduced first, OpenSSL answers.
    huge = (s + n * (1 << 320000)).to_bytes(40300, "big")
    assert dkimfast.verify(digest, huge, public) is True
    assert dkimfast.verify(digest, b"\x7f" * 40300, public) is False
    assert fallback.calls == 0


def test_what_openssl_refuses_goes_to_dkimpy(keys: dict[str, rsa.RSAPrivateKey], fallback: Counting) -> None:
    digest = hashlib.sha256(b"the canonical headers")
    public, signature = block(keys["2048"], digest)
    n = public["modulus"]
    unusual: list[tuple[Any, bytes, dict[str, int]]] = [
        (hashlib.sha1(b"the canonical headers"), signature, public),  # not SHA-256
        (digest, signature, {"modulus": n, "publicExponent": 2}),  # an even exponent
        (digest, signature, {"modulus": n, "publicExponent": 1}),
        (digest, signature, {"modulus": n + 1, "publicExponent": 65537}),  # an even modulus
    ]
    for index, (hash_, sig, pk) in enumerate(unusual):
        before = fallback.calls
        assert outcome(dkimfast.verify, hash_, sig, pk) == outcome(dkim.crypto.RSASSA_PKCS1_v1_5_verify, hash_, sig, pk), index
        assert fallback.calls == before + 1, index
    small, small_signature = block(keys["512"], digest)
    assert dkimfast.verify(digest, small_signature, small) is True
    assert fallback.calls == len(unusual) + 1


def test_install_patches_dkimpy_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_verify", dkim.crypto.RSASSA_PKCS1_v1_5_verify)
    monkeypatch.setattr(dkim.canonicalization, "compress_whitespace", dkimfast.PURE_COMPRESS)
    monkeypatch.setattr(dkim.canonicalization, "strip_trailing_whitespace", dkimfast.PURE_STRIP)
    monkeypatch.setattr(dkim, "evaluate_pk", dkimfast.PURE_EVALUATE_PK)
    assert not dkimfast.installed()
    dkimfast.install()
    dkimfast.install()
    assert dkimfast.installed() and dkim.RSASSA_PKCS1_v1_5_verify is dkimfast.verify
    assert dkim.canonicalization.compress_whitespace is dkimfast.compress_whitespace
    assert dkimfast.PURE_COMPRESS.__module__ == dkimfast.PURE_STRIP.__module__ == "dkim.canonicalization"


def test_canonicalisation_gives_dkimpys_bytes() -> None:
    rnd = random.Random(6376)
    pieces = [b" ", b"\t", b"\r\n", b"\r", b"\n", b"a", b"b c", b"  ", b" \t ", b"\x0b", b"\xa0", b"\x00"]
    for _ in range(30000):
        text = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 25)))
        assert dkimfast.compress_whitespace(text) == dkimfast.PURE_COMPRESS(text), text
        assert dkimfast.strip_trailing_whitespace(text) == dkimfast.PURE_STRIP(text), text
    for _ in range(300):
        lines = [b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12))) for _ in range(rnd.randint(1, 60))]
        text = b"\r\n".join(lines)
        assert dkimfast.strip_trailing_whitespace(text) == dkimfast.PURE_STRIP(text), text
        assert dkimfast.compress_whitespace(text) == dkimfast.PURE_COMPRESS(text), text
    body = MESSAGE.split(b"\r\n\r\n", 1)[1] * 50
    assert dkimfast.compress_whitespace(body) is body and dkimfast.strip_trailing_whitespace(body) is body  # nothing to change: untouched
    assert dkimfast.compress_whitespace(b"a \t b\t\tc  d e") == b"a b c d e"
    assert dkimfast.strip_trailing_whitespace(b"a \r\nb\t \r\nc\r\n") == b"a\r\nb\r\nc\r\n"


def test_relaxed_signatures_with_blanks_verify_as_with_dkimpy(keys: dict[str, rsa.RSAPrivateKey], monkeypatch: pytest.MonkeyPatch) -> None:
    message = MESSAGE.replace(b"Subject: hello", b"Subject:  hello \t there").replace(b"Hello Bob,", b"Hello \t Bob,  \r\n\t ") + b"\r\n \r\n\r\n"
    raw = signed(keys["2048"], message)
    assert verdicts(raw, record(keys["2048"]), True, monkeypatch) == verdicts(raw, record(keys["2048"]), False, monkeypatch) == [("pass", "")]
    moved = raw.replace(b"Hello \t Bob,", b"Hello Bob ,")
    assert verdicts(moved, record(keys["2048"]), True, monkeypatch) == verdicts(moved, record(keys["2048"]), False, monkeypatch) != [("pass", "")]


def test_a_key_record_is_parsed_once_and_a_bad_one_every_time(keys: dict[str, rsa.RSAPrivateKey], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    PURE = dkimfast.PURE_EVALUATE_PK
    monkeypatch.setattr(dkimfast, "PURE_EVALUATE_PK", lambda name, record: (calls.append(record), PURE(name, record))[1])
    dkimfast._evaluate_pk.cache_clear()
    good = record(keys["other"]) + b"; t=s"
    first = dkimfast.evaluate_pk(b"sel._domainkey.example.org.", good)
    assert dkimfast.evaluate_pk(b"sel._domainkey.example.org.", good) is first
    assert first[0] == PURE(b"sel._domainkey.example.org.", good)[0] and first[1:] == (2048, b"rsa", False)
    assert calls == [good]
    bad = b"v=DKIM1; k=rsa; p=AAAA"
    for _ in range(2):
        with pytest.raises(dkim.KeyFormatError):
            dkimfast.evaluate_pk(b"sel._domainkey.example.org.", bad)
    assert calls == [good, bad, bad]  # a failure is not remembered
    with pytest.raises(dkim.KeyFormatError):
        dkimfast.evaluate_pk(b"sel._domainkey.example.org.", None)  # no record: dkimpy's own error
    huge = good + b" " * dkimfast.MAX_KEY_RECORD
    dkimfast.evaluate_pk(b"x.", huge)
    dkimfast.evaluate_pk(b"x.", huge)
    assert calls[-2:] == [huge, huge]  # too long to keep


def test_an_unchecked_dkimpy_release_keeps_its_own_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    assert dkimfast.checked_release()  # the release CI installs is one the property tests check
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_verify", dkim.crypto.RSASSA_PKCS1_v1_5_verify)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.0.0")
    dkimfast.checked_release.cache_clear()
    try:
        assert not dkimfast.checked_release()
        dkimfast.install()
        assert dkim.RSASSA_PKCS1_v1_5_verify is dkim.crypto.RSASSA_PKCS1_v1_5_verify
    finally:
        dkimfast.checked_release.cache_clear()


def test_a_key_openssl_refuses_for_its_size_fails_without_dkimpys_pow(keys: dict[str, rsa.RSAPrivateKey], fallback: Counting) -> None:
    # A key record may publish any exponent; dkimpy's pure-Python pow took 7 s of CPU a signature for a
    # 16384-bit one (found by fuzzing).  OpenSSL refuses exponents over 64 bits on large moduli, and no
    # real key has one: the signature fails, even where it is valid under that key.
    digest = hashlib.sha256(b"the canonical headers")
    numbers = keys["2048"].private_numbers()
    n, phi = numbers.public_numbers.n, (numbers.p - 1) * (numbers.q - 1)
    exponent = (1 << 1500) + 1
    while math.gcd(exponent, phi) != 1:
        exponent += 2
    k = (n.bit_length() + 7) // 8
    signature = pow(int.from_bytes(dkim.crypto.EMSA_PKCS1_v1_5_encode(digest, k), "big"), pow(exponent, -1, phi), n).to_bytes(k, "big")
    public = {"modulus": n, "publicExponent": exponent}
    assert dkim.crypto.RSASSA_PKCS1_v1_5_verify(digest, signature, public) is True  # valid, to dkimpy
    assert dkimfast.verify(digest, signature, public) is False
    assert dkimfast.verify(digest, signature, {"modulus": (1 << 16400) + 1, "publicExponent": 65537}) is False
    assert fallback.calls == 0

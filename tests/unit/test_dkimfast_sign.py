"""RSA signing by OpenSSL (milterd.dkimfast.sign): dkimpy's own signatures, byte for byte.

RSASSA-PKCS1-v1_5 is deterministic, so every signature, DKIM-Signature and
ARC set must be the one dkimpy's pure-Python ``RSASSA_PKCS1_v1_5_sign``
makes; whatever OpenSSL refuses (small or inconsistent keys, other hashes)
must give dkimpy's result or dkimpy's exception.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Callable

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from milterd import dkimfast, dkimsign
from milterd.checks import arc

from .test_dkimfast import pem, small_key

HEAD = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject:  a\t test \r\nDate: Fri, 04 Dec 2026 05:00:00 +0000\r\n\r\n"
BODIES = [b"", b"\r\n", b"hello\r\n", b"tabs\t \t\r\n  \r\nno final line break", "grüße\r\n".encode() * 40]
NOW = 1_796_000_000.75
AUTHSERV_ID = "mx.test"


@pytest.fixture(scope="module")
def keys() -> dict[int, bytes]:
    """PEM private keys, as dkimsign's key files hold them."""
    return {bits: dkimsign.generate("rsa", bits) for bits in (1024, 2048, 3072)}


class Digest:
    """A hash object with a chosen name and digest (what dkimpy reads of one: ``name`` and ``digest()``)."""

    def __init__(self, name: str, value: bytes) -> None:
        self.name = name
        self.value = value

    def digest(self) -> bytes:
        return self.value


def outcome(function: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """What *function* returns (its type and value) or raises (the exception's type and arguments)."""
    try:
        result = function(*args)
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        return type(exc).__name__, exc.args
    return type(result).__name__, bytes(result)


def no_pure_python_rsa(*args: Any) -> Any:
    raise AssertionError("dkimpy's pure-Python RSA (rsa_decrypt) was used")


class CountingPure:
    """dkimpy's own signing, counting its calls (dkimfast's fallback)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, hash: Any, private_key: dict[str, int]) -> bytearray:  # noqa: A002 - dkimpy's parameter name
        self.calls += 1
        return dkim.crypto.RSASSA_PKCS1_v1_5_sign(hash, private_key)


def dkimpys_own(m: pytest.MonkeyPatch) -> None:
    """dkimpy signs with its own RSA, and nothing installs the replacement."""
    m.setattr(dkimfast, "install", lambda: None)
    m.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", dkim.crypto.RSASSA_PKCS1_v1_5_sign)


@pytest.mark.parametrize("bits", [1024, 2048, 3072])
def test_signatures_are_dkimpys_byte_for_byte(monkeypatch: pytest.MonkeyPatch, keys: dict[int, bytes], bits: int) -> None:
    private = dkim.crypto.parse_pem_private_key(keys[bits])
    rnd = random.Random(bits)
    digests = [Digest("sha256", rnd.randbytes(32)) for _ in range(40)] + [Digest("sha1", rnd.randbytes(20)) for _ in range(5)]
    digests += [Digest("sha256", bytes(32)), Digest("sha256", b"\xff" * 32), Digest("SHA256", rnd.randbytes(32))]
    digests += [hashlib.sha256(b"hello"), hashlib.sha1(b"hello")]
    expected = [dkim.crypto.RSASSA_PKCS1_v1_5_sign(digest, private) for digest in digests]
    monkeypatch.setattr(dkim.crypto, "rsa_decrypt", no_pure_python_rsa)  # OpenSSL signs every one of them
    for digest, signature in zip(digests, expected, strict=True):
        fast = dkimfast.sign(digest, private)
        assert fast == signature and type(fast) is type(signature) is bytearray, (bits, digest.name, digest.digest())


def test_a_key_with_e_3_signs_the_same() -> None:
    key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    private = dkim.crypto.parse_pem_private_key(pem(key))
    digest = hashlib.sha256(b"e = 3")
    assert dkimfast.sign(digest, private) == dkim.crypto.RSASSA_PKCS1_v1_5_sign(digest, private)


def dkim_records(signing_keys: list[dkimsign.SigningKey]) -> Callable[..., bytes]:
    table = {f"{k.selector}._domainkey.{k.domain}.".encode(): dkimsign.public_record(k.algorithm, k.private).encode() for k in signing_keys}
    return lambda name, timeout=5: table[name]


def test_dkim_signatures_are_the_same_with_the_replacement(monkeypatch: pytest.MonkeyPatch, keys: dict[int, bytes]) -> None:
    monkeypatch.setattr(dkim.time, "time", lambda: NOW)
    signing_keys = [dkimsign.SigningKey("example.org", f"rsa{bits}", "rsa", pem_key) for bits, pem_key in keys.items()]
    signing_keys.append(dkimsign.SigningKey("example.org", "ed", "ed25519", dkimsign.generate("ed25519").strip()))
    dnsfunc = dkim_records(signing_keys)
    for headers in ([], ["From", "Subject", "To"]):
        with monkeypatch.context() as m:
            dkimpys_own(m)
            pure = [dkimsign.sign(HEAD, [body], signing_keys, headers) for body in BODIES]
        with monkeypatch.context() as m:
            m.setattr(dkim.crypto, "rsa_decrypt", no_pure_python_rsa)
            fast = [dkimsign.sign(HEAD, [body], signing_keys, headers) for body in BODIES]
        assert fast == pure
        for body, values in zip(BODIES, fast, strict=True):
            for value in values:
                signed = b"DKIM-Signature: " + value.replace("\n", "\r\n").encode() + b"\r\n" + HEAD + body
                assert dkim.verify(signed, dnsfunc=dnsfunc), value


def arc_records(pem_key: bytes) -> Callable[..., bytes]:
    record = dkimsign.public_record("rsa", pem_key).encode()
    return lambda name, timeout=5: record if name == b"arc._domainkey.seal.test." else b""


def sealed_twice(pem_key: bytes) -> tuple[bytes, list[list[tuple[str, str]]]]:
    """HEAD + body sealed by milterd (i=1, cv=none), then again (i=2, cv=pass): the message and each ARC set."""
    message = f"Authentication-Results: {AUTHSERV_ID}; spf=pass smtp.mailfrom=alice@example.org\r\n".encode() + HEAD + b"hello\r\n"
    sets = []
    for arc_result in ("", "; arc=pass"):
        stamped = f"Authentication-Results: {AUTHSERV_ID}; dkim=none{arc_result}\r\n".encode() + message
        pairs = arc.seal(stamped, "seal.test", "arc", pem_key, AUTHSERV_ID)
        sets.append(pairs)
        message = b"".join(f"{name}: {value}".replace("\n", "\r\n").encode() + b"\r\n" for name, value in pairs) + stamped
    return message, sets


@pytest.mark.parametrize("bits", [1024, 2048])
def test_arc_seals_are_the_same_with_the_replacement(monkeypatch: pytest.MonkeyPatch, keys: dict[int, bytes], bits: int) -> None:
    monkeypatch.setattr(dkim.time, "time", lambda: NOW)
    with monkeypatch.context() as m:
        dkimpys_own(m)
        pure_message, pure_sets = sealed_twice(keys[bits])
        pure_arc_sign = dkim.arc_sign(pure_message, b"arc", b"seal.test", keys[bits], AUTHSERV_ID.encode())
    with monkeypatch.context() as m:
        m.setattr(dkim.crypto, "rsa_decrypt", no_pure_python_rsa)
        fast_message, fast_sets = sealed_twice(keys[bits])
        fast_arc_sign = dkim.arc_sign(fast_message, b"arc", b"seal.test", keys[bits], AUTHSERV_ID.encode())
    assert [len(pairs) for pairs in fast_sets] == [3, 3] and "i=2;" in fast_sets[1][0][1]
    assert fast_sets == pure_sets and fast_message == pure_message
    assert fast_arc_sign == pure_arc_sign and len(fast_arc_sign) == 3
    cv, _, reason = dkim.arc_verify(fast_message, dnsfunc=arc_records(keys[bits]))
    assert cv == dkim.CV_Pass, reason


def test_signing_does_not_use_dkimpys_rsa_in_a_fresh_worker(monkeypatch: pytest.MonkeyPatch, keys: dict[int, bytes]) -> None:
    """A worker that signs (or seals) before it has verified anything gets OpenSSL's RSA all the same."""
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", dkim.crypto.RSASSA_PKCS1_v1_5_sign)  # nothing installed yet
    monkeypatch.setattr(dkim.crypto, "rsa_decrypt", no_pure_python_rsa)
    key = dkimsign.SigningKey("example.org", "rsa2048", "rsa", keys[2048])
    [value] = dkimsign.sign(HEAD, [b"hello\r\n"], [key], [])
    signed = b"DKIM-Signature: " + value.replace("\n", "\r\n").encode() + b"\r\n" + HEAD + b"hello\r\n"
    assert dkim.verify(signed, dnsfunc=dkim_records([key]))

    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", dkim.crypto.RSASSA_PKCS1_v1_5_sign)
    message, _ = sealed_twice(keys[2048])
    assert dkim.arc_verify(message, dnsfunc=arc_records(keys[2048]))[0] == dkim.CV_Pass


def test_install_replaces_the_signing_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", dkim.crypto.RSASSA_PKCS1_v1_5_sign)
    assert not dkimfast.installed()
    dkimfast.install()
    assert dkimfast.installed() and dkim.RSASSA_PKCS1_v1_5_sign is dkimfast.sign
    assert dkimfast.PURE_SIGN is dkim.crypto.RSASSA_PKCS1_v1_5_sign


def key_dict(key: rsa.RSAPrivateKey) -> dict[str, int]:
    return dict(dkim.crypto.parse_pem_private_key(pem(key)))


def inconsistent_keys(private: dict[str, int]) -> list[dict[str, int]]:
    """*private* with each number changed (OpenSSL refuses them all; dkimpy signs with some, wrongly or not)."""
    changed = []
    for field in ("privateExponent", "exponent1", "exponent2", "coefficient", "prime1", "prime2", "modulus", "publicExponent"):
        for delta in (2, -2):
            changed.append({**private, field: private[field] + delta})
    changed.append({**private, "exponent1": private["exponent1"] + private["prime1"] - 1})  # the same signatures, unreduced
    changed.append({**private, "modulus": private["modulus"] << 8})  # a longer output
    return changed


def test_keys_openssl_refuses_are_dkimpys(monkeypatch: pytest.MonkeyPatch) -> None:
    pure = CountingPure()
    monkeypatch.setattr(dkimfast, "PURE_SIGN", pure)
    private = key_dict(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    digest = hashlib.sha256(b"inconsistent")
    cases = inconsistent_keys(private)
    for case in cases:
        assert dkimfast._private_key_of(case) is None
        assert outcome(dkimfast.sign, digest, case) == outcome(dkim.crypto.RSASSA_PKCS1_v1_5_sign, digest, case), case
    assert pure.calls == len(cases)
    # Keys that are not dkimpy's dict of integers: dkimpy's result (without privateExponent, which it does not read) or error.
    odd: list[Any] = [{k: v for k, v in private.items() if k != "privateExponent"}, {k: v for k, v in private.items() if k != "prime1"}]
    odd += [{**private, "coefficient": float(3)}, {**private, "publicExponent": True}, list(private.items()), None]
    for case in odd:
        assert outcome(dkimfast.sign, digest, case) == outcome(dkim.crypto.RSASSA_PKCS1_v1_5_sign, digest, case), case
    assert pure.calls == len(cases) + len(odd)


def test_small_keys_sign_as_dkimpy_does(monkeypatch: pytest.MonkeyPatch) -> None:
    pure = CountingPure()
    monkeypatch.setattr(dkimfast, "PURE_SIGN", pure)
    for bits, seed in ((512, 512), (384, 384)):
        private = key_dict(small_key(bits, seed))
        for digest in (hashlib.sha256(b"small"), hashlib.sha1(b"small")):
            assert outcome(dkimfast.sign, digest, private) == outcome(dkim.crypto.RSASSA_PKCS1_v1_5_sign, digest, private), (bits, digest.name)
    # A 384-bit modulus cannot hold SHA-256's DigestInfo: OpenSSL refuses and dkimpy raises its own error.
    private = key_dict(small_key(384, 384))
    with pytest.raises(dkim.crypto.DigestTooLargeError):
        dkimfast.sign(hashlib.sha256(b"small"), private)
    assert pure.calls == 2


def test_hashes_dkimpy_has_no_digestinfo_for_are_dkimpys(monkeypatch: pytest.MonkeyPatch) -> None:
    pure = CountingPure()
    monkeypatch.setattr(dkimfast, "PURE_SIGN", pure)
    private = key_dict(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    digests: list[Any] = [hashlib.sha512(b"x"), hashlib.md5(b"x"), Digest("sha256", bytes(31)), Digest("sha1", bytes(32)), object()]
    for digest in digests:
        assert outcome(dkimfast.sign, digest, private) == outcome(dkim.crypto.RSASSA_PKCS1_v1_5_sign, digest, private), digest
    assert pure.calls == len(digests)


def test_the_key_cache_is_bounded_and_reuses_the_key_object(keys: dict[int, bytes]) -> None:
    dkimfast._private_key.cache_clear()
    first, second = (dkim.crypto.parse_pem_private_key(keys[2048]) for _ in range(2))
    assert first is not second
    key = dkimfast._private_key_of(first)
    assert key is not None and dkimfast._private_key_of(second) is key
    info = dkimfast._private_key.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (1, 1, dkimfast.KEY_CACHE_SIZE)
    refused = {**first, "coefficient": first["coefficient"] + 1}
    assert dkimfast._private_key_of(refused) is None and dkimfast._private_key_of(dict(refused)) is None
    assert dkimfast._private_key.cache_info().hits == 2  # the refusal is remembered
    for i in range(dkimfast.KEY_CACHE_SIZE + 10):  # keys refused before OpenSSL's (slow) check of the primes
        dkimfast._private_key_of({**first, "modulus": first["modulus"] + 2 + i})
    assert dkimfast._private_key.cache_info().currsize == dkimfast.KEY_CACHE_SIZE

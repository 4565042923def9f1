r"""dkimpy's hot spots, replaced by code that gives the same results faster.

:func:`install` (idempotent, per process) makes dkimpy's DKIM and ARC
verification use :func:`verify` for RSA, :func:`compress_whitespace` and
:func:`strip_trailing_whitespace` for relaxed canonicalisation, and
:func:`evaluate_pk` for the key record's parse.  Everything else (tags,
hashes, ``l=``, ``t=``/``x=``, key size) stays dkimpy's.

**RSA.**  Why: dkimpy verifies RSA signatures in pure Python.  For one RSA-2048
signature ``pow(s, e, n)`` costs about 0.26 ms and its byte/integer
conversions (``int2str``/``str2int``) 0.08 ms of CPU, holding the GIL: about
a tenth of a worker's CPU per signed message (bench/RESULTS.md, issues #14
and #15).  OpenSSL does the same check in about 0.02 ms.  dkimpy has no hook
for its RSA, so :func:`install` replaces the one name its verification calls,
``dkim.RSASSA_PKCS1_v1_5_verify`` (DKIM signatures and ARC sets alike).

Same answers: RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.2) is deterministic.  dkimpy
computes ``s^e mod n``, writes it in *k* bytes (the modulus's length) and
compares it with the block ``00 01 FF… 00 DigestInfo`` of the message's hash;
OpenSSL's ``RSA_verify`` does the same computation and comparison.  OpenSSL
refuses beforehand some inputs dkimpy takes: a signature that is not *k*
bytes long, a signature integer not below ``n`` (dkimpy reduces it modulo
``n``), keys it does not accept (an even modulus, an even exponent or one
below 3 or not below ``n``, a modulus over 16384 bits, an exponent over 64
bits), and a digest whose block does not fit in *k* bytes (dkimpy raises
``DigestTooLargeError``); ``cryptography`` reports some of these refusals as
an invalid signature.  Those inputs (checked here first), keys under 1024
bits, any hash but SHA-256, and any error but "invalid signature" go to
dkimpy's own function, so the verdict is dkimpy's in every case
(tests/unit/test_dkimfast.py compares them on valid, tampered, wrong-key,
short-key and odd-length signatures).

**Relaxed canonicalisation** (RFC 6376 §3.4.2, §3.4.4).  dkimpy rewrites
every run of blanks with ``re.sub(b"[\t ]+", b" ", …)`` and strips blanks
before each CRLF with ``re.sub(b"[\t ]+\r\n", …)``: on a 5 KB body that is
about 0.16 ms, nearly all of it replacing each single space by itself.  The
versions here return the text untouched when it has no tab, no double space
(resp. no blank before a CRLF), which is exactly when dkimpy's substitution
changes nothing, and otherwise substitute only runs that change (a tab, or
two blanks or more; resp. strip each line's end): the same bytes (compared
on random texts in the tests).

**Key records.**  dkimpy parses the selector's TXT record (tags, base64, the
key's ASN.1 in Python: about 0.03 ms) for every signature, although the
answer comes from milterd's DNS cache.  :func:`evaluate_pk` remembers the
parse per (name, record text); a record that fails to parse raises each time.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

import dkim
import dkim.canonicalization
import dkim.crypto
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

#: dkimpy's own pure-Python verification, used for everything the fast path leaves out.
PURE_PYTHON: Callable[[Any, bytes, dict[str, int]], bool] = dkim.crypto.RSASSA_PKCS1_v1_5_verify
#: dkimpy's own canonicalisation helpers (what :func:`install` replaces).
PURE_COMPRESS: Callable[[bytes], bytes] = dkim.canonicalization.compress_whitespace
PURE_STRIP: Callable[[bytes], bytes] = dkim.canonicalization.strip_trailing_whitespace
#: dkimpy's parse of a key record (what :func:`install` replaces with a remembered one).
PURE_EVALUATE_PK: Callable[[Any, Any], Any] = dkim.evaluate_pk
#: Longer key records are parsed each time (not remembered).
MAX_KEY_RECORD = 8192
#: Smaller moduli are checked by dkimpy (cheap, and where "digest too large" can happen).
MIN_FAST_BITS = 1024
#: OpenSSL's largest modulus (OPENSSL_RSA_MAX_MODULUS_BITS); larger ones are dkimpy's.
MAX_FAST_BITS = 16384
#: RSA public keys kept as OpenSSL objects, and key records parsed, per process (a busy MX sees few signing keys again and again).
KEY_CACHE_SIZE = 256

_PADDING = padding.PKCS1v15()
_PREHASHED_SHA256 = Prehashed(hashes.SHA256())


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def _public_key(modulus: int, exponent: int) -> rsa.RSAPublicKey | None:
    """The OpenSSL key of (*modulus*, *exponent*), or None when OpenSSL refuses it."""
    try:
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except Exception:  # noqa: BLE001 - a key OpenSSL will not load is dkimpy's to judge
        return None


def verify(hash: Any, signature: bytes, public_key: dict[str, int]) -> bool:  # noqa: A002 - dkimpy's parameter name
    """``dkim.crypto.RSASSA_PKCS1_v1_5_verify`` with OpenSSL doing the RSA: the same result, or dkimpy's own."""
    modulus = public_key.get("modulus")
    exponent = public_key.get("publicExponent")
    if (
        type(modulus) is not int
        or type(exponent) is not int
        or getattr(hash, "name", "").lower() != "sha256"
        or not MIN_FAST_BITS <= modulus.bit_length() <= MAX_FAST_BITS
        or not modulus & exponent & 1
        or not 3 <= exponent < modulus
        or exponent.bit_length() > 64
        or len(signature) != (modulus.bit_length() + 7) // 8
        or int.from_bytes(signature, "big") >= modulus
    ):
        return PURE_PYTHON(hash, signature, public_key)
    key = _public_key(modulus, exponent)
    if key is None:
        return PURE_PYTHON(hash, signature, public_key)
    try:
        key.verify(bytes(signature), hash.digest(), _PADDING, _PREHASHED_SHA256)
    except InvalidSignature:
        return False
    except Exception:  # noqa: BLE001 - anything unusual: dkimpy decides (and raises what it raises)
        return PURE_PYTHON(hash, signature, public_key)
    return True


_CHANGING_RUN = re.compile(b"\t[\t ]*| [\t ]+")  # the runs of blanks that are not one space


def compress_whitespace(content: bytes) -> bytes:
    """``dkim.canonicalization.compress_whitespace``: every run of spaces and tabs as one space."""
    if b"\t" not in content and b"  " not in content:
        return content
    return _CHANGING_RUN.sub(b" ", content)


def strip_trailing_whitespace(content: bytes) -> bytes:
    """``dkim.canonicalization.strip_trailing_whitespace``: no spaces or tabs before a CRLF."""
    if b" \r\n" not in content and b"\t\r\n" not in content:
        return content
    # Every piece but the last ends at a CRLF: its trailing blanks are the run the pattern removes.
    lines = content.split(b"\r\n")
    last = lines.pop()
    lines = [line.rstrip(b" \t") for line in lines]
    lines.append(last)
    return b"\r\n".join(lines)


def evaluate_pk(name: Any, record: Any) -> Any:
    """``dkim.evaluate_pk`` (the key record's parse: tags, base64, ASN.1), remembered per (name, record).

    A pure function of its arguments; failures raise as before and are not
    remembered.  The key it returns is only read by dkimpy and :func:`verify`.
    """
    if isinstance(record, (bytes, str)) and len(record) <= MAX_KEY_RECORD and isinstance(name, (bytes, str)):
        return _evaluate_pk(name, record)
    return PURE_EVALUATE_PK(name, record)


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def _evaluate_pk(name: bytes | str, record: bytes | str) -> Any:
    return PURE_EVALUATE_PK(name, record)


def install() -> None:
    """Make dkimpy's DKIM and ARC verification use this module's functions (idempotent, per process)."""
    dkim.RSASSA_PKCS1_v1_5_verify = verify
    dkim.canonicalization.compress_whitespace = compress_whitespace
    dkim.canonicalization.strip_trailing_whitespace = strip_trailing_whitespace
    dkim.evaluate_pk = evaluate_pk


def installed() -> bool:
    """Whether dkimpy currently uses this module's functions."""
    return (
        dkim.RSASSA_PKCS1_v1_5_verify is verify
        and dkim.canonicalization.compress_whitespace is compress_whitespace
        and dkim.canonicalization.strip_trailing_whitespace is strip_trailing_whitespace
        and dkim.evaluate_pk is evaluate_pk
    )

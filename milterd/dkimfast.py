r"""dkimpy's hot spots, replaced by code that gives the same results faster.

:func:`install` (idempotent, per process) makes dkimpy's DKIM and ARC
signing use :func:`sign` for RSA, and their verification :func:`verify`
for RSA, :func:`compress_whitespace` and :func:`strip_trailing_whitespace`,
:func:`unfold_header_value` and :func:`relaxed_headers` for relaxed
canonicalisation, :func:`evaluate_pk` for the key record's parse,
:func:`rfc822_parse` for the message's, :func:`parse_tag_value` for the
signature's tags, :data:`RE_BTAG` for removing a signature's ``b=`` value,
:func:`canonicalize_body` (a body canonicalised once per verification, :func:`one_body`),
and :func:`verify_headerprep` and :func:`verify_sig_process` for DKIM's own
steps.  Everything else (tags, hashes, ``l=``, ``t=``/``x=``, key size)
stays dkimpy's.

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
bytes long, or whose integer is not below ``n``: dkimpy reduces it modulo
``n``, as :func:`verify` does first (written in *k* bytes: the same answer);
keys it does not accept (an even modulus, an even exponent or one
below 3 or not below ``n``, a modulus over 16384 bits, an exponent over 64
bits: these two sizes fail here, see below), and a digest whose block does not fit in *k* bytes (dkimpy raises
``DigestTooLargeError``); ``cryptography`` reports some of these refusals as
an invalid signature.  Those inputs (checked here first), keys under 1024
bits, any hash but SHA-256, and any error but "invalid signature" go to
dkimpy's own function, so the verdict is dkimpy's in every case
(tests/unit/test_dkimfast.py compares them on valid, tampered, wrong-key,
short-key and odd-length signatures).  The exception is a key OpenSSL refuses
for its size (an exponent over 64 bits, a modulus over 16384 bits): its
signature fails without dkimpy's pure-Python ``pow``, which a key record
publishing a 16384-bit exponent makes cost 7 s of CPU a signature (no real
key has one: they use 65537).

Signing is the same story, only dearer: dkimpy's ``RSASSA_PKCS1_v1_5_sign``
does the private-key operation (two ``pow`` by the CRT) in Python, 7 to
12 ms of CPU per RSA-2048 signature holding the GIL, for each DKIM-Signature
and twice per ARC set; OpenSSL takes about 0.7 ms (and about 40 ms once per
key and process, for its check of the key).  :func:`install` replaces
``dkim.RSASSA_PKCS1_v1_5_sign``, the one name ``gen_header`` calls for DKIM
and ARC signatures alike, with :func:`sign`.  Same answers: the signature is
``EM^d mod n`` of the same block ``00 01 FF… 00 DigestInfo`` (*k* bytes),
which has one value for a consistent key.  dkimpy computes it from the CRT
numbers only (``prime1``, ``prime2``, ``exponent1``, ``exponent2``,
``coefficient``); OpenSSL loads a key only after checking that all its
numbers agree (``p·q = n``, ``e·d ≡ 1``, the CRT numbers derived from them),
so a key it refuses (remembered as None, like a verification key, per
process, at most :data:`KEY_CACHE_SIZE`) is signed by dkimpy's function, as
is any hash but SHA-256 and SHA-1 (the DigestInfo dkimpy names) and any
input OpenSSL raises on (a block that does not fit the modulus: dkimpy raises
its ``DigestTooLargeError``).  tests/unit/test_dkimfast_sign.py compares the
bytes on 1024- to 3072-bit keys, whole DKIM signatures and ARC sets, small
and inconsistent keys.

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
:func:`verify` likewise reuses the OpenSSL key object of a (modulus, exponent)
seen before (at most :data:`KEY_CACHE_SIZE`, a refused key remembered as None),
so OpenSSL's per-key setup is not redone for each signature (about 0.024 to
0.017 ms per verification).

**Message parse.**  dkimpy's ``rfc822_parse`` splits the *whole* message
into lines with ``re.split(b"\r?\n")`` and joins the body's lines again with
CRLF: about 0.09 ms for a 5 KB message, although only the header section
needs lines and a body from Postfix is already CRLF.  :func:`rfc822_parse`
splits only the header section and rewrites the body with ``bytes.replace``
only when it has a bare LF (the join turns every LF, with or without the CR
before it, into CRLF and leaves a lone CR alone, which is what the two
replacements do); a header section dkimpy refuses is handed to dkimpy, so
it raises its own exception (tests/unit/test_dkimfast_parse.py compares
both on random and hostile messages).

**The b= tag's removal.**  dkimpy removes the signature's ``b=`` value before
hashing the signature header with ``RE_BTAG``, whose folding-whitespace
groups repeated for each base64 character cost about 0.05 ms per signature.
:data:`RE_BTAG` matches the same spans with the same group: its ``FWS``
(``(?:(?:\s*\r?\n)?\s+)?``) matches exactly the runs of ``\s``, so
``[;\s]b FWS =`` is ``[;\s]b\s*=``, and ``(?:FWS [a-zA-Z0-9+/=])*``
(greedy, nothing after it can fail) ends after the last base64 character of
the run of blanks and base64 characters, which is what
``(?:[\sa-zA-Z0-9+/=]*[a-zA-Z0-9+/=])?`` matches.  Relaxed header
canonicalisation's ``unfold_header_value`` (``re.sub(b"\r?\n", b"", …)``,
every LF and the one CR before it removed) is two ``bytes.replace``, and
:func:`relaxed_headers` is dkimpy's canonicalisation of every header field
with it and :func:`compress_whitespace` written inline; :func:`parse_tag_value`
tests a tag name's first letter without a regular expression.  Together
about 0.11 ms of CPU per signed 5 KB message of bench/auth.py (the sum of
each measured in process against dkimpy's own).

**Signed header fields only.**  dkimpy's ``verify_sig_process`` canonicalises
every header field of the message and then picks those ``h=`` names
(``select_headers``); :func:`verify_sig_process` (DKIM's, for RSA keys; ARC
keeps dkimpy's) picks the fields first by their canonical names and
canonicalises only those, which gives the same fields and bytes because
canonicalisation works field by field.  The header hash gets those bytes in
one update, neither it nor :func:`verify_headerprep` builds debug texts
for a logger that does not log them, and :func:`validate_signature_fields`
is dkimpy's with its patterns compiled once and ``bytes.split`` for its
``re.sub(br"\s+", b"", …)``.  :func:`strip_trailing_whitespace` splits a
body only where a line ends in blanks when no tab is before a CRLF.
tests/unit/test_dkimfast_verify.py compares verdicts, exceptions and every
hashed byte with dkimpy's on random and hostile signed messages.  Together
these cut ``verify_all`` of a signed 5 KB bench/auth.py message from about
0.17 to 0.11 ms of CPU (best of runs in process, on a shared machine).

**Empty lines at the end of the body.**  dkimpy's ``strip_trailing_lines``
(both body canonicalisations) steps back one ``endswith`` per CRLF: a body
of 10 MB of empty lines, which anyone can send, cost about a second of CPU
holding the GIL, for each signature verified (and each ARC set).
:func:`strip_trailing_lines` counts them in C: the same bytes
(tests/unit/test_dkimfast_trailing_lines.py).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import importlib.metadata
import logging
import operator
import re
import threading
import time
from typing import Any, Callable, Iterator

import dkim
import dkim.canonicalization
import dkim.crypto
import dkim.util
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

#: dkimpy's own pure-Python verification, used for everything the fast path leaves out.
PURE_PYTHON: Callable[[Any, bytes, dict[str, int]], bool] = dkim.crypto.RSASSA_PKCS1_v1_5_verify
#: dkimpy's own pure-Python signing, used for everything :func:`sign` leaves out.
PURE_SIGN: Callable[[Any, dict[str, int]], bytearray] = dkim.crypto.RSASSA_PKCS1_v1_5_sign
#: dkimpy's own canonicalisation helpers (what :func:`install` replaces).
PURE_COMPRESS: Callable[[bytes], bytes] = dkim.canonicalization.compress_whitespace
PURE_STRIP: Callable[[bytes], bytes] = dkim.canonicalization.strip_trailing_whitespace
PURE_STRIP_LINES: Callable[[bytes], bytes] = dkim.canonicalization.strip_trailing_lines
#: dkimpy's parse of a key record (what :func:`install` replaces with a remembered one).
PURE_EVALUATE_PK: Callable[[Any, Any], Any] = dkim.evaluate_pk
#: dkimpy's parse of a message into header fields and a CRLF body.
PURE_RFC822_PARSE: Callable[[Any], tuple[list[list[bytes]], bytes]] = dkim.rfc822_parse
#: dkimpy's pattern of a signature's b= value, and its unfolding of a header value.
PURE_RE_BTAG: re.Pattern[bytes] = dkim.RE_BTAG
PURE_UNFOLD: Callable[[bytes], bytes] = dkim.canonicalization.unfold_header_value
#: dkimpy's relaxed header canonicalisation and tag list parse.
PURE_RELAXED_HEADERS: Callable[[Any], list[tuple[bytes, bytes]]] = dkim.canonicalization.Relaxed.canonicalize_headers
PURE_PARSE_TAG_VALUE: Callable[[Any], dict[bytes, bytes]] = dkim.parse_tag_value
#: dkimpy's verification steps of a DKIM signature (DKIM's own methods; ARC keeps dkimpy's).
PURE_VERIFY_SIG_PROCESS: Callable[..., Any] = dkim.DKIM.verify_sig_process
PURE_VERIFY_HEADERPREP: Callable[..., Any] = dkim.DKIM.verify_headerprep
PURE_VALIDATE_SIGNATURE_FIELDS: Callable[[Any], None] = dkim.validate_signature_fields
#: dkimpy's pick of the fields an h= names (what :func:`install` replaces for ARC, ed25519 and signing).
PURE_SELECT_HEADERS: Callable[[Any, Any], list[Any]] = dkim.select_headers
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
#: The hashes whose DigestInfo dkimpy writes (``dkim.crypto.HASH_ID_MAP``, by ``hash.name.lower()``), as OpenSSL's.
_PREHASHED_BY_NAME = {"sha256": _PREHASHED_SHA256, "sha1": Prehashed(hashes.SHA1())}
#: The numbers of dkimpy's private key dict (``dkim.crypto.parse_private_key``), in :func:`_private_key`'s order.
_PRIVATE_FIELDS = ("modulus", "publicExponent", "privateExponent", "prime1", "prime2", "exponent1", "exponent2", "coefficient")


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
    if type(modulus) is int and type(exponent) is int and (exponent.bit_length() > 64 or modulus.bit_length() > MAX_FAST_BITS):
        # A key OpenSSL would refuse for its size fails without dkimpy's pure-Python pow: anyone who
        # publishes a key record can give it a 16384-bit exponent, 7 s of a worker's CPU a signature.
        return False
    if type(modulus) is int and modulus > 0:
        size, value = (modulus.bit_length() + 7) // 8, int.from_bytes(signature, "big")
        if len(signature) != size or value >= modulus:
            # dkimpy takes the signature's integer modulo n (its pow), in a conversion whose cost grows with the
            # square of the length: a b= of 40 KB cost 0.2 s of CPU.  The same number, written in k bytes,
            # gets the same answer from OpenSSL or from dkimpy, at once.
            signature = (value % modulus).to_bytes(size, "big")
    if (
        type(modulus) is not int
        or type(exponent) is not int
        or getattr(hash, "name", "").lower() != "sha256"
        or not MIN_FAST_BITS <= modulus.bit_length() <= MAX_FAST_BITS
        or not modulus & exponent & 1
        or not 3 <= exponent < modulus
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


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def _private_key(modulus: int, public_exponent: int, private_exponent: int, p: int, q: int, dmp1: int, dmq1: int, iqmp: int) -> rsa.RSAPrivateKey | None:
    """The OpenSSL key of these numbers, or None when OpenSSL refuses them (it checks that they agree)."""
    try:
        return rsa.RSAPrivateNumbers(p, q, private_exponent, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(public_exponent, modulus)).private_key()
    except Exception:  # noqa: BLE001 - a key OpenSSL will not load is dkimpy's to sign with
        return None


def _private_key_of(private_key: Any) -> rsa.RSAPrivateKey | None:
    """The OpenSSL key of dkimpy's private key dict, or None when it is not one of integers or OpenSSL refuses it."""
    if type(private_key) is not dict:
        return None
    numbers = [private_key.get(field) for field in _PRIVATE_FIELDS]
    if not all(type(number) is int for number in numbers):
        return None
    return _private_key(*numbers)


def sign(hash: Any, private_key: dict[str, int]) -> bytearray:  # noqa: A002 - dkimpy's parameter name
    """``dkim.crypto.RSASSA_PKCS1_v1_5_sign`` with OpenSSL doing the RSA: the same bytes, or dkimpy's own result or error."""
    name = getattr(hash, "name", None)
    prehashed = _PREHASHED_BY_NAME.get(name.lower()) if type(name) is str else None
    key = _private_key_of(private_key) if prehashed is not None else None
    if key is None or prehashed is None:
        return PURE_SIGN(hash, private_key)
    try:
        return bytearray(key.sign(hash.digest(), _PADDING, prehashed))
    except Exception:  # noqa: BLE001 - anything OpenSSL refuses (a digest too large for the key): dkimpy signs or raises
        return PURE_SIGN(hash, private_key)


_CHANGING_RUN = re.compile(b"\t[\t ]*| [\t ]+")  # the runs of blanks that are not one space


def compress_whitespace(content: bytes) -> bytes:
    """``dkim.canonicalization.compress_whitespace``: every run of spaces and tabs as one space."""
    if b"\t" not in content and b"  " not in content:
        return content
    return _CHANGING_RUN.sub(b" ", content)


def strip_trailing_whitespace(content: bytes) -> bytes:
    """``dkim.canonicalization.strip_trailing_whitespace``: no spaces or tabs before a CRLF."""
    # A search for a short needle whose last byte is common (LF) scans the whole body slowly: a tab is looked for first.
    tab_before_crlf = b"\t" in content and b"\t\r\n" in content
    if not tab_before_crlf and b" \r\n" not in content:
        return content
    if not tab_before_crlf:
        # Each line with trailing blanks ends with " \r\n": split only there (a body has few such lines).
        # Every piece but the last ended at one; its own trailing blanks are the rest of that run.
        pieces = content.split(b" \r\n")
        last = pieces.pop()
        pieces = [piece.rstrip(b" \t") for piece in pieces]
        pieces.append(last)
        return b"\r\n".join(pieces)
    # Every piece but the last ends at a CRLF: its trailing blanks are the run the pattern removes.
    lines = content.split(b"\r\n")
    last = lines.pop()
    lines = [line.rstrip(b" \t") for line in lines]
    lines.append(last)
    return b"\r\n".join(lines)


def strip_trailing_lines(content: bytes) -> bytes:
    """``dkim.canonicalization.strip_trailing_lines``: the CRLFs that end *content* but one (one added when none).

    dkimpy counts them with one ``endswith`` per CRLF: a body of 10 MB of empty
    lines took about a second of CPU a signature (holding the GIL).  Here the run
    of CRs and LFs at the end is found with ``rstrip``, and the CRLFs ending it
    from where two equal characters last meet: the same count, in C.
    """
    run = content[len(content.rstrip(b"\r\n")) :]
    if not run.endswith(b"\r\n"):
        return content + b"\r\n"
    # The CRLFs at the end alternate CR, LF: they start after the last CRCR or LFLF of the run.
    alternating = len(run) - 1 - max(run.rfind(b"\r\r"), run.rfind(b"\n\n"))
    crlfs = alternating // 2
    return content if crlfs == 1 else content[: len(content) - 2 * (crlfs - 1)]

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


_HEADER_NAME = re.compile(rb"([\x21-\x7e]+?):")  # dkimpy's, compiled once
_BARE_LF = re.compile(rb"\n(?<!\r\n)")  # a LF without a CR before it (found by the pattern's literal start)


def rfc822_parse(message: Any) -> tuple[list[list[bytes]], bytes]:
    """``dkim.rfc822_parse``: the header fields as [name, value] lists and the body with CRLF line ends."""
    if type(message) is not bytes:
        return PURE_RFC822_PARSE(message)
    head, body = _split_at_blank_line(message)
    headers: list[list[bytes]] = []
    for line in head:
        if line[0] in (0x09, 0x20):
            if not headers:
                return PURE_RFC822_PARSE(message)  # dkimpy's IndexError
            headers[-1][1] += line + b"\r\n"
            continue
        match = _HEADER_NAME.match(line)
        if match is not None:
            headers.append([match.group(1), line[match.end(0) :] + b"\r\n"])
        elif not line.startswith(b"From "):
            return PURE_RFC822_PARSE(message)  # dkimpy's MessageFormatError
    if _BARE_LF.search(body) is not None:
        body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return headers, body


def _split_at_blank_line(message: bytes) -> tuple[list[bytes], bytes]:
    """The header lines (without their ends) before the first empty line of ``re.split(b"\\r?\\n")``, and the raw rest."""
    if message[:1] == b"\n":
        return [], message[1:]
    if message[:2] == b"\r\n":
        return [], message[2:]
    at = message.find(b"\n\r\n")
    bare = message.find(b"\n\n", 0, at + 2 if at >= 0 else len(message))  # only before it: no scan of a CRLF body
    if bare >= 0:
        at = bare
    if at >= 0:  # the LF ending the last header line; the empty line's own line end follows
        pieces = message[:at].split(b"\n")
        rest = message[at + 2 :] if message[at + 1] == 0x0A else message[at + 3 :]
        last = b""
    else:  # no empty line before the end: every line is a header line, the body is empty
        pieces = message.split(b"\n")
        rest = b""
        last = pieces.pop()  # no LF after it, so re.split leaves its CR; empty when the message ends with a line end
    head = [piece[:-1] if piece[-1:] == b"\r" else piece for piece in pieces]  # re.split's "\r?" before each LF
    if last:
        head.append(last)
    return head, rest


#: ``dkim.RE_BTAG`` with the same matches and groups, without a group repeated per character.
RE_BTAG = re.compile(rb"([;\s]b\s*=)(?:[\sa-zA-Z0-9+/=]*[a-zA-Z0-9+/=])?(?:\r?\n\Z)?")


def unfold_header_value(content: bytes) -> bytes:
    """``dkim.canonicalization.unfold_header_value``: every LF removed, with the CR just before it."""
    if b"\n" not in content:
        return content
    return content.replace(b"\r\n", b"").replace(b"\n", b"")


def relaxed_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """``dkim.canonicalization.Relaxed.canonicalize_headers``: names lower-cased, values unfolded, blanks compressed, stripped.

    dkimpy's list comprehension with :func:`unfold_header_value` and
    :func:`compress_whitespace` written inline (it runs over every header field).
    """
    result = []
    for header in headers:
        value = header[1]
        if type(value) is not bytes:
            return PURE_RELAXED_HEADERS(headers)
        if b"\n" in value:
            value = value.replace(b"\r\n", b"").replace(b"\n", b"")
        if b"\t" in value or b"  " in value:
            value = _CHANGING_RUN.sub(b" ", value)
        result.append((header[0].lower().rstrip(), value.strip() + b"\r\n"))
    return result


def parse_tag_value(tag_list: Any) -> dict[bytes, bytes]:
    r"""``dkim.util.parse_tag_value`` (RFC 6376 §3.2 tag=value list), without a regular expression per tag.

    dkimpy's test of a tag name, ``re.match(br'^[a-zA-Z](\w)*', key)``, only
    asks for an ASCII letter first (``(\w)*`` also matches nothing): that is
    ``key[:1].isalpha()`` for bytes.
    """
    if type(tag_list) is not bytes:
        return PURE_PARSE_TAG_VALUE(tag_list)
    tags: dict[bytes, bytes] = {}
    tag_specs = tag_list.strip().split(b";")
    if not tag_specs[-1]:  # trailing semicolons are valid
        tag_specs.pop()
    for tag_spec in tag_specs:
        try:
            key, value = [x.strip() for x in tag_spec.split(b"=", 1)]
        except ValueError as exc:
            raise dkim.util.InvalidTagSpec(tag_spec) from exc
        if not key[:1].isalpha():
            raise dkim.util.InvalidTagSpec(tag_spec)
        if key in tags:
            raise dkim.util.DuplicateTag(key)
        tags[key] = value
    return tags


#: ``RE_BTAG.sub``'s replacement ``b"\\1"`` as a function: the same bytes without the template's parse on each call.
_FIRST_GROUP = operator.methodcaller("group", 1)
_BLANKS = re.compile(rb"\s+")  # dkimpy's re.sub(br"\s+", b"", …) of b= and bh=


def _without_blanks(value: Any) -> Any:
    r"""``re.sub(br"\s+", b"", value)``: for bytes, ``split()`` cuts at the same ASCII blanks (space, tab, CR, LF, VT, FF), 20 times faster."""
    if type(value) is bytes:
        return b"".join(value.split())
    return _BLANKS.sub(b"", value)


_H_SEPARATOR = re.compile(rb"\s*:\s*")  # dkimpy's split of h=


_BASE64 = re.compile(rb"[\s0-9A-Za-z+/]+[\s=]*$")  # dkimpy's patterns, compiled once
_DOMAIN_SPECIALS = re.compile(rb"[\(\)<>\[\]:;@\\,]")
_LENGTH = re.compile(rb"\d{,76}$")
_NUMBER = re.compile(rb"\d+$")
_MANDATORY = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")
_CLOCK_SLOP = 36000  # dkimpy's 10 hours for signers with inaccurate clocks


def validate_signature_fields(sig: Any) -> None:
    """``dkim.validate_signature_fields(sig)`` of a DKIM signature: the same checks, in order, and the same errors.

    dkimpy's code with its patterns compiled once.  dkimpy's second base64
    test of ``b=`` (where it means ``bh=``) cannot fail after its first, so
    it is left out; ``str(d, "ascii")`` succeeding is ``d.isascii()``.
    Tags that are not all bytes are dkimpy's to judge.
    """
    if type(sig) is not dict or not all(type(value) is bytes for value in sig.values()):
        PURE_VALIDATE_SIGNATURE_FIELDS(sig)
        return
    for field in _MANDATORY:
        if field not in sig:
            raise dkim.ValidationError(f"missing {field!r}=")
    if sig[b"a"] not in dkim.HASH_ALGORITHMS:
        raise dkim.ValidationError(f"unknown signature algorithm: {sig[b'a']}")
    if _BASE64.match(sig[b"b"]) is None or len(_without_blanks(sig[b"b"])) % 4 != 0:
        raise dkim.ValidationError(f"b= value is not valid base64 ({sig[b'b']})")
    if len(_without_blanks(sig[b"bh"])) % 4 != 0:
        raise dkim.ValidationError(f"bh= value is not valid base64 ({sig[b'bh']})")
    if b"cv" in sig and sig[b"cv"] not in (dkim.CV_Pass, dkim.CV_Fail, dkim.CV_None):
        raise dkim.ValidationError(f"cv= value is not valid ({sig[b'cv']})")
    domain = sig[b"d"]
    if domain.isascii() and _DOMAIN_SPECIALS.search(domain) is not None:
        raise dkim.ValidationError(f"d= value is not valid ({domain})")
    if b"i" in sig and (not sig[b"i"].lower().endswith(domain.lower()) or sig[b"i"][-len(domain) - 1] not in ("@", ".", 64, 46)):
        raise dkim.ValidationError(f"i= domain is not a subdomain of d= (i={sig[b'i']} d={domain})")
    if b"l" in sig and _LENGTH.match(sig[b"l"]) is None:
        raise dkim.ValidationError(f"l= value is not a decimal integer ({sig[b'l']})")
    if b"q" in sig and sig[b"q"] != b"dns/txt":
        raise dkim.ValidationError(f"q= value is not dns/txt ({sig[b'q']})")
    t_sign = _check_t(sig)
    if sig[b"v"] != b"1":
        raise dkim.ValidationError(f"v= value is not 1 ({sig[b'v']})")
    if b"x" in sig:
        _check_x(sig, t_sign)


def _check_t(sig: Any) -> int | None:
    if b"t" not in sig:
        return None
    if _NUMBER.match(sig[b"t"]) is None:
        raise dkim.ValidationError(f"t= value is not a decimal integer ({sig[b't']})")
    t_sign = int(sig[b"t"])
    if t_sign > int(time.time()) + _CLOCK_SLOP:
        raise dkim.ValidationError(f"t= value is in the future ({sig[b't']})")
    return t_sign


def _check_x(sig: Any, t_sign: int | None) -> None:
    if _NUMBER.match(sig[b"x"]) is None:
        raise dkim.ValidationError(f"x= value is not a decimal integer ({sig[b'x']})")
    x_sign = int(sig[b"x"])
    if x_sign < int(time.time()) - _CLOCK_SLOP:
        raise dkim.ValidationError(f"x= value is past ({sig[b'x']})")
    if t_sign and x_sign < t_sign:
        raise dkim.ValidationError(f"x= value is less than t= value (x={sig[b'x']} t={sig[b't']})")


def verify_headerprep(self: Any, idx: int = 0) -> Any:
    """``dkim.DKIM.verify_headerprep``: the signature's tags parsed and checked, and its ``h=`` list.

    dkimpy's code, but the tags' debug repr is built only when the logger
    logs debug messages (milterd's never does).
    """
    sigheaders = [(x, y) for x, y in self.headers if x.lower() == b"dkim-signature"]
    if len(sigheaders) <= idx:
        return False
    try:
        sig = dkim.parse_tag_value(sigheaders[idx][1])
        self.signature_fields = sig
    except dkim.InvalidTagValueList as e:
        raise dkim.MessageFormatError(e) from e
    if self.logger.isEnabledFor(logging.DEBUG):
        self.logger.debug(f"sig: {sig!r}")
    validate_signature_fields(sig)
    self.domain = sig[b"d"]
    self.selector = sig[b"s"]
    include_headers = [x.lower() for x in _H_SEPARATOR.split(sig[b"h"])]
    self.include_headers = tuple(include_headers)
    return sig, include_headers, sigheaders


def selected_headers(headers: list[Any], keys: list[bytes], include_headers: list[bytes]) -> list[Any]:
    """``dkim.select_headers(canonicalised, include_headers)``, picked from the headers *before* canonicalisation.

    *keys* are the names as select_headers compares them (the canonical name,
    lower-cased).  Each name of ``h=`` takes the lowest field of that name not
    taken yet, counting from the bottom, or none when all are taken (dkimpy's
    ``lastindex``): a pop from the end of the name's positions.
    """
    positions: dict[bytes, list[int]] = {}
    for index, key in enumerate(keys):
        positions.setdefault(key, []).append(index)
    chosen = []
    for h in include_headers:
        assert h == h.lower()  # dkimpy's own check
        found = positions.get(h)
        if found:
            chosen.append(headers[found.pop()])
    return chosen


def select_headers(headers: list[Any], include_headers: list[bytes]) -> list[Any]:
    """``dkim.select_headers``: the same fields in the same order, in time linear in the fields and names.

    dkimpy scans the fields from the bottom for each name of ``h=`` that no field has left, so an ``h=`` of
    8,000 absent names over 900 fields cost a second of CPU for each ARC set or ed25519 signature verified
    (and :func:`verify_sig_process`, RSA DKIM's, was the only caller that avoided it).
    """
    return selected_headers(headers, [name.lower() for name, _ in headers], include_headers)


def verify_sig_process(self: Any, sig: Any, include_headers: Any, sig_header: Any, dnsfunc: Any) -> Any:
    """``dkim.DomainSigner.verify_sig_process`` for DKIM signatures: the same checks, hashed bytes and verdict.

    dkimpy canonicalises *every* header field and then picks those ``h=``
    names; here the fields are picked first (by their canonical names) and
    only those canonicalised: canonicalisation works field by field, so the
    picked fields and their bytes are the same.  The hash gets the same bytes
    in one update; debug texts are built only when the logger logs them.
    Anything but an RSA key is dkimpy's own function.
    """
    if self.ktag != b"rsa":
        return PURE_VERIFY_SIG_PROCESS(self, sig, include_headers, sig_header, dnsfunc)
    if self.tlsrpt == "strict" and not self.seqtlsrpt:
        raise dkim.ValidationError("Message is tlsrpt and Service Type is not tlsrpt")
    if not self.tlsrpt and self.seqtlsrpt:
        raise dkim.ValidationError("Message is not tlsrpt and Service Type is tlsrpt")
    try:
        canon_policy = dkim.CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    except dkim.InvalidCanonicalizationPolicyError as e:
        raise dkim.MessageFormatError(f"invalid c= value: {e.args[0]}") from e
    debug = self.logger.isEnabledFor(logging.DEBUG)
    hasher = dkim.HASH_ALGORITHMS[sig[b"a"]]
    if b"bh" in sig:
        _check_body_hash(self, sig, canon_policy, hasher, debug)
    if b"from" in include_headers:  # dkimpy's bug#644046: an extra From is hashed too
        include_headers.append(b"from")
    h = dkim.HashThrough(hasher(), self.debug_content)
    self.signed_headers = _hash_headers(h, canon_policy, self.headers, include_headers, sig_header)
    if self.debug_content:
        self.logger.debug(f"signed for {sig_header[0]}: {h.hashed()!r}")
    signature = base64.b64decode(_without_blanks(sig[b"b"]))
    try:
        res = dkim.RSASSA_PKCS1_v1_5_verify(h, signature, self.pk)
        if debug:
            self.logger.debug(f"{sig_header[0]} valid: {res}")
        if res and self.keysize < self.minkey:
            raise dkim.KeyFormatError(f"public key too small: {self.keysize:d}")
        return res
    except (TypeError, dkim.DigestTooLargeError) as e:
        raise dkim.KeyFormatError(f"digest too large for modulus: {e}") from e


def _check_body_hash(self: Any, sig: Any, canon_policy: Any, hasher: Any, debug: bool) -> None:
    """dkimpy's body hash check (``l=`` honoured); raises its ValidationError on a mismatch.

    Records on *self* (``unsigned_body_bytes``) how many bytes of the canonicalized body ``l=`` left unsigned.
    """
    h = dkim.HashThrough(hasher(), self.debug_content)
    body = canon_policy.canonicalize_body(self.body)
    unsigned = 0
    if b"l" in sig and not self.tlsrpt:
        length = int(sig[b"l"])
        unsigned = max(0, len(body) - length)
        body = body[:length]
    self.unsigned_body_bytes = unsigned  # what l= left out, for milterd's [checks.dkim] unsigned_body
    h.update(body)
    if self.debug_content:
        self.logger.debug(f"body hashed: {h.hashed()!r}")
    bodyhash = h.digest()
    if debug:
        self.logger.debug(f"bh: {base64.b64encode(bodyhash)!r}")
    try:
        bh = base64.b64decode(_without_blanks(sig[b"bh"]))
    except TypeError as e:
        raise dkim.MessageFormatError(str(e)) from e
    if bodyhash != bh:
        raise dkim.ValidationError(f"body hash mismatch (got {base64.b64encode(bodyhash)!r}, expected {sig[b'bh']})")


def _hash_headers(h: Any, canon_policy: Any, headers: Any, include_headers: Any, sig_header: Any) -> Any:
    """``dkim.hash_headers`` over ``canon_policy.canonicalize_headers(headers)``, canonicalising only the picked fields."""
    algorithm = canon_policy.header_algorithm
    if algorithm is dkim.canonicalization.Relaxed:
        keys = [name.lower().rstrip() for name, _ in headers]  # the canonical name, lower-cased
    elif algorithm is dkim.canonicalization.Simple:
        keys = [name.lower() for name, _ in headers]
    else:
        return dkim.hash_headers(h, canon_policy, canon_policy.canonicalize_headers(headers), include_headers, sig_header, None)
    sign_headers = canon_policy.canonicalize_headers(selected_headers(headers, keys, include_headers))
    cheaders = canon_policy.canonicalize_headers([(sig_header[0], dkim.RE_BTAG.sub(_FIRST_GROUP, sig_header[1]))])
    pieces: list[bytes] = []
    for x, y in sign_headers:
        pieces += (x, b":", y)
    for x, y in cheaders:  # the signature is hashed without its line end
        pieces += (x, b":", y.rstrip())
    h.update(b"".join(pieces))
    return sign_headers


#: The dkimpy releases whose internals these replacements were checked against (the property tests in
#: tests/unit/test_dkimfast*.py compare them with dkimpy's own code): with any other release dkimpy keeps
#: its own, slower code until they are checked again.
CHECKED_RELEASES = ("1.1.",)


@functools.lru_cache(maxsize=1)
def checked_release() -> bool:
    """Whether the installed dkimpy is one of :data:`CHECKED_RELEASES`."""
    try:
        return importlib.metadata.version("dkimpy").startswith(CHECKED_RELEASES)
    except importlib.metadata.PackageNotFoundError:
        return False


#: Per thread, within :func:`one_body`: each body algorithm's (body given, canonical body), else None.
_BODIES = threading.local()


@contextlib.contextmanager
def one_body() -> Iterator[None]:
    """Within it, this thread canonicalises a message's body once per body algorithm (simple, relaxed).

    dkimpy canonicalises the whole body again for each DKIM signature and each ARC set it verifies:
    50 junk ARC sets over a 10 MB body cost 20 s of a worker's CPU.  Each signature's hash is still
    its own (its ``l=`` and algorithm); what is remembered is let go at the end."""
    _BODIES.memo = {}
    try:
        yield
    finally:
        _BODIES.memo = None


def canonicalize_body(self: Any, body: bytes) -> bytes:
    """``CanonicalizationPolicy.canonicalize_body``, remembered within :func:`one_body` (the same bytes)."""
    memo: dict[Any, tuple[bytes, bytes]] | None = getattr(_BODIES, "memo", None)
    if memo is None:
        return self.body_algorithm.canonicalize_body(body)  # type: ignore[no-any-return]
    found = memo.get(self.body_algorithm)
    if found is not None and found[0] is body:
        return found[1]
    canonical: bytes = self.body_algorithm.canonicalize_body(body)
    memo[self.body_algorithm] = (body, canonical)
    return canonical


def install() -> None:
    """Make dkimpy's DKIM and ARC signing and verification use this module's functions (idempotent, per
    process); nothing with a dkimpy release they were not checked against."""
    if not checked_release():
        return
    dkim.RSASSA_PKCS1_v1_5_sign = sign
    dkim.RSASSA_PKCS1_v1_5_verify = verify
    dkim.canonicalization.compress_whitespace = compress_whitespace
    dkim.canonicalization.strip_trailing_whitespace = strip_trailing_whitespace
    dkim.canonicalization.strip_trailing_lines = strip_trailing_lines
    dkim.evaluate_pk = evaluate_pk
    dkim.rfc822_parse = rfc822_parse
    dkim.RE_BTAG = RE_BTAG
    dkim.canonicalization.unfold_header_value = unfold_header_value
    dkim.canonicalization.Relaxed.canonicalize_headers = staticmethod(relaxed_headers)
    dkim.canonicalization.CanonicalizationPolicy.canonicalize_body = canonicalize_body
    dkim.parse_tag_value = parse_tag_value
    dkim.DKIM.verify_sig_process = verify_sig_process
    dkim.DKIM.verify_headerprep = verify_headerprep
    dkim.select_headers = select_headers


def installed() -> bool:
    """Whether dkimpy currently uses this module's functions."""
    return (
        dkim.RSASSA_PKCS1_v1_5_sign is sign
        and dkim.RSASSA_PKCS1_v1_5_verify is verify
        and dkim.canonicalization.compress_whitespace is compress_whitespace
        and dkim.canonicalization.strip_trailing_whitespace is strip_trailing_whitespace
        and dkim.canonicalization.strip_trailing_lines is strip_trailing_lines
        and dkim.evaluate_pk is evaluate_pk
        and dkim.rfc822_parse is rfc822_parse
        and dkim.RE_BTAG is RE_BTAG
        and dkim.canonicalization.unfold_header_value is unfold_header_value
        and dkim.select_headers is select_headers
        and dkim.canonicalization.Relaxed.canonicalize_headers is relaxed_headers
        and dkim.parse_tag_value is parse_tag_value
        and dkim.DKIM.verify_sig_process is verify_sig_process
        and dkim.DKIM.verify_headerprep is verify_headerprep
    )

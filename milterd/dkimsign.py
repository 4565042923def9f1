"""DKIM keys and signing: load the keys of ``[dkim_signing]``, sign, make keys and their DNS records.

A key file holds an RSA private key in PEM (``rsa-sha256``) or an ed25519
seed in base64 (``ed25519-sha256``, dkimpy's format); the algorithm is read
from the file.  A domain may have several keys (an RSA and an ed25519 one):
the message gets one signature per key.

:func:`sign` reads the body in chunks and canonicalises and hashes it once
for all the keys (:class:`SimpleBody`): memory stays at the header section
and one chunk, whatever the size of the message.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Protocol

import dkim
import dkim.crypto
import nacl.encoding
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from . import dkimfast
from .content.headertext import is_field_name
from .dns import domain_name
from .files import read_error, read_regular
from .options import ConfigError

if TYPE_CHECKING:
    from .config import DkimSigningSection

Algorithm = Literal["rsa", "ed25519"]

@dataclass(frozen=True)
class SigningKey:
    """One private key with the domain and selector it signs for."""

    domain: str
    selector: str
    algorithm: Algorithm
    private: bytes

    @property
    def dkim_algorithm(self) -> bytes:
        """The ``a=`` value of its signatures."""
        return b"ed25519-sha256" if self.algorithm == "ed25519" else b"rsa-sha256"


#: The fewest bits of an RSA signing key: receivers refuse smaller ones (dkimpy: "public key too small"; RFC 8301
#: requires 1024 at least), as ``milterd dkim keygen`` and ``[checks.dkim] min_key_bits`` do.
MIN_RSA_BITS = 1024
#: A selector (and a domain) as DNS takes it: dot-separated labels of letters, digits, "-" and "_".
LABELS = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*$")


def parse_key(data: bytes) -> tuple[Algorithm, bytes]:
    """The algorithm of a private key file's content, and the key as dkimpy takes it; ValueError otherwise.

    An RSA key is loaded by OpenSSL too, which checks that its numbers fit together: dkimpy's own parser takes
    a key whose CRT values are wrong, and signs with it signatures no receiver verifies."""
    text = data.strip()
    if not text:
        raise ValueError("the file is empty")
    if text.startswith(b"-----BEGIN"):
        if b"ENCRYPTED" in text[:200]:  # PKCS#8's BEGIN ENCRYPTED PRIVATE KEY, or the traditional Proc-Type: 4,ENCRYPTED
            raise ValueError("the key is protected by a passphrase, which milterd cannot type: write it without one "
                             "(openssl pkey -in KEY -out PLAIN), readable by milterd only")
        try:
            pem_key = serialization.load_pem_private_key(text, password=None)
        except Exception:  # noqa: BLE001 - dkimpy's parser below names the reason
            pem_key = None
        if isinstance(pem_key, ed25519.Ed25519PrivateKey):  # openssl genpkey -algorithm ed25519: its seed, as keygen writes it
            return "ed25519", base64.b64encode(pem_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                                     serialization.NoEncryption()))
        try:
            dkim.crypto.parse_pem_private_key(text)
            key = serialization.load_pem_private_key(text, password=None)
        except Exception as exc:  # noqa: BLE001 - dkimpy's parser and OpenSSL raise several kinds
            raise ValueError(f"not a usable RSA private key: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("neither an RSA nor an ed25519 private key")
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key of {key.key_size} bits: receivers refuse fewer than {MIN_RSA_BITS}")
        return "rsa", text
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("neither an RSA key in PEM nor an ed25519 key in base64") from None
    if len(seed) != 32:
        raise ValueError(f"an ed25519 key is 32 bytes in base64, this one is {len(seed)}")
    return "ed25519", text


def load_keys(section: "DkimSigningSection", config_path: Path | None) -> list[SigningKey]:
    """The keys of *section*, read now; ConfigError naming the file, the key and the reason."""
    base = config_path.parent if config_path else Path.cwd()
    where = config_path or Path("milter.conf")
    keys = []
    for index, entry in enumerate(section.keys if section.enabled else []):
        path = base / entry.key_file
        try:
            data = read_regular(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(where, f"[dkim_signing] keys[{index}].key_file", f"cannot read {path}: {read_error(exc)}") from None
        try:
            algorithm, private = parse_key(data)
        except ValueError as exc:
            raise ConfigError(where, f"[dkim_signing] keys[{index}].key_file", f"{path}: {exc}") from None
        domain = signing_domain(entry.domain)
        if not domain:
            raise ConfigError(where, f"[dkim_signing] keys[{index}].domain", f"{entry.domain!r} is not a domain name")
        if not LABELS.fullmatch(entry.selector):
            raise ConfigError(where, f"[dkim_signing] keys[{index}].selector",
                              f"{entry.selector!r} is not a selector (labels of letters, digits, '-' and '_', dot-separated)")
        keys.append(SigningKey(domain, entry.selector, algorithm, private))
    return keys


def signing_domain(name: str) -> str | None:
    """The d= of a key for the domain *name* (``Bücher.example`` or ``xn--bcher-kva.example.``): its A-labels, as
    receivers align d= with the From domain and look the key up in DNS; None when it is no domain name."""
    domain = domain_name(name)
    return domain if domain and LABELS.fullmatch(domain) else None


def keys_for(keys: list[SigningKey], domain: str) -> list[SigningKey]:
    """The keys that sign for *domain*: its own, else those of its closest parent domain that has some.

    A From domain in U-labels (``bücher.example``, in SMTPUTF8 mail) is the key's ``xn--`` domain.
    """
    name = domain_name(domain) or ""
    while name:
        found = [k for k in keys if k.domain == name]
        if found:
            return found
        name = name.partition(".")[2]
    return []


#: The c= of milterd's signatures: dkimpy's signing default, relaxed header and simple body canonicalisation.
CANONICALIZATION = b"relaxed/simple"


def sign(header_section: bytes, body: Iterable[bytes], keys: list[SigningKey], headers: list[str]) -> list[str]:
    """One DKIM-Signature value (without the name, folded with LF) per key, in *keys*' order.

    *header_section* is the message's header fields with CRLF line ends and
    the empty line that ends them; *body* the body in chunks of any size,
    read once (whatever it raises propagates), canonicalised and hashed once
    for all keys, never held in memory.  *headers* lists the header names to
    sign; empty signs dkimpy's default (RFC 6376's recommended set, From twice
    so that none can be added).  From is always signed once more than the
    message has it (:func:`oversign_from`).
    """
    names = field_names(headers)
    if not keys:
        return []
    dkimfast.install()  # RSA by OpenSSL: the same signatures (milterd/dkimfast.py), also in a worker that has verified nothing yet
    signers = [dkim.DKIM(header_section, signature_algorithm=key.dkim_algorithm) for key in keys]
    # rsa-sha256 and ed25519-sha256 both hash with SHA-256: one hash object serves both.
    hashes: dict[Any, Any] = {}  # dkimpy's hash constructor: its hash object (hashlib's)
    for key in keys:
        new = dkim.HASH_ALGORITHMS[key.dkim_algorithm]
        hashes.setdefault(new, new())
    canonical = SimpleBody(list(hashes.values()))
    # What dkimpy's parse of the header section leaves as body ("" unless it holds an empty line) comes first, as in the whole message.
    for chunk in itertools.chain([signers[0].body], body):
        canonical.update(chunk)
    canonical.finish()
    values = []
    for key, signer in zip(keys, signers, strict=True):
        include = oversign_from(names, signer.headers) if names else None
        body_hash = base64.b64encode(hashes[dkim.HASH_ALGORITHMS[key.dkim_algorithm]].digest())
        line = _signature(signer, key, include, body_hash)
        values.append(line.strip().decode("ascii").replace("\r\n", "\n"))
    return values


def _signature(signer: Any, key: SigningKey, include_headers: list[bytes] | None, body_hash: bytes) -> bytes:
    """dkimpy's ``DKIM.sign`` with the body hash given: the DKIM-Signature value dkimpy makes of the same message.

    dkimpy's ``sign()`` is not called: it canonicalises and hashes ``signer.body``,
    so it needs the whole body in memory, and does so again for each key.  This
    mirrors ``sign()`` of dkimpy 1.1 (read in 1.1.8, ``dkim/__init__.py``) called
    without *identity*, *canonicalize* or *length*: the same key and header
    checks and errors, the same tags in the same order, ``t=`` from the same
    clock; dkimpy's ``gen_header`` hashes the header fields and signs.
    tests/unit/test_dkimsign_stream.py compares the result with dkimpy's ``sign()``.
    """
    if signer.signature_algorithm == b"ed25519-sha256":
        try:
            private = nacl.signing.SigningKey(key.private, encoder=nacl.encoding.Base64Encoder)
        except nacl.exceptions.ValueError:
            raise dkim.KeyFormatError("invalid ed25519 private key or format") from None
    else:
        try:
            private = dkim.crypto.parse_pem_private_key(key.private)
        except dkim.crypto.UnparsableKeyError as exc:
            raise dkim.KeyFormatError(str(exc)) from None
    policy = dkim.CanonicalizationPolicy.from_c_value(CANONICALIZATION)
    names = tuple(name.lower() for name in (signer.default_sign_headers() if include_headers is None else include_headers))
    if b"from" not in names:
        raise dkim.ParameterError("The From header field MUST be signed")
    for name in set(names).intersection(signer.should_not_sign):
        raise dkim.ParameterError(f"The {name!r} header field SHOULD NOT be signed")
    signer.hasher = dkim.HASH_ALGORITHMS[signer.signature_algorithm]
    domain = key.domain.encode("ascii")
    fields = [
        (b"v", b"1"),
        (b"a", signer.signature_algorithm),
        (b"c", policy.to_c_value()),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(int(time.time())).encode("ascii")),
        (b"h", b" : ".join(names)),
        (b"bh", body_hash),
        (b"b", b"0" * 60),
    ]
    value: bytes = signer.gen_header(fields, names, policy, b"DKIM-Signature", private)
    return value


class _Hashing(Protocol):
    def update(self, data: bytes, /) -> None: ...


#: The most CRLFs handed on at once: a long run of empty lines goes to the hashes in pieces of this.
_CRLF_BLOCK = b"\r\n" * 32768


class SimpleBody:
    """dkimpy's simple body canonicalisation of a body given in chunks, handed to hashes as it comes.

    The bytes the hashes get, in all, are ``Simple.canonicalize_body(body)``
    where *body* is what dkimpy's parse of the message (``dkim.rfc822_parse``,
    and :func:`milterd.dkimfast.rfc822_parse` which replaces it) makes of the
    chunks joined: every LF with a CR before it (a lone CR stays), then
    ``strip_trailing_lines``: the empty lines at the end removed and the body
    ended by one CRLF (an empty body is one CRLF).  A CRLF may be split
    between two chunks; the run of CRLFs after the last other byte is counted,
    not kept, until a chunk shows whether anything follows it.
    """

    def __init__(self, hashes: list[_Hashing]) -> None:
        self.hashes = hashes
        self._raw_cr = False  # the last chunk ended with a CR: a LF first in the next one has its CR
        self._held_cr = False  # a CR at the end of the text so far, not handed on: a LF may follow
        self._empty_lines = 0  # CRLFs after the last other byte, not handed on: dropped if nothing else follows

    def update(self, chunk: bytes) -> None:
        """Canonicalise the next *chunk* of the body."""
        if not chunk:
            return
        start = 1 if self._raw_cr and chunk[:1] == b"\n" else 0
        self._raw_cr = chunk[-1:] == b"\r"
        if chunk.count(b"\n", start) != chunk.count(b"\r\n", start):  # a LF without its CR
            chunk = chunk[:start] + chunk[start:].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._held_cr:
            chunk = b"\r" + chunk
        self._held_cr = chunk[-1:] == b"\r"
        if self._held_cr:
            chunk = chunk[:-1]
        crlfs = _trailing_crlfs(chunk)
        if len(chunk) > 2 * crlfs:
            self._hand_empty_lines()
            self._hand(chunk[: len(chunk) - 2 * crlfs])
        self._empty_lines += crlfs

    def finish(self) -> None:
        """End the body: a CR held back is a lone CR, and the body ends with one CRLF whatever empty lines it ended with."""
        if self._held_cr:
            self._held_cr = False
            self._hand_empty_lines()
            self._hand(b"\r")
        self._empty_lines = 0
        self._hand(b"\r\n")

    def _hand_empty_lines(self) -> None:
        count, self._empty_lines = self._empty_lines, 0
        while count:
            step = min(count, len(_CRLF_BLOCK) // 2)
            self._hand(_CRLF_BLOCK if step * 2 == len(_CRLF_BLOCK) else _CRLF_BLOCK[: 2 * step])
            count -= step

    def _hand(self, data: bytes) -> None:
        for hash_ in self.hashes:
            hash_.update(data)


def _trailing_crlfs(text: bytes) -> int:
    """How many CRLFs end *text*, in which every LF has its CR before it (a CR may stand alone)."""
    run = text[len(text.rstrip(b"\r\n")) :]  # CRLFs and lone CRs
    if run.endswith(b"\r"):
        return 0
    return (len(run) - run.rfind(b"\r\r") - 1) // 2  # those after the last lone CR (the one before a CR), if any


def field_names(headers: list[str]) -> list[bytes]:
    """*headers* as ``h=`` lists them: lower case, without surrounding white space, empty ones left out.

    A verifier strips the white space around each name of ``h=`` (RFC 6376
    §3.5), so ``" Subject"`` signed as it is would name no field here and the
    Subject there: a signature that never verifies.  ValueError for a name
    that is no field name (RFC 5322 §3.6.8: printable ASCII but ``:``).
    """
    names = []
    for header in headers:
        name = header.strip()
        if not name:
            continue
        if not is_field_name(name):
            raise ValueError(f"[dkim_signing] headers: {header!r} is not a header field name")
        names.append(name.lower().encode("ascii"))
    return names


def oversign_from(include: list[bytes], message_headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """*include* (lower-case names) with ``from`` appended until it is listed once more than *message_headers* has From.

    RFC 6376 §8.15: a From added after signing must break the signature, and
    only a name signed more often than it appears makes that so (§5.4.2).
    """
    present = sum(1 for name, _ in message_headers if name.lower() == b"from")
    return include + [b"from"] * max(0, present + 1 - include.count(b"from"))


def public_record(algorithm: Algorithm, private: bytes) -> str:
    """The DNS TXT content that publishes the public half of *private*."""
    if algorithm == "ed25519":
        verify = nacl.signing.SigningKey(private, encoder=nacl.encoding.Base64Encoder).verify_key
        return f"v=DKIM1; k=ed25519; p={verify.encode(encoder=nacl.encoding.Base64Encoder).decode('ascii')}"
    key = serialization.load_pem_private_key(private, password=None)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def published_key(record: str) -> str:
    """The ``p=`` of a DKIM TXT record, whitespace removed ("" when absent)."""
    for part in record.split(";"):
        tag, eq, value = part.partition("=")
        if eq and tag.strip() == "p":
            return "".join(value.split())
    return ""


def record_matches(algorithm: Algorithm, private: bytes, record: str) -> bool:
    """Whether the published TXT *record* carries the public half of *private*."""
    return published_key(record) == published_key(public_record(algorithm, private))


#: A tag-name as verifiers read one: a letter first (dkimpy takes ``x-foo`` too, which RFC 6376 §3.2's ALPHA
#: *ALNUMPUNC does not), no blank inside.
_TAG_NAME = re.compile(r"[A-Za-z]\S*")


def _tag_list(record: str) -> tuple[dict[str, str], list[str]]:
    """The tags of a DKIM TXT *record* (values without the blanks around them; the first of a tag given twice), and why it is
    no tag-list, as dkimpy refuses one: a part (between ";", a trailing ";" allowed) that is no ``tag=value``, a tag twice."""
    tags: dict[str, str] = {}
    problems: list[str] = []
    parts = record.strip().split(";")
    if not parts[-1].strip():
        parts.pop()
    for part in parts:
        tag, eq, value = part.partition("=")
        tag = tag.strip()
        if not eq or not _TAG_NAME.fullmatch(tag):
            problems.append(f"{part.strip()[:40]!r} is no tag=value (RFC 6376 §3.2: verifiers refuse the whole record)")
        elif tag in tags:
            problems.append(f"{tag}= twice (RFC 6376 §3.2: verifiers refuse the whole record)")
        else:
            tags[tag] = value.strip()
    return tags, problems


def record_problems(algorithm: Algorithm, record: str) -> list[str]:
    """Why verifiers would not use the TXT *record* for signatures by an *algorithm* key (RFC 6376 §3.6.1), or
    ``[]``: a ``v=`` other than DKIM1, a ``k=`` (rsa when absent) other than the key's, an ``h=`` without sha256
    (the signatures are rsa-sha256 or ed25519-sha256), an ``s=`` without ``*`` or ``email``; and a tag-list
    that is not one (§3.2: a tag twice, a part that is no ``tag=value``), which voids the whole record."""
    tags, problems = _tag_list(record)
    # v= and k= are compared as written (blanks around them aside); h= and s= are lists whose ":" may have blanks
    # around it, never inside a name (RFC 6376 §3.6.1's ABNF).
    for tag in ("h", "s"):
        if tag in tags:
            tags[tag] = ":".join(item.strip() for item in tags[tag].split(":"))
    if "v" in tags and tags["v"] != "DKIM1":
        problems.append(f"v={tags['v']} (verifiers take DKIM1 only)")
    if tags.get("k", "rsa") != algorithm:
        kind = f"k={tags['k']}" if "k" in tags else "no k= (rsa by default)"
        problems.append(f"{kind} for an {algorithm} key (publish k={algorithm})")
    if "h" in tags and "sha256" not in tags["h"].lower().split(":"):  # ABNF strings: any case
        problems.append(f"h={tags['h']} leaves out sha256, which the signatures use")
    if "s" in tags and not {"*", "email"} & set(tags["s"].split(":")):
        problems.append(f"s={tags['s']}: the key is not for email (s=* or s=email)")
    return problems


def generate(algorithm: Algorithm, bits: int = 2048) -> bytes:
    """A new private key in the format of a key file."""
    if algorithm == "ed25519":
        return nacl.signing.SigningKey.generate().encode(encoder=nacl.encoding.Base64Encoder) + b"\n"
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def write_private(path: Path, data: bytes) -> None:
    """Write a key file readable by its owner only (0600 from its creation); FileExistsError if it exists.

    A write that fails (a full disk) removes the file it created: a truncated
    key would otherwise stay, and block the next attempt as "exists".
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def zone_lines(selector: str, domain: str, record: str) -> str:
    """The record as a zone-file line, split into strings of at most 255 bytes."""
    chunks = [record[i : i + 250] for i in range(0, len(record), 250)]
    strings = " ".join(f'"{c}"' for c in chunks)
    return f"{selector}._domainkey.{domain}. IN TXT ( {strings} )"

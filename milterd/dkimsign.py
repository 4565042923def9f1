"""DKIM keys and signing: load the keys of ``[dkim_signing]``, sign, make keys and their DNS records.

A key file holds an RSA private key in PEM (``rsa-sha256``) or an ed25519
seed in base64 (``ed25519-sha256``, dkimpy's format); the algorithm is read
from the file.  A domain may have several keys (an RSA and an ed25519 one):
the message gets one signature per key.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import dkim
import dkim.crypto
import nacl.encoding
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .checks.dmarc import a_label
from .content.headertext import is_field_name
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


def parse_key(data: bytes) -> tuple[Algorithm, bytes]:
    """The algorithm of a private key file's content, and the key as dkimpy takes it; ValueError otherwise."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            dkim.crypto.parse_pem_private_key(text)
        except Exception as exc:  # noqa: BLE001 - dkimpy's parser raises several kinds
            raise ValueError(f"not a usable RSA private key: {exc}") from None
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
        # d= in A-labels (xn--…), as receivers align it with the From domain and look the key up in DNS.
        domain = a_label(entry.domain.lower().rstrip("."))
        if not domain or not domain.isascii():
            raise ConfigError(where, f"[dkim_signing] keys[{index}].domain", f"{entry.domain!r} is not a domain name")
        keys.append(SigningKey(domain, entry.selector, algorithm, private))
    return keys


def keys_for(keys: list[SigningKey], domain: str) -> list[SigningKey]:
    """The keys that sign for *domain*: its own, else those of its closest parent domain that has some.

    A From domain in U-labels (``bücher.example``, in SMTPUTF8 mail) is the key's ``xn--`` domain.
    """
    name = a_label(domain.lower().rstrip(".")) or ""
    while name:
        found = [k for k in keys if k.domain == name]
        if found:
            return found
        name = name.partition(".")[2]
    return []


def sign(message: bytes, keys: list[SigningKey], headers: list[str]) -> list[str]:
    """One DKIM-Signature value (without the name, folded with LF) per key, in *keys*' order.

    *headers* lists the header names to sign; empty signs dkimpy's default
    (RFC 6376's recommended set, From twice so that none can be added).  From
    is always signed once more than the message has it (:func:`oversign_from`).
    """
    names = field_names(headers)
    values = []
    for key in keys:
        signer = dkim.DKIM(message, signature_algorithm=key.dkim_algorithm)
        include = oversign_from(names, signer.headers) if names else None
        line = signer.sign(key.selector.encode("ascii"), key.domain.encode("ascii"), key.private, include_headers=include)
        value = line.split(b":", 1)[1].strip().decode("ascii")
        values.append(value.replace("\r\n", "\n"))
    return values


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

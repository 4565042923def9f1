"""The ``auth`` rows: DKIM + DMARC + URI lists on signed 5 KB messages with a link (issue #14).

smtp-source sends only its own generated message, so these rows send
prepared messages through the corpus row's client (:func:`bench.corpus.replay`:
one SMTP connection per message, XCLIENT from an unlisted 192.0.2.x address,
the same concurrency).  The bench generates an RSA key, publishes it and a
``p=reject`` DMARC policy for the sender's domain on its own local resolver
(unbound + rbldnsd, tests/harness/dns.py), which also serves the shipped
DNSBL and URI list zones with nothing of ours listed, and signs a pool of
distinct messages with dkimpy before any timing.  Each message carries one
http link to an unlisted domain, so the URI list lookups happen and miss.

A row counts as logged only the log rows with both ``DKIM_VALID`` and
``DMARC_PASS`` (and no ``URIBL_TEMPFAIL``), so the bench's "every message
logged" check is also "every message authenticated".
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import dkim

from bench.corpus import CorpusMessage

DOMAIN = "example.org"  # the envelope sender's domain (bench.corpus.SENDER) and the From domain
SELECTOR = "bench"
AUTHOR = f"Bench Author <author@{DOMAIN}>"
RECIPIENT = "rcpt@example.com"
LINK = "http://shop.unlisted-bench.test/offer?id={index}"  # its registrable domain is in no list
POOL = 100  # distinct signed messages, cycled
REQUIRED = ("DKIM_VALID", "DMARC_PASS")
FORBIDDEN = ("URIBL_TEMPFAIL", "URIBL_REFUSED", "DKIM_TEMPFAIL", "DMARC_TEMPFAIL")
# The zones the shipped rules ask (milterd/defaults/rules/), served by rbldnsd; nothing of ours is listed.
LISTS: dict[str, tuple[str, str]] = {
    "zen.spamhaus.org": ("ip4set", "192.0.2.200\n"),
    "bl.spamcop.net": ("ip4set", "192.0.2.200\n"),
    "b.barracudacentral.org": ("ip4set", "192.0.2.200\n"),
    "list.dnswl.org": ("ip4set", "192.0.2.201 :127.0.10.0\n"),
    "dbl.spamhaus.org": ("dnset", ":127.0.1.2:Spam domain\nlisted-domain.test\n.listed-domain.test\n"),
    "multi.surbl.org": ("dnset", ":127.0.0.8:Phishing\nlisted-domain.test\n"),
    "multi.uribl.com": ("dnset", ":127.0.0.2:Black\nlisted-domain.test\n"),
}


def txt(name: str, record: str) -> str:
    """A local-data TXT record for unbound, split into strings of at most 200 bytes."""
    strings = " ".join(f'"{record[i:i + 200]}"' for i in range(0, len(record), 200))
    return f"{name}. TXT {strings}"


def local_data(dkim_record: str) -> list[str]:
    """The resolver's records: the sender domain (MX, SPF for 192.0.2.0/24), its DKIM key and DMARC policy, the recipient's MX."""
    return [
        f"{DOMAIN}. MX 10 mail.{DOMAIN}.",
        f"{DOMAIN}. A 192.0.2.1",
        f"mail.{DOMAIN}. A 192.0.2.1",
        f'{DOMAIN}. TXT "v=spf1 ip4:127.0.0.0/8 ip4:192.0.2.0/24 -all"',
        f"client.{DOMAIN}. A 192.0.2.10",
        "example.com. MX 10 mx.example.com.",
        "mx.example.com. A 192.0.2.2",
        txt(f"{SELECTOR}._domainkey.{DOMAIN}", dkim_record),
        txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=reject; adkim=r; aspf=r"),
    ]


def message(index: int, size: int) -> bytes:
    """Unsigned message *index*: about *size* bytes of text with one link to an unlisted domain, CRLF line ends."""
    head = (
        f"From: {AUTHOR}\r\nTo: <{RECIPIENT}>\r\nSubject: bench auth {index}\r\n"
        f"Date: Sat, 28 Nov 2026 09:51:17 +0000\r\nMessage-ID: <{index}.{uuid.uuid4().hex[:12]}@{DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    lines = ["Hello,", "", f"the offer is at {LINK.format(index=index)} until Friday.", ""]
    left = size - sum(len(line) + 2 for line in lines)
    n = 0
    while left > 2:
        n += 1
        line = (f"Line {n} of the report: " + "lorem ipsum dolor sit amet " * 3)[: min(76, left - 2)]
        lines.append(line)
        left -= len(line) + 2
    return (head + "\r\n".join(lines) + "\r\n").encode("ascii")


def sign(raw: bytes, key: bytes) -> bytes:
    """*raw* with a DKIM-Signature (d=DOMAIN, s=SELECTOR, relaxed/relaxed) by dkimpy."""
    signature: bytes = dkim.sign(raw, SELECTOR.encode(), DOMAIN.encode(), key, canonicalize=(b"relaxed", b"relaxed"))
    return signature.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + raw


def signed_pool(key: bytes, size: int, count: int = POOL) -> list[CorpusMessage]:
    """*count* distinct signed messages (labelled ham: the replay sends them from unlisted addresses)."""
    return [CorpusMessage("ham", sign(message(i, size), key)) for i in range(count)]


def authenticated(rows: Iterable[Mapping[str, Any]]) -> int:
    """How many log rows have every REQUIRED symbol and no FORBIDDEN one (a lookup that failed)."""
    count = 0
    for row in rows:
        symbols = row.get("symbols") or {}
        if all(s in symbols for s in REQUIRED) and not any(s in symbols for s in FORBIDDEN):
            count += 1
    return count


def refusals(note: str, messages: int) -> str:
    """"" when the replay's outcome note says all *messages* were accepted, else what went wrong."""
    expected = f"ham accepted {messages}"
    return "" if note == expected else f"not every message accepted ({note or 'no outcome'}; expected {expected})"


def counter(url: str) -> Callable[[], int | None]:
    """A function counting the authenticated log rows at *url* (through milterd's Store)."""
    from milterd.config import DatabaseSection
    from milterd.store import Store

    store = Store(DatabaseSection(url=url))
    return lambda: authenticated(store.iter_messages())


@dataclass
class AuthDns:
    """The rows' resolver and the signing key it publishes (a shared bench daemon: has ``stop``)."""

    dns: Any
    key: bytes

    @property
    def nameserver(self) -> str:
        """What ``[dns] nameservers`` takes."""
        return str(self.dns.nameserver)

    def stop(self) -> None:
        """Stop unbound and rbldnsd."""
        self.dns.stop()


def start_dns(root: Path) -> AuthDns:
    """Generate the key, publish it with the DMARC policy, serve the list zones: the resolver of the auth rows."""
    from milterd import dkimsign
    from tests.harness.dns import LocalDns

    key = dkimsign.generate("rsa", 2048)
    return AuthDns(LocalDns(root, local_data(dkimsign.public_record("rsa", key)), LISTS).start(), key)


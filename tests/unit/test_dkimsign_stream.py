"""DKIM signing from the header section and the body in chunks (milterd.dkimsign.sign, SimpleBody).

The signatures must be the very ones dkimpy's own ``DKIM(message).sign()``
makes of the whole message (time frozen), for any body and any chunking,
and the body must never be held in memory.
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
import tracemalloc
from pathlib import Path
from typing import Any, Iterable, Iterator

import dkim
import dkim.canonicalization
import pytest

from milterd import dkimfast, dkimsign
from milterd.checks.dkim import DkimSigner, DnsRecorder, verify_all
from milterd.config import load_config
from milterd.message.model import Action, Envelope, Session, Spool, SpoolError, Verdict
from milterd.services import build as build_services

from .test_dkim import FakeResolver

HEAD = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject:  a\t test \r\nDate: Fri, 04 Dec 2026 05:00:00 +0000\r\n\r\n"
#: A header section holding an empty line: dkimpy makes what follows it part of the body.
ODD_HEAD = b"From: alice@example.org\r\nX-Odd: a\r\n\r\nstill the head\n\r\n"
NOW = 1_796_000_000.75
#: Bodies that end or break a line in every way that matters.
EDGE_BODIES = [
    b"",
    b"\r\n",
    b"\r\n" * 7,
    b"\n\n\n",
    b"\r",
    b"\r\r\r",
    b"\r\r\n\r\n",
    b"no final line break",
    b"text\r",
    b"text\r\n\r\n\r\n",
    b"text\n\r\n\n",
    b"a\r\rb\r\n\r\r\n\r\n",
    b"\r\n\r\nlate text after empty lines\r\n\r\n",
    b"tabs\t \t\r\n  \r\n\t\r\n",
]
TOKENS = [b"a", b"word", b"x y", b" ", b"  ", b"\t", b" \t", b"\r\n", b"\r\n\r\n", b"\n", b"\n\n", b"\r", b"\r\r"]


def random_bodies(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [b"".join(rng.choice(TOKENS) for _ in range(rng.randrange(0, 40))) for _ in range(count)]


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    """*data* in pieces of *size* bytes (a one-shot iterator, like the spool's chunks())."""
    return iter([data[i : i + size] for i in range(0, len(data), size)])


class Collected:
    """A stand-in for a hash: keeps what it is given."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def update(self, data: bytes) -> None:
        self.pieces.append(bytes(data))


def canonical(chunks: Iterable[bytes]) -> bytes:
    collected = Collected()
    body = dkimsign.SimpleBody([collected])
    for chunk in chunks:
        body.update(chunk)
    body.finish()
    return b"".join(collected.pieces)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 1 << 16])
def test_the_canonical_body_is_the_one_dkimpy_hashes(size: int) -> None:
    for body in EDGE_BODIES + random_bodies(300, size):
        message = HEAD + body
        # dkimpy's own parse and the one milterd installs in its place make the same body of it.
        for parse in (dkimfast.PURE_RFC822_PARSE, dkimfast.rfc822_parse):
            expected = dkim.canonicalization.Simple.canonicalize_body(parse(message)[1])
            assert canonical(chunked(body, size)) == expected, (size, body)


def test_chunks_of_random_sizes_and_empty_chunks_change_nothing() -> None:
    rng = random.Random(7)
    for body in EDGE_BODIES + random_bodies(300, 8):
        cuts = sorted(rng.randrange(0, len(body) + 1) for _ in range(rng.randrange(0, 6)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        assert canonical(pieces) == dkim.canonicalization.Simple.canonicalize_body(dkim.rfc822_parse(HEAD + body)[1]), (pieces, body)


def dkimpy_sign(message: bytes, key: dkimsign.SigningKey, headers: list[str]) -> str:
    """The DKIM-Signature value dkimpy's own sign() makes of the whole *message* (what milterd signed with before)."""
    signer = dkim.DKIM(message, signature_algorithm=key.dkim_algorithm)
    names = dkimsign.field_names(headers)
    include = dkimsign.oversign_from(names, signer.headers) if names else None
    line = signer.sign(key.selector.encode("ascii"), key.domain.encode("ascii"), key.private, include_headers=include)
    return line.split(b":", 1)[1].strip().decode("ascii").replace("\r\n", "\n")


@pytest.fixture(scope="module")
def keys() -> list[dkimsign.SigningKey]:
    return [
        dkimsign.SigningKey("example.org", "rsa1", "rsa", dkimsign.generate("rsa", 1024)),
        dkimsign.SigningKey("example.org", "ed1", "ed25519", dkimsign.generate("ed25519").strip()),
    ]


def verifies(message: bytes, values: list[str], keys: list[dkimsign.SigningKey]) -> bool:
    records = {f"{k.selector}._domainkey.{k.domain}.".encode(): dkimsign.public_record(k.algorithm, k.private).encode() for k in keys}
    signed = b"".join(b"DKIM-Signature: " + v.replace("\n", "\r\n").encode() + b"\r\n" for v in values) + message
    verifier = dkim.DKIM(signed)
    return all(verifier.verify(index, dnsfunc=lambda name, timeout=5: records[name]) for index in range(len(values)))


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1 << 16])
@pytest.mark.parametrize("headers", [[], ["From", "Subject", "To"]])
def test_the_signatures_are_dkimpys_own(monkeypatch: pytest.MonkeyPatch, keys: list[dkimsign.SigningKey], size: int, headers: list[str]) -> None:
    dkimfast.install()  # as when milterd has verified a message in this process (and without: the parses are equal, above)
    monkeypatch.setattr(dkim.time, "time", lambda: NOW)
    for head in (HEAD, ODD_HEAD):
        for body in EDGE_BODIES + random_bodies(25, size):
            values = dkimsign.sign(head, chunked(body, size), keys, headers)
            assert values == [dkimpy_sign(head + body, key, headers) for key in keys], (head, body)
            assert f"t={int(NOW)};" in values[0] and "c=relaxed/simple;" in values[0]
            assert verifies(head + body, values, keys)


def test_the_body_is_read_once_for_all_keys(keys: list[dkimsign.SigningKey]) -> None:
    reads = []

    def body() -> Iterator[bytes]:
        reads.append(1)
        yield b"hello\r\n"

    values = dkimsign.sign(HEAD, body(), keys + keys, [])
    assert len(values) == 4 and reads == [1]
    assert verifies(HEAD + b"hello\r\n", values, keys)


def test_a_failing_read_of_the_body_propagates(keys: list[dkimsign.SigningKey]) -> None:
    def body() -> Iterator[bytes]:
        yield b"first chunk\r\n"
        raise SpoolError("the spooled body read back short")

    with pytest.raises(SpoolError):
        dkimsign.sign(HEAD, body(), keys, [])


BODY_SIZE = 30 * 1024 * 1024
LIMIT = 4 * 1024 * 1024


def repeated(block: bytes, total: int) -> Iterator[bytes]:
    """*total* bytes of *block* repeated, as the spool gives them: one chunk at a time, the same object each time."""
    for _ in range(total // len(block)):
        yield block


@pytest.mark.parametrize("line", [b"x" * 76 + b"\r\n", b"\r\n"], ids=["text", "only-crlf"])
def test_a_30_mb_body_is_signed_in_bounded_memory(keys: list[dkimsign.SigningKey], line: bytes) -> None:
    block = line * (65536 // len(line))
    tracemalloc.start()
    try:
        values = dkimsign.sign(HEAD, repeated(block, BODY_SIZE), keys, [])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < LIMIT, f"signing a {BODY_SIZE} byte body took {peak} bytes"
    # The body hash of what was signed: the whole text (it ends with one CRLF), or one CRLF for a body of empty lines.
    whole = hashlib.sha256()
    for chunk in repeated(block, BODY_SIZE):
        whole.update(chunk)
    expected = whole.digest() if line != b"\r\n" else hashlib.sha256(b"\r\n").digest()
    for value in values:
        assert "bh=" + base64.b64encode(expected).decode() in "".join(value.split())


@pytest.fixture()
def signer(tmp_path: Path, keys: list[dkimsign.SigningKey]) -> Iterator[Any]:
    for key in keys:
        dkimsign.write_private(tmp_path / f"{key.selector}.key", key.private)
    entries = ", ".join(f'{{ domain = "signed.test", selector = "{k.selector}", key_file = "{k.selector}.key" }}' for k in keys)
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "m.sqlite"}"\n[dkim_signing]\nenabled = true\nkeys = [{entries}]\n')
    services = build_services(load_config(conf))
    yield DkimSigner(services)
    services.close()


def test_the_signer_check_signs_a_30_mb_spooled_message_in_bounded_memory(signer: Any, keys: list[dkimsign.SigningKey], tmp_path: Path) -> None:
    # Through the check, as an authenticated client's big attachment goes: the spool on disk, read back in chunks.
    envelope = Envelope(spool=Spool(0, str(tmp_path)))
    envelope.headers += [("From", b"Carol <carol@signed.test>"), ("To", b"bob@example.net"), ("Subject", b"the big file")]
    block = (b"x" * 76 + b"\r\n") * (65536 // 78)
    for chunk in repeated(block, BODY_SIZE):
        envelope.spool.write(chunk)
    tracemalloc.start()
    try:
        verdict = signer.on_verdict(Session(auth_user="carol"), envelope, Verdict(Action.ACCEPT, 0.0, {}, {}, ""))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "DKIM_SIGNED" in verdict.symbols, verdict.details
    assert peak < LIMIT, f"signing a {envelope.size} byte message took {peak} bytes"
    values = [edit.value for edit in envelope.edits if edit.name == "DKIM-Signature"]
    message = b"".join(b"DKIM-Signature: " + v.replace("\n", "\r\n").encode() + b"\r\n" for v in values) + envelope.message_bytes()
    txt = {f"{k.selector}._domainkey.signed.test": dkimsign.public_record(k.algorithm, k.private) for k in keys}
    results = verify_all(message, DnsRecorder(FakeResolver(txt), time.monotonic() + 5), 5, 1024)
    assert sorted((r.selector, r.result) for r in results) == [("ed1", "pass"), ("rsa1", "pass")]

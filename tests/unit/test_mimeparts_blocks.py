"""milterd.content.mimeparts reads a part's body a block of lines at a time, with the results of a line at a time.

Given one line per chunk, :func:`attachments` reads a line at a time, as it did for every message
before the body went by in blocks: that reading is the reference.  Seeded random MIME (nested
multiparts, boundary-like lines, base64 with 1-character lines, padding and junk, quoted-printable
soft breaks, bare CR and LF line ends, truncation at small limits) must give the same attachments,
bytes and notes whatever the chunks, also with BLOCK and MAX_PADDING small enough to cut inside
every part.  The hostile shapes that cost a Python step per line (1.3 s for 10 MB of 1-character
base64 lines, 1.7 s for lines of ``--``) are checked by counting the decoder's calls, not by time.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest

from milterd.content import mimeparts
from milterd.content.mimeparts import attachments

EOLS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r\r\n"]


def base64_lines(rng: random.Random, data: bytes) -> list[bytes]:
    text = base64.b64encode(data)
    if rng.random() < 0.3:  # padding inside, junk
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice([b"=", b"==", b"A=", b"*", b" ", b"=\t="]) + text[at:]
    width = rng.choice([1, 2, 3, 4, 5, 76, 76, 200])
    out = []
    at = 0
    while at < len(text):
        step = width if rng.random() < 0.9 else rng.randrange(1, 10)
        out.append(text[at:at + step] + rng.choice(EOLS))
        at += step
    return out


def quoted_printable_lines(rng: random.Random) -> list[bytes]:
    pieces = [b"abc", b"=41", b"=", b"=\r", b"==", b"=4", b" ", b"\t", b"=ZZ", b"\xe9", b"x" * 70]
    out = [b"x" + b"".join(rng.choice(pieces) for _ in range(rng.randrange(6))) + rng.choice([*EOLS, b"=\r\n", b"=\n"])
           for _ in range(rng.randrange(30))]
    return out + ([rng.choice(EOLS)] if rng.random() < 0.2 else [])


def plain_lines(rng: random.Random) -> list[bytes]:
    return [bytes(rng.choice(b"ab -=\r\t\x00\xff") for _ in range(rng.randrange(40))) + rng.choice(EOLS) for _ in range(rng.randrange(20))]


def part(rng: random.Random, depth: int, boundaries: list[bytes]) -> list[bytes]:
    eol = rng.choice(EOLS)
    kind = rng.random()
    if depth < 4 and kind < 0.3:
        boundary = rng.choice([b"B", b"XX", b"b-" + str(depth).encode(), b"=_x"])
        lines = [b'Content-Type: multipart/mixed; boundary="' + boundary + b'"' + eol, eol]
        if rng.random() < 0.3:
            lines.append(b"preamble" + eol)
        for _ in range(rng.randrange(4)):
            lines.append(b"--" + boundary + rng.choice([b"", b" ", b"\t"]) + rng.choice(EOLS))
            lines += part(rng, depth + 1, [*boundaries, boundary])
        if rng.random() < 0.2:
            lines.append(b"--fake" + eol)
        if rng.random() < 0.8:
            lines.append(b"--" + boundary + b"--" + rng.choice(EOLS))
        if rng.random() < 0.3:
            lines.append(b"epilogue" + eol)
        return lines
    if kind < 0.35:
        return [b"Content-Type: message/rfc822" + eol, eol, *part(rng, depth + 1, boundaries)]
    encoding = rng.choice([b"base64", b"base64", b"quoted-printable", b"7bit", b""])
    lines = [b"Content-Type: " + rng.choice([b"application/octet-stream", b"text/plain", b"image/png"]) + rng.choice([b"", b'; name="f.exe"']) + eol]
    if encoding:
        lines.append(b"Content-Transfer-Encoding: " + encoding + eol)
    lines.append(eol)
    if encoding == b"base64":
        body = base64_lines(rng, rng.randbytes(rng.randrange(3000)))
    elif encoding == b"quoted-printable":
        body = quoted_printable_lines(rng)
    else:
        body = plain_lines(rng)
    if boundaries and rng.random() < 0.2:  # a line that starts like a delimiter and is none
        body.insert(rng.randrange(len(body) + 1), b"--" + rng.choice(boundaries) + b"x" + eol)
    if rng.random() < 0.2:
        body.insert(rng.randrange(len(body) + 1), b"--" + eol)
    return lines + body


def message(rng: random.Random) -> bytes:
    lines = [b"From: a@example.org\r\n", *part(rng, 0, [])]
    if rng.random() < 0.2:
        lines.append(b"a last line without end")
    return b"".join(lines)


def read(chunks: list[bytes], limit: int) -> tuple[list[tuple[Any, ...]], list[str]]:
    notes: list[str] = []
    found = [(a.filename, a.content_type, a.data.read(), a.size, a.truncated, a.names) for a in attachments(iter(chunks), memory=512, limit=limit, skipped=notes)]
    return found, notes


class LineDecoder(mimeparts._Decoder):
    """The decoder as it was fed before blocks: one line at a time, decoded once BLOCK bytes are gathered."""

    def feed(self, lines: bytes) -> None:
        if self.truncated:
            return
        self._lines.append(lines)
        self._buffered += len(lines)
        if self._buffered >= mimeparts.BLOCK:
            self._flush()


def by_lines(raw: bytes, limit: int, monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[Any, ...]], list[str]]:
    """The reference: *raw* read a line at a time, by the decoder fed as before."""
    with monkeypatch.context() as patch:
        patch.setattr(mimeparts, "_Decoder", LineDecoder)
        return read(by_line(raw), limit)


def by_line(raw: bytes) -> list[bytes]:
    """*raw* as chunks of one line each, with its LF (the last one without, if it has none)."""
    *lines, last = raw.split(b"\n")
    return [line + b"\n" for line in lines] + ([last] if last else [])


@pytest.mark.parametrize(("seed", "block", "padding"), [(0, mimeparts.BLOCK, mimeparts.MAX_PADDING), (1, 64, 4), (2, 16, 2), (3, 100, 8)])
def test_blocks_read_as_lines_do(seed: int, block: int, padding: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(mimeparts, "BLOCK", block)
    monkeypatch.setattr(mimeparts, "MAX_PADDING", padding)
    for _ in range(400):
        raw = message(rng)
        limit = rng.choice([10, 300, 64 * 1024 * 1024])
        reference = by_lines(raw, limit, monkeypatch)
        size = rng.choice([7, 100, 65536])
        assert read([raw], limit) == reference, raw
        assert read([raw[i:i + size] for i in range(0, len(raw), size)], limit) == reference, raw


def test_the_reference_tells_a_wrong_reading_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body's last line end belongs to the delimiter: a reading that kept it would differ."""
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/x\r\n\r\nab\r\ncd\r\n--b--\r\n"
    assert by_lines(raw, 1000, monkeypatch)[0][0][2] == b"ab\r\ncd" == read([raw], 1000)[0][0][2]


def calls_to_feed(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[int, bytes]:
    calls = 0
    feed = mimeparts._Decoder.feed

    def counted(self: mimeparts._Decoder, lines: bytes) -> None:
        nonlocal calls
        calls += 1
        feed(self, lines)

    monkeypatch.setattr(mimeparts._Decoder, "feed", counted)
    [found] = [a.data.read() for a in attachments(iter([raw[i:i + 65536] for i in range(0, len(raw), 65536)]))]
    return calls, found


def wrapped(encoding: bytes, body: bytes) -> bytes:
    return (b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: application/octet-stream; name=x.bin\r\n"
            b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n" + body + b"--XX--\r\n")


@pytest.mark.parametrize(
    ("encoding", "body", "decoded"),
    [
        (b"base64", b"Q\r\nU\r\nF\r\nB\r\n" * 100_000, b"AAA" * 100_000),
        (b"base64", b"--\r\nQUFB\r\n" * 100_000, b"AAA" * 100_000),  # lines of "--" that are no delimiter
        (b"quoted-printable", b"A=\r\n" * 200_000, b"A" * 200_000),
    ],
)
def test_a_body_of_short_lines_goes_to_the_decoder_a_chunk_at_a_time(encoding: bytes, body: bytes, decoded: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = wrapped(encoding, body)
    calls, found = calls_to_feed(raw, monkeypatch)
    assert found == decoded
    assert calls <= 2 * (len(raw) // 65536 + 1)  # a line at a time: 400,000 and 200,000 calls

"""Small builders of test messages shared by the unit and integration tests."""

from __future__ import annotations

import base64
import io
import zipfile

from milterd.message.model import Envelope, Spool


def envelope_of(raw: bytes) -> Envelope:
    """An envelope holding *raw* (CRLF lines, one header field per line) as the adapter would: fields, then the body spooled."""
    head, _, body = raw.partition(b"\r\n\r\n")
    envelope = Envelope(spool=Spool(1 << 20))
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        envelope.headers.append((name.decode(), value.strip()))
    envelope.spool.write(body)
    return envelope


def zipped(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive of *files* (name → content)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


#: What a base64 decoder that skips other characters (Thunderbird's, milterd's) keeps of a line.
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_BASE64 = bytes(sorted(set(range(256)) - set(_ALPHABET)))


def wrapped(text: bytes) -> bytes:
    """*text* (base64) in lines of 76 characters, each ending CRLF."""
    return b"".join(text[i:i + 76] + b"\r\n" for i in range(0, len(text), 76))


def smuggled(line: bytes) -> tuple[bytes, bytes]:
    """A zip holding readme.txt then evil.exe, and its base64 lines with *line* inside readme.txt's data
    (before evil.exe's local header), placed so that a decoder that skips what is not base64 reads the
    zip whole: the base64 characters of *line* are those the zip's base64 has there."""
    chars = line.translate(None, _NOT_BASE64)
    piece = base64.b64decode(chars + b"A" * (-len(chars) % 4))
    start = 30 + len("readme.txt")  # readme.txt's data: after its local header (stored, no extra field)
    lead = b"x" * (-start % 3)  # the piece starts a base64 quantum
    data = zipped({"readme.txt": lead + piece + b"y" * 600, "evil.exe": b"MZ\x90\x00" + b"\x00" * 300}, zipfile.ZIP_STORED)
    text = base64.b64encode(data)
    at = (start + len(lead)) // 3 * 4
    assert text[at:at + len(chars)] == chars
    assert data.find(b"PK\x03\x04", 4) > (start + len(lead) + len(piece))  # evil.exe's header comes after the line
    body = wrapped(text[:at]) + line + b"\r\n" + wrapped(text[at + len(chars):])
    assert base64.b64decode(body.translate(None, _NOT_BASE64)) == data
    return data, body

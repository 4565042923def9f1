"""Small builders of test messages shared by the unit and integration tests."""

from __future__ import annotations

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

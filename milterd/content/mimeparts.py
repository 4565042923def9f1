"""The attachments of a message, decoded one at a time from the spool.

:func:`attachments` reads the message as a stream of lines (the spool's
chunks), follows the MIME structure (multipart boundaries, nested
``message/rfc822``) and decodes each attachment's body (base64,
quoted-printable or as is) into a temporary file of its own as its lines go
by.  The caller gets one :class:`Attachment` at a time and the file is
closed before the next one is decoded, so a 30 MB part costs its decoded
size once, on disk past ``memory`` bytes, and the message is never held
whole.  It never raises on malformed MIME: what cannot be followed is read
as body text and ignored.
"""

from __future__ import annotations

import binascii
import email
import email.policy
import email.utils
import re
import tempfile
from dataclasses import dataclass
from email.message import Message
from typing import IO, Iterable, Iterator

from .headertext import decoded

#: At most this many parts are looked at.
MAX_PARTS = 500
#: At most this much of a part's MIME fields (_MIME_FIELDS) is kept; its other fields are never kept.
MAX_PART_HEADER = 64 * 1024
#: At most this much of one MIME field is kept.
MAX_FIELD = 16 * 1024
#: Boundaries nested deeper than this are not followed.
MAX_NESTING = 20

_LINE = re.compile(rb"[^\n]*\n|[^\n]+$")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
#: The transfer encodings a message/rfc822 part may have (RFC 2046 section 5.2.1), "" for none.
_IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
#: The fields the MIME structure and the file names are read from (the rest of a header section can
#: be any size: padding it must not push these out of what is kept).
_MIME_FIELDS = frozenset({b"content-type", b"content-disposition", b"content-transfer-encoding"})


@dataclass
class Attachment:
    """A decoded leaf part that carries a file name or is not text."""

    filename: str
    content_type: str
    data: IO[bytes]
    size: int
    truncated: bool
    #: The other names the part carries, that some mail client may use instead of *filename*.
    names: tuple[str, ...] = ()


class _Decoder:
    """Decodes one part's body line by line into a temporary file, up to *limit* bytes."""

    def __init__(self, encoding: str, memory: int, limit: int) -> None:
        self.encoding = encoding
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=memory)
        self.size = 0
        self.limit = limit
        self.truncated = False
        self._pending = b""
        self._eol = b""

    def feed(self, line: bytes) -> None:
        if self.truncated:
            return
        if self.encoding == "base64":
            self._pending += _NOT_BASE64.sub(b"", line.split(b"=", 1)[0])
            usable = len(self._pending) - len(self._pending) % 4
            if usable:
                self._write(binascii.a2b_base64(self._pending[:usable]))
                self._pending = self._pending[usable:]
        else:
            data = binascii.a2b_qp(line) if self.encoding == "quoted-printable" else line
            # The line end before a boundary belongs to the boundary (RFC 2046):
            # write each line's end only once another line follows.
            body = data.rstrip(b"\r\n")
            self._write(self._eol + body)
            self._eol = data[len(body):]

    def finish(self) -> IO[bytes]:
        if self._pending and self.encoding == "base64" and len(self._pending) % 4 != 1:
            padded = self._pending + b"=" * (-len(self._pending) % 4)
            try:
                self._write(binascii.a2b_base64(padded))
            except binascii.Error:
                pass
        self.file.seek(0)
        return self.file

    def _write(self, data: bytes) -> None:
        room = self.limit - self.size
        if len(data) > room:
            data, self.truncated = data[:room], True
        self.file.write(data)
        self.size += len(data)


def lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a byte stream given in chunks, each with its line end."""
    rest = b""
    for chunk in chunks:
        data = rest + chunk
        end = data.rfind(b"\n") + 1
        rest = data[end:]
        if end:
            yield from _LINE.findall(data[:end])
        if len(rest) > MAX_PART_HEADER:  # a line without end: pass it on in pieces
            yield rest
            rest = b""
    if rest:
        yield rest


def _decoded(value: str) -> str:
    # As mail clients read a name: an unknown charset or a language tag does not leave it encoded.
    return decoded(value)


def _filename(part: Message) -> str:
    name = part.get_filename() or part.get_param("name") or ""
    if isinstance(name, tuple):  # an RFC 2231 value get_param did not collapse
        name = email.utils.collapse_rfc2231_value(name)
    return _decoded(str(name)).strip()


def _other_names(part: Message, filename: str) -> tuple[str, ...]:
    """The names besides *filename* a client may give the part's file.

    Every ``filename`` and ``name`` parameter of every Content-Disposition and
    Content-Type field (duplicates included), and one with backslashes also
    read with its quoted-pairs undone (RFC 2045 section 5.1, RFC 5322 section
    3.2.4: ``"ev\\il.exe"`` is ``evil.exe``; the compat32 parser keeps the backslash).
    """
    found: dict[str, None] = {}
    for field, param in (("content-disposition", "filename"), ("content-type", "name")):
        for value in part.get_all(field, []):
            holder = Message()
            holder[field] = str(value)
            for key, raw in holder.get_params([], header=field)[1:]:
                if key.strip().lower() == param:
                    text = email.utils.collapse_rfc2231_value(raw) if isinstance(raw, tuple) else str(raw)
                    found[_decoded(text).strip()] = None
                    found[_decoded(_QUOTED_PAIR.sub(r"\1", text)).strip()] = None
    found.pop(filename, None)
    found.pop("", None)
    return tuple(found)


class _Header:
    """A part's header section as its lines go by: only its MIME fields, each and all of them bounded."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.size = 0
        self.field = -1  # bytes kept of the MIME field being read; -1 in any other field
        self.cut = False

    def add(self, line: bytes) -> None:
        if line[:1] not in (b" ", b"\t"):
            self.field = 0 if line.split(b":", 1)[0].lower() in _MIME_FIELDS else -1
        if self.field < 0:
            return
        if self.field + len(line) > MAX_FIELD or self.size + len(line) > MAX_PART_HEADER:
            self.cut, self.field = True, -1
            return
        self.lines.append(line)
        self.size += len(line)
        self.field += len(line)

    def parse(self) -> Message:
        return email.message_from_bytes(b"".join(self.lines), policy=email.policy.compat32)


def attachments(chunks: Iterable[bytes], memory: int = 1024 * 1024, limit: int = 64 * 1024 * 1024,
                skipped: list[str] | None = None) -> Iterator[Attachment]:
    """Each attachment of the message given as *chunks* (headers, blank line, body), decoded.

    An attachment's ``data`` is valid until the next one is asked for; it holds
    at most *limit* bytes (``truncated`` says when there was more).  What is
    not looked at (past MAX_PARTS, MAX_NESTING, MAX_PART_HEADER) is said in
    *skipped*, when given.
    """
    notes: list[str] = [] if skipped is None else skipped
    boundaries: list[bytes] = []
    in_headers = True
    header = _Header()
    decoder: _Decoder | None = None
    current: tuple[str, str, tuple[str, ...]] | None = None
    parts = 0
    for line in lines(chunks):
        if in_headers:
            if line.strip(b"\r\n"):
                header.add(line)
                continue
            in_headers = False
            part = header.parse()
            if header.cut:
                notes.append(f"MIME fields of a part past {MAX_FIELD} bytes each or {MAX_PART_HEADER} in all: the rest not read")
            header = _Header()
            parts += 1
            ctype = (part.get_content_type() or "text/plain").lower()
            boundary = part.get_param("boundary") if ctype.startswith("multipart/") else None
            if isinstance(boundary, str) and boundary and len(boundaries) < MAX_NESTING:
                boundaries.append(boundary.encode("utf-8", "replace"))
            elif ctype == "message/rfc822" and _encoding(part) in _IDENTITY:
                in_headers = True
            else:
                if isinstance(boundary, str) and boundary:
                    notes.append(f"multiparts nested deeper than {MAX_NESTING}: not looked into")
                if ctype == "message/rfc822":
                    # RFC 2046 section 5.2.1 forbids it, so clients differ: judged as a file, its parts not looked at.
                    notes.append("an encoded message/rfc822 part: its attachments not looked at")
                name = _filename(part)
                if name or not (ctype.startswith("text/") or ctype.startswith("multipart/")):
                    encoding = _encoding(part)
                    decoder = _Decoder(encoding, memory, limit)
                    current = (name, ctype, _other_names(part, name))
            if _rest_ignored(in_headers, boundaries, decoder):
                return
            continue
        if boundaries and line.startswith(b"--"):
            marker = line.rstrip(b"\r\n").rstrip(b" \t")[2:]
            level = _boundary_level(boundaries, marker)
            if level is not None:
                if decoder is not None and current is not None:
                    yield from _finished(decoder, current)
                decoder = current = None
                if marker.endswith(b"--") and marker[:-2] == boundaries[level]:
                    del boundaries[level:]
                    if _rest_ignored(in_headers, boundaries, decoder):
                        return  # the outermost multipart closed: only its epilogue follows
                else:
                    del boundaries[level + 1:]
                    in_headers = True
                    if parts >= MAX_PARTS:
                        notes.append(f"more than {MAX_PARTS} MIME parts: the rest not looked at")
                        return
                continue
        if decoder is not None:
            decoder.feed(line)
    if decoder is not None and current is not None:
        yield from _finished(decoder, current)


def _encoding(part: Message) -> str:
    return str(part.get("Content-Transfer-Encoding", "")).strip().lower()


def _rest_ignored(in_headers: bool, boundaries: list[bytes], decoder: _Decoder | None) -> bool:
    """Whether nothing that follows can be an attachment: a body outside any
    multipart that is not being decoded (a single-part text message, an epilogue)."""
    return not in_headers and not boundaries and decoder is None


def _boundary_level(boundaries: list[bytes], marker: bytes) -> int | None:
    for level in range(len(boundaries) - 1, -1, -1):
        if marker == boundaries[level] or marker == boundaries[level] + b"--":
            return level
    return None


def _finished(decoder: _Decoder, current: tuple[str, str, tuple[str, ...]]) -> Iterator[Attachment]:
    data = decoder.finish()
    try:
        yield Attachment(current[0], current[1], data, decoder.size, decoder.truncated, current[2])
    finally:
        data.close()

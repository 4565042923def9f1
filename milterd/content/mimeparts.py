"""The attachments of a message, decoded one at a time from the spool.

:func:`attachments` reads the message as a stream of lines (the spool's
chunks), follows the MIME structure (multipart boundaries, nested
``message/rfc822``) and decodes each attachment's body (base64,
quoted-printable or as is) into a temporary file of its own as its lines go
by.  The caller gets one :class:`Attachment` at a time and the file is
closed before the next one is decoded, so a 30 MB part costs its decoded
size once, on disk past ``memory`` bytes, and the message is never held
whole.  Body lines go to the decoder a chunk at a time up to the next line
that may be a delimiter, with the result of a line at a time.  It never raises
on malformed MIME: what cannot be followed is read as body text and ignored.
"""

from __future__ import annotations

import binascii
import email
import email.policy
import re
import tempfile
from collections import deque
from dataclasses import dataclass
from email.message import Message
from typing import IO, Callable, Iterable, Iterator, Literal

from .filetypes import message_file, outlook_name, text_file_type
from .headertext import decoded
from .mimeparams import LenientMessage, client_container_type, client_names, client_param, collapsed, crowded, first_token, raw_param, raw_params, safely, unescaped
from .uuencode import UU_ENCODINGS, uudecode_line

#: At most this many parts are decoded and judged.
MAX_PARTS = 500
#: Past MAX_PARTS the parts are still followed by their MIME fields alone, up to this many: a text part
#: is no attachment, so a mailing list's digest of a few hundred posts (each three or four parts) is read
#: through at about 50 µs a part, and nothing is missed until a part that would be decoded comes.
MAX_SCANNED_PARTS = 2000
#: The note of a message with a file (a named or non-text part, but a signature) past MAX_PARTS: never judged.
PARTS_LIMIT_NOTE = f"more than {MAX_PARTS} MIME parts before a file: the files past them not looked at"
#: A text view (:func:`text_view`) reads at most this many lines one at a time (header lines, delimiter
#: lines and body lines that start like one), the rest as written: 50 MB of "--B…" lines cost 10 s.
MAX_VIEW_LINES = 200_000
#: A header line the standard library's parser reads as one (its headerRE): a field name and colon, or a continuation.
_STDLIB_FIELD_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
#: A bare CR that begins or ends a line starting "--" to the standard library (which splits lines at a bare CR);
#: searched only where a bare CR is, and each way starts with a literal (a lookbehind cost 1.4 s on 50 MB of base64).
_CR_DELIMITER = re.compile(rb"\r--|\n--[^\r\n]*\r(?!\n)")
#: The same, ended by its bare CR, as the first line searched (a search from a position has no "\n" before it).
_CR_ENDED_DELIMITER = re.compile(rb"--[^\r\n]*\r(?!\n)")
#: A CR that no LF follows (see lone_crs_as_line_ends).
_LONE_CR = re.compile(rb"\r(?!\n)")
#: A content type as RFC 2045 writes it (lower-cased): a part of any other is not dropped from a text view.
#: The types of the parts the link reader reads as text (a text/csv or text/calendar export is not read: a view
#: leaves its body out, so that a 5 MB one does not fill the view).
TEXT_TYPES = ("text/plain", "text/html")
#: Text types of scripts Windows runs: a part of one is a file whether named or not (a mail client names an
#: unnamed one ``attachment.js``; the attachment check names it so), never a body a reader is shown.
SCRIPT_TEXT_TYPES = frozenset({"text/javascript", "text/vbscript"})
_PLAIN_TYPE = re.compile(r"[a-z0-9!#$%&'*+.^_`{|}~-]+/[a-z0-9!#$%&'*+.^_`{|}~-]+\Z")
#: The note of a message past MAX_SCANNED_PARTS: the rest, a banned file too, never looked at.
SCANNED_LIMIT_NOTE = f"more than {MAX_SCANNED_PARTS} MIME parts: the rest not looked at"
#: The note of a multipart without a boundary: its parts, a banned file among them too, never looked at.
NO_BOUNDARY_NOTE = "a multipart without a boundary: its parts not looked at"
#: The note of a parse that spent the parts it shares with others (:class:`PartsBudget`): the rest never looked at.
SHARED_PARTS_NOTE = "MIME parts past those the attached messages may have in all: the rest not looked at"
#: At most this much of a part's MIME fields (_MIME_FIELDS) is kept; its other fields are never kept.
MAX_PART_HEADER = 64 * 1024
#: At most this much of one MIME field is kept.
MAX_FIELD = 16 * 1024
#: The note of a message with a part whose MIME fields went past MAX_FIELD or MAX_PART_HEADER: its names
#: are still read (MAX_OVERFLOW), but a type or transfer encoding past the bound is lost, so the part
#: may be a file never judged as what a mail client reads it to be.
FIELDS_LIMIT_NOTE = (f"MIME fields of a part past {MAX_FIELD} bytes each or {MAX_PART_HEADER} in all: "
                     "only the names and boundary in the rest read")
#: Past MAX_FIELD or MAX_PART_HEADER, the lines of a MIME field that name a file or a boundary are
#: still read (each with the line after it, where a folded value goes on), the first and the last of
#: them up to this much a part: padding before ``filename=`` must not hide the file from the checks
#: while a mail client shows it.
MAX_OVERFLOW = 16 * 1024
#: A ``filename``, ``name`` or ``boundary`` parameter's name and "=" (RFC 2231 sections too).
_NAMING_LINE = re.compile(rb"(?:(?:file)?name|boundary)\s*(?:\*[0-9]*\*?)?\s*=", re.IGNORECASE)
_NAMING_PARAMS = ("filename", "name", "boundary")
#: Bytes of a field kept from each naming parameter past the bounds: its name and value, the next parameters' too.
NAMING_WINDOW = 1024
#: Bytes of a line's end searched again with the next line: a parameter name folded before its "=".
_CARRY = 32
#: Padding characters a base64 part may hold before the rest of it is decoded without them:
#: read quartet by quartet (:func:`_a2b_quartets`), 10 MB of "=" would cost seconds of a worker.
MAX_PADDING = 4096
#: A part's body is decoded this many bytes of lines at a time.
BLOCK = 64 * 1024

_LINE = re.compile(rb"[^\n]*\n|[^\n]+$")
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
#: Every other byte, deleted from base64 by bytes.translate (a third of the time of a regex, 1-character lines).
_NOT_BASE64 = bytes(sorted(set(range(256)) - set(_BASE64)))
#: The transfer encodings a message/rfc822 part may have (RFC 2046 section 5.2.1), "" for none.
_IDENTITY = frozenset({"", "7bit", "8bit", "binary"})
#: The fields the MIME structure and the file names are read from (the rest of a header section can
#: be any size: padding it must not push these out of what is kept).
_MIME_FIELDS = frozenset({b"content-type", b"content-disposition", b"content-transfer-encoding", b"content-name", b"x-sun-data-name"})

#: Fields that name a part's file where no ``filename=`` or ``name=`` parameter does: Thunderbird's
#: ``MimeHeaders_get_name`` falls back to them, and shows and saves the attachment by that name.
_NAME_FIELDS = ("content-name", "x-sun-data-name")

#: Which boundary of each multipart a parse follows (:class:`_Boundary`): Thunderbird's, the standard
#: library's, or both at once with each also up to its first blank (a line of any of them delimits).
Reading = Literal["client", "library", "both"]


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
    """Decodes one part's body, a block of lines at a time, into a temporary file, up to *limit* bytes."""

    def __init__(self, encoding: str, memory: int, limit: int) -> None:
        self.encoding = encoding
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=memory)
        self.size = 0
        self.limit = limit
        self.truncated = False
        self._pending = b""
        self._lines: list[bytes] = []  # lines not decoded yet, BLOCK bytes at most
        self._buffered = 0
        self._eol = b""
        self._padded = False
        self._paddings = 0
        #: Whether base64 went on after its padding, which clients read apart (:func:`_a2b_quartets`).
        self.after_padding = False
        self._uu_state = "before"  # a uuencoded part: before its "begin" line, in its data, or after its "end"

    def feed(self, lines: bytes) -> None:
        """Take one or more whole lines of the body (a line without end only last); they are decoded
        a block at a time, cut where a line at a time would have cut them (a call per line cost seconds for 30 MB)."""
        while lines and not self.truncated:
            need = BLOCK - self._buffered
            cut = len(lines) if len(lines) < need else (lines.find(b"\n", need - 1) + 1 or len(lines))
            self._lines.append(lines[:cut])
            self._buffered += cut
            if self._buffered >= BLOCK:
                self._flush()
            lines = lines[cut:]

    def _flush(self) -> None:
        """Decode the lines gathered, at once where that gives what line by line gives, else line by line."""
        lines, self._lines, self._buffered = self._lines, [], 0
        room = self.limit - self.size
        if self.encoding in UU_ENCODINGS:
            pass  # line by line, below
        elif self.encoding == "base64":
            data = b"".join(lines).translate(None, _NOT_BASE64)
            paddings = self._pending.count(b"=") + data.count(b"=")
            # The quartets decode alike however they are cut, unless MAX_PADDING is passed (quartets past
            # it are cut at each line) or the limit is reached (after_padding is not looked for past it).
            if (not paddings or self._paddings + paddings <= MAX_PADDING) \
                    and (len(self._pending) + len(data)) // 4 * 3 <= room:
                self._base64(data)
                return
        else:
            # Each item is whole lines, or a piece of a long line: a2b_qp keeps nothing from one line to the next.
            decoded = [binascii.a2b_qp(item) for item in lines] if self.encoding == "quoted-printable" else lines
            if lines and len(self._eol) + sum(map(len, decoded)) <= room:
                data = b"".join(decoded)
                tail = lines[-1]
                last = tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1:]  # the last line, decoded
                last = binascii.a2b_qp(last) if self.encoding == "quoted-printable" else last
                end = len(last) - len(last.rstrip(b"\r\n"))  # held back, as _line does
                self._write(self._eol + data[:len(data) - end])
                self._eol = data[len(data) - end:]
                return
        for item in lines:
            for line in _LINE.findall(item):
                if self.truncated:
                    return
                self._line(line)

    def _line(self, line: bytes) -> None:
        if self.encoding in UU_ENCODINGS:
            self._uu_line(line)
        elif self.encoding == "base64":
            self._base64(line.translate(None, _NOT_BASE64))
        else:
            data = binascii.a2b_qp(line) if self.encoding == "quoted-printable" else line
            # The line end before a boundary belongs to the boundary (RFC 2046):
            # write each line's end only once another line follows.
            body = data.rstrip(b"\r\n")
            self._write(self._eol + body)
            self._eol = data[len(body):]

    def _uu_line(self, line: bytes) -> None:
        """A line of a uuencoded part, as Thunderbird decodes one: after its ``begin`` line, up to a line that is
        ``end`` alone (its decoder of parts, not the rules it finds files in a text by: see ``uuencode.encoded_files``)."""
        if self._uu_state == "ended":
            return
        if self._uu_state == "before":
            if line.startswith(b"begin "):
                self._uu_state = "in"
        elif line.rstrip(b"\r\n") == b"end":  # "end " is decoded on, as Thunderbird does: what follows is in its file
            self._uu_state = "ended"
        else:
            self._write(uudecode_line(line))

    def _base64(self, data: bytes) -> None:
        self._pending += data
        usable = len(self._pending) - len(self._pending) % 4
        if usable:
            self._write(self._quartets(self._pending[:usable]))
            self._pending = self._pending[usable:]

    def finish(self) -> IO[bytes]:
        self._flush()
        rest = self._pending.rstrip(b"=")  # a last, incomplete quartet: its padding restored
        if rest and self.encoding == "base64" and len(rest) % 4 != 1:
            self._write(self._quartets(rest + b"=" * (-len(rest) % 4)))
        self.file.seek(0)
        return self.file

    def _quartets(self, data: bytes) -> bytes:
        if (self._padded and data.strip(b"=")) or b"=" in data.rstrip(b"="):
            self.after_padding = True
        self._padded = self._padded or b"=" in data
        self._paddings += data.count(b"=")
        if self._paddings > MAX_PADDING:
            data = data.replace(b"=", b"")  # flagged already (after_padding); bounded time from here
            return binascii.a2b_base64(data[:len(data) - len(data) % 4])
        return _a2b_quartets(data)

    def _write(self, data: bytes) -> None:
        room = self.limit - self.size
        if len(data) > room:
            data, self.truncated = data[:room], True
        self.file.write(data)
        self.size += len(data)


def _a2b_quartets(data: bytes) -> bytes:
    """Base64 *data* (whole quartets of ``[A-Za-z0-9+/=]``) decoded quartet by quartet, as Thunderbird
    does: a quartet with n ``=`` gives 3 - n bytes (one at least), and the quartets after it are
    decoded too (binascii and Python's email stop at the first padding; ZIP readers open
    an archive behind the bytes before it)."""
    out = bytearray()
    start = 0
    while (at := data.find(b"=", start)) >= 0:
        quartet = start + (at - start) // 4 * 4
        out += binascii.a2b_base64(data[start:quartet])
        token = data[quartet:quartet + 4]
        out += binascii.a2b_base64(token.replace(b"=", b"A"))[:max(3 - token.count(b"="), 1)]
        start = quartet + 4
    out += binascii.a2b_base64(data[start:])
    return bytes(out)


def _blocks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """A byte stream given in chunks as blocks of whole lines (each with its line end), one a chunk, and a
    line without end past MAX_PART_HEADER in pieces, each read as a line of its own."""
    rest = b""
    for chunk in chunks:
        data = rest + chunk
        end = data.rfind(b"\n") + 1
        rest = data[end:]
        if end:
            yield data[:end]
        if len(rest) > MAX_PART_HEADER:  # a line without end: pass it on in pieces
            yield rest
            rest = b""
    if rest:
        yield rest


def _body_end(block: bytes, pos: int, open_: _OpenMultiparts, steps: _Steps | None = None) -> int:
    """Where the body lines of *block* from *pos* (a line's start) end: at the next delimiter line of
    an open multipart, else at the block's end.  They go to the decoder at once, not a Python step
    per line (10 MB of 1-character base64 lines cost 1.3 s); a line that starts ``--`` costs one
    dictionary lookup, however deep the multiparts nest.  Those lookups are counted in *steps*, when
    given, and the body ends at the line past its bound too."""
    if not open_:
        return len(block)
    starts = open_.starts
    if block.startswith(b"--", pos) and block.startswith(starts, pos + 2) and open_.level(_marker(block, pos)) is not None:
        return pos
    at = block.find(b"\n--", pos)
    while at >= 0:
        if block.startswith(starts, at + 3):
            if steps is not None and steps.spent():
                return at + 1
            if open_.level(_marker(block, at + 1)) is not None:
                return at + 1
        at = block.find(b"\n--", at + 3)
    return len(block)


class _Steps:
    """Lines read one at a time, up to a bound."""

    def __init__(self, most: int) -> None:
        self.left = most

    def spent(self) -> bool:
        """Count one more; whether the bound is passed."""
        self.left -= 1
        return self.left < 0


def _marker(block: bytes, start: int) -> bytes:
    """What follows the ``--`` of the line of *block* at *start*, without its line end and blanks."""
    end = block.find(b"\n", start)
    return block[start:len(block) if end < 0 else end].rstrip(b"\r\n").rstrip(b" \t\v\f")[2:]


class _OpenMultiparts:
    """The boundaries of the multiparts open at a point of the message, the innermost last.

    A delimiter line is found by a dictionary lookup, not by comparing it with every open boundary:
    nesting is bounded only by MAX_SCANNED_PARTS (each multipart is a part), and a message nested 2,000
    deep must not cost 2,000 comparisons a line.  Nothing nested within that is left unread: a banned file
    wrapped in 21 multiparts is as visible to a mail client as one in 2.
    """

    #: Up to this many variants open, a line is first matched against them all at once (in C): most
    #: lines that start ``--`` are then passed over without a Python step.
    PREFILTER = 32

    def __init__(self) -> None:
        self.levels: list[tuple[bytes, ...]] = []
        self._where: dict[bytes, list[int]] = {}  # a boundary's variant -> the levels that have it, ascending
        #: What a delimiter line starts with after its ``--``: the open variants, or b"" (anything) past PREFILTER.
        self.starts: tuple[bytes, ...] = ()

    def _changed(self) -> None:
        self.starts = tuple(self._where) if len(self._where) <= self.PREFILTER else (b"",)

    def __len__(self) -> int:
        return len(self.levels)

    def push(self, boundary: tuple[bytes, ...]) -> None:
        """Open a multipart with *boundary* (its variants, none repeated) inside the others."""
        for variant in boundary:
            self._where.setdefault(variant, []).append(len(self.levels))
        self.levels.append(boundary)
        self._changed()

    def close_from(self, level: int) -> None:
        """Close the multipart at *level* and those inside it."""
        for boundary in self.levels[level:]:
            for variant in boundary:
                stack = self._where[variant]
                stack.pop()
                if not stack:
                    del self._where[variant]
        del self.levels[level:]
        self._changed()

    def level(self, marker: bytes) -> int | None:
        """The innermost open multipart whose delimiter (*marker*) or close delimiter (*marker* ending ``--``)
        the line ``--`` *marker* is, None when it is body text."""
        found = self._where.get(marker)
        best = found[-1] if found else -1
        if marker.endswith(b"--"):
            closing = self._where.get(marker[:-2])
            if closing and closing[-1] > best:
                best = closing[-1]
        return best if best >= 0 else None

    def reuses(self, boundary: tuple[bytes, ...]) -> bool:
        """Whether a delimiter line of a multipart with *boundary* (its variants) may be one of an open multipart too."""
        return any(variant in self._where or variant + b"--" in self._where
                   or (variant.endswith(b"--") and variant[:-2] in self._where) for variant in boundary)

    def closes(self, marker: bytes, level: int) -> bool:
        """Whether the line ``--`` *marker* closes the multipart at *level*."""
        return marker.endswith(b"--") and marker[:-2] in self.levels[level]


def _decoded(value: str) -> str:
    # As mail clients read a name: raw UTF-8 (RFC 6532) as UTF-8, and an unknown charset or
    # a language tag does not leave it encoded.
    try:
        value = value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        pass  # other 8-bit bytes stay as Latin-1 read them
    return decoded(value)


def _cleaned(text: str) -> str:
    """A name as :func:`_decoded` reads it, stripped; as it is when that raises."""
    return safely(lambda: _decoded(text).strip(), text.strip)


def _filename(part: Message) -> str:
    # A LenientMessage's parameters do not raise (another Message's may: read raw then).
    name = safely(lambda: part.get_filename() or part.get_param("name") or "",
                  lambda: raw_param(part.get("content-disposition"), "filename") or raw_param(part.get("content-type"), "name") or "")
    if not name:  # none to the stdlib, one to Thunderbird (Content-Disposition: attachment, filename=…)
        name = next((found for field, param in (("content-disposition", "filename"), ("content-type", "name"))
                     if (value := part.get(field)) is not None and (found := client_param(str(value), param))), "")
    return _cleaned(collapsed(name))


def _field_params(field: str, value: str, param: str) -> list[tuple[str, object]]:
    """The parameters of one *field* with this *value*, as ``get_params`` gives them, its first (the value) left out.

    When the stdlib raises on them (``x*0="a"; x*="b"``), or on a value with more ";" than it splits in fair
    time (:data:`~milterd.content.mimeparams.MAX_STDLIB_SEPARATORS`: 500 parts of 16,000 each cost 100 s),
    read by :func:`raw_params`, and the values of *param* also joined (``name*0="invoice"; name*=".exe"`` is
    invoice.exe to a client that joins them all).
    """
    params: list[tuple[str, object]] | None = None
    if not crowded(value):
        holder = Message()
        holder[field] = value
        params = safely(lambda: list[tuple[str, object]](holder.get_params([], header=field)[1:]), lambda: None)
    if params is None:
        params = list[tuple[str, object]](raw_params(value)[1:])
        params.append((param, "".join(str(text) for key, text in params if key == param)))
    return params


def _other_names(part: Message, filename: str) -> tuple[str, ...]:
    """The names besides *filename* a client may give the part's file.

    Every ``filename`` and ``name`` parameter of every Content-Disposition and
    Content-Type field (duplicates included), each field's as Thunderbird reads
    it (:func:`~milterd.content.mimeparams.client_param`), and one with backslashes also
    read with its quoted-pairs undone (RFC 2045 section 5.1, RFC 5322 section
    3.2.4: ``"ev\\il.exe"`` is ``evil.exe``; the compat32 parser keeps the backslash).
    """
    found: dict[str, None] = {}
    for field, param in (("content-disposition", "filename"), ("content-type", "name")):
        for value in part.get_all(field, []):
            for key, raw in _field_params(field, str(value), param):
                if key.strip().lower() == param:
                    text = collapsed(raw)
                    found[_cleaned(text)] = None
                    found[_cleaned(unescaped(text))] = None
            for client in client_names(str(value), param):  # where the stdlib reads it otherwise (a comment after it, RFC 2231 duplicates)
                found[_cleaned(client)] = None
    for field in _NAME_FIELDS:
        for value in part.get_all(field, []):
            found[_cleaned(collapsed(str(value)))] = None
    found.pop(filename, None)
    found.pop("", None)
    return tuple(found)


def part_names(part: Message) -> list[str]:
    """Every name a client may give the file of leaf *part*, as the attachment check reads them: its filename (RFC 2047
    and RFC 2231 decoded, as Thunderbird reads a field the standard library cannot), then the others."""
    if not any("name" in str(value).lower() for field in ("content-disposition", "content-type") for value in part.get_all(field, [])):
        return []  # most text parts: no parameter to read
    filename = _filename(part)
    return [name for name in (filename, *_other_names(part, filename)) if name]


#: _Header.field in a MIME field past MAX_FIELD or MAX_PART_HEADER.
_PAST = -2


class _Overflow:
    """What names a file or a boundary in the MIME fields of a part past MAX_FIELD or MAX_PART_HEADER.

    Each ``name``, ``filename`` or ``boundary`` parameter (RFC 2231 sections too) is kept with what
    follows it, NAMING_WINDOW bytes of the unfolded field: its value, also where it is folded onto
    the next lines, or where the name itself is folded before its "=".  The first and the last of
    these windows are kept, half of MAX_OVERFLOW each: a client may show the first name or the last,
    and RFC 2231 sections end the name (its extension) with the last of them.  Each byte of the
    field is looked at once, and at most NAMING_WINDOW bytes of it are copied: linear, however the
    field is folded.
    """

    def __init__(self) -> None:
        self._head: list[bytearray] = []
        self._head_size = 0
        self._tail: deque[bytearray] = deque()
        self._tail_size = 0
        self._room = 0  # bytes the newest window may still take (its value goes on on the next line)
        self._carry = b""  # the end of the previous line, where a name folded before its "=" begins

    def line(self, line: bytes) -> None:
        """Read *line*, a line of a MIME field past the bounds (the field's first line holds its name)."""
        text = line.rstrip(b"\r\n")
        if line[:1] not in (b" ", b"\t"):
            text, self._room, self._carry = text.partition(b":")[2], 0, b""
        elif self._room:
            piece = text[:self._room]
            self._grow(piece)
            self._room -= len(piece)
            text, self._carry = text[len(piece):], b""
            if not text:
                return
        if b"=" not in text:  # no parameter ends its name here: most padding lines
            self._carry = (self._carry + text)[-_CARRY:]
            return
        search = self._carry + text
        at = 0
        while (match := _NAMING_LINE.search(search, at)) is not None:
            window = search[match.start():match.start() + NAMING_WINDOW]
            self._add(bytearray(window))
            self._room = NAMING_WINDOW - len(window)
            at = match.start() + len(window)
        self._carry = search[-_CARRY:] if at < len(search) else b""

    def _add(self, window: bytearray) -> None:
        if not self._tail and self._head_size + len(window) <= MAX_OVERFLOW // 2:
            self._head.append(window)
            self._head_size += len(window)
            return
        self._tail.append(window)
        self._tail_size += len(window)
        self._evict()

    def _evict(self) -> None:
        """Drop the oldest windows of the tail past its half of MAX_OVERFLOW, never the newest."""
        while self._tail_size > MAX_OVERFLOW // 2 and len(self._tail) > 1:
            self._tail_size -= len(self._tail.popleft())

    def _grow(self, piece: bytes) -> None:
        """Add *piece* to the newest window (at most NAMING_WINDOW bytes in all: a bound of each half, exceeded by that)."""
        if self._tail:
            self._tail[-1] += piece
            self._tail_size += len(piece)
            self._evict()
        elif self._head:
            self._head[-1] += piece
            self._head_size += len(piece)

    @property
    def windows(self) -> list[bytes]:
        """The windows kept, in the field's order."""
        return [bytes(window) for window in (*self._head, *self._tail)]

    def params(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The ``filename``, ``name`` and ``boundary`` parameters in the windows, as the stdlib's reading
        (:func:`~milterd.content.mimeparams.raw_params`) gives them, and as Thunderbird's does."""
        windows = self.windows
        if not windows:
            return [], []
        text = "x; " + "; ".join(window.decode("latin-1") for window in windows)
        library = [(key, value) for key, value in raw_params(text)[1:] if key in _NAMING_PARAMS]
        client = [(name, value) for name in _NAMING_PARAMS for value in client_names(text, name)]
        return library, client


class _Header:
    """A part's header section as its lines go by: only its MIME fields, each and all of them bounded."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.size = 0
        self.field = -1  # bytes kept of the MIME field being read; -1 in any other field, _PAST in one past the bounds
        self.cut = False
        self.overflow = _Overflow()
        self.names: list[bytes] = []  # the MIME fields' names, lower-cased, as they come (one twice: readers differ)
        #: Whether a MIME field holds a byte past ASCII: read as Latin-1 here, where 0x85 and 0xA0 are blanks
        #: that strip() removes; U+FFFD to the standard library's parser of the message's bytes.
        self.eight_bit = False

    def add(self, line: bytes) -> None:
        """Keep *line* (one line of the header section) if it is, or continues, a MIME field."""
        if line[:1] not in (b" ", b"\t"):
            name, colon, rest = line.partition(b":")
            # "Content-Type : …" is the field to mail clients (Thunderbird's libmime skips blanks
            # before the colon); the stdlib parser would end the header section at it.
            name = name.rstrip(b" \t\v\f")
            self.field = 0 if colon and name.lower() in _MIME_FIELDS else -1
            if self.field == 0:
                self.names.append(name.lower())
            line = name + colon + rest
        if self.field != -1 and not line.isascii():
            self.eight_bit = True
        if self.field == _PAST:
            self.overflow.line(line)
            return
        if self.field < 0:
            return
        if self.field + len(line) > MAX_FIELD or self.size + len(line) > MAX_PART_HEADER:
            self.cut, self.field = True, _PAST
            self.overflow.line(line)
            return
        self.lines.append(line)
        self.size += len(line)
        self.field += len(line)

    def parse(self, replaced: bool = False) -> Message:
        # Read as Latin-1, each byte one character: parsed from bytes, compat32 turns 8-bit bytes into
        # U+FFFD, and a boundary holding them would never match its delimiter lines (*replaced*: read so).
        # LenientMessage: the parser asks a multipart for its boundary, which the stdlib's would raise on.
        text = b"".join(self.lines).decode("ascii", "replace") if replaced else b"".join(self.lines).decode("latin-1")
        return email.message_from_string(text, LenientMessage, policy=email.policy.compat32)


@dataclass
class PartsBudget:
    """The MIME parts that several parses (the attached messages of one message, in each of their readings)
    may still read between them: each costs about 50 µs, and each parse may read MAX_SCANNED_PARTS."""

    left: int


def attachments(chunks: Iterable[bytes], memory: int = 1024 * 1024, limit: int = 64 * 1024 * 1024,
                skipped: list[str] | None = None, reading: Reading = "both",
                differing: set[Reading] | None = None, shared: PartsBudget | None = None) -> Iterator[Attachment]:
    """Each attachment of the message given as *chunks* (headers, blank line, body), decoded.

    An attachment's ``data`` is valid until the next one is asked for; it holds
    at most *limit* bytes (``truncated`` says when there was more).  What is
    not looked at (a file past MAX_PARTS, parts past MAX_SCANNED_PARTS, fields past MAX_PART_HEADER) is said in
    *skipped*, when given.  Each multipart is split at the delimiters of its
    boundary in *reading*; the default, "both", follows every structure a
    client reads in one parse, but a delimiter of one reading then cuts a part of
    the other short (:func:`every_reading` parses once a reading).  The readings
    a multipart's boundary reads otherwise in than in Thunderbird's are added to
    *differing*, when given.  Each part is also taken from *shared*, when given; past it, the rest is
    not looked at (SHARED_PARTS_NOTE).
    """
    notes: list[str] = [] if skipped is None else skipped
    open_ = _OpenMultiparts()
    digests: list[bool] = []  # whether each open multipart is a multipart/digest, as open_.levels
    in_digest = False  # the header section being read is that of a part of a digest (after its delimiter)
    in_headers = True
    header = _Header()
    decoder: _Decoder | None = None
    current: tuple[str, str, tuple[str, ...]] | None = None
    parts = 0
    for block in _blocks(chunks):
        pos = 0
        while pos < len(block):
            if not in_headers:
                end = _body_end(block, pos, open_)
                if end > pos and decoder is not None:
                    decoder.feed(block[pos:end])
                if end == len(block):
                    break
                pos = end
            end = block.find(b"\n", pos) + 1 or len(block)
            line, pos = block[pos:end], end
            if in_headers:
                if line.strip(b"\r\n"):
                    header.add(line)
                    continue
                in_headers = False
                try:
                    ctype, boundary, encoding, name, others = _read_part(header.parse())
                except Exception as exc:  # noqa: BLE001 - never expected (parameters are read leniently): the next parts are still read
                    notes.append(f"a part's MIME fields could not be read ({exc.__class__.__name__}): its body judged as an unnamed file")
                    ctype, boundary, encoding, name, others = "application/octet-stream", None, "", "", ()
                if header.cut:
                    notes.append(FIELDS_LIMIT_NOTE)
                    ctype, boundary, name, others = _with_overflow(header.overflow.params(), ctype, boundary, name, others)
                if in_digest and b"content-type" not in header.names and not name:
                    # RFC 2046 §5.1.5, as Thunderbird and the stdlib read a digest's part.  A named one stays a file,
                    # judged by its name (invoice.bat), as before: an attached message's own name is not judged.
                    ctype = "message/rfc822"
                header, in_digest = _Header(), False
                parts += 1
                if parts > MAX_SCANNED_PARTS:  # counted at every part's fields: a message/rfc822 chain too
                    notes.append(SCANNED_LIMIT_NOTE)
                    return
                if shared is not None:
                    shared.left -= 1
                    if shared.left < 0:
                        notes.append(SHARED_PARTS_NOTE)
                        return
                kind = _enter(open_, boundary, ctype, encoding, reading, differing)
                if kind == "multipart":
                    digests.append(ctype == "multipart/digest")
                if kind == "message":
                    in_headers = True
                elif kind == "leaf":
                    if ctype.startswith("multipart/"):
                        notes.append(NO_BOUNDARY_NOTE)
                    # An encoded message/rfc822 part (RFC 2046 section 5.2.1 forbids it; Exchange Online sends it) is
                    # decoded as a file: the attachment check opens it as the attached message it is.
                    if name or ctype in SCRIPT_TEXT_TYPES or not (ctype.startswith("text/") or ctype.startswith("multipart/")):
                        if parts <= MAX_PARTS:
                            decoder = _Decoder(encoding, memory, limit)
                            current = (name, ctype, others)
                        elif not _signature(ctype, name, others):
                            notes.append(PARTS_LIMIT_NOTE)
                            return
                if _rest_ignored(in_headers, open_, decoder):
                    return
                continue
            if open_ and line.startswith(b"--"):
                marker = _marker(line, 0)
                level = open_.level(marker)
                if level is not None:
                    if decoder is not None and current is not None:
                        yield from _finished(decoder, current, notes)
                    decoder = current = None
                    if open_.closes(marker, level):
                        open_.close_from(level)
                        del digests[level:]
                        if _rest_ignored(in_headers, open_, decoder):
                            return  # the outermost multipart closed: only its epilogue follows
                    else:
                        open_.close_from(level + 1)
                        del digests[level + 1:]
                        in_headers, in_digest = True, digests[level]
                    continue
            if decoder is not None:
                decoder.feed(line)
    if decoder is not None and current is not None:
        yield from _finished(decoder, current, notes)


def _enter(open_: _OpenMultiparts, boundary: _Boundary | None, ctype: str, encoding: str, reading: Reading,
           differing: set[Reading] | None) -> Literal["multipart", "message", "leaf"]:
    """Follow a part whose header section has just ended: a multipart's boundary is opened (its readings that
    differ added to *differing*, when given); "message" when an attached message's header section follows."""
    if boundary is not None:
        open_.push(boundary.variants(reading))
        if differing is not None:
            differing |= boundary.differing
        return "multipart"
    return "message" if ctype == "message/rfc822" and encoding in _IDENTITY else "leaf"


def every_reading(source: Callable[[], Iterable[bytes]], memory: int, limit: int, skipped: list[str],
                  shared: PartsBudget | None = None) -> Iterator[Attachment]:
    """Each attachment of the message *source* gives (its chunks, each time it is called) in each reading
    of its boundaries that splits it otherwise (:data:`Reading`).

    It is parsed in Thunderbird's reading; again in the standard library's only when a multipart's
    boundary reads otherwise in it; and with every variant at once (as it was read before) only when a
    boundary has one that neither reading gives (a value up to a blank within it), so that nothing
    followed before goes unread: one parse for ordinary mail, three at most.  Each parse of one reading
    follows one boundary a multipart: a delimiter line of the other reading hidden in a base64 body,
    which Thunderbird decodes past, cuts no part short.  An attachment found in several readings is
    given once by each (the attachment check joins their findings).  Every reading's parts are taken
    from *shared*, when given.
    """
    differing: set[Reading] = set()
    lone_cr = _LoneCrWatch()
    yield from attachments(lone_cr.watch(source()), memory, limit, skipped, "client", differing, shared)
    others: tuple[Reading, ...] = ("library", "both")
    for reading in others:
        if reading in differing:  # the library parse may add "both"
            yield from attachments(source(), memory, limit, skipped, reading, differing, shared)
    if lone_cr.seen:
        # A CR without LF ends a line to Thunderbird (libmime's line buffer) and to the standard library: a
        # delimiter line and a part's fields written with bare CRs in a text part are an attachment to them
        # (Postfix passes bare CRs on before 3.8.5 and the like, or with cleanup_replace_stray_cr_lf = no).
        for reading in ("client", *(r for r in others if r in differing)):
            yield from attachments(lone_crs_as_line_ends(source()), memory, limit, skipped, reading, differing, shared)


class _LoneCrWatch:
    """Whether the chunks it watched held a CR that no LF follows."""

    def __init__(self) -> None:
        self.seen = False

    def watch(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """*chunks* as they are, noting a lone CR (one ending a chunk is judged with the next chunk's first byte)."""
        last = b""
        for chunk in chunks:
            if not self.seen and chunk:
                self.seen = (last == b"\r" and not chunk.startswith(b"\n")) or bare_cr(chunk[:-1] if chunk.endswith(b"\r") else chunk)
                last = chunk[-1:]
            yield chunk
        self.seen = self.seen or last == b"\r"


def lone_crs_as_line_ends(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """*chunks* with each CR that no LF follows written CRLF: the lines Thunderbird's and the standard library's
    parsers read."""
    held = False  # the last chunk ended with a CR, held back until the next one's first byte is known
    for chunk in chunks:
        if not chunk:
            continue
        data = (b"\r" if held else b"") + chunk
        held = data.endswith(b"\r")
        yield _LONE_CR.sub(b"\r\n", data[:-1] if held else data)
    if held:
        yield b"\r\n"


def text_views(source: Callable[[], Iterable[bytes]], room: int, saved_room: int = 0) -> Iterator[tuple[bytes, bool]]:
    """The message *source* gives (its chunks, each time it is called) without the bodies of its parts that hold no
    text a reader is shown, each view at most *room* bytes (and *saved_room* of attached messages' bodies), with
    whether it had to be cut (:func:`text_view`); one at a time, so that one is held at once.

    One view in Thunderbird's reading of the boundaries; where a multipart's boundary reads otherwise in
    the standard library's (or with every variant at once), one in each such reading too, as
    :func:`every_reading` parses: a part one reading drops is dropped only from that reading's view.
    """
    differing: set[Reading] = set()
    yield text_view(source(), room, saved_room, "client", differing)
    others: tuple[Reading, ...] = ("library", "both")
    for reading in others:
        if reading in differing:
            yield text_view(source(), room, saved_room, reading, differing)


def text_view(chunks: Iterable[bytes], room: int, saved_room: int = 0, reading: Reading = "client",
              differing: set[Reading] | None = None) -> tuple[bytes, bool]:
    """The message given as *chunks* as written, but for the bodies of its leaf parts that are neither text nor a
    message (an image, an archive, a document: :func:`shows_text`), left empty; at most *room* bytes besides
    *saved_room* bytes of attached messages' bodies (an Outlook message file is a few megabytes when it carries a
    picture), and whether it had to be cut.

    The link reader is given the first few megabytes of a message: a 5 MB image before the HTML part
    hid its links.  Header sections and delimiter lines are kept, and the multiparts followed in *reading*
    (its differing readings added to *differing*), a delimiter ending a header section too, as the standard
    library and Thunderbird read them.  A body is dropped only where no reader may take it for text: a part
    whose header section the standard library may read otherwise (:func:`_odd_line`: a bare CR, a line that is
    no field; MIME fields twice, past their bounds (MAX_PART_HEADER), within a line longer than them or holding
    8-bit bytes) keeps its body, and what a multipart or message so headed holds; so does a part whose type is
    not plainly written.  From a bare CR in a body (a line end to the standard library, whose delimiters are not
    followed here), a multipart reusing an open one's boundary, MAX_SCANNED_PARTS parts or MAX_VIEW_LINES lines
    read one at a time, the rest is kept as written.
    """
    view = _View(room, saved_room)
    open_ = _OpenMultiparts()
    in_headers, dropping, saved, parts = True, False, False, 0
    header, odd = _Header(), False
    kept_depth = 0  # while this many multiparts or more are open (one with an odd header the last), nothing is dropped
    steps = _Steps(MAX_VIEW_LINES)
    following = True  # the structure is followed (until one of the bounds)
    continued = False  # the block goes on with a line the last one began: no delimiter nor field starts it
    tail = b""  # the last block's last two bytes
    for block in _blocks(chunks):
        pos = 0
        if not following:
            view.add(block)
        elif continued:
            pos = block.find(b"\n") + 1 or len(block)
            odd = odd or in_headers
            edge = tail + block[:pos]  # "\r" | "--B" or "\r-" | "-B" across the edge of two pieces
            if _cr_delimiter(edge, 0, len(edge)):
                view.add(tail + block if dropping and not in_headers else block)  # the tail was left out with its body
                following = False
            elif in_headers or not dropping:
                view.add(block[:pos], saved and not in_headers)
        continued, tail = not block.endswith(b"\n"), block[-2:]
        while following and pos < len(block) and not view.full:
            if not in_headers:
                end = _body_end(block, pos, open_, steps)
                if _cr_delimiter(block, pos, end):  # a delimiter line to the standard library, not followed here
                    view.add(block[pos:])
                    following = False
                    break
                if not dropping:
                    view.add(block[pos:end], saved)
                if end == len(block):
                    break
                pos = end
            if steps.spent() or parts > MAX_SCANNED_PARTS:
                view.add(block[pos:])
                following = False
                break
            end = block.find(b"\n", pos) + 1 or len(block)
            line, pos = block[pos:end], end
            view.add(line)
            marker = _marker(line, 0) if open_ and line.startswith(b"--") else None
            level = open_.level(marker) if marker is not None else None
            if marker is not None and level is not None:  # also within a header section: it ends there, that part bodiless
                dropping = saved = False
                odd = bare_cr(line)  # "--B\r\r\n": a blank line follows to the standard library
                header = _Header()
                in_headers = not open_.closes(marker, level)
                open_.close_from(level + 1 if in_headers else level)
                if len(open_) < kept_depth:
                    kept_depth = 0
            elif in_headers:
                if line.strip(b"\r\n"):
                    odd = odd or _odd_line(line)
                    header.add(line)
                    continue
                parts += 1
                ctype, boundary, encoding, names = _part_kind(header)
                odd = (odd or bare_cr(line) or header.cut or _repeated(header.names)
                       or (header.eight_bit and _part_kind(header, replaced=True)[:3] != (ctype, boundary, encoding)))
                header = _Header()
                if boundary is not None and open_.reuses(boundary.variants(reading)):
                    # The standard library gives a delimiter line two open multiparts have to the outermost, this view
                    # to the innermost: from here their structures may differ.
                    view.add(block[pos:])
                    following = False
                    break
                kind = _enter(open_, boundary, ctype, encoding, reading, differing)
                in_headers = kind == "message"
                if odd and kind == "multipart" and not kept_depth:
                    kept_depth = len(open_)
                dropping = (kind == "leaf" and parts <= MAX_SCANNED_PARTS and not kept_depth and not odd
                            and not shows_text(ctype, names))
                saved = kind == "leaf" and (ctype.startswith("message/") or message_file(names) or outlook_name(names))
                odd = odd and kind == "message"  # an attached message's own header section is read as odd too
        if view.full:
            break
    return view.result()


def bare_cr(line: bytes) -> bool:
    """Whether *line* holds a CR that no LF follows (a line end to the standard library's parser and Thunderbird's)."""
    return b"\r" in line and line.count(b"\r") > line.count(b"\r\n")


def _cr_delimiter(data: bytes, start: int, end: int) -> bool:
    """Whether a bare CR in ``data[start:end]`` (body lines) may make a delimiter line the standard library reads and
    this view does not: one starting after it (``x\r--B``), or one it ends (``--B\rtext``)."""
    if data.count(b"\r", start, end) == data.count(b"\r\n", start, end):
        return False  # no bare CR (the usual CRLF mail), counted in C
    at_line_start = start == 0 or data[start - 1] == 0x0A
    return bool(at_line_start and _CR_ENDED_DELIMITER.match(data, start, end)) or _CR_DELIMITER.search(data, start, end) is not None


def _odd_line(line: bytes) -> bool:
    """Whether the standard library's parser may read header *line* otherwise than :class:`_Header`: a bare CR
    within it, or no field line to it (``Content-Type : x``, a line without a colon), which ends the section."""
    return bare_cr(line) or not _STDLIB_FIELD_LINE.match(line)


def shows_text(ctype: str, names: Iterable[str]) -> bool:
    """Whether a leaf part of type *ctype* called *names* may hold text the link reader reads: one of
    :data:`TEXT_TYPES`, a message (encoded or not), a saved message (``.eml``) or an Outlook message file by name,
    an HTML page or a text file by name (:func:`~milterd.content.filetypes.text_file_type`), or a type not plainly
    written (``image /png``, ``(c) text/html``: the link reader takes those for text/plain)."""
    return (ctype in TEXT_TYPES or ctype.startswith(("message/", "multipart/")) or not _PLAIN_TYPE.match(ctype)
            or message_file(names) or outlook_name(names) or bool(text_file_type(names, ctype)))


class _View:
    """The bytes of a text view so far: *room* of them at most, besides *saved_room* of attached messages' bodies."""

    def __init__(self, room: int, saved_room: int) -> None:
        self.data = bytearray()
        self.counted = 0  # bytes counted against room
        self.room = room
        self.saved_left = saved_room
        self.cut_at = -1  # where room ran out in data, once it has

    @property
    def full(self) -> bool:
        """Whether room has run out."""
        return self.cut_at >= 0

    def add(self, piece: bytes, saved: bool = False) -> None:
        """Add *piece*: counted against saved_room when *saved* (a body of an attached message) and it fits, else room."""
        if saved and len(piece) <= self.saved_left:
            self.saved_left -= len(piece)
        else:
            self.counted += len(piece)
            if self.counted > self.room and self.cut_at < 0:
                self.cut_at = len(self.data) + len(piece) - (self.counted - self.room)
        self.data += piece

    def result(self) -> tuple[bytes, bool]:
        """The view and whether it was cut."""
        return (bytes(self.data[:self.cut_at]), True) if self.full else (bytes(self.data), False)


def _repeated(names: list[bytes]) -> bool:
    """Whether a field that decides how a part is read (its type, its transfer encoding) comes twice: readers differ
    in which they take (a Content-Disposition twice only names the file twice)."""
    deciding = [name for name in names if name != b"content-disposition"]
    return len(set(deciding)) < len(deciding)


def _part_kind(header: _Header, replaced: bool = False) -> tuple[str, _Boundary | None, str, tuple[str, ...]]:
    """A part's content type, boundary, transfer encoding and names from its header section (what cannot be
    read gives text/plain: its body is kept); its bytes past ASCII read as U+FFFD when *replaced*, as the standard
    library's parser of the message's bytes reads them (here they are Latin-1, where 0xA0 is a blank)."""
    try:
        ctype, boundary, encoding, name, others = _read_part(header.parse(replaced))
    except Exception:  # noqa: BLE001 - never expected (parameters are read leniently): the body is kept
        return "text/plain", None, "", ()
    if header.cut:
        ctype, boundary, name, others = _with_overflow(header.overflow.params(), ctype, boundary, name, others)
    return ctype, boundary, encoding, (name, *others)


#: The signatures of signed mail (a digest's signed posts carry them), by type, and the names they go by.
_SIGNATURES = {"application/pgp-signature": (".asc", ".sig"), "application/pkcs7-signature": (".p7s",),
               "application/x-pkcs7-signature": (".p7s",)}


def _signature(ctype: str, name: str, others: tuple[str, ...]) -> bool:
    """Whether a part is a message signature (PGP, S/MIME) named as one, if named: no file a reader opens."""
    endings = _SIGNATURES.get(ctype)
    return endings is not None and all(n.lower().endswith(endings) for n in (name, *others) if n)


def _with_overflow(params: tuple[list[tuple[str, str]], list[tuple[str, str]]], ctype: str, boundary: _Boundary | None,
                   name: str, others: tuple[str, ...]) -> tuple[str, _Boundary | None, str, tuple[str, ...]]:
    """A part's content type, boundary, file name and other names with those found past the bounds (*params*: the
    stdlib's reading, Thunderbird's) added: each name is judged; a multipart without a boundary in what was
    kept takes the first found in each reading."""
    library, client = params
    names = [_cleaned(value) for key, value in library + client if key != "boundary"]
    every = [n for n in dict.fromkeys([name, *names, *others]) if n]
    if boundary is None and ctype.startswith("multipart/"):
        boundary = _Boundary.of(_first_boundary(client), _first_boundary(library))
    return ctype, boundary, every[0] if every else "", tuple(every[1:])


def _first_boundary(params: list[tuple[str, str]]) -> str | None:
    return next((value for key, value in params if key == "boundary"), None)


def _read_part(part: Message) -> tuple[str, _Boundary | None, str, str, tuple[str, ...]]:
    """A part's content type, boundary (a multipart's, else None), transfer encoding, file name and
    other names (those only of a part that may be decoded: named, or neither TEXT_TYPES nor multipart)."""
    ctype = (part.get_content_type() or "text/plain").lower()
    declared = part.get("content-type")
    # A multipart or an attached message to Thunderbird: what it holds is followed, as it shows it.
    ctype = (client_container_type(str(declared)) if declared is not None else "") or ctype
    boundary = _boundary(part) if ctype.startswith("multipart/") else None
    name = _filename(part)
    # A text/csv part may be a saved message by a name past the first (a large message's view keeps its body then);
    # a text/plain part may name a file in a second Content-Type or Content-Disposition field, which a client may take.
    kept = (bool(name) or not (ctype in TEXT_TYPES or ctype.startswith("multipart/")) or _repeated_naming_field(part)
            or any(field in part for field in _NAME_FIELDS))
    others = _other_names(part, name) if kept else ()
    if not name and others:
        name, others = others[0], others[1:]
    return ctype, boundary, _encoding(part), name, others


def _repeated_naming_field(part: Message) -> bool:
    """Whether the part has a Content-Type or a Content-Disposition field twice (a later one may name a file)."""
    return any(len(part.get_all(field, [])) > 1 for field in ("content-type", "content-disposition"))


@dataclass(frozen=True)
class _Boundary:
    """A multipart's boundary in each :data:`Reading`."""

    #: Thunderbird's (:func:`~milterd.content.mimeparams.client_param`; an unquoted value ends at a blank),
    #: the stdlib's where it has none.
    client: bytes
    #: The standard library's (``Message.get_boundary``), whole; Thunderbird's where it has none.
    library: bytes
    #: Each of them whole and up to its first blank, all followed at once as before: up to a blank was
    #: Thunderbird's ``boundary=b (comment)`` before client_param read it exactly; ``"a b"`` read up to
    #: its blank (``a``) or ``"B" (comment)`` (``"B"``) is no known client's reading.
    both: tuple[bytes, ...]

    @classmethod
    def of(cls, client: str | None, library: str | None) -> _Boundary | None:
        """The boundary whose value Thunderbird reads as *client* and the stdlib as *library*, None when neither has one."""
        tb, lib = ((value or "").rstrip().encode("latin-1", "replace") for value in (client, library))
        both = tuple(dict.fromkeys(_variants(tb) + _variants(lib)))
        return cls(tb or lib, lib or tb, both) if both else None

    def variants(self, reading: Reading) -> tuple[bytes, ...]:
        """What a delimiter line of this multipart holds in *reading* (after its ``--``)."""
        return (self.client,) if reading == "client" else (self.library,) if reading == "library" else self.both

    @property
    def differing(self) -> set[Reading]:
        """The readings whose parse splits this multipart otherwise than Thunderbird's."""
        found: set[Reading] = set()
        if self.library != self.client:
            found.add("library")
        if set(self.both) - {self.client, self.library}:
            found.add("both")
        return found


def _boundary(part: Message) -> _Boundary | None:
    """A multipart's boundary as mail clients read it, None when it has none: an RFC 2231 one
    (``boundary*=''b``) collapsed; Thunderbird reads some otherwise than the stdlib
    (``boundary="B" (comment)`` is B to it, ``"B" (comment)`` to the stdlib; ``boundary=B C`` is B to it)."""
    field = part.get("content-type")
    found = safely(lambda: Message.get_boundary(part), lambda: raw_param(field, "boundary"))
    client = client_param(str(field), "boundary") if field is not None else None
    return _Boundary.of(client, found)


def _variants(boundary: bytes) -> tuple[bytes, ...]:
    """A boundary whole, and up to its first blank (:attr:`_Boundary.both`)."""
    first = boundary.split(None, 1)[0] if boundary.strip() else b""
    return tuple(dict.fromkeys(b for b in (boundary, first) if b))


def _encoding(part: Message) -> str:
    # Its first token, as mail clients read it: "base64 (comment)" and "base64; x" are base64.
    return first_token(str(part.get("Content-Transfer-Encoding", "")))


def _rest_ignored(in_headers: bool, open_: _OpenMultiparts, decoder: _Decoder | None) -> bool:
    """Whether nothing that follows can be an attachment: a body outside any
    multipart that is not being decoded (a single-part text message, an epilogue)."""
    return not in_headers and not open_ and decoder is None


def _finished(decoder: _Decoder, current: tuple[str, str, tuple[str, ...]], notes: list[str]) -> Iterator[Attachment]:
    data = decoder.finish()
    if decoder.after_padding:
        notes.append("base64 that goes on after its padding: read on, as Thunderbird does (other clients stop there)")
    try:
        yield Attachment(current[0], current[1], data, decoder.size, decoder.truncated, current[2])
    finally:
        data.close()

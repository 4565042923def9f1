"""Files uuencoded or yEnc-encoded in a message's text, decoded as mail clients decode them.

Thunderbird and Outlook show a ``begin 644 name`` line of a plain text body
(Thunderbird an ``=ybegin … name=name`` line too) as the start of an attachment
of that name, and Thunderbird decodes a part whose Content-Transfer-Encoding is
``x-uuencode``: what such a file holds (a zip with an executable, an executable
called ``.pdf``) is judged as a MIME attachment's is, not by its name alone.
Decoding is lenient, as the clients' is: a line a broken encoder wrote too long
is read for the length its first character gives, and a file the text ends in
is given as far as it goes.  A file xxencoded (``.xxe``: uuencoding with the alphabet ``+-0-9A-Za-z``) is told
by its first line, which holds a lower-case letter no uuencoded line has.
"""

from __future__ import annotations

import binascii
import re
import tempfile
from typing import IO, Iterable, Iterator, NamedTuple

#: Content-Transfer-Encoding values of a uuencoded part (Thunderbird's names for it).
UU_ENCODINGS = frozenset({"x-uuencode", "uuencode", "x-uue", "uue"})
#: A line longer than this is read in pieces of this size (encoded lines hold about 60 or 128 characters).
MAX_LINE = 64 * 1024

#: The first line of a uuencoded (``begin 644 name``) or yEnc (``=ybegin … name=name``) file, as Thunderbird reads it.
#: Its name is read to the line's end, or to its first 1,024 characters when the line goes on (a name padded past
#: them with blanks, which Windows drops when it saves the file, passed unjudged); possessive, so that a line cut by
#: the end of a chunk is not matched as a shorter name (the next chunk's text holds it whole).
_BEGIN_LINE = rb"(?:begin [0-7]{3,4} +|=ybegin [^\r\n]*?name=)([^\r\n]{1,1024}+)"
_BEGIN = re.compile(_BEGIN_LINE)
#: Such a line in a text, at the start of one of its lines, whole: ended, or longer than the name read.
_BEGIN_IN_TEXT = re.compile(rb"^%s(?:\r?\n|\r|(?=[^\r\n]))" % _BEGIN_LINE, re.MULTILINE)
#: Extensions of files that hold uuencoded (xxencoded) files, which WinRAR and 7-Zip open as archives of them.
UU_EXTENSIONS = frozenset({"uue", "uu", "xxe"})
#: yEnc adds 42 to each byte (and 64 more to one escaped after "=").
_YENC = bytes((b - 42) % 256 for b in range(256))
#: The characters of a uuencoded line's data (a value from 0 to 63 plus 32, "`" for 0 too).
_UU_DATA = bytes(range(0x20, 0x61))
#: xxencode's alphabet, a value from 0 to 63 each: WinRAR and uudeview write ``.xxe`` files of it.
_XX_ALPHABET = b"+-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: An xxencoded line in the uuencode alphabet it is read by: its values kept, blanks and line ends as they are, any
#: other byte one no uuencoded line holds.
_XX_TO_UU = bytes((_XX_ALPHABET.index(b) or 64) + 32 if b in _XX_ALPHABET else b if b in b" \t\r\n" else 0x7F for b in range(256))
#: A byte of xxencode's alphabet that uuencode's has not: a file's first line with one is xxencoded.
_XX_ONLY = re.compile(rb"[a-z]")


class EncodedFile(NamedTuple):
    """One file found in a message's text: its name, its decoded bytes (up to a limit) and their size."""

    name: str
    data: IO[bytes]
    size: int
    truncated: bool


def uudecode_line(line: bytes) -> bytes:
    """The bytes one uuencoded line holds (its line end ignored); b"" for a line that holds none or cannot be read."""
    line = line.rstrip(b"\r\n")
    if not line or (line[0] - 32) & 63 == 0:
        return b""
    # Read for the length its first character says, as uudecode does (some encoders wrote garbage past it); a
    # character no uuencoder writes is checked first: an exception a line cost a 48 MB file of them seconds.
    line = line[:(((line[0] - 32) & 63) * 4 + 5) // 3]
    if line[1:].translate(None, _UU_DATA):
        return b""
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        return b""


def xxdecode_line(line: bytes) -> bytes:
    """The bytes one xxencoded line holds (its line end ignored): uuencoding with the alphabet ``+-0-9A-Za-z``."""
    return uudecode_line(line.translate(_XX_TO_UU))


def ydecode_line(line: bytes) -> bytes:
    """The bytes one yEnc-encoded data line holds (its line end ignored)."""
    pieces = line.rstrip(b"\r\n").split(b"=")
    out = [pieces[0]]
    for piece in pieces[1:]:
        if piece:  # the escaped byte first: 64 more than its encoding
            out.append(bytes(((piece[0] - 64) % 256,)) + piece[1:])
    return b"".join(out).translate(_YENC)


def begin_name(line: bytes) -> tuple[str, str] | None:
    """``("uu", name)`` or ``("yenc", name)`` for a line that starts an encoded file, else None."""
    found = _BEGIN.match(line)
    if found is None:
        return None
    return "yenc" if line.startswith(b"=") else "uu", file_name(found.group(1).rstrip())


def encoded_head(head: bytes) -> bool:
    """Whether a file's first bytes *head* hold a line that starts an encoded file (``begin 644 invoice.exe``), whole
    or cut by the head's end."""
    return b"begin " in head and _BEGIN_IN_TEXT.search(head.replace(b"\r", b"\n") + b"\n") is not None


def encoded_names(chunks: Iterable[bytes], most: int) -> list[str]:
    """The names of the files uuencoded or yEnc-encoded in the text given as *chunks* (*most* and one more at most:
    the rest are not looked for).

    Thunderbird and Outlook show a ``begin 644 name`` (or ``=ybegin … name=name``) line of a plain
    text body, one without MIME in particular, as the start of an attachment of that name.
    """
    names: dict[str, None] = {}
    tail = b""
    for chunk in chunks:
        data = tail + chunk
        if b"begin " in data:  # after a LF, a CR (a line end Thunderbird reads too) or at the start: the pattern says
            for match in _BEGIN_IN_TEXT.finditer(data.replace(b"\r", b"\n")):
                names[file_name(match.group(1).rstrip())] = None
            if len(names) > most:
                break
        # Keep the last line, incomplete, from its start (its first MAX_LINE bytes) for a begin line the next chunk
        # completes: blanks may pad one past 2 KB (Thunderbird skips any number), which the last 2 KB kept hid.
        tail = data[max(data.rfind(b"\n"), data.rfind(b"\r")) + 1:][:MAX_LINE]
    if b"begin " in tail:  # the pattern's either start ends so: not scanned position by position when absent
        for match in _BEGIN_IN_TEXT.finditer(tail + b"\n"):  # a last line without its end
            names[file_name(match.group(1).rstrip())] = None
    names.pop("", None)
    return list(names)[:most + 1]


def encoded_files(chunks: Iterable[bytes], memory: int, limit: int, most: int, skipped: list[str] | None = None) -> Iterator[EncodedFile]:
    """The files encoded in the text given as *chunks* (the first *most* of them: when there are more, *skipped* is
    told), each decoded into a temporary file (in memory up to *memory* bytes) up to *limit* bytes, the rest skipped
    (``truncated``); each file is closed once the next is asked for.  A file ends at its end line, or as Thunderbird
    ends one: at the next begin line, or (uuencoded) at a line starting with a blank or with "end" in any case.  A
    ``begin`` file whose first line holds a lower-case letter (which uuencode's alphabet has not) within the length
    it declares read as uuencoded is xxencoded (``.xxe``)."""
    kind, name, size, truncated = "", "", 0, False
    data: IO[bytes] | None = None
    for line in _lines(chunks):
        if line[:1] in (b"b", b"=") and (started := begin_name(line)) is not None and started[1]:
            if data is not None:
                yield from _given(EncodedFile(name, data, size, truncated))
                data, most = None, most - 1
            if most <= 0:
                if skipped is not None:
                    skipped.append(f"more than {started[1][:80]!r}: past the encoded files judged")
                return
            kind, name = started
            data, size, truncated = tempfile.SpooledTemporaryFile(max_size=memory), 0, False
            continue
        if data is None:
            continue
        stripped = line.rstrip(b"\r\n")
        if (kind != "yenc" and (stripped[:3].lower() == b"end" or stripped[:1] in (b" ", b"\t"))) or (kind == "yenc" and stripped.startswith(b"=yend")):
            yield from _given(EncodedFile(name, data, size, truncated))
            data, most = None, most - 1
            continue
        if truncated or (kind == "yenc" and stripped.startswith(b"=ypart ")):
            continue
        if kind == "uu" and size == 0 and stripped and _XX_ONLY.search(stripped[:(((stripped[0] - 32) & 63) * 4 + 5) // 3]):
            # A lower-case letter within the length the line declares as uuencoded: garbage past it is ignored by
            # uudecode, and a lower-case letter there switched a uuencoded file to xx (its zip read as nothing).
            kind = "xx"
        decoded = _DECODERS[kind](line)
        if size + len(decoded) > limit:
            decoded, truncated = decoded[:limit - size], True
        data.write(decoded)
        size += len(decoded)
    if data is not None:
        yield from _given(EncodedFile(name, data, size, truncated))


#: Each kind of encoded file's line decoder.
_DECODERS = {"uu": uudecode_line, "xx": xxdecode_line, "yenc": ydecode_line}


def _given(file: EncodedFile) -> Iterator[EncodedFile]:
    file.data.seek(0)
    try:
        yield file
    finally:
        file.data.close()


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of the text given as *chunks* that are not empty, each with its end; a line past :data:`MAX_LINE`
    in pieces.  A CR alone ends a line too (Thunderbird reads one so; Postfix passes it on)."""
    pending = b""
    for chunk in chunks:
        data = (pending + chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n")  # a CRLF cut in two: one empty line more
        start = 0
        while True:
            end = data.find(b"\n", start, start + MAX_LINE)
            if end < 0:
                if len(data) - start >= MAX_LINE:
                    yield data[start:start + MAX_LINE]
                    start += MAX_LINE
                    continue
                break
            if end > start:  # empty lines hold nothing of a file (a megabyte of them cost 0.7 s line by line)
                yield data[start:end + 1]
            start = end + 1
        pending = data[start:]
    if pending:
        yield pending


def file_name(name: bytes) -> str:
    """An encoded file's name as text: UTF-8, else Latin-1."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return name.decode("latin-1")

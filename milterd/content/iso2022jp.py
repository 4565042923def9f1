"""ISO-2022-JP as mail clients decode it, registered as the codec :data:`CODEC`.

Outlook and other Windows mailers label as ISO-2022-JP text that uses Windows'
additions to JIS X 0208 (Microsoft's CP50220/CP50221): NEC's row 13 (circled
digits ①, ㈱, ㍻) and the NEC-selected IBM extensions.  Thunderbird and browsers
decode them (the WHATWG Encoding Standard's iso-2022-jp decoder uses the
Windows JIS X 0208 index, as do half-width katakana after ``ESC ( I``).
Python's ``iso2022_jp`` refuses them, so an ordinary Japanese subject was an
invalid encoded-word (``HDR_ENCODED_WORD_INVALID``) and its text U+FFFD to the
rules, the classifier and the log.

Text Python's ``iso2022_jp`` decodes is decoded by it, unchanged; only text it
refuses is read again here: a JIS X 0208 pair as Python reads it, else as
Windows does (the pair's Shift_JIS bytes in ``cp932``), JIS X 0212 as
``iso2022_jp_1`` does.  Like Python's codec, a line break does not end a
two-byte run.  An error handler's resume position is not honoured: decoding
goes on after the bytes in error (as for every handler milterd uses).
Encoding is Python's ``iso2022_jp``.
"""

from __future__ import annotations

import codecs
import functools
import io
import re
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

#: The name the codec is registered under (looked up like any other by :func:`codecs.lookup`).
CODEC = "x-milterd-iso-2022-jp"
_NAMES = frozenset({CODEC, CODEC.replace("-", "_")})

#: A designation a client honours (WHATWG's iso-2022-jp, and JIS X 0212 as Python's iso2022_jp_1), and the
#: state it selects.  An escape sequence that is none of these is an error of its ESC byte.
_DESIGNATION = re.compile(rb"\x1b(\(B|\(J|\(I|\$@|\$B|\$\(D)")
_STATES = {b"(B": "ascii", b"(J": "roman", b"(I": "katakana", b"$@": "jis0208", b"$B": "jis0208", b"$(D": "jis0212"}
#: In a two-byte state: the runs of pair bytes, and of the other bytes (a line end or blank stands for itself,
#: as in Python's codec).
_RUNS = re.compile(rb"[\x21-\x7e]+|[^\x21-\x7e]+")
#: What an error becomes in a translation table: "replace" and "ignore" are done by the table itself; for any
#: other handler a sentinel no table maps to otherwise marks the error, which the handler is then given.
_SENTINEL = "\uffff"
#: What an error becomes under the handlers the tables apply themselves.
_FIXED = {"replace": "\ufffd", "ignore": ""}


def _jis_to_shift_jis(lead: int, trail: int) -> bytes:
    """The Shift_JIS (cp932) bytes of the JIS X 0208 row/cell pair *lead*, *trail* (both 0x21–0x7E)."""
    first = ((lead - 0x21) >> 1) + 0x81
    if first > 0x9F:
        first += 0x40
    if lead & 1:
        second = trail + 0x1F + (1 if trail >= 0x60 else 0)
    else:
        second = trail + 0x7E
    return bytes((first, second))


def _pair_char(state: str, lead: int, trail: int) -> str | None:
    """The character of a pair in a two-byte *state*, or None for an error."""
    pair = bytes((lead, trail))
    readings = [(b"\x1b$(D" + pair, "iso2022_jp_1")] if state == "jis0212" else \
        [(b"\x1b$B" + pair, "iso2022_jp"), (_jis_to_shift_jis(lead, trail), "cp932")]
    for data, codec in readings:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            pass
    return None  # a pair neither JIS X 0208 (or 0212) nor Windows defines


def _single_char(state: str, byte: int) -> str | None:
    """The character of *byte* in a one-byte *state*, or None for an error (in a two-byte state, the bytes
    between pairs)."""
    if byte >= 0x80 or byte == 0x1B:
        return None
    if state == "roman" and byte in (0x5C, 0x7E):
        return "\u00a5" if byte == 0x5C else "\u203e"
    if state == "katakana" and 0x21 <= byte <= 0x5F:
        return chr(0xFF61 + byte - 0x21)
    return chr(byte)


@functools.cache
def _table(state: str, errors: str) -> dict[int, str]:
    """The translation table of *state* (built once): from a byte, or from a pair read as one UTF-16 code unit,
    to its character, an error to U+FFFD ("replace"), nothing ("ignore") or :data:`_SENTINEL`."""
    error = _FIXED.get(errors, _SENTINEL)
    table: dict[int, str] = {}
    if state.startswith("jis"):
        for lead in range(0x21, 0x7F):
            for trail in range(0x21, 0x7F):
                char = _pair_char(state, lead, trail)
                table[lead << 8 | trail] = error if char is None else char
    for byte in range(256):
        char = _single_char(state, byte)
        table[byte] = error if char is None else char
    return table


def _read(data: bytes, errors: str) -> str:
    """*data* decoded as a client decodes ISO-2022-JP, undecodable bytes handled by the *errors* handler.

    Each run between designations is translated by a table in C (:func:`_table`), a run of pairs read as
    UTF-16 code units: byte by byte in Python, a megabyte of hostile text took a second."""
    out = io.StringIO()  # not a list: a hostile text of short runs made millions of small strings (10 MB: +236 MB)
    state, position = "ascii", 0
    for match in _DESIGNATION.finditer(data):
        _segment(data, position, match.start(), state, errors, out)
        state, position = _STATES[match.group(1)], match.end()
    _segment(data, position, len(data), state, errors, out)
    return out.getvalue()


def _segment(data: bytes, start: int, end: int, state: str, errors: str, out: io.StringIO) -> None:
    """Append to *out* the text of ``data[start:end]``, all in *state*."""
    if start == end:
        return
    if not state.startswith("jis"):
        _translated(data, start, data[start:end].decode("latin-1"), 1, state, errors, out)
        return
    for run in _RUNS.finditer(data, start, end):
        piece = run.group()
        if piece[0] < 0x21 or piece[0] > 0x7E:
            _translated(data, run.start(), piece.decode("latin-1"), 1, state, errors, out)
            continue
        whole = len(piece) & ~1
        if whole:
            _translated(data, run.start(), piece[:whole].decode("utf-16-be"), 2, state, errors, out)
        if whole < len(piece):  # a lead byte without its trail
            if errors in _FIXED:  # as the tables do: no handler to look up for each of a hostile text's lone bytes
                out.write(_FIXED[errors])
            else:
                _error(codecs.lookup_error(errors), out, data, run.start() + whole, run.end(), "incomplete multibyte sequence")


def _translated(data: bytes, start: int, units: str, width: int, state: str, errors: str, out: io.StringIO) -> None:
    """Append *units* (bytes or pairs of ``data`` from *start*, *width* bytes each) translated in *state*; the
    errors a sentinel marks go to the *errors* handler."""
    text = units.translate(_table(state, errors))
    if _SENTINEL not in text:
        out.write(text)
        return
    handler, done = codecs.lookup_error(errors), 0
    for at, char in enumerate(text):  # only under a handler other than replace or ignore: strict stops at the first
        if char == _SENTINEL:
            out.write(text[done:at])
            _error(handler, out, data, start + at * width, start + (at + 1) * width, "illegal multibyte sequence")
            done = at + 1
    out.write(text[done:])


def _error(handler: Callable[[UnicodeError], tuple[str | bytes, int]], out: io.StringIO, data: bytes, start: int, end: int, reason: str) -> None:
    """Append *handler*'s replacement of the bytes *start*:*end* to *out* (decoding goes on after them)."""
    replacement, _ = handler(UnicodeDecodeError(CODEC, data, start, end, reason))
    out.write(replacement if isinstance(replacement, str) else replacement.decode("latin-1"))


def decode(data: ReadableBuffer, errors: str = "strict") -> tuple[str, int]:
    """*data* decoded: by Python's ``iso2022_jp`` where it can, else as mail clients read it (module docstring)."""
    data = bytes(data)
    try:
        return data.decode("iso2022_jp"), len(data)
    except UnicodeDecodeError:
        return _read(data, errors), len(data)


class _IncrementalDecoder(codecs.BufferedIncrementalDecoder):
    """Decodes the whole input at its end: an escape sequence may be split between two pieces."""

    def _buffer_decode(self, data: ReadableBuffer, errors: str, final: bool) -> tuple[str, int]:
        return decode(data, errors) if final else ("", 0)


def _search(name: str) -> codecs.CodecInfo | None:
    if name not in _NAMES:
        return None
    python = codecs.lookup("iso2022_jp")
    return codecs.CodecInfo(python.encode, decode, name=CODEC, incrementalencoder=python.incrementalencoder,
                            incrementaldecoder=_IncrementalDecoder)


codecs.register(_search)

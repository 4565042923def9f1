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
two-byte run.  Encoding is Python's ``iso2022_jp``.
"""

from __future__ import annotations

import codecs
import functools
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

#: The name the codec is registered under (looked up like any other by :func:`codecs.lookup`).
CODEC = "x-milterd-iso-2022-jp"
_NAMES = frozenset({CODEC, CODEC.replace("-", "_")})

_ESC = 0x1B
#: The designations a client honours, and the state each selects.
_DESIGNATIONS = {b"(B": "ascii", b"(J": "roman", b"(I": "katakana", b"$@": "jis0208", b"$B": "jis0208", b"$(D": "jis0212"}
_LONGEST_DESIGNATION = max(map(len, _DESIGNATIONS))


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


@functools.cache
def _jis0208() -> dict[bytes, str]:
    """Every JIS X 0208 pair a client decodes, and its character (built once, on the first text that needs it)."""
    table = {}
    for lead in range(0x21, 0x7F):
        for trail in range(0x21, 0x7F):
            pair = bytes((lead, trail))
            try:
                table[pair] = (b"\x1b$B" + pair).decode("iso2022_jp")
                continue
            except UnicodeDecodeError:
                pass
            try:
                table[pair] = _jis_to_shift_jis(lead, trail).decode("cp932")
            except UnicodeDecodeError:
                pass  # a pair neither JIS X 0208 nor Windows defines
    return table


def _jis0212(pair: bytes) -> str | None:
    try:
        return (b"\x1b$(D" + pair).decode("iso2022_jp_1")
    except UnicodeDecodeError:
        return None


def _single(state: str, byte: int) -> str | None:
    """The character of *byte* in a one-byte *state*, or None for an error."""
    if byte >= 0x80:
        return None
    if state == "roman" and byte in (0x5C, 0x7E):
        return "\u00a5" if byte == 0x5C else "\u203e"
    if state == "katakana" and 0x21 <= byte <= 0x5F:
        return chr(0xFF61 + byte - 0x21)
    return chr(byte)


def _read(data: bytes, errors: str) -> str:
    """*data* decoded as a client decodes ISO-2022-JP, undecodable bytes handled by the *errors* handler."""
    handler = codecs.lookup_error(errors)
    out: list[str] = []
    state = "ascii"
    position = 0
    while position < len(data):
        byte = data[position]
        if byte == _ESC:
            for length in range(2, _LONGEST_DESIGNATION + 1):
                designation = data[position + 1:position + 1 + length]
                if designation in _DESIGNATIONS:
                    state = _DESIGNATIONS[designation]
                    position += 1 + length
                    break
            else:
                position = _error(handler, out, data, position, position + 1, "unknown escape sequence")
            continue
        if state.startswith("jis") and 0x21 <= byte <= 0x7E:
            pair = data[position:position + 2]
            char = _jis0208().get(pair) if state == "jis0208" else _jis0212(pair) if len(pair) == 2 else None
            if char is None:
                position = _error(handler, out, data, position, position + len(pair), "illegal multibyte sequence")
                continue
            out.append(char)
            position += 2
            continue
        char = _single(state, byte)  # in a two-byte run, a control byte or blank stands for itself, as in Python's codec
        if char is None:
            position = _error(handler, out, data, position, position + 1, "byte out of range")
            continue
        out.append(char)
        position += 1
    return "".join(out)


def _error(handler: Callable[[UnicodeError], tuple[str | bytes, int]], out: list[str], data: bytes, start: int, end: int, reason: str) -> int:
    """Where decoding goes on after the bytes *start*:*end*, *handler*'s replacement appended to *out*."""
    replacement, resume = handler(UnicodeDecodeError(CODEC, data, start, end, reason))
    out.append(replacement if isinstance(replacement, str) else replacement.decode("latin-1"))
    return resume if resume >= 0 else len(data) + resume


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

"""A header field's value as a mail client shows it: unfolded, RFC 2047 encoded-words decoded
(and :func:`is_field_name`, what a configured header name must be; :func:`addresses`, the
addresses of an address field; :func:`shown_addresses`, those a mail client shows; :func:`raw_readings`,
the texts a client may show for a field's raw bytes).

Leniently, as clients read what spam sends: each encoded-word is decoded where
it stands (raw UTF-8 around it, RFC 6532, is kept), the blanks between two
encoded-words are dropped (RFC 2047 §6.2), a charset with a language tag
(``utf-8*en``, RFC 2231 §5) is read without it, a registered one Python lacks
(``windows-874``, ``iso-8859-8-i``) with the codec that reads it
(:data:`CHARSET_ALIASES`), one Python does not know as UTF-8, else Latin-1, B encoding takes missing padding, and a word that cannot be decoded at
all is left as sent.  The standard library's ``decode_header`` gives up on the
whole value in each of these cases, so a rule, an attachment name or the log
would see ``=?x-unknown?b?ZXZpbC5leGU=?=`` where a client shows ``evil.exe``.
"""

from __future__ import annotations

import binascii
import codecs
import email.utils
import inspect
import re
from typing import Iterable, Iterator

from .iso2022jp import CODEC as ISO_2022_JP
from .mimeparams import NOT_CHARSETS, client_charset, decode_bytes

#: A line break of a folded field (RFC 5322 §2.2.3); Postfix hands them over as a bare LF.
_FOLD = re.compile(r"\r?\n(?=[ \t])")
#: An encoded-word (RFC 2047 §2), leniently: the encoded text may hold blanks, as broken mailers send.
_WORD = r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?="
_ENCODED_WORD = re.compile(_WORD)
#: Blanks between two encoded-words, which RFC 2047 §6.2 says to ignore.
_BETWEEN_WORDS = re.compile(r"(?<=\?=)[ \t]+(?=" + _WORD + ")")
#: IANA-registered charsets mail clients label text with that Python's codecs do not know, and the
#: codec that reads them (the -i/-e variants of ISO 8859-6 and -8 only say how the text is ordered).
CHARSET_ALIASES = {
    "windows-874": "cp874", "cswindows874": "cp874",
    "windows-31j": "cp932", "cswindows31j": "cp932",
    "iso-8859-6-e": "iso-8859-6", "csiso88596e": "iso-8859-6", "iso-8859-6-i": "iso-8859-6", "csiso88596i": "iso-8859-6",
    "iso-8859-8-e": "iso-8859-8", "csiso88598e": "iso-8859-8", "iso-8859-8-i": "iso-8859-8", "csiso88598i": "iso-8859-8",
}


def python_charset(charset: str) -> str:
    """*charset* as Python's codecs know it: a name in :data:`CHARSET_ALIASES` is replaced, one clients decode as a
    superset (:func:`~milterd.content.mimeparams.client_charset`) is that superset, any other kept."""
    return CHARSET_ALIASES.get(charset.strip().lower()) or client_charset(charset)


#: windows-1252 as the WHATWG Encoding Standard (mail clients, browsers) decodes it: the five bytes Python's cp1252
#: leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) are the C1 controls of the same number, as in Latin-1.
_WINDOWS_1252 = "".join(bytes([byte]).decode("cp1252", "ignore") or chr(byte) for byte in range(256))
#: What a charset a header's raw bytes can be read in must write as ASCII does (not UTF-16, UTF-7, EBCDIC).
_ASCII_SAMPLE = "From: <a@b.c>,"


def raw_readings(data: bytes, charset: str | None = None) -> list[str]:
    """The texts a mail client may show for a header field's raw *data*: the UTF-8 text when *data* is
    UTF-8 (RFC 6532); else each of: UTF-8 with the bad bytes replaced (milterd's own reading), windows-1252
    and the message's declared *charset* (clients read raw 8-bit header bytes in such a fallback: a lone
    0xAD, an invisible soft hyphen there, is U+FFFD in the first).  Data with an escape (ESC) is also read as
    ISO-2022-JP written raw, as Japanese mailers long wrote it and clients still show it: its escapes hold
    "@", "(" and "$", which an address parser reads as an address of its own (``ESC $ B … ESC ( B <sec@bank.test>``
    had the domain "o")."""
    try:
        readings = [data.decode("utf-8")]
    except UnicodeDecodeError:
        readings = [data.decode("utf-8", "replace"), codecs.charmap_decode(data, "strict", _WINDOWS_1252)[0]]
        declared = _declared_reading(data, charset) if charset else None
        if declared is not None:
            readings.append(declared)
    if b"\x1b" in data:
        # As clients decode it (iso2022jp.py, the WHATWG decoder): Python's iso2022_jp read the rest of the field as
        # kanji after a pair cut short, and its iso2022_jp_2 raised RuntimeError on some bytes, "replace" or not.
        readings.append(data.decode(ISO_2022_JP, "replace"))
    return list(dict.fromkeys(readings))


def _declared_reading(data: bytes, charset: str) -> str | None:
    """*data* in *charset* (as :func:`python_charset` names it), or None when that is no charset a header's
    bytes can be in: unknown, no mail charset, or one that does not write ASCII as ASCII."""
    try:
        codec = codecs.lookup(python_charset(charset))
        if codec.name in NOT_CHARSETS or codec.encode(_ASCII_SAMPLE)[0] != _ASCII_SAMPLE.encode():
            return None
        return codec.decode(data, "replace")[0]
    except (LookupError, ValueError, TypeError, RuntimeError):  # a NUL in the name, a codec of bytes or one refusing
        # "replace"; CPython's iso2022_jp_2 raises RuntimeError ("internal codec error") on some bytes
        return None


def unfolded(text: str) -> str:
    """*text* (a header field's value) unfolded: each line break before a blank removed (RFC 5322 §2.2.3)."""
    return _FOLD.sub("", text) if "\n" in text else text


def decoded(text: str) -> str:
    """*text* (a header field's value) unfolded, with its encoded-words decoded."""
    text = unfolded(text)
    if "=?" not in text:
        return text
    text = _BETWEEN_WORDS.sub("", text)
    pieces, position = [], 0
    for run in _runs(_ENCODED_WORD.finditer(text)):
        pieces += [text[position:run[0].start()], _decode_run(run)]
        position = run[-1].end()
    return "".join(pieces) + text[position:]


def _runs(matches: Iterable[re.Match[str]]) -> Iterator[list[re.Match[str]]]:
    """The encoded-words in runs decoded as one text: adjacent words of one charset.  A character split
    between two words (RFC 2047 §5 forbids it, long-word splitters do it) is read whole, as Thunderbird
    and Python's ``decode_header`` read it, where word by word it was two U+FFFD."""
    run: list[re.Match[str]] = []
    for match in matches:
        if run and (match.start() != run[-1].end() or word_charset(match) != word_charset(run[-1])):
            yield run
            run = []
        run.append(match)
    if run:
        yield run


def word_charset(match: re.Match[str]) -> str:
    """The charset of an encoded-word *match*, lower case, without its RFC 2231 language tag (``utf-8*en``)."""
    return match.group(1).partition("*")[0].lower()


def _decode_run(run: list[re.Match[str]]) -> str:
    """The text of a run of encoded-words; a word that is not base64 or quoted-printable at all is left as sent."""
    pieces: list[str] = []
    joined: list[re.Match[str]] = []
    octets = b""
    for match in run:
        data = _octets(match)
        if data is None:
            pieces += [_text(octets, joined), match.group(0)]
            joined, octets = [], b""
        else:
            joined.append(match)
            octets += data
    return "".join(pieces) + _text(octets, joined)


def _octets(match: re.Match[str]) -> bytes | None:
    encoding, encoded = match.group(2), match.group(3).encode("utf-8")
    try:
        if encoding in "bB":
            encoded = encoded.rstrip(b"=")
            return binascii.a2b_base64(encoded + b"=" * (-len(encoded) % 4))
        return binascii.a2b_qp(encoded, header=True)
    except (binascii.Error, ValueError):
        return None


def _text(octets: bytes, words: list[re.Match[str]]) -> str:
    """*octets*, the decoded contents of *words*, as text; *words* as sent where their charset is no text's."""
    if not words:
        return ""
    try:
        return decode_bytes(octets, python_charset(word_charset(words[0])))
    except Exception:  # noqa: BLE001 - a codec that is no text charset
        return "".join(word.group(0) for word in words)


#: A header field name (RFC 5322 §3.6.8): printable US-ASCII but the colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")


def is_field_name(name: str) -> bool:
    """Whether *name* can name a header field: printable US-ASCII without a colon or a space."""
    return bool(_FIELD_NAME.match(name))


# Pythons with the fix of CVE-2023-27043 (3.11.10 and later; Debian 12's 3.11.2 since its
# deb12u updates) read address fields strictly by default and give nothing for a whole value
# they find malformed; the others have no such keyword.
_LENIENT: dict[str, bool] = {"strict": False} if "strict" in inspect.signature(email.utils.getaddresses).parameters else {}


def addresses(value: str) -> list[tuple[str, str]]:
    """The (name, address) pairs of an address field's *value*, read leniently whatever the Python.

    A strict reading gives ``[("", "")]`` for ``alice@bank.example <x@evil.example>`` or
    ``alice@bank.example)<x@evil.example>``, whose every address a lenient one finds: a From
    that names no domain would escape DMARC, where the lenient reading has the message judged
    for both domains.  Milterd reads the same on every Python.
    """
    try:
        return email.utils.getaddresses([value], **_LENIENT)
    except RecursionError:
        pass  # comments or groups nested hundreds deep (valid RFC 5322): the parser recurses once per level
    try:
        return email.utils.getaddresses([_without_comments(value)], **_LENIENT)
    except RecursionError:
        # Never nothing: a From whose parse fails must still be judged (DMARC, local domains), not skipped.
        return [("", address) for address in _ADDR_SPEC.findall(value)]


def shown_addresses(value: str) -> list[str]:
    """The addresses of an address field's *value* that a mail client may show: the one place that says
    which addresses (and so which From domains) DMARC and the local domains' From check judge.

    *value* is read unfolded (RFC 5322 §2.2.3): ``<sec@bank`` CRLF `` .test>`` is sec@bank.test, not an
    address of the domain "bank".  The addresses are those Python's parser finds (:func:`addresses`)
    and those Thunderbird shows (:func:`thunderbird_addresses`), where the two disagree both: an
    encoded-word in an address (``<sec@=?utf-8?q?bank.test?=>``), ``Bank\\(Security <sec@bank.test>``.
    """
    value = unfolded(value)
    return [address for _, address in addresses(value)] + thunderbird_addresses(value)


#: A run of encoded-words as Thunderbird's jsmime finds one (blanks before each word are the run's).
_TB_WORDS = re.compile(r"=\?[^?]*\?[BbQq]\?[^?]*\?=(?:[ \t\r\n]*=\?[^?]*\?[BbQq]\?[^?]*\?=)*")
#: A backslash and the character it escapes, anywhere in a word (jsmime's Token).
_TB_ESCAPE = re.compile(r"\\(.?)", re.S)


def _tb_tokens(value: str) -> list[tuple[bool, str]]:
    """The tokens of an address field as jsmime's getHeaderTokens cuts it (quoted strings, domain literals,
    comments and encoded-words read), each (special, text): a special is one of ``:,;<>@()``."""
    tokens: list[tuple[bool, str]] = []
    start: int | None = None
    end_quote, depth, at, size = "", 0, 0, len(value)
    # The run of encoded-words jsmime finds from a "=?": searched for anew only once passed (linear time).
    word_start = word_end = -1
    while at < size:
        char = value[at]
        if char == "\\":
            at += 2  # escapes the next character wherever it stands, in a quoted string or not
            continue
        if end_quote:
            if char == end_quote:
                text = decoded(value[start + 1:at]) if char == '"' else value[start:at + 1]  # type: ignore[operator]
                tokens.append((False, _TB_ESCAPE.sub(r"\1", text)))
                end_quote, start = "", None
            at += 1
            continue
        if char == "=" and value.startswith("=?", at):
            if word_start < at:
                # The run of encoded-words at or after here, with the blanks before it (back to here at most):
                # searched from its "=?", since a pattern starting with the blanks is retried at each of
                # them (32 KB of blanks after "=?" cost 0.6 s a call).
                found = _TB_WORDS.search(value, at)
                word_start, word_end = (found.start(), found.end()) if found else (size + 1, size + 1)
                while word_start <= size and word_start > at and value[word_start - 1] in " \t\r\n":
                    word_start -= 1
            if word_start <= size:
                # jsmime decodes as many characters from here as the run it found (from here or later) holds.
                if start is not None:
                    tokens.append((False, _TB_ESCAPE.sub(r"\1", value[start:at])))
                    start = None
                end = at + word_end - word_start
                tokens.append((False, decoded(value[at:end])))
                at = end
                continue
        ending = starting = special = False
        if char in " \t\r\n":
            ending = True
        elif depth == 0 and char in ":,;<>@":
            ending = special = True
        elif char in '"[':
            ending = starting = True
            end_quote = '"' if char == '"' else "]"
        elif char in "()":
            depth = depth + 1 if char == "(" else max(depth - 1, 0)
            if depth == (1 if char == "(" else 0):
                ending = special = True
            else:
                starting = True
        else:
            starting = True
        if ending and start is not None:
            tokens.append((False, _TB_ESCAPE.sub(r"\1", value[start:at])))
            start = None
        if special:
            tokens.append((True, char))
        if starting and start is None:
            start = at
        at += 1
    if start is not None:
        tokens.append((False, _TB_ESCAPE.sub(r"\1", value[start + 1:] if end_quote == '"' else value[start:])))
    return tokens


def thunderbird_addresses(value: str) -> list[str]:
    """The addresses of an address field's *value* as Thunderbird shows them (jsmime's parseAddressingHeader,
    display names left out): a backslash escapes anywhere, ``[`` opens a domain literal and ``"`` a quoted
    string even in a display name or a comment, a second ``<`` starts the address again, an encoded-word
    is decoded where it stands (its text a word, never parsed again).  Linear in *value*.
    """
    found: list[str] = []
    address, local, name = "", "", ""
    in_angle = in_comment = needs_space = preserve = closed = False
    for special, text in _tb_tokens(value):
        if not special:
            spaced = " " + text if needs_space and not text.startswith(".") else text
            if in_angle and not in_comment:
                address += spaced
            elif not in_comment:
                name += spaced
                local += text if closed else spaced
                closed = False
            needs_space = not text.startswith(".")
            continue
        if text == ")":
            in_comment, closed = False, True
            if in_angle:
                needs_space = preserve
            else:
                name += "()"  # the comment is part of the display name: what it says does not matter here
                needs_space = True
            continue
        if text == ":":
            name = local = ""
        elif text == "<":
            if in_angle:
                address = local = ""  # jsmime: what was read as an address becomes the display name
            in_angle = True
        elif text == ">":
            in_angle = False
        elif text == "(":
            in_comment, preserve, closed = True, needs_space, False
            if not needs_space:
                needs_space = name != "" and not name.endswith(" ")
        elif text == "@":
            if not in_angle:
                address, name, local, in_angle = local, "", "", True
            address += "@"
        else:  # "," or ";": the end of an address
            if address:
                found.append(address)
            address = local = name = ""
            in_angle = in_comment = False
        needs_space = False
    if address:
        found.append(address)
    return found


#: An addr-spec as a last resort, where the parser gives up: a run without blanks, brackets or quotes around an "@".
_ADDR_SPEC = re.compile(r"[^\s<>()\[\],;:\"@]+@[^\s<>()\[\],;:\"@]+")


def _without_comments(value: str) -> str:
    """*value* with its comments (nested ones too) replaced by a space, without recursion; quoted strings kept."""
    out: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
        elif char == "\\":
            escaped = True
            if depth == 0:
                out.append(char)
        elif char == '"' and depth == 0:
            quoted = not quoted
            out.append(char)
        elif char == "(" and not quoted:
            depth += 1
        elif char == ")" and not quoted and depth:
            depth -= 1
            if depth == 0:
                out.append(" ")
        elif depth == 0:
            out.append(char)
    return "".join(out)

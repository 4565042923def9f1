"""A header field's value as a mail client shows it: unfolded, RFC 2047 encoded-words decoded
(and :func:`is_field_name`, what a configured header name must be; :func:`addresses`, the
addresses of an address field).

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
import email.utils
import inspect
import re

from .mimeparams import decode_bytes

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
    """*charset* as Python's codecs know it: a name in :data:`CHARSET_ALIASES` is replaced, any other kept."""
    return CHARSET_ALIASES.get(charset.strip().lower(), charset)


def decoded(text: str) -> str:
    """*text* (a header field's value) unfolded, with its encoded-words decoded."""
    if "\n" in text:
        text = _FOLD.sub("", text)
    if "=?" in text:
        text = _ENCODED_WORD.sub(_decode_word, _BETWEEN_WORDS.sub("", text))
    return text


def _decode_word(match: re.Match[str]) -> str:
    charset, encoding, encoded = match.groups()
    data = encoded.encode("utf-8")
    try:
        if encoding in "bB":
            data = data.rstrip(b"=")
            octets = binascii.a2b_base64(data + b"=" * (-len(data) % 4))
        else:
            octets = binascii.a2b_qp(data, header=True)
        return decode_bytes(octets, python_charset(charset.partition("*")[0]))
    except Exception:  # noqa: BLE001 - not base64 at all, or a codec that is no text charset
        return match.group(0)


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

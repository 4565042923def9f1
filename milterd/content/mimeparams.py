"""MIME parameters read so that no malformed one can raise.

The standard library's parameter methods raise on what a sender can write
(``x*0="a"; x*="b"`` made ``decode_params`` compare None with an int, a
``filename*=idna''…`` or a NUL in a charset name raised UnicodeError or
ValueError), and its parser asks a multipart for its boundary while parsing:
one such parameter hid every part of a message from the attachment checks,
the body rules and the URI lists.  :class:`LenientMessage` gives the standard
library's answer, or, where that raises, a reading of the raw header text
(:func:`raw_params`); :func:`safely` wraps any other call.
"""

from __future__ import annotations

import codecs
import email.message
import email.utils
import re
import urllib.parse
from typing import Any, Callable, TypeVar

#: Codecs Python has that are no charset of mail, read as unknown ones: punycode decodes in quadratic
#: time (300 KB took 6 s), the escape codecs read backslashes as Python does, undefined always fails.
NOT_CHARSETS = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape", "undefined"})


def decode_bytes(data: bytes, charset: str | None) -> str:
    """*data* in *charset*; an unknown or wrong charset (or a codec that is no mail charset) falls back to UTF-8, then Latin-1."""
    if charset:
        try:
            if codecs.lookup(charset).name not in NOT_CHARSETS:
                return data.decode(charset, "replace")
        except (LookupError, ValueError, TypeError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


#: One parameter of a field as :func:`raw_params` reads it: a name, "=", and a quoted string (to its
#: closing quote, or to the end when it has none) or the text up to the next ";".
_RAW_PARAM = re.compile(r';\s*([^\s;="]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)', re.DOTALL)
#: A name of RFC 2231: ``name*`` (extended), ``name*N`` (a section), ``name*N*`` (an extended section).
_RFC2231_NAME = re.compile(r"(\w+)\*(?:([0-9]+)(\*?))?", re.ASCII)

_Result = TypeVar("_Result")


def safely(call: Callable[[], _Result], fallback: Callable[[], _Result]) -> _Result:
    """What *call* gives, or when it raises (the stdlib on a malformed parameter: TypeError sorting
    ``x*`` against ``x*0``, UnicodeError from an ``idna''`` charset, ValueError from a NUL in one, …)
    what *fallback* gives.  *fallback* must not raise."""
    try:
        return call()
    except Exception:  # noqa: BLE001 - one malformed parameter must not hide the part, or the message
        return fallback()


def _param_bytes(text: str) -> bytes:
    """*text* as the bytes it was read from: Latin-1 (mimeparts reads a header so), surrogate escapes
    (the stdlib's parse of bytes), else UTF-8."""
    for encoding, errors in (("latin-1", "surrogateescape"), ("utf-8", "surrogateescape"), ("utf-8", "replace")):
        try:
            return text.encode(encoding, errors)
        except UnicodeError:
            continue
    return b""  # not reached: UTF-8 with replacement encodes any str


def _param_unquoted(text: str) -> str:
    """A raw parameter value without its quotes (an unclosed one too), its quoted-pairs undone as the stdlib does."""
    if text.startswith('"'):
        text = text[1:-1] if len(text) > 1 and text.endswith('"') else text[1:]
        return text.replace("\\\\", "\\").replace('\\"', '"')
    return text


def raw_params(value: str) -> list[tuple[str, str]]:
    """The parameters of a field's *value* read without the stdlib, for when it raises on them.

    As ``get_params`` gives them (the value first, then name and value, names
    lower-cased), with RFC 2231 pieces joined naively: the sections of a name
    in their order, the unnumbered ``name*`` a value of its own, an extended
    value's ``charset'language'`` prefix read off, its %-escapes undone and
    its bytes decoded from the charset when it is a mail charset, else from
    UTF-8 or Latin-1 (an ``idna`` or NUL charset is read as no charset).
    Never raises.
    """
    params = [(value.split(";", 1)[0].strip(), "")]
    pieces: dict[tuple[str, bool], list[tuple[int, bool, str]]] = {}
    for match in _RAW_PARAM.finditer(value):
        key, text = match.group(1).lower(), _param_unquoted(match.group(2).strip())
        rfc2231 = _RFC2231_NAME.fullmatch(key)
        if rfc2231 is None:
            params.append((key, text))
            continue
        name, number, star = rfc2231.groups()
        extended = number is None or star == "*"
        # A section number of thousands of digits is past int()'s limit: read as last.
        digits = (number or "0").lstrip("0") or "0"
        section = int(digits) if len(digits) <= 18 else 10**18
        pieces.setdefault((name, number is not None), []).append((section, extended, text))
    for (name, numbered), found in pieces.items():
        values = [sorted(found, key=lambda piece: piece[0])] if numbered else [[piece] for piece in found]
        params += [(name, _joined_sections(sections)) for sections in values]
    return params


def _joined_sections(sections: list[tuple[int, bool, str]]) -> str:
    """RFC 2231 sections (number, extended, text) joined and decoded naively (:func:`raw_params`)."""
    if not any(extended for _, extended, _ in sections):
        return "".join(text for _, _, text in sections)
    charset = ""
    data = b""
    for index, (_, extended, text) in enumerate(sections):
        if index == 0 and extended and text.count("'") >= 2:
            charset, _, text = text.split("'", 2)  # charset'language'text
        data += urllib.parse.unquote_to_bytes(_param_bytes(text)) if extended else _param_bytes(text)
    return _param_text(data, charset)


def _param_text(data: bytes, charset: str) -> str:
    """*data* decoded from *charset* when it is a mail charset, else from UTF-8 or Latin-1."""
    if "\x00" in charset or not charset.isascii():
        charset = ""
    return safely(lambda: decode_bytes(data, charset or None), lambda: data.decode("latin-1"))


def raw_param(value: object, name: str) -> str | None:
    """Parameter *name* of a field's *value* (None: no such field) read by :func:`raw_params`; None when it has none."""
    if value is None:
        return None
    return safely(lambda: next((text for key, text in raw_params(str(value))[1:] if key == name.lower()), None), lambda: None)


def collapsed(value: object) -> str:
    """A parameter's value as ``get_param`` gives it, an RFC 2231 ``(charset, language, text)`` collapsed:
    by ``collapse_rfc2231_value``, else (an ``idna`` or NUL charset makes it raise) naively (:func:`_param_text`)."""
    if not isinstance(value, tuple):
        return str(value)
    charset, text = str(value[0] or ""), email.utils.unquote(str(value[-1]))
    return safely(lambda: str(email.utils.collapse_rfc2231_value(value)),
                  lambda: _param_text(text.encode("raw-unicode-escape"), charset))


class LenientMessage(email.message.Message):
    """A compat32 message whose parameters never raise (:func:`extract` parses into it, and mimeparts reads each part's fields so).

    The stdlib raises on malformed ones (``x*0="a"; x*="b"``: TypeError; a
    charset ``idna`` or holding a NUL: UnicodeError, ValueError), from its
    parser too (it asks a multipart for its boundary): each parameter method
    here gives the stdlib's answer, or when it raises the field read by
    :func:`raw_params`, as a mail client shows it (``filename="invoice.exe"``
    is invoice.exe whatever the other parameters hold).
    """

    def _raw(self, header: str) -> list[tuple[str, str]] | None:
        value = self.get(header)
        return None if value is None else safely(lambda: raw_params(str(value)), lambda: [("", "")])

    def get_params(self, failobj: Any = None, header: str = "content-type", unquote: bool = True) -> Any:
        return safely(lambda: super(LenientMessage, self).get_params(failobj, header, unquote),
                      lambda: self._raw(header) or failobj)

    def get_param(self, param: str, failobj: Any = None, header: str = "content-type", unquote: bool = True) -> Any:
        def raw() -> Any:
            return next((text for key, text in (self._raw(header) or [])[1:] if key == param.lower()), failobj)
        return safely(lambda: super(LenientMessage, self).get_param(param, failobj, header, unquote), raw)

    def get_filename(self, failobj: Any = None) -> Any:
        def raw() -> Any:
            found = raw_param(self.get("content-disposition"), "filename")
            found = raw_param(self.get("content-type"), "name") if found is None else found
            return failobj if found is None else found.strip()
        return safely(lambda: super(LenientMessage, self).get_filename(failobj), raw)

    def get_boundary(self, failobj: Any = None) -> Any:
        def raw() -> Any:
            found = raw_param(self.get("content-type"), "boundary")
            return failobj if found is None else found.rstrip()
        return safely(lambda: super(LenientMessage, self).get_boundary(failobj), raw)

    def get_content_charset(self, failobj: Any = None) -> Any:
        def raw() -> Any:
            found = raw_param(self.get("content-type"), "charset")
            return failobj if found is None or not found.isascii() else found.lower()
        return safely(lambda: super(LenientMessage, self).get_content_charset(failobj), raw)

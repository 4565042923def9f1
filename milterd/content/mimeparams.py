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
from typing import Any, Callable, Container, Literal, TypeVar

from .iso2022jp import CODEC as ISO_2022_JP

#: Codecs Python has that are no charset of mail, read as unknown ones: punycode decodes in quadratic
#: time (300 KB took 6 s), the escape codecs read backslashes as Python does, undefined always fails.
NOT_CHARSETS = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape", "undefined",
                          # Codecs Python has that mail clients (the WHATWG Encoding Standard: Thunderbird, browsers) do
                          # not: they show such a part's bytes in their fallback, so its ASCII link is read, not EBCDIC.
                          "utf-32", "utf-32-le", "utf-32-be", "cp037", "cp273", "cp424", "cp500", "cp875", "cp1026", "cp1140"})

#: WHATWG labels of UTF-16LE Python does not know (their bodies were read as UTF-8: NULs between the letters).
_WHATWG_LABELS = {"unicode": "utf-16-le", "ucs-2": "utf-16-le", "csunicode": "utf-16-le", "iso-10646-ucs-2": "utf-16-le",
                  "unicodefeff": "utf-16-le",
                  # The WHATWG Encoding Standard's supersets, which mail clients decode these labels as: GB2312 text
                  # written by GBK mailers, Outlook's ks_c_5601-1987 (cp949), Shift_JIS with Windows' NEC and IBM
                  # characters, Big5 with HKSCS.  Python's strict codecs refused their common characters.
                  **dict.fromkeys(("gb2312", "gb_2312", "gb_2312-80", "chinese", "csgb2312", "csiso58gb231280", "iso-ir-58",
                                   "x-gbk", "gbk", "cp936", "windows-936"), "gb18030"),
                  **dict.fromkeys(("euc-kr", "ks_c_5601-1987", "ks_c_5601-1989", "ksc5601", "ksc_5601", "korean",
                                   "csksc56011987", "iso-ir-149", "cseuckr", "windows-949"), "cp949"),
                  **dict.fromkeys(("shift_jis", "shift-jis", "sjis", "ms_kanji", "csshiftjis", "x-sjis", "ms932"), "cp932"),
                  # ISO-2022-JP with Windows' NEC and IBM characters (Outlook's circled digits), as clients read it.
                  **dict.fromkeys(("iso-2022-jp", "csiso2022jp", "iso2022-jp", "iso2022_jp", "iso2022jp"), ISO_2022_JP),
                  **dict.fromkeys(("big5", "big5-hkscs", "cn-big5", "csbig5", "x-x-big5"), "big5hkscs"),
                  **dict.fromkeys(("x-mac-roman", "x-mac", "csmacintosh"), "mac-roman"),
                  **dict.fromkeys(("tis-620", "iso-8859-11", "dos-874"), "cp874")}


def client_charset(charset: str) -> str:
    """*charset* as mail clients decode it (the WHATWG Encoding Standard's supersets and labels), else as it is."""
    return _WHATWG_LABELS.get(charset.strip().lower(), charset)


def decode_bytes(data: bytes, charset: str | None) -> str:
    """*data* in *charset*; an unknown or wrong charset (or a codec that is no mail charset) falls back to UTF-8, then Latin-1."""
    if charset:
        charset = client_charset(charset)
        try:
            if codecs.lookup(charset).name not in NOT_CHARSETS:
                return data.decode(charset, "replace")
        except (LookupError, ValueError, TypeError, RuntimeError):  # RuntimeError: CPython's iso2022_jp_2 on some bytes
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


#: Windows code page identifiers Python knows under another name than cpN.
_WINDOWS_CODEPAGES = {65001: "utf-8", 65000: "utf-7", 1200: "utf-16-le", 1201: "utf-16-be", 20127: "ascii", 20866: "koi8-r",
                      21866: "koi8-u", 50220: ISO_2022_JP, 50221: ISO_2022_JP, 50222: ISO_2022_JP, 51932: "euc-jp",
                      51949: "euc-kr", 52936: "hz", 54936: "gb18030", 936: "gbk", 10000: "mac-roman",
                      **{28590 + n: f"iso8859-{n}" for n in range(1, 16)}}


def windows_codec(number: int | None) -> str | None:
    """The Python codec of a Windows code page identifier (an Outlook message's PidTagInternetCodepage, RTF's
    ``\\ansicpg``), or None for none or one Python does not know."""
    if not number:
        return None
    try:
        return codecs.lookup(_WINDOWS_CODEPAGES.get(number, f"cp{number}")).name
    except LookupError:
        return None


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


#: What Thunderbird counts as white space in a field (nsCRT::IsAsciiSpace).
_CLIENT_SPACE = " \t\n\f\r"
_CLIENT_NAME_END = re.compile(r"[ \t\n\f\r=;]")
_CLIENT_TOKEN_END = re.compile(r"[ \t\n\f\r;]")
_CLIENT_QUOTE_END = re.compile(r'\\.|"', re.DOTALL)
_CLIENT_FIRST = re.compile(r"[;,]")
#: RFC 2231 sections past this number are refused, as Thunderbird refuses them.
_CLIENT_SECTIONS = 999


#: The start of a Content-Type value as Thunderbird's MimeHeaders_get(…, strip_p) cuts it: up to a ``;``, a ``,`` or a blank.
_CLIENT_TYPE = re.compile(r"\s*([^;,\s]*)")


def client_content_type(value: str) -> str:
    """The content type Thunderbird reads in a Content-Type *value*, lower-cased: cut at the first ``;``, ``,``
    or blank, then only what follows its last ``?`` (``mime_create``, Mozilla bug 659355).  The standard
    library reads ``x?multipart/mixed``, ``multipart/mixed,x/y`` and ``multipart/mixed x/y`` otherwise
    (not a multipart, or text/plain)."""
    match = _CLIENT_TYPE.match(value)
    return (match.group(1) if match else "").rpartition("?")[2].lower()


def client_container_type(value: str, messages: Container[str] = ("message/rfc822",)) -> str:
    """:func:`client_content_type` of *value* when it is a multipart or one of *messages* (a part Thunderbird opens
    and shows what it holds), else ""."""
    client = client_content_type(value)
    return client if client.startswith("multipart/") or client in messages else ""


def client_param(value: str, name: str) -> str | None:
    """Parameter *name* of a field's *value* as Thunderbird reads it, None when it has none.

    Its nsMIMEHeaderParamImpl::DoParameterInternal, step by step: the
    parameters start after the first ``;`` or ``,``; a quoted value ends at its
    closing quote (or the field's end) and a token at a blank or ``;``; a value
    not followed by ``;`` ends the field (``filename="a.js" (comment)`` is
    a.js); the first plain value is kept, the first ``name*=`` (RFC 5987) is
    preferred to it, and RFC 2231 sections to both, joined from 0 up to the
    first one missing, a duplicate or a malformed number ending them.  The
    standard library reads several of these otherwise (``"a.js" (comment)``,
    duplicates joined), and a name or a boundary it reads differently hid a
    file Thunderbird shows from the attachment checks.  Never raises.
    """
    readings: list[tuple[str, bool]] = safely(lambda: _client_readings(value, name.lower()), lambda: [])
    return next((text for text, valid in readings if valid), None)


def client_names(value: str, name: str) -> list[str]:
    """Every reading of parameter *name* that Thunderbird may show (:func:`client_param`'s first):
    the one a version of it prefers, and those it would fall back to (a value in a charset it does
    not decode, a section another version ends otherwise)."""
    readings: list[tuple[str, bool]] = safely(lambda: _client_readings(value, name.lower()), lambda: [])
    first = [text for text, valid in readings if valid][:1]
    return list(dict.fromkeys(first + [text for text, _ in readings]))


def _client_readings(text: str, name: str) -> list[tuple[str, bool]]:
    """Thunderbird's readings of parameter *name* in its order of preference (name*=, the sections,
    name=), each with whether it decodes in its charset (one that does not is passed over)."""
    end = len(text)
    at = _skip_space(text, 0)
    start = at
    first = _CLIENT_FIRST.search(text, at)
    at = _skip_space(text, first.end()) if first else end
    if at >= end:
        at = start  # no ";": the field may be parameters alone
    plain: str | None = None  # name=
    extended: bytes | None = None  # name*= (RFC 5987), %-decoded
    sections: dict[int, tuple[str, bool, bool]] = {}  # name*N= and name*N*= (RFC 2231): text, %-encoded, quoted
    extended_charset = sections_charset = ""
    accept = True  # sections are still taken
    while at < end:
        key_end = _CLIENT_NAME_END.search(text, at)
        key = text[at:key_end.start() if key_end else end].lower()
        at = _skip_space(text, key_end.start() if key_end else end)
        if at >= end:
            break
        if text[at] == "=":  # a parameter without "=" is passed over (from its ";" on)
            at = _skip_space(text, at + 1)
            quoted = text.startswith('"', at)
            if quoted:
                raw, at = _client_quoted(text, at + 1)
            else:
                token_end = _CLIENT_TOKEN_END.search(text, at)
                stop = token_end.start() if token_end else end
                raw, at = text[at:stop], stop
            if key == name:
                if plain is None:
                    unfolded = raw.replace("\r", "").replace("\n", "")
                    plain = unescaped(unfolded) if quoted else unfolded
            elif key.startswith(name + "*"):
                rest = key[len(name) + 1:]
                percent = key.endswith("*")
                number = _section_number(rest[:-1] if percent else rest) if rest else -1
                if rest and number < 0:
                    accept = False
                elif not rest or (number == 0 and percent and accept):  # name*=, or the first section of an encoded value
                    field_charset, data = _charset_split(raw)
                    if rest:
                        sections_charset = field_charset
                    else:
                        extended_charset = field_charset
                    if data and extended is None and not rest:
                        if _valid_percent(data):
                            extended = urllib.parse.unquote_to_bytes(data)
                    elif data:
                        accept = _add_section(sections, 0, data, percent, quoted) and accept
                elif accept:
                    accept = _add_section(sections, number, raw, percent, quoted)
        at = _skip_space(text, at)
        if at < end and text[at] == ";":
            at = _skip_space(text, at + 1)
        else:
            break  # no ";": the field ends here for Thunderbird
    found: list[tuple[bytes, str]] = []
    if extended is not None:
        found.append((extended, extended_charset))
    joined = b""
    for number in range(len(sections)):
        if number not in sections:
            break  # a section missing ends the value
        data, percent, quoted = sections[number]
        piece = urllib.parse.unquote_to_bytes(data) if percent else data.encode("latin-1", "replace")
        joined += unescaped(piece.decode("latin-1")).encode("latin-1") if quoted else piece
    if joined:
        found.append((joined, sections_charset))
    readings = [(_param_text(data, charset), _decodes(data, charset)) for data, charset in found]
    if plain is not None:
        readings.append((plain, True))
    return readings


def _decodes(data: bytes, charset: str) -> bool:
    """Whether *data* decodes in *charset* (no charset: as is), as Thunderbird checks an RFC 2231 value."""
    if not charset:
        return True
    charset = client_charset(charset)  # Thunderbird decodes gb2312 as GBK, ks_c_5601-1987 as cp949…
    try:
        if codecs.lookup(charset).name in NOT_CHARSETS:
            return False
        data.decode(charset)
    except (LookupError, ValueError, TypeError, RuntimeError):
        return False
    return True


def _charset_split(raw: str) -> tuple[str, str]:
    """An RFC 5987/2231 value's charset and its %-encoded text (``charset'language'text``, ``charset'text`` or ``text``)."""
    quote = raw.find("'")
    if quote < 0:
        return "", raw
    second = raw.find("'", quote + 1)
    return raw[:quote], raw[second + 1:] if second >= 0 else raw[quote + 1:]


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in _CLIENT_SPACE:
        at += 1
    return at


def _client_quoted(text: str, at: int) -> tuple[str, int]:
    """A quoted value from *at* (after its opening quote): its text (escapes kept) and where the field goes on."""
    for match in _CLIENT_QUOTE_END.finditer(text, at):
        if match.group() == '"':
            return text[at:match.start()], match.end()
    return text[at:], len(text)


#: A field's first token, as mail clients read a Content-Type ("text/html (HTML mail)" is text/html) and a
#: Content-Transfer-Encoding ("base64 ", "base64; x", "base64 (comment)" are base64): up to a blank, a ";" or a "(".
_FIRST_TOKEN = re.compile(r"\s*([^\s;(,]*)")


def first_token(value: str) -> str:
    """The first token of a field's *value* (``_FIRST_TOKEN``), lower-cased."""
    match = _FIRST_TOKEN.match(value)
    return match.group(1).lower() if match else ""


#: A quoted-pair (RFC 5322 §3.2.1): a backslash and the character it stands for.
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def unescaped(text: str) -> str:
    """*text* with its quoted-pairs undone (``ev\\il`` is ``evil``)."""
    return _QUOTED_PAIR.sub(r"\1", text)


def _section_number(digits: str) -> int:
    """An RFC 2231 section number as Thunderbird takes it; -1 for none (empty, a leading 0, not digits, past 999)."""
    if not digits or (len(digits) > 1 and digits[0] == "0") or not digits.isascii() or not digits.isdigit() or len(digits) > 3:
        return -1
    return int(digits)


def _add_section(sections: dict[int, tuple[str, bool, bool]], number: int, data: str, percent: bool, quoted: bool) -> bool:
    """Record a section; False (the sections end there) for a duplicate, or one both quoted and %-encoded."""
    if number in sections or number > _CLIENT_SECTIONS or (percent and quoted):
        return False
    sections[number] = (data, percent, quoted)
    return True


def _valid_percent(data: str) -> bool:
    return all(re.fullmatch(r"[0-9A-Fa-f]{2}", data[i + 1:i + 3]) for i in range(len(data)) if data[i] == "%")


#: Whose reading of a boundary read two ways a parse follows (:func:`reading`): "delimiting" takes Thunderbird's
#: where only its delimiter lines are in the message (else the stdlib's); "client" Thunderbird's; "library" the stdlib's.
Preference = Literal["delimiting", "client", "library"]


#: A field with more ";" than this is read by :func:`raw_params` alone: the stdlib's parameter split
#: (``email.message._parseparam``) counts the quotes from the value's start again at each ";", 0.1 s a
#: call for 7,500 of them in one quoted value, several calls a part, up to 2,000 parts a message.
MAX_STDLIB_SEPARATORS = 64


def crowded(value: object) -> bool:
    """Whether a field's *value* has more ";" than the stdlib's parameter split reads in fair time (:data:`MAX_STDLIB_SEPARATORS`)."""
    return str(value).count(";") > MAX_STDLIB_SEPARATORS


class LenientMessage(email.message.Message):
    """A compat32 message whose parameters never raise (:func:`extract` parses into it, and mimeparts reads each part's fields so).

    The stdlib raises on malformed ones (``x*0="a"; x*="b"``: TypeError; a
    charset ``idna`` or holding a NUL: UnicodeError, ValueError), from its
    parser too (it asks a multipart for its boundary): each parameter method
    here gives the stdlib's answer, or when it raises the field read by
    :func:`raw_params`, as a mail client shows it (``filename="invoice.exe"``
    is invoice.exe whatever the other parameters hold); a multipart's
    boundary is Thunderbird's reading (:func:`client_param`) where it has one.
    """

    def _raw(self, header: str) -> list[tuple[str, str]] | None:
        value = self.get(header)
        return None if value is None else safely(lambda: raw_params(str(value)), lambda: [("", "")])

    def _crowded(self, header: str) -> bool:
        """Whether *header* has more ";" than the stdlib's parameter split reads in fair time (:data:`MAX_STDLIB_SEPARATORS`)."""
        value = self.get(header)
        return value is not None and crowded(value)

    def get_params(self, failobj: Any = None, header: str = "content-type", unquote: bool = True) -> Any:
        if self._crowded(header):
            return self._raw(header) or failobj
        return safely(lambda: super(LenientMessage, self).get_params(failobj, header, unquote),
                      lambda: self._raw(header) or failobj)

    def get_param(self, param: str, failobj: Any = None, header: str = "content-type", unquote: bool = True) -> Any:
        def raw() -> Any:
            return next((text for key, text in (self._raw(header) or [])[1:] if key == param.lower()), failobj)
        if self._crowded(header):
            return raw()
        return safely(lambda: super(LenientMessage, self).get_param(param, failobj, header, unquote), raw)

    def get_filename(self, failobj: Any = None) -> Any:
        def raw() -> Any:
            found = raw_param(self.get("content-disposition"), "filename")
            found = raw_param(self.get("content-type"), "name") if found is None else found
            return failobj if found is None else found.strip()
        return safely(lambda: super(LenientMessage, self).get_filename(failobj), raw)

    #: The message being parsed, when the parser is given it (:func:`reading`): a multipart's boundary
    #: is then the reading whose delimiter it holds.
    source: bytes = b""
    #: How many more multiparts read two ways may be judged by searching the source for their delimiters
    #: (each judgement searches all of it up to twice: DELIMITER_SEARCHES searches a parse at most).
    judgements_left = 0
    #: Whose reading a boundary read two ways is (:data:`Preference`).
    prefer: Preference = "delimiting"
    #: Set once a multipart's boundary read two ways, on the class :func:`reading` makes for one parse.
    differing = False

    def get_boundary(self, failobj: Any = None) -> Any:
        field = self.get("content-type")

        def raw() -> Any:
            found = raw_param(field, "boundary")
            return failobj if found is None else found.rstrip()
        stdlib = safely(lambda: super(LenientMessage, self).get_boundary(failobj), raw)
        client = (client_param(str(field), "boundary") or "").rstrip() if field is not None else ""
        if not client or client == stdlib:
            return stdlib
        if self.source:  # a parse's own class (reading()), never LenientMessage's, which every parse shares
            type(self).differing = True
        # Thunderbird reads it otherwise (boundary="B" (comment) is B to it, '"B" (comment)' to the stdlib): its
        # reading where the stdlib has none, where it is preferred, or where only Thunderbird's delimits the message's parts.
        if not isinstance(stdlib, str) or self.prefer == "client":
            return client
        if self.prefer == "delimiting" and self._may_judge() and _delimits(self.source, client) and not _delimits(self.source, stdlib):
            return client
        return stdlib

    def _may_judge(self) -> bool:
        """Whether one more multipart read two ways may be judged by searching the source: past
        :data:`DELIMITER_SEARCHES` searches (a thousand of them in 4 MB cost a second) the stdlib's reading stands."""
        cls = type(self)
        if not self.source or cls.judgements_left <= 0:
            return False
        cls.judgements_left -= 1
        return True

    def get_content_charset(self, failobj: Any = None) -> Any:
        def raw() -> Any:
            found = raw_param(self.get("content-type"), "charset")
            return failobj if found is None or not found.isascii() else found.lower()
        return safely(lambda: super(LenientMessage, self).get_content_charset(failobj), raw)


#: Searches of the message a parse may make to judge multiparts whose boundary two readings give otherwise
#: (:func:`reading`): two a multipart, one for each reading's delimiter.
DELIMITER_SEARCHES = 16


def _delimits(source: bytes, boundary: str) -> bool:
    """Whether *source* has a delimiter line of *boundary*, as the stdlib parser matches one (the whole line)."""
    line = rb"(?m)^--" + re.escape(boundary.encode("latin-1", "replace")) + rb"(?:--)?[ \t]*\r?$"
    return re.search(line, source) is not None


def reading(source: bytes, prefer: Preference = "delimiting") -> type[LenientMessage]:
    """:class:`LenientMessage` for one parse of *source*: a boundary read two ways is the one that delimits its
    parts, or Thunderbird's, or the stdlib's (*prefer*); the class's ``differing`` says whether one was met."""
    return type("SourceMessage", (LenientMessage,), {"source": source, "judgements_left": DELIMITER_SEARCHES // 2, "prefer": prefer, "differing": False})

"""Text that leaves milterd: escaping what outsiders control, hiding secrets.

Anything a client or a remote DNS zone controls (Subject, HELO, envelope
addresses, client names, SPF explanations, DNSBL TXT records) may carry CR,
LF, ESC or other control characters.  Written as they are, they forge log
lines, inject headers into mail milterd sends, drive a terminal, or make
libmilter refuse a reply.  :func:`escape` is the one function that turns them
into visible escapes (``\\r``, ``\\n``, ``\\x1b``) wherever such text goes out:
log lines, SMTP replies (``reply.setreply_args``), notices and digests,
``quarantine show``.

A database URL's password never leaves either: :func:`redact_url` for the URL
itself, :func:`redact` for any text (an exception's message) that may embed it.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import regex

#: Control characters (C0, DEL, C1), lone surrogates (undecodable bytes kept
#: by surrogateescape), the Unicode line and paragraph separators, and the
#: bidirectional overrides that make a terminal show text in another order.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # a raw byte carried by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def escape(value: object, ascii_only: bool = False) -> str:
    """*value* as text with every control character made a visible escape.

    CR, LF and TAB become ``\\r``, ``\\n``, ``\\t``; other control characters
    and undecodable bytes ``\\xNN``; line separators and bidirectional
    overrides ``\\uNNNN``.  With *ascii_only* every other non-ASCII character
    is escaped too (``\\xe9``, ``\\u20ac``), for SMTP replies and log lines.
    """
    text = value if isinstance(value, str) else str(value)
    text = _UNSAFE.sub(_escape_char, text)
    if ascii_only and not text.isascii():
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text


#: The end of a text cut inside an escape of :func:`escape` (``\\x0``, ``\\u20``, ``\\U0001f6``, a lone ``\\``).
_PARTIAL_ESCAPE = re.compile(r"\\(?:x[0-9a-f]?|u[0-9a-f]{0,3}|U[0-9a-f]{0,7})?\Z")


def cut(text: str, width: int, mark: str = "…") -> str:
    """*text* (escaped already) in *width* characters, the cut marked by *mark*; never half an escape
    (``\\x…`` would read as a backslash the sender wrote)."""
    if len(text) <= width:
        return text
    if width <= len(mark):
        return mark[:max(width, 0)]
    return _PARTIAL_ESCAPE.sub("", text[: width - len(mark)]) + mark


def redact_url(url: str) -> str:
    """*url* with its passwords replaced by ``***`` (``postgresql://user:***@host/db``, ``…?password=***``).

    For ``config show``, ``doctor`` and every error that names the database.
    A string that is not a URL with credentials comes back unchanged.
    """
    if "://" not in url:
        return url
    head, question, query = _userinfo_hidden(url).partition("?")
    if not question:
        return head
    params = [(key, value, sep) for key, sep, value in (param.partition("=") for param in query.split("&"))]
    return head + "?" + "&".join(f"{key}={'***' if _is_password(key) and value else value}" if sep else key for key, value, sep in params)


def url_password(url: str) -> str:
    """The password in *url*'s ``user:PASSWORD@``, else in its ``password=`` parameter, percent-decoded (empty when there is none)."""
    return next(iter(_passwords(url)), ("", ""))[1]


def _is_password(key: str) -> bool:
    """Whether a URL parameter named *key* (as written) holds a password: SQLAlchemy hands ``password`` to the
    driver as the password, and the drivers take others (``sslpassword``); its name is decoded as SQLAlchemy
    decodes it (``pass%77ord`` is password)."""
    return unquote_plus(key).strip().lower().endswith("password")


def _passwords(url: str) -> list[tuple[str, str]]:
    """Each password in *url* (its ``user:PASSWORD@``, then every ``…password=`` parameter), as
    (written there, decoded), the empty ones left out.  The parameters are read as SQLAlchemy's
    ``make_url`` reads them: everything after the first ``?`` (a ``#`` too), split at ``&``."""
    found = [(written, unquote(written)) for written in _written_passwords(url)]
    if "://" in url:
        query = _userinfo_hidden(url).partition("?")[2]
        for key, _, value in (param.partition("=") for param in query.split("&")):
            if value and _is_password(key):
                found.append((value, unquote_plus(value)))
    return found


def has_password(url: str) -> bool:
    """Whether *url* (a database URL) carries a password, in its ``user:PASSWORD@`` or a ``password=`` parameter."""
    return bool(_passwords(url))


def _userinfo_hidden(url: str) -> str:
    """*url* with only its ``user:PASSWORD@`` password replaced by ``***`` (a ``?`` in it must not start the query),
    in each reading, the longest first (``u:p@ss@host`` is ``u:***@host``)."""
    for written in sorted(_written_passwords(url), key=len, reverse=True):
        url = url.replace(f":{written}@", ":***@", 1)
    return url


#: ``scheme://user:PASSWORD@`` as SQLAlchemy's ``make_url`` reads it: the password runs to the first "@",
#: "/" and "?" included.
_SQLALCHEMY_USERINFO = re.compile(r"^(?P<user>[\w+]+://[^:/]*:)(?P<password>[^@]*)@")


def password_problem(url: str) -> str:
    """Why *url* would expose its password, or "": a raw "@" in it makes SQLAlchemy read the password to
    that "@" and the rest as part of the host, which the driver's errors quote (no redaction knows that
    fragment for a password)."""
    match = _SQLALCHEMY_USERINFO.match(url)
    if match is None:
        return ""
    host = url[match.end():].split("/", 1)[0].split("?", 1)[0]
    return "the password holds an \"@\": percent-encode it (%40)" if "@" in host else ""


def _written_passwords(url: str) -> list[str]:
    """The password of *url*'s ``user:PASSWORD@`` as written there (percent-encoded or not), read as SQLAlchemy
    reads it (up to the first "@") and up to the authority's last "@" (``u:p@ss@host``, what was meant); none
    when there is none."""
    found = []
    match = _SQLALCHEMY_USERINFO.match(url)
    if match and match.group("password"):
        found.append(match.group("password"))
    scheme, sep, rest = url.partition("://")
    credentials, at, _host = rest.partition("/")[0].rpartition("@")
    if sep and at and ":" in credentials:
        found.append(credentials.split(":", 1)[1])
    return [written for written in dict.fromkeys(found) if written]


#: A password shorter than this is hidden only where a URL holds it (``user:PASSWORD@``, ``password=PASSWORD``):
#: hiding every occurrence of ``1`` would turn ``127.0.0.1`` and ``451`` into ``***``.
SHORT_PASSWORD = 4


@functools.lru_cache(maxsize=16)
def _password_forms(url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """*url* redacted, and each (text, replacement) that hides its passwords, the longest first.

    The forms: as written in the URL, decoded (SQLAlchemy's ``make_url`` and the
    drivers use it so), percent-encoded as ``urllib.parse.quote`` / ``quote_plus``
    and SQLAlchemy's ``render_as_string`` write it, and as :func:`escape` shows it
    (a line escaped before it was redacted).
    """
    pairs: set[tuple[str, str]] = set()
    for written, password in _passwords(url):
        forms = {written, password, quote(password, safe=""), quote(password), quote(password, safe=" +"),
                 quote_plus(password), escape(password, ascii_only=True)}
        forms.discard("")
        if len(password) < SHORT_PASSWORD:
            pairs.update((f"{around[0]}{form}{around[1]}", f"{around[0]}***{around[1]}")
                         for form in forms for around in ((":", "@"), ("password=", "&"), ("password='", "'")))
        else:
            pairs.update((form, "***") for form in forms)
    return redact_url(url), tuple(sorted(pairs, key=lambda pair: (-len(pair[0]), pair[0])))


def redact(text: str, url: str) -> str:
    """*text* (an error message, a log line) with *url*'s password hidden wherever it appears.

    SQLAlchemy and the drivers quote the URL or parts of it in their
    exceptions; the password may appear as written, decoded or percent-encoded.
    A short password (under :data:`SHORT_PASSWORD` characters) is hidden only in
    a URL's ``user:PASSWORD@``.  Redact before escaping: an escaped non-ASCII
    password (``p\\xe4ss``) is caught too, but only as :func:`escape` writes it.
    """
    if not url:
        return text
    redacted_url, forms = _password_forms(url)
    if url in text:
        text = text.replace(url, redacted_url)
    for form, replacement in forms:
        if form in text:
            text = text.replace(form, replacement)
    return text


#: The escape :func:`storable` writes for a lone surrogate of undecodable input (``\\udce9`` for the byte 0xE9).
_STORED_SURROGATE = re.compile(r"\\u(dc[89a-f][0-9a-f])")


def unstored(value: str) -> str:
    """*value* as it was before :func:`storable` escaped its undecodable bytes (the surrogates back; a NUL's
    ``\\0`` stays, as no address or name holds one)."""
    if "\\u" not in value:
        return value
    return _STORED_SURROGATE.sub(lambda match: chr(int(match.group(1), 16)), value)


def storable(value: str) -> str:
    """*value* as every store can hold it, the same each time: NUL bytes and lone
    surrogates (undecodable 8-bit input, kept by surrogateescape), which neither
    SQLite nor PostgreSQL text takes, become backslash escapes."""
    if value.isascii() and "\x00" not in value:
        return value  # nearly every value: nothing to replace, no round trip through bytes
    return value.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")


#: The Unicode Default_Ignorable_Code_Point characters of the BMP (DerivedCoreProperties.txt; The
#: Unicode Standard 5.21): soft hyphen, zero-width space and joiners, bidi marks, word joiner, BOM,
#: variation selectors, Hangul fillers.  A reader sees nothing of them: "vi\u200bagra" reads "viagra".
#: One character a match, and no supplementary-plane range: either costs re its fast scan (3x slower),
#: so those above U+FFFF are in :data:`INVISIBLE_WIDE`, searched for only in text that has such a character.
INVISIBLE_BMP = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0"
)
INVISIBLE = re.compile(f"[{INVISIBLE_BMP}]")
#: :data:`INVISIBLE` and the default-ignorable characters above U+FFFF: shorthand format controls, musical
#: symbol formatting, tag characters (U+E0020…: "vi\U000e0020agra"), variation selectors supplement.
INVISIBLE_WIDE = re.compile(f"[{INVISIBLE_BMP}\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")


def beyond_bmp(text: str) -> bool:
    """Whether *text* has a character above U+FFFF, which UTF-16 writes as two units (an encoding takes
    0.3 ms a million characters, ``max(text) > "\\uffff"`` 30 ms: more than the rest of the custom rules' ``_visible``)."""
    return len(text.encode("utf-16-le", "surrogatepass")) != 2 * len(text)


def without_invisible(text: str) -> str:
    """*text* without its invisible (default-ignorable) characters, which a reader never sees."""
    if text.isascii():
        return text
    return (INVISIBLE_WIDE if beyond_bmp(text) else INVISIBLE).sub("", text)


#: A run of combining marks is cut to this many before NFKC, whose canonical ordering sorts a run in
#: quadratic time (20,000 U+0F73 cost a second; a 3 MB message holds a million).  No script stacks more.
MAX_MARKS = 30
#: A run longer than that of marks, or of the half-width voiced sound marks that NFKC makes combining ones (the
#: regex module looks the property up: re's class of the marks, with those above U+FFFF, took 130 ms a million characters).
MARK_RUN = regex.compile(rf"[\p{{M}}\uff9e\uff9f]{{{MAX_MARKS + 1},}}")


def first_marks(run: regex.Match[str]) -> str:
    """The first :data:`MAX_MARKS` characters of a run :data:`MARK_RUN` found."""
    return run.group(0)[:MAX_MARKS]


def capped_marks(text: str) -> str:
    """*text* with each run of combining marks cut to :data:`MAX_MARKS` (a reader sees one smear of them)."""
    return text if text.isascii() else MARK_RUN.sub(first_marks, text)

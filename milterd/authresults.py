"""The Authentication-Results header (RFC 8601): one header, built with ``authres``.

milterd writes a single header with its authserv-id carrying the SMTP AUTH,
SPF, DKIM, DMARC and ARC results of the checks that ran; incoming headers
claiming that id are forgeries and removed (:func:`forged_indexes`).  The
header milterd adds is folded (``build(..., folded=True)``) when its one line
would pass RFC 5322's 998 octets (several long DKIM ``d=`` and ``s=``).
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import authres
import authres.arc
import authres.dmarc

from .message.policy import FOLD_WIDTH

if TYPE_CHECKING:
    from .checks.arc import ArcResult
    from .checks.dkim import SignatureResult
    from .checks.dmarc import Evaluation

def _skip_cfws(value: str, i: int) -> int:
    """The index after the folding white space and comments starting at *i* (comments nest and hold quoted-pairs, RFC 5322 §3.2.2)."""
    depth = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and depth:
            i += 1  # a quoted-pair: the next character is no delimiter
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth and not c.isspace():
            return i
        i += 1
    return i


def authserv_id_of(value: str) -> str:
    """The authserv-id an Authentication-Results value claims (lower case), or "".

    RFC 8601 §2.2: the id (a token or a quoted-string) may follow comments,
    which may nest and hold ';'; a version number may follow it.
    """
    i = _skip_cfws(value, 0)
    if value[i:i + 1] == '"':
        chars: list[str] = []
        i += 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\":
                i += 1
            chars.append(value[i:i + 1])
            i += 1
        return "".join(chars).strip().lower()
    end = i
    while end < len(value) and not value[end].isspace() and value[end] not in '();"':
        end += 1
    return value[i:end].lower()


def claims(value: str, authserv_id: str) -> bool:
    """Whether the Authentication-Results *value* claims *authserv_id* (case-insensitive, a trailing dot ignored).

    ``mx.example.org.`` is the same DNS name as ``mx.example.org``: a reader that
    trusts our id may take it for ours, so it is treated as ours (RFC 8601 §5).
    """
    return authserv_id_of(value).rstrip(".") == authserv_id.lower().rstrip(".")


def claiming_field(field: bytes, authserv_id: str) -> bool:
    """Whether the raw header *field* (``Name: value``, folded or not) is an Authentication-Results
    claiming *authserv_id* (blanks before the colon allowed, as mail clients read the name)."""
    _, colon, value = field.partition(b":")
    return bool(colon) and field_name(field) == b"authentication-results" and claims(value.decode("utf-8", "replace"), authserv_id)


def forged_indexes(headers: list[tuple[str, bytes]], authserv_id: str) -> list[int]:
    """1-based indexes (among Authentication-Results headers) of those claiming *authserv_id*, highest first."""
    found: list[int] = []
    index = 0
    for name, value in headers:
        # The length first: lower() never shortens a name and lengthens one only with a
        # non-ASCII character, so a name of another length cannot match (and costs no copy).
        if len(name) != 22 or name.lower() != "authentication-results":
            continue
        index += 1
        if claims(value.decode("utf-8", "replace"), authserv_id):
            found.append(index)
    return sorted(found, reverse=True)


#: The end of a header section: the line end before the blank line (LF or CRLF).
_SECTION_END = re.compile(rb"\n\r?\n")
#: A line with its end (LF, CR included before it; a lone CR is within a line), or the last without one.
_LINE = re.compile(rb"[^\n]*\n|[^\n]+$")


def field_name(field: bytes) -> bytes:
    """The lower-case name of the raw header *field* (blanks before the colon left out, as mail clients read it)."""
    return field.partition(b":")[0].rstrip(b" \t").lower()


def without_fields(chunks: Iterable[bytes], drop: Callable[[bytes], bool]) -> Iterator[bytes]:
    """*chunks* (a whole message, headers first) without the fields of its header section that *drop* is true
    of (given each raw field, folded lines and line ends included), the rest as it was.

    A quarantined copy is the message as received: its forged headers were removed by the edits
    milterd gave Postfix, which a release does not go through."""
    head = bytearray()
    pieces = iter(chunks)
    for chunk in pieces:
        searched = max(0, len(head) - 2)
        head += chunk
        if head[:1] == b"\n" or head[:2] == b"\r\n":  # no header section at all
            break
        found = _SECTION_END.search(head, searched)
        if found is not None:
            yield _kept(bytes(head[:found.start() + 1]), drop)
            yield bytes(head[found.start() + 1:])
            yield from pieces
            return
    else:
        yield _kept(bytes(head), drop)
        return
    yield bytes(head)
    yield from pieces


def _kept(section: bytes, drop: Callable[[bytes], bool]) -> bytes:
    """The header *section* without its fields *drop* is true of (a field goes on in the lines led by a blank)."""
    fields: list[list[bytes]] = []
    for line in _LINE.findall(section):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return b"".join(line for lines in fields if not drop(b"".join(lines)) for line in lines)


_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,253}")


def _token(text: str) -> str | None:
    # Property values come from the message (d=, s=, From): anything but a
    # plain name is left out rather than written into our header.
    return text if _TOKEN.fullmatch(text) else None


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u00a0-\U0010ffff-]"  # with RFC 6532's UTF-8 (an SMTPUTF8 message's)
_LETTER = r"[A-Za-z0-9\u00a0-\U0010ffff]"
#: ``dot-atom "@" domain-name`` (RFC 8601 §2.2 pvalue; RFC 5322 §3.2.3, RFC 6376 §3.5 domain-name, U-labels too).
_DOMAIN_NAME = rf"{_LETTER}(?:[A-Za-z0-9\u00a0-\U0010ffff-]*{_LETTER})?(?:\.{_LETTER}(?:[A-Za-z0-9\u00a0-\U0010ffff-]*{_LETTER})?)*"
_ADDRESS = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@{_DOMAIN_NAME}")
_DOMAIN = re.compile(_DOMAIN_NAME)
#: The longest pvalue written, in octets as written (quoted or not): longer than any address
#: SMTP allows (RFC 5321 §4.5.3.1.3: a path of 256), and short enough for the line a fold leaves it on
#: to stay far below RFC 5322's 998; a longer one is left out, as one no quoted-string can hold.
_MAX_PVALUE = 512
#: What a quoted-string cannot hold even as a quoted-pair: controls (RFC 5322 §3.2.4) and lone surrogates (not UTF-8, RFC 6532).
_UNQUOTABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")


def _pvalue(text: str, ascii_only: bool = False) -> str | None:
    """*text* (an envelope address, a HELO name, a SASL login) as authres should write it as a pvalue, or None.

    authres writes a value holding ``@`` as it is, so ``x;dkim=pass@evil.example``
    would end the property at ``;`` and add a forged result (RFC 8601 §2.2: a
    pvalue is ``[local-part "@"] domain-name`` or a token or quoted-string).
    Such a value is kept only in the ``dot-atom@domain-name`` form; one without
    ``@`` authres quotes itself when needed.  Quoting one here is not enough:
    dkimpy writes the ARC-Authentication-Results it seals by parsing ours with
    authres and writing it back, quotes dropped, so ``smtp.helo="a;dkim=pass
    header.d=bank.test …@x"`` came out sealed as a dkim=pass milterd never saw.
    Left out then, as is one that no quoted-string can hold, with *ascii_only*
    one that is not ASCII, and one longer than :data:`_MAX_PVALUE` octets as written.
    """
    if not text or _UNQUOTABLE.search(text) or (ascii_only and not text.isascii()):
        return None
    if "@" in text and not _ADDRESS.fullmatch(text):
        return None
    # Measured as authres will write it (it quotes a value that is not a token and has no "@").
    written = str(authres.core.QuotableValue(text).quote_if_needed())
    return text if len(written.encode("utf-8")) <= _MAX_PVALUE else None


def _mailfrom(address: str, ascii_only: bool = False) -> str | None:
    """smtp.mailfrom for the envelope sender *address*: the address as :func:`_pvalue` writes it, else its
    domain alone (RFC 8601 §2.7.2 allows it), so that a quoted local part (``"john doe"@example.org``,
    left out whole) still shows which domain SPF judged."""
    written = _pvalue(address, ascii_only)
    if written is not None or "@" not in address:
        return written
    domain = address.rpartition("@")[2]
    return _pvalue(domain, ascii_only) if _DOMAIN.fullmatch(domain) else None


def _reason(text: str, ascii_only: bool = False) -> str | None:
    # authres quotes the reason; a quote or backslash inside it would end it early.
    # An "@" would make authres write it unquoted when it writes a parsed header back (dkimpy's ARC sealing: see _pvalue).
    cleaned = "".join(c for c in text if c.isprintable() and c not in '"\\' and (c.isascii() or not ascii_only)).replace("@", " at ")[:120]
    return cleaned or None


#: How many distinct headers a worker remembers: a site sees a few combinations of its
#: senders' results over and over (the same domain, selector and verdicts), so this is plenty.
_BUILT_CACHE_SIZE = 512


def build(
    authserv_id: str,
    *,
    auth_user: str = "",
    spf: dict[str, str] | None = None,
    dkim: "Sequence[SignatureResult] | None" = None,
    dmarc: "Evaluation | None" = None,
    arc: "ArcResult | None" = None,
    ascii_only: bool = False,
    folded: bool = False,
) -> str:
    """The value of our Authentication-Results header (without the name).

    A method that did not run (None) is left out; one that ran and found
    nothing says ``none``; no method at all gives ``none`` alone.  With
    *ascii_only*, a property value or reason that is not ASCII (an SMTPUTF8
    sender, a UTF-8 login) is left out, the result kept: the copy an ARC seal
    attests, since dkimpy's parser (authres) reads ASCII only.  With *folded*
    (the header milterd adds), a value whose line would pass 998 octets is
    folded as :func:`fold` says; any other is the one line it always was.
    """
    # Only the inputs' fields the header shows, as tuples of strings: the key of the memo below.
    spf_part = None if spf is None else (spf["identity"] == "helo", spf["helo"] if spf["identity"] == "helo" else spf["sender"], spf["result"])
    dkim_part = None if dkim is None else tuple((s.result, s.reason if s.result != "pass" else "", s.domain, s.selector) for s in dkim)
    arc_part = None if arc is None else (arc.result, arc.sealers[-1:])
    dmarc_part = None if dmarc is None else (dmarc.result, dmarc.domain, dmarc.policy)
    try:
        return _built(authserv_id, auth_user, spf_part, dkim_part, arc_part, dmarc_part, ascii_only, folded)
    except TypeError:  # an unhashable value (not one the checks store): built without the memo
        return _render(authserv_id, auth_user, spf_part, dkim_part, arc_part, dmarc_part, ascii_only, folded)


def _render(
    authserv_id: str,
    auth_user: str,
    spf: tuple[bool, str, str] | None,
    dkim: tuple[tuple[str, str, str, str], ...] | None,
    arc: tuple[str, tuple[str, ...]] | None,
    dmarc: tuple[str, str, str] | None,
    ascii_only: bool = False,
    folded: bool = False,
) -> str:
    """:func:`build`'s header from the fields it shows (:func:`build` gives their meaning)."""
    results: list[Any] = []
    if auth_user:
        results.append(authres.SMTPAUTHAuthenticationResult(result="pass", smtp_auth=_pvalue(auth_user, ascii_only)))
    if spf is not None:
        is_helo, identity, result = spf
        kwargs = {"smtp_helo": _pvalue(identity, ascii_only)} if is_helo else {"smtp_mailfrom": _mailfrom(identity, ascii_only)}
        results.append(authres.SPFAuthenticationResult(result=result, **kwargs))
    if dkim is not None:
        if not dkim:
            results.append(authres.DKIMAuthenticationResult(result="none"))
        for sig_result, reason, domain, selector in dkim:
            results.append(
                authres.DKIMAuthenticationResult(
                    result=sig_result,
                    reason=_reason(reason, ascii_only) if sig_result != "pass" else None,
                    header_d=_token(domain),
                    header_s=_token(selector),
                )
            )
    if arc is not None:
        arc_result, sealers = arc
        results.append(authres.arc.ARCAuthenticationResult(result=arc_result, header_as_d=_token(sealers[-1]) if sealers else None))
    if dmarc is not None:
        dmarc_result, domain, policy = dmarc
        results.append(
            authres.dmarc.DMARCAuthenticationResult(
                result=dmarc_result,
                header_from=_token(domain),
                policy=policy.upper() if dmarc_result in ("pass", "fail") else None,
            )
        )
    if not results:
        results.append(authres.NoneAuthenticationResult())
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    value = str(header).split(":", 1)[1].strip()
    return fold(value, header) if folded else value


#: What precedes the value on the header's first line.
_FIELD = "Authentication-Results: "
#: RFC 5322 §2.1.1: a line MUST NOT pass 998 octets (CRLF excluded).
LINE_LIMIT = 998


def _elements(result: Any) -> list[str]:
    """*result*'s resinfo as the elements a fold may go between (RFC 8601 §2.2): the
    methodspec, the reasonspec, each propspec; the whole resinfo as one where authres
    writes it otherwise (a result of another shape)."""
    if not isinstance(result, authres.AuthenticationResult) or result.version or result.result_comment or result.reason_comment:
        return [str(result)]
    elements = [f"{result.method}={result.result}"]
    if result.reason:
        elements.append(f"reason={result.reason.quote_if_needed()}")
    elements.extend(str(p) for p in result.properties)
    return elements if " ".join(elements) == str(result) else [str(result)]


def fold(value: str, header: Any) -> str:
    """*value* (the one line authres writes for *header*) folded when its line would pass :data:`LINE_LIMIT`.

    Only then: a shorter header stays the one line it always was (readers and
    rules match it so), even past ``FOLD_WIDTH``.  Folded, each resinfo starts
    a line of its own, and one longer than ``FOLD_WIDTH`` is folded between its
    elements (RFC 8601 §2.2 allows CFWS before each ``;``, reasonspec and
    propspec), never inside one (a quoted reason, an address).  Each fold is a
    line break put before a space authres wrote (``"\\n "``, which the milter
    sends as a folded header), so that the value unfolded (line breaks
    removed, RFC 5322 §2.2.3) is *value* exactly.  A line past ``FOLD_WIDTH``
    remains only where one element is (a ``header.d=`` of 253 characters);
    none comes near 998 (``_token`` and ``_MAX_PVALUE`` bound them).
    """
    if len(_FIELD) + len(value.encode("utf-8", "replace")) <= LINE_LIMIT:
        return value
    lines = [f"{header.authserv_id};"]
    resinfos = [_elements(r) for r in header.results] or [["none"]]
    for position, elements in enumerate(resinfos):
        end = ";" if position < len(resinfos) - 1 else ""
        line = " " + elements[0]
        for number, element in enumerate(elements[1:], 2):
            if len(line) + 1 + len(element) + (len(end) if number == len(elements) else 0) > FOLD_WIDTH:
                lines.append(line)
                line = " " + element
            else:
                line += " " + element
        lines.append(line + end)
    folded = "\n".join(lines)
    # The folds are only ever line breaks before authres's own spaces; should authres write
    # anything else (another version), the one line is kept rather than a value read otherwise.
    return folded if folded.replace("\n", "") == value else value


# Memoised per worker (issue #14: authres's objects and str() were ~6 % of a worker's CPU);
# *folded* is part of the key, so the folded and the one-line value are remembered apart.
# Safe: _render is a pure function of its arguments (no clock, no configuration, no state;
# authres builds new objects each call), and its arguments are the whole key, tuples of
# strings whose equality means identical text, so a remembered value is the one a fresh
# call would give.  lru_cache is thread-safe; each worker process has its own.
_built = functools.lru_cache(maxsize=_BUILT_CACHE_SIZE)(_render)

"""DMARC (RFC 7489): the From domain's policy, applied to SPF and DKIM results.

The policy is looked up at ``_dmarc.<From domain>``, then at the
organizational domain found with the Public Suffix List (``publicsuffixlist``;
its data can be updated without a milterd release, or another list file
given in ``[checks.dmarc] public_suffix_list``).  DMARC passes when SPF passed
for an envelope domain, or a DKIM signature verified for a signing domain,
aligned with the From domain (``aspf``/``adkim``: relaxed, the same
organizational domain; strict, the same name).  A failure applies ``p`` (``sp``
for a subdomain), sampled by ``pct``: mail left out of the sample gets the
next milder policy.  A record's ``np`` (RFC 9091 §4.1) replaces ``sp`` for a
From domain that does not exist (NXDOMAIN or no data for its A, AAAA and MX
alike), asked only once a message has failed.  A trusted ARC sealer's pass
overrides a failure when the sealer recorded a DMARC pass, or an aligned
DKIM or SPF pass, for the From domain in its ARC-Authentication-Results.  A message with several From domains (addresses or
fields) is judged by the strictest of their evaluations (RFC 7489 §6.6.1).
A From field that is not UTF-8 is judged in each reading a mail client may show
(windows-1252, the message's charset: ``bank<0xAD>.test`` is bank.test); one with such bytes in a
domain fails under the quarantine policy at least, as a From of too many domains does.

This check runs after DKIM and ARC (a later end-of-message tier) and reads
their results from ``envelope.check_state(name)``.  A signature DKIM left
unverified (message over ``[checks.dkim] max_size``) whose d= would align
does not pass the message, or anyone could add one to escape the policy;
since milterd cannot tell whether it would have passed, a ``p=reject``
failure is then applied as ``quarantine``, never as a reject.  Policy
discovery stops at the From domain when it publishes DMARC records none
can be taken from (several, or one without a valid ``p=``): RFC 7489 §6.6.3
applies no DMARC then, rather than the organizational domain's policy.
"""

from __future__ import annotations

import functools
import random
import re
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Literal

import idna
from publicsuffixlist import PublicSuffixList
from pydantic import Field

from ..content.headertext import addresses, decoded, raw_readings, shown_addresses, unfolded
from ..content.mimeparams import client_param
from ..dns import a_label, comparable_name, domain_name, fold_case, uts46_mapped
from ..files import read_error, read_regular
from ..message.model import Action, Envelope, Hit, Session
from ..message.reply import Reply
from ..options import CheckSwitches, ConfigError
from . import Hits, Symbol
from .configured import ConfiguredCheck

if TYPE_CHECKING:
    from ..services import Services


class DmarcChecks(CheckSwitches):
    """DMARC (RFC 7489) of the From domain: SPF and DKIM alignment, p/sp/np/pct, the action for each policy (it reads the DKIM check's results: with [checks.dkim] off it must be off too)."""

    reject_action: Literal["reject", "quarantine", "score"] = Field("reject", description="A DMARC failure under p=reject: reject with 550 5.7.1 naming the From domain, quarantine, or only score DMARC_FAIL_REJECT.")
    quarantine_action: Literal["reject", "quarantine", "score"] = Field("quarantine", description="A DMARC failure under p=quarantine: quarantine, reject, or only score DMARC_FAIL_QUARANTINE.")
    public_suffix_list: str = Field("", description="Public Suffix List file that finds organizational domains, relative to this file; empty uses the publicsuffixlist package's copy (update it with 'python -m publicsuffixlist.update').")


STATE = "dmarc"
Policy = Literal["none", "quarantine", "reject"]
_MILDER: dict[str, Policy] = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_DOMAIN = re.compile(r"[\w-]{1,63}(\.[\w-]{1,63})*")
#: A name DNS can be asked about: at most 253 characters, labels of 1 to 63 letters, digits, '-' or '_'.
#: What can start a domain written with junk after it (see _shown_domains).
_DOMAIN_HEAD = re.compile(r"[\w.-]+")
#: Dots around an empty label (see _without_empty_labels).
_EMPTY_LABELS = re.compile(r"\.{2,}")
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*")
#: The pure functions below remember their answers for arguments up to this long (bounded memory).
_MEMO_MAX = 1024
#: The From domains of one message evaluated at most (each costs up to two TXT lookups, and a failure under
#: an organizational domain's ``np`` three more: A, AAAA and MX).
_MAX_FROM_DOMAINS = 10


#: The lists in use by file name ("": the package's copy), most loaded when the check is built: the
#: workers forked after that share them and never open the file while handling mail.
_LOADED: dict[str, PublicSuffixList] = {}


def _psl(path: str) -> PublicSuffixList:
    found = _LOADED.get(path)
    if found is None:
        found = _LOADED[path] = load_psl(path)
    return found


def load_psl(path: str) -> PublicSuffixList:
    """The Public Suffix List in *path*, or the publicsuffixlist package's copy when empty.

    OSError when *path* is not a readable regular file (read without blocking:
    a FIFO cannot hang the caller), ValueError when its name has a NUL, it is
    not UTF-8 or it holds no rule (an empty list would make, say, every
    ``*.co.uk`` domain one organization, aligned with each other).
    """
    if not path:
        return PublicSuffixList()
    try:
        text = read_regular(Path(path)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    if not any(line.strip() and not line.lstrip().startswith("//") for line in text.splitlines()):
        raise ValueError("not a Public Suffix List: it holds no rule")
    psl = PublicSuffixList(text)
    if psl.publicsuffix("example.co.uk") != "co.uk":
        # An HTML error page, say, where a download failed: each of its lines a "rule", the list
        # would make co.uk one organization, aligning attacker.co.uk with bank.co.uk.
        raise ValueError("not a Public Suffix List: it does not know co.uk (a download that failed?)")
    return psl


def org_domain(domain: str, psl_path: str = "") -> str:
    """The organizational domain of *domain* (``a.b.example.co.uk`` → ``example.co.uk``).

    A public suffix itself, or a name the list cannot place, is its own
    organizational domain.
    """
    name = fold_case(domain).rstrip(".")
    return _org_domain(name, psl_path) if len(name) <= _MEMO_MAX else _org_domain.__wrapped__(name, psl_path)


@functools.lru_cache(maxsize=4096)
def _org_domain(name: str, psl_path: str) -> str:
    return _psl(psl_path).privatesuffix(name) or name


def aligned(domain: str, from_domain: str, mode: str, psl_path: str = "") -> bool:
    """Whether an authenticated *domain* aligns with *from_domain*: strict (``s``), same name; relaxed, same organizational domain."""
    # A U-label From aligns with its A-label d= (RFC 7489 §6.6.1); a name IDNA refuses is compared folded.
    a, b = comparable_name(domain), comparable_name(from_domain)
    if not a or not b:
        return False
    if a == b:
        return True
    return mode != "s" and org_domain(a, psl_path) == org_domain(b, psl_path)


def from_domain(value: str | None) -> str | None:
    """The one domain of a From header, or None (no From, no address, or several domains)."""
    if not value:
        return None
    # Asked by DKIM and DMARC for each message: the address parser runs once.
    return _from_domain(value) if len(value) <= _MEMO_MAX else _from_domain.__wrapped__(value)


@functools.lru_cache(maxsize=1024)
def _from_domain(value: str) -> str | None:
    domains = _written_domains(value)
    # Only a name that can be a domain: it goes into DNS queries, a reply and a header.
    return domains[0] if len(domains) == 1 and _DOMAIN.fullmatch(domains[0]) else None


def _written_domains(value: str) -> tuple[str, ...]:
    # Unfolded as from_domains reads it; signing needs no other client's reading.
    domains = dict.fromkeys(fold_case(addr.rpartition("@")[2].strip()).rstrip(".") for _, addr in addresses(unfolded(value)) if "@" in addr)
    return tuple(domain for domain in domains if domain)


def signing_domains(values: Iterable[str]) -> tuple[str, ...]:
    """Each domain the From fields *values* name (as written: no other client's reading), in order: a message is
    signed with the keys of each (a From naming two domains went out unsigned, unsaid)."""
    return tuple(dict.fromkeys(domain for value in values for domain in _written_domains(value) if _DOMAIN.fullmatch(domain)))


def queryable(name: str) -> bool:
    """Whether *name* (a U-label one as its A-labels) is a DNS name a resolver can be asked about, so that an error is the DNS's."""
    name = name.rstrip(".")
    return bool(_DNS_NAME.fullmatch(name if name.isascii() else a_label(name) or ""))


def from_domains(values: Iterable[str]) -> tuple[str, ...]:
    """Each distinct domain of the From header fields *values*, as A-labels, in order of appearance.

    RFC 7489 §6.6.1: every domain of a multi-valued From is evaluated (the
    strictest failing policy applies), so a second address, or a second From
    field, cannot switch DMARC off; addresses without a usable domain are skipped.
    The addresses are those a mail client may show (:func:`shown_addresses`): of
    the field unfolded, and read with its encoded-words decoded where they stand.
    """
    found: dict[str, None] = {}
    for value in values:
        for domain in _from_domains(value) if len(value) <= _MEMO_MAX else _from_domains.__wrapped__(value):
            found.setdefault(domain)
    return tuple(found)


def from_fields(envelope: Envelope) -> list[str]:
    """The values of the From fields of *envelope*, decoded leniently (as UTF-8: the domains a message is signed for)."""
    return [value.decode("utf-8", "replace") for name, value in envelope.headers if name.lower() == "from"]


def from_readings(envelope: Envelope) -> list[list[str]]:
    """Each From field of *envelope* as every text a mail client may show for it (:func:`raw_readings`: its
    UTF-8, else also windows-1252 and the charset of the message's Content-Type)."""
    fields = [value for name, value in envelope.headers if name.lower() == "from"]
    charset = None if all(value.isascii() for value in fields) else declared_charset(envelope)
    return [raw_readings(value, charset) for value in fields]


def declared_charset(envelope: Envelope) -> str | None:
    """The charset parameter of the message's Content-Type as Thunderbird reads it, or None."""
    content_type = envelope.header("Content-Type")
    return client_param(content_type, "charset") if content_type else None


def envelope_from_domains(envelope: Envelope) -> tuple[str, ...]:
    """:func:`from_domains` of every reading of the From fields of *envelope* (:func:`from_readings`): the
    domains DMARC, DKIM's author alignment and the local domains' From check judge."""
    return from_domains(reading for readings in from_readings(envelope) for reading in readings)


#: Why a From whose domain holds bytes that are not UTF-8 is failed (:func:`hidden_domain`).
_HIDDEN = "a From domain holds bytes that are not UTF-8: each client shows them in a charset of its own"


def hidden_domain(envelope: Envelope) -> bool:
    """Whether an address of a From field of *envelope* has bytes that are not UTF-8 in its domain.

    A client shows them in its fallback charset, which may be one no reading here tried (a Chinese locale's
    GB18030 has a soft hyphen in 81 30 85 32, windows-1256 an RLM in FE): ``sec@bank<bytes>.test`` shown as
    sec@bank.test, judged as some other domain.  No genuine mailer writes such a domain, so the message is
    failed under the quarantine policy (a domain's own stricter policy still applies).  Such bytes in the
    display name are no matter: ``"M<FC>ller" <juergen>`` names no domain to anyone.
    """
    for name, value in envelope.headers:
        if name.lower() == "from" and not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                if not _ascii_domains(value.decode("utf-8", "replace"), "\ufffd") and not _double_byte_text(value):
                    return True
    return False


#: Why a From whose domain hides letters behind a character no domain holds is failed (:func:`obscured_domain`).
_OBSCURED = "a From domain hides letters behind a character no domain holds (a dot or blank look-alike)"


def obscured_domain(envelope: Envelope) -> bool:
    """Whether an address of a UTF-8 From field of *envelope* has a domain that :func:`obscured` letters: a
    reader may see ``bank.test`` where the name is no domain at all.  No genuine mailer writes one; the message
    is failed under the quarantine policy, as :func:`hidden_domain`'s.  (A field that is not UTF-8 is
    :func:`hidden_domain`'s: read in a legacy charset, a double-byte display name looks like such a domain.)"""
    for name, value in envelope.headers:
        if name.lower() != "from" or (value.isascii() and b"=?" not in value):
            continue
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            continue
        # An encoded-word where the address is (=?utf-8?q?sec@bank=E2=80=A4test?=) is shown decoded.
        for reading in (text, decoded(text)) if "=?" in text else (text,):
            for address in shown_addresses(reading):
                _, at, domain = address.rpartition("@")
                if at and obscured(domain):
                    return True
    return False


#: The double-byte charsets whose second bytes include "@" (0x40): Shift_JIS' full-width space 81 40, Big5's 一
#: A4 40, GBK's 丂 81 40.  A display name written in one, read as UTF-8, looks like an address with a bad domain.
_DOUBLE_BYTE = ("shift_jis", "euc_jp", "gb18030", "big5", "euc_kr")


def _ascii_domains(text: str, bad: str = "") -> bool:
    """Whether every address of the From value *text* (as a client may show it) has a domain of ASCII only
    (with *bad*: without that character)."""
    domains = (domain for _, at, domain in (address.rpartition("@") for address in shown_addresses(text)) if at)
    return all(bad not in domain if bad else domain.isascii() for domain in domains)


#: A byte that may lead a double-byte character, then "\\", "[" or "]" as its second byte: quoting and domain
#: literals read otherwise in such a charset (``"A<81>\", <z@ok.test> x" <sec@ban<FE>k.test>`` shows a decoy
#: address to Shift_JIS, sec@bank.test to windows-1256).
_AMBIGUOUS_PAIR = re.compile(rb"[\x81-\xfe][\\\[\]]")


def _double_byte_text(value: bytes) -> bool:
    """Whether the From *value* is text in a double-byte charset that shows an address, every one with an ASCII
    domain: its 8-bit bytes all in the display name (its bytes in a domain are never ASCII there).  One that
    shows none does not count: ``sec<81 40>bank…`` is no address in GB18030, sec@bank… in windows-1256; nor one
    whose quoting such a charset reads otherwise (:data:`_AMBIGUOUS_PAIR`)."""
    if _AMBIGUOUS_PAIR.search(value):
        return False
    for charset in _DOUBLE_BYTE:
        try:
            text = value.decode(charset)
        except UnicodeDecodeError:
            continue
        if "@" in text and _ascii_domains(text):
            return True
    return False


@functools.lru_cache(maxsize=1024)
def _from_domains(value: str) -> tuple[str, ...]:
    return _parse_domains(value, decode=True)


def _parse_domains(value: str, decode: bool) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for addr in shown_addresses(value) if decode else [address for _, address in addresses(value)]:
        if "@" in addr:
            head, _, tail = addr.rpartition("@")
            # "sec@bank.example@" (a stray "@" after the address) is shown as "sec@bank.example"@: where the
            # last "@" leaves no domain, the one before it is judged (only then: a quoted local part holding
            # an address is no author's domain).
            for domain in _shown_domains(tail) or (_shown_domains(head.rpartition("@")[2]) if "@" in head and not tail.strip() else ()):
                found.setdefault(domain)
        if decode and "=?" in addr:
            # An encoded word where the address belongs (From: =?utf-8?b?c2VjdXJpdHlAYmFuay5leGFtcGxl?=) is
            # invalid (RFC 2047 §5), but mail clients decode it and show security@bank.example: judge that, also
            # where its raw text has an "@" (=?utf-8?q?security@bank=2Eexample?= read raw is the domain "bank").
            for domain in _parse_domains(decoded(addr), decode=False):
                found.setdefault(domain)
    return tuple(found)


def _shown_domains(text: str) -> tuple[str, ...]:
    """The domains a reader may see in an address whose domain part is *text*, as A-labels (none when it names none).

    A domain followed by what no domain holds (``bank.example<DEL>``, ``bank.example!``, a control
    or format character a mail client does not show) is read up to there: the reader sees
    ``bank.example``, so its policy is judged, and junk cannot switch DMARC off.  One that :func:`obscured`
    letters (``bank<U+2024>test``, ``bank<U+00B7>test``, ``bank.<U+202F>test``) is also read with its dot
    look-alikes as dots and its blanks left out (``bank.test``): read up to there, or as the one label
    IDNA makes of it, it was a domain of no policy.  (Such a domain is also failed on its own:
    :func:`obscured_domain`.)
    """
    domain = domain_name(text.strip())
    whole = domain if domain and _DOMAIN.fullmatch(domain) else None
    hiding = not text.isascii() and obscured(text)
    if whole and not hiding:
        # A middle dot IDNA2008 takes (col·legi.cat's between two l's) is the domain's own: read as a dot too, every
        # Catalan domain would lose its DMARC pass to the domain after it (email·lloydsbank.example is left so).
        return (whole,)
    shown = _shown_text(text)
    head = _DOMAIN_HEAD.match(shown)
    mapped = _mapped_text(_first_word(shown)) if hiding else ""
    readings = [text for text in (head.group() if head else "", mapped) if text]
    readings += [reading for text in readings for reading in _without_empty_labels(text)]
    found = dict.fromkeys(d for d in (*map(domain_name, readings), whole) if d and _DOMAIN.fullmatch(d))
    return tuple(found)


def _without_empty_labels(name: str) -> tuple[str, ...]:
    """*name* as a reader passes over its empty labels: ``.bank.test`` and ``bank..test`` read ``bank.test``, and
    ``bank.test..x`` also up to its empty label (``bank.test``, as a domain with junk after it).  IDNA refuses
    such a name, so it named no domain and no policy applied: DMARC_NONE for a forged From of a p=reject domain."""
    inner = name.strip(".")
    if ".." not in inner and inner == name.rstrip("."):
        return ()
    squeezed = _EMPTY_LABELS.sub(".", inner)
    before = inner.split("..")[0]
    return (squeezed, before) if "." in before and before != squeezed else (squeezed,)


def _shown_text(text: str) -> str:
    """*text* as a client shows it: without control and format characters and those UTS #46 ignores (variation
    selectors, U+034F: after a dot look-alike they hid it from the letters around it), case folded."""
    return fold_case("".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf") and (c.isascii() or uts46_mapped(c) != "")).strip())


#: Characters a reader takes for the dot of a domain (U+3002 and U+FF61 UTS #46 maps to one itself): ONE DOT
#: LEADER, SMALL FULL STOP, MIDDLE DOT, GREEK ANO TELEIA, HYPHENATION POINT, BULLET, BULLET, DOT and RING OPERATORS,
#: CIRCLED DOT OPERATOR, WORD SEPARATOR MIDDLE DOT, RAISED DOT, DOT ABOVE, DEGREE SIGN, WHITE BULLET, the full stops
#: of Syriac, Armenian, Arabic, Vai and Kharoshthi, KATAKANA MIDDLE DOT (and its halfwidth form), CANADIAN
#: SYLLABICS FINAL MIDDLE DOT, LISU LETTER TONE MYA TI, LATIN LETTER SINOLOGICAL DOT, the Tibetan tshegs, MODIFIER
#: LETTER HALF TRIANGULAR COLON, DEVANAGARI HIGH SPACING DOT, MALAYALAM LETTER DOT REPH, the Arabic-Indic zeros.
_LOOKALIKE_DOTS = ("\u2024\ufe52\u00b7\u0387\u2027\u2022\u2219\u22c5\u2218\u2299\u2e31\u2e33\u02d9\u00b0\u25e6"
                   "\u0701\u0702\u0589\u06d4\ua60e\U00010a50\u30fb\uff65\u1427\ua4f8\ua78f\u0f0b\u0f0c\u02d1\u0971"
                   "\u0d4e\u0660\u06f0")
_DOT_LOOKALIKES = str.maketrans(dict.fromkeys(_LOOKALIKE_DOTS, "."))
#: The categories of a character that, between two ASCII letters or digits of a domain, a reader may take for a
#: dot: punctuation, math and modifier symbols, digits of other scripts (U+0660).  Letters are IDNA2008's to judge
#: (1对1.com, hawaiʻi.org, aーb.jp are domains), and so are emoji (i❤ny.ws); the letters and symbols that look like a
#: dot are in :data:`_LOOKALIKE_DOTS`.
_READ_AS_DOTS = frozenset({"Po", "Pd", "Pc", "Sm", "Sk", "Nd", "Nl", "No"})
_ASCII_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _foreign_between_ascii(word: str) -> bool:
    """Whether a character of *word* (a domain as shown, case folded) that is not ASCII stands between two ASCII
    letters or digits where a reader may take it for a dot: a dot look-alike (``bank<U+A78F>test``), punctuation,
    a symbol or a digit of another script (``bank<U+0660>test``, :data:`_READ_AS_DOTS`), which IDNA2008 may take
    as a label's character."""
    for at in range(1, len(word) - 1):
        char = word[at]
        if char.isascii() or word[at - 1] not in _ASCII_ALNUM or word[at + 1] not in _ASCII_ALNUM:
            continue
        if char == "\u00b7" and word[at - 1] == word[at + 1] == "l":
            continue
        if char in _LOOKALIKE_DOTS:
            return True
        if unicodedata.category(char) in _READ_AS_DOTS and not any(c in _ASCII_ALNUM for c in unicodedata.normalize("NFKD", char).lower()):
            return True  # (a²b: a superscript two is read as a 2)
    return False


def _mapped_text(shown: str) -> str:
    """*shown* as UTS #46 maps it without the STD3 rules, dot look-alikes as dots (:data:`_DOT_LOOKALIKES`),
    its blanks and the dots at its ends left out ('' when it maps to nothing): a domain a reader sees, with
    its empty labels (``bank。。example``) left to :func:`_without_empty_labels`."""
    mapped = uts46_mapped(shown.translate(_DOT_LOOKALIKES))
    return "".join(mapped.split()).strip(".") if mapped else ""


_ASCII_BLANKS = re.compile(r"[ \t\r\n]+")


def _first_word(shown: str) -> str:
    """*shown* up to its first ASCII blank (a blank that is not ASCII is part of it: ``bank.<U+202F>test``)."""
    return _ASCII_BLANKS.split(shown, maxsplit=1)[0]


def _idna2008(name: str) -> bool:
    """:func:`_idna2008_name` of a name short enough to be one (no longer value is remembered)."""
    return len(name) <= 254 and _idna2008_name(name)


@functools.lru_cache(maxsize=1024)
def _idna2008_name(name: str) -> bool:
    """Whether IDNA2008 takes *name* as it is, its contextual rules included: ``col·legi.cat`` (a middle dot
    between two l's, Catalan) is a domain; ``bank·example`` is no IDNA2008 name, only UTS #46 maps it to one."""
    try:
        idna.encode(name.rstrip("."), uts46=True, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError, ValueError):
        return False
    return True


def _hides(char: str) -> bool:
    """Whether *char* may stand between a domain's letters where a reader sees a dot or nothing: a dot
    look-alike, or punctuation or a blank that is not ASCII."""
    return char in _LOOKALIKE_DOTS or (not char.isascii() and unicodedata.category(char)[:2] in ("Po", "Pd", "Zs", "Sm", "Sk"))


def obscured(text: str) -> bool:
    """Whether the domain part *text* of an address hides letters behind what no domain holds: a dot
    look-alike IDNA2008 refuses (``bank<U+00B7>test``; ``col·legi.cat``'s is allowed), or punctuation or
    blanks that are not ASCII where the domain is read up to, then a letter, a digit or a dot
    (``bank<U+2024>test``, ``bank.<U+202F>test``, ``bank<U+2009>.test``, ``<U+2024>bank.test``).  Junk
    after a domain (``bank.example!``, ``bank.example<U+00A0>(Bank)``) hides none, nor a blank then a word
    after a whole domain (``example.com<U+3000>山田``, a name written after the address)."""
    word = _first_word(_shown_text(text))
    if word.isascii():
        return False
    if _foreign_between_ascii(word):
        return True
    if _idna2008(word):
        return False
    if any(c in _LOOKALIKE_DOTS for c in word):
        return True
    head = _DOMAIN_HEAD.match(word)
    before = head.group() if head else ""
    rest = word[len(before):]
    at = 0
    while at < len(rest) and _hides(rest[at]):
        at += 1
    if not 0 < at < len(rest) or not (rest[at].isalnum() or rest[at] == "."):
        return False
    blanks = all(unicodedata.category(c) == "Zs" for c in rest[:at])
    whole = "." in before.strip(".") and not before.endswith(".")
    return not (blanks and whole and rest[at] != ".")


@dataclass(frozen=True)
class Record:
    """A parsed DMARC record (the tags milterd applies)."""

    p: Policy
    sp: Policy
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    #: The policy for a non-existent From subdomain (RFC 9091 §4.1); None (absent or invalid): ``sp`` applies.
    np: Policy | None = None


_PCT = re.compile(r"[0-9]{1,3}")


def is_dmarc_record(text: str) -> bool:
    """Whether the TXT record *text* is a DMARC record at all (starts with ``v=DMARC1``), valid or not."""
    # RFC 7489 §6.4: "v" *WSP "=" *WSP "DMARC1", the tag's name in any case (an ABNF string), its value exactly
    # (%x44 %x4d ...); any blank at its ends, as the record's tags are read.
    name, equals, value = text.partition(";")[0].partition("=")
    return bool(equals) and name.strip().lower() == "v" and value.strip() == "DMARC1"


def parse_record(text: str) -> Record | None:
    """A ``v=DMARC1`` TXT record, or None when it is not one or lacks a valid ``p``.

    Unknown tags are ignored and out-of-range ones fall back to their default, as RFC 7489 §6.3 asks.
    """
    return _parse_record(text) if len(text) <= _MEMO_MAX else _parse_record.__wrapped__(text)


@functools.lru_cache(maxsize=1024)
def _parse_record(text: str) -> Record | None:
    tags: dict[str, str] = {}
    for part in text.split(";"):
        key, eq, value = part.partition("=")
        if eq:
            tags.setdefault(key.strip().lower(), value.strip())
    if not is_dmarc_record(text):  # "v\t=\tDMARC1" too (RFC 7489's WSP is a space or a tab): as discovery reads it
        return None
    p = tags.get("p", "").lower()
    sp = tags.get("sp", "").lower()
    if p not in ("none", "quarantine", "reject") or (sp and sp not in ("none", "quarantine", "reject")):
        # RFC 7489 §6.6.3 step 6: a bad or missing p, or a bad sp (taken for p: "sp=rejct" rejected every
        # subdomain's mail), is monitoring with rua=, else no DMARC at all.
        if "rua" not in tags:
            return None
        tags["np"] = ""  # as if only p=none were published: no np= either (np=reject still refused mail)
        p, sp = "none", "none"
    np = tags.get("np", "").lower()
    # 1*3DIGIT (RFC 7489 §6.4): int() also reads "1_0", "+5" and non-ASCII digits ("٥"), a milder policy than published.
    written = tags.get("pct", "100")
    pct = int(written) if _PCT.fullmatch(written) else 100
    return Record(
        p=p,  # type: ignore[arg-type]
        sp=sp if sp in ("none", "quarantine", "reject") else p,  # type: ignore[arg-type]
        pct=pct if 0 <= pct <= 100 else 100,
        adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
        np=np if np in ("none", "quarantine", "reject") else None,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class Evaluation:
    """What DMARC says of one message."""

    result: Literal["pass", "fail", "none", "temperror", "permerror"]
    domain: str
    policy: Policy = "none"
    applied: Policy = "none"
    reason: str = ""
    #: The From domain does not exist: *policy* is the record's ``np``.
    nonexistent: bool = False
    #: The organizational domain whose record judged this subdomain (its ``sp``, or ``np``); "" for the
    #: From domain's own record (``p``).
    organizational: str = ""
    #: A DKIM signature that would align was left unverified (message over ``[checks.dkim] max_size``):
    #: a p=reject failure is applied as quarantine.
    unverified: bool = False


def evaluate(
    domain: str,
    record: Record,
    record_domain: str,
    spf: dict[str, str] | None,
    dkim_passes: list[str],
    roll: int,
    psl_path: str = "",
    dkim_temperror: bool = False,
) -> Evaluation:
    """DMARC for From *domain* with the *record* found at *record_domain*.

    *spf* is the SPF check's state, *dkim_passes* the signing domains that
    verified, *roll* a number in 0..99 for ``pct`` sampling.  Without a pass,
    a DNS error in SPF or DKIM (*dkim_temperror*: of a signature aligned with
    *domain*) for an aligned identifier makes the result ``temperror``: an
    outage must not reject mail that would have passed.
    """
    organizational = "" if record_domain == domain else record_domain
    policy: Policy = record.sp if organizational else record.p
    if spf is not None and spf.get("result") == "pass":
        spf_domain = spf.get("sender", "").rpartition("@")[2]
        if aligned(spf_domain, domain, record.aspf, psl_path):
            return Evaluation("pass", domain, policy, "none", f"SPF aligned ({spf_domain})", organizational=organizational)
    for signer in dkim_passes:
        if aligned(signer, domain, record.adkim, psl_path):
            return Evaluation("pass", domain, policy, "none", f"DKIM aligned ({signer})", organizational=organizational)
    # Only an identifier that could have aligned matters: a DNS error elsewhere cannot hide a failure.
    # Nor can the error of a name no resolver can be asked about (x@a.a.….bank.example, 300 octets).
    spf_domain = spf.get("sender", "").rpartition("@")[2] if spf is not None else ""
    spf_temperror = spf is not None and spf.get("result") == "temperror" and queryable(spf_domain) and aligned(spf_domain, domain, record.aspf, psl_path)
    if dkim_temperror or spf_temperror:
        return Evaluation("temperror", domain, policy, "none", "SPF or DKIM could not be checked (DNS error)", organizational=organizational)
    applied = _sampled(policy, roll, record.pct)
    return Evaluation("fail", domain, policy, applied, "neither SPF nor DKIM aligned with From", organizational=organizational)


#: The DNS deadlines (``Resolver.stage_deadline``) of each From domain's DMARC record and np= lookups, apart from
#: the end of message's: this, a colon and the domain.
POLICY_STAGE = "eom-dmarc"


class Dmarc(ConfiguredCheck[DmarcChecks]):
    """DMARC of the From domain."""

    name: ClassVar[str] = "dmarc"
    description: ClassVar[str] = "DMARC of the From domain: SPF and DKIM alignment, p/sp/np/pct, action per policy"
    order: ClassVar[int] = 62
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("DMARC_PASS", -0.5, "DMARC pass: SPF or DKIM authenticated a domain aligned with From"),
        Symbol("DMARC_FAIL_REJECT", 4.0, "DMARC fail, and the From domain asks to reject such mail (p=reject)"),
        Symbol("DMARC_FAIL_QUARANTINE", 3.0, "DMARC fail, and the From domain asks to quarantine such mail (p=quarantine, or p=reject left out by pct or with an aligned DKIM signature left unverified over [checks.dkim] max_size)"),
        Symbol("DMARC_FAIL_NONE", 0.5, "DMARC fail, and the From domain only monitors (p=none, or a milder policy by pct)"),
        Symbol("DMARC_NONE", 0.0, "The From domain publishes no DMARC policy (or the From field has no domain)"),
        Symbol("DMARC_TEMPFAIL", 0.0, "DMARC could not be evaluated: the policy, an SPF record or a DKIM key could not be looked up (DNS error)"),
        Symbol("DMARC_ARC_OVERRIDE", 0.0, "DMARC failed but a trusted ARC sealer vouched for the message: the policy is not applied"),
    )

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        path = self.options.public_suffix_list
        if path:
            # Read now (at start and at every reload), so that a bad file is refused here and not found by each message.
            try:
                loaded = load_psl(path)
            except (OSError, ValueError) as exc:
                where = services.config.path or "milter.conf"
                raise ConfigError(where, "[checks.dmarc] public_suffix_list", f"cannot use {path}: {read_error(exc)}") from None
            if len(_LOADED) >= 4:
                _LOADED.clear()
            _LOADED[path] = loaded
            _org_domain.cache_clear()  # answers from the file's previous content

    def eom_tier(self) -> int:
        return 1  # after DKIM and ARC, whose results it reads

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        domains = envelope_from_domains(envelope)
        hidden = _HIDDEN if hidden_domain(envelope) else _OBSCURED if obscured_domain(envelope) else ""
        if not domains and hidden:
            return self._malformed(envelope, "", hidden)
        if not domains:
            # Recorded too, so that Authentication-Results says dmarc=none rather than nothing.
            envelope.check_state(STATE)["result"] = Evaluation("none", "", reason="no From domain")
            return [Hit("DMARC_NONE", detail="no From domain")]
        if len(domains) > _MAX_FROM_DOMAINS:
            return self._malformed(envelope, domains[-1], f"{len(domains)} From domains: more than {_MAX_FROM_DOMAINS} are not looked up")
        resolver = self.services.resolver
        psl_path = self.options.public_suffix_list
        signatures = envelope.check_state("dkim").get("result", ())
        passes = [s.domain for s in signatures if s.result == "pass"]
        # A key name DNS cannot be asked about (s=a..b) is a permerror already (the dkim check's DnsRecorder):
        # a forger's signature with the From domain's d= does not hold the policy back as a temperror.
        temperrors = [s.domain for s in signatures if s.result == "temperror"]
        unverified = envelope.check_state("dkim").get("unverified", ())
        spf = envelope.check_state("spf").get("evaluation")
        evaluations = []
        records: dict[str, Record] = {}
        for domain in domains:
            # Each From domain's lookups have a deadline of their own, set when they start: the end of message's
            # may be spent by lookups the sender chose (a DKIM key or an ARC seal in a domain whose DNS never
            # answers), and so may another From domain's (the sender's own, put first).
            deadline = resolver.stage_deadline(envelope.dns_deadlines, f"{POLICY_STAGE}:{domain}")
            found = _lookup(resolver, domain, deadline, psl_path)
            if isinstance(found, str):
                evaluations.append(Evaluation("temperror" if found else "none", domain, reason=found))
            elif isinstance(found, Unusable):
                evaluations.append(Evaluation("none", domain, reason=found.why))
            else:
                record, record_domain = found
                records[domain] = record
                temp = any(aligned(signer, domain, record.adkim, psl_path) for signer in temperrors)
                roll = random.randrange(100)
                evaluation = evaluate(domain, record, record_domain, spf, passes, roll, psl_path, temp)
                evaluation = with_np(evaluation, record, record_domain, roll, functools.partial(_nonexistent, resolver, deadline=deadline))
                if evaluation.result == "fail" and any(aligned(signer, domain, record.adkim, psl_path) for signer in unverified):
                    # It may be genuine, or a forger's junk (anyone can write d=bank.example): held, never rejected
                    # (after np=, which would set reject again).
                    applied = _MILDER["reject"] if evaluation.applied == "reject" else evaluation.applied
                    evaluation = replace(evaluation, applied=applied, unverified=True)
                evaluations.append(evaluation)
        if hidden:
            evaluations.append(Evaluation("fail", "", "quarantine", "quarantine", reason=hidden))
        evaluation = strictest(evaluations)
        domain = evaluation.domain
        envelope.check_state(STATE)["result"] = evaluation
        if evaluation.result == "none":
            return [Hit("DMARC_NONE", detail=f"{domain}: {evaluation.reason}" if evaluation.reason else domain)]
        if evaluation.result == "pass":
            return [Hit("DMARC_PASS", detail=f"{domain}: {evaluation.reason}")]
        if evaluation.result == "temperror":
            return [Hit("DMARC_TEMPFAIL", detail=f"{domain}: {evaluation.reason}")]
        arc = envelope.check_state("arc").get("result")
        sealer = _trusted_sealer(arc, self.services.config.checks.arc.trusted_sealers)
        failed = [e for e in evaluations if e.result == "fail"]
        vouched = {e.domain: vouched_by(arc, e.domain, records[e.domain], psl_path) if sealer and e.domain in records else "" for e in failed}
        unvouched = [e for e in failed if not vouched[e.domain]]
        held = _unverified_trusted_sealer(arc, self.services.config.checks.arc.trusted_sealers)
        if unvouched and held:
            # A trusted sealer's seal whose key DNS did not give: it may vouch once DNS answers, so no policy is
            # applied (as for a DKIM key of an aligned domain): an outage at a mailing list must not bounce its posts.
            evaluation = replace(strictest(unvouched), result="temperror",
                                 reason=f"the ARC seal of trusted sealer {held} could not be verified: {getattr(arc, 'reason', '')}"[:300])
            envelope.check_state(STATE)["result"] = evaluation
            return [Hit("DMARC_TEMPFAIL", detail=f"{evaluation.domain}: {evaluation.reason}")]
        if unvouched:
            # A trusted sealer's pass for one From domain overrides no other domain's failure.
            evaluation = strictest(unvouched)
            envelope.check_state(STATE)["result"] = evaluation
            return [enforce(evaluation, self.options.reject_action, self.options.quarantine_action)]
        # Logged as failed, but neither scored nor enforced.
        override = "; ".join(f"{e.domain}: sealed by {sealer}, who recorded {vouched[e.domain]}" for e in failed)
        return [Hit(f"DMARC_FAIL_{evaluation.applied.upper()}", detail=describe(evaluation), score=0.0), Hit("DMARC_ARC_OVERRIDE", detail=override)]

    def _malformed(self, envelope: Envelope, domain: str, reason: str) -> Hits:
        """A From DMARC cannot judge (*reason*): a failure, whatever its domains publish.

        More From domains than are looked up: any bound can be filled with
        domains of no policy ahead of the one forged (``u0@d0.example, …,
        security@bank.example``).  A From domain with bytes that are not UTF-8,
        and no other (:func:`hidden_domain`).  Such a message is not passed unjudged: it
        gets the quarantine policy (RFC 7489 §6.6.1: such mail "is typically
        rejected"), ``quarantine_action`` deciding what that does, as for a
        domain's p=quarantine.  *domain*: the one named in the results, if any.
        """
        evaluation = Evaluation("fail", domain, "quarantine", "quarantine", reason=reason)
        envelope.check_state(STATE)["result"] = evaluation
        return [enforce(evaluation, self.options.reject_action, self.options.quarantine_action, why=reason)]


_RESULT_RANK = {"pass": 0, "none": 1, "temperror": 2, "permerror": 2, "fail": 3}
_POLICY_RANK = {"none": 0, "quarantine": 1, "reject": 2}


def strictest(evaluations: list[Evaluation]) -> Evaluation:
    """The evaluation that decides for a message with several From domains (RFC 7489 §6.6.1).

    A failure wins (the strictest policy applied), then a DNS error, then a
    domain without policy: the message passes only when every domain does.
    """
    return max(evaluations, key=lambda e: (_RESULT_RANK[e.result], _POLICY_RANK[e.applied], _POLICY_RANK[e.policy]))


def describe(evaluation: Evaluation) -> str:
    """The log detail of a DMARC failure: the domain, the policy and which tag it came from, the policy applied
    (for a From judged without a domain, :meth:`Dmarc._malformed`'s, why)."""
    domain, applied = evaluation.domain, evaluation.applied
    if not domain and evaluation.reason:
        return f"{evaluation.reason}: applied={applied}"
    unverified = " (an aligned DKIM signature not verified: message over [checks.dkim] max_size)" if evaluation.unverified else ""
    if evaluation.nonexistent:
        return f"{domain} policy np={evaluation.policy} applied={applied} ({domain} does not exist){unverified}"
    if evaluation.organizational:
        return f"{domain} sp={evaluation.policy} of {evaluation.organizational} applied={applied}{unverified}"
    return f"{domain} p={evaluation.policy} applied={applied}{unverified}"


def with_np(evaluation: Evaluation, record: Record, record_domain: str, roll: int, nonexistent: Callable[[str], bool]) -> Evaluation:
    """*evaluation* under the record's ``np`` when its From domain does not exist (RFC 9091 §4.1), else as it is.

    Only a failure judged by a record of the organizational domain whose ``np``
    differs from its ``sp`` asks *nonexistent* (the DNS lookups): a pass, a
    record at the From domain itself (``p`` applies, never ``np``) or an
    ``np`` that changes nothing costs no query.  *roll* samples by ``pct`` as
    for ``sp``.
    """
    domain = evaluation.domain
    if evaluation.result != "fail" or record_domain == domain or record.np is None or record.np == record.sp:
        return evaluation
    if not nonexistent(domain):
        return evaluation
    applied = _sampled(record.np, roll, record.pct)
    return replace(evaluation, policy=record.np, applied=applied, nonexistent=True)


def enforce(evaluation: Evaluation, reject_action: str, quarantine_action: str, why: str = "") -> Hit:
    """The hit of a DMARC failure, with the action configured for the policy applied; *why*, when
    given, is its detail and the reason of a reject (else the domain's policy is named)."""
    applied = evaluation.applied
    symbol = f"DMARC_FAIL_{applied.upper()}"
    detail = why or describe(evaluation)
    action = reject_action if applied == "reject" else quarantine_action if applied == "quarantine" else "score"
    if evaluation.unverified and action == "reject":
        # An aligned signature left unverified (over [checks.dkim] max_size): held, never rejected, whatever
        # quarantine_action says (with "reject" genuine large signed mail was refused).
        action = "quarantine"
    if action == "reject":
        reply = Reply.reject(f"Message rejected: {why or _refusal(evaluation)}")
        return Hit(symbol, detail=detail, action=Action.REJECT, reply=reply)
    if action == "quarantine":
        return Hit(symbol, detail=detail, action=Action.QUARANTINE)
    return Hit(symbol, detail=detail)


@dataclass(frozen=True)
class Unusable:
    """What :func:`_lookup` found instead of a record: DMARC records no policy can be taken from (``why``)."""

    why: str


def _lookup(resolver: Any, domain: str, deadline: float, psl_path: str) -> tuple[Record, str] | Unusable | str:
    """The record for *domain* and where it was found; :class:`Unusable` when what is published
    there ends policy discovery (RFC 7489 §6.6.3); a str otherwise ("" none, else the DNS error)."""
    candidates = [domain]
    org = org_domain(domain, psl_path)
    if org != domain:
        candidates.append(org)
    for name in candidates:
        if not queryable(f"_dmarc.{name}"):
            continue  # a name over 253 octets holds no record; the organizational domain's applies
        answer = resolver.txt(f"_dmarc.{name}", deadline)
        if answer.failed:
            return answer.error or "DNS error"
        published = [text for text in answer.records if is_dmarc_record(text)]
        if not published:
            continue  # RFC 7489 §6.6.3 step 3: none here, the organizational domain's applies
        # Steps 5 and 6: several records, or one without a valid p= or with an invalid sp= (and no rua=), end policy
        # discovery: no DMARC for the message, not the organizational domain's policy instead.
        if len(published) > 1:
            return Unusable(f"_dmarc.{name} publishes {len(published)} DMARC records")
        record = parse_record(published[0])
        return Unusable(f"_dmarc.{name}: no valid p= or sp=") if record is None else (record, name)
    return ""


def _sampled(policy: Policy, roll: int, pct: int) -> Policy:
    """*policy* for a message *roll* (0..99) puts in the ``pct`` sample, else the next milder one."""
    return policy if roll < pct else _MILDER[policy]


def _refusal(evaluation: Evaluation) -> str:
    """Why a reject refuses the message, naming the From domain."""
    domain, applied, published = evaluation.domain, evaluation.applied, evaluation.policy
    # The policy published, and how it was applied when that differs (pct=, quarantine_action = "reject"): the
    # applied one alone said "publishes a DMARC policy of quarantine" of a domain publishing p=reject.
    how = "" if applied == published else f" (applied as {applied})"
    if evaluation.nonexistent:
        return f"{domain} does not exist and its organizational domain's DMARC policy for such domains is {published}{how}"
    if evaluation.organizational:
        return (f"{evaluation.organizational} publishes a DMARC policy of {published} for its subdomains such as "
                f"{domain}{how} and this message failed it")
    return f"{domain} publishes a DMARC policy of {published}{how} and this message failed it"


def _nonexistent(resolver: Any, domain: str, deadline: float) -> bool:
    """Whether *domain* is a non-existent domain (RFC 9091 §2.7): NXDOMAIN or no data for A, AAAA and MX, all three.

    A DNS error or timeout on any of them leaves it not known to be
    non-existent: ``sp`` applies, as it did before ``np``, and never a
    tempfail (the message failed DMARC whatever the answer).  A name no
    resolver can ask about (over 253 octets) cannot exist in DNS: a forger
    does not escape ``np`` with one.
    """
    if not queryable(domain):
        return True
    answers = resolver.query_many([(domain, "A"), (domain, "AAAA"), (domain, "MX")], deadline)
    return all(answer.missing for answer in answers)


def vouched_by(arc: Any, domain: str, record: Record, psl_path: str = "") -> str:
    """What the newest ARC sealer recorded that passes DMARC for From *domain* under *record*, or "".

    Its ARC-Authentication-Results (``arc.recorded``) must say ``dmarc=pass`` for *domain*, or
    ``dkim=pass``/``spf=pass`` for a domain aligned with it: a list that relayed a forged From
    recorded a failure there, and its seal must not turn that into a pass.
    """
    for method, result, recorded in getattr(arc, "recorded", ()):
        if result != "pass" or not recorded:
            continue
        if method == "dmarc" and recorded == domain:
            return f"dmarc=pass header.from={recorded}"
        if method == "dkim" and aligned(recorded, domain, record.adkim, psl_path):
            return f"dkim=pass header.d={recorded}"
        if method == "spf" and aligned(recorded, domain, record.aspf, psl_path):
            return f"spf=pass smtp.mailfrom={recorded}"
    return ""


def is_trusted_sealer(sealer: str, trusted: Iterable[str]) -> bool:
    """Whether *sealer* (an ARC-Seal's d=, as the caller has it) is one of ``[checks.arc] trusted_sealers``
    (*trusted*, compared without case or a trailing dot)."""
    return sealer in {t.lower().rstrip(".") for t in trusted}


def _trusted_sealer(arc: Any, trusted: list[str]) -> str:
    """The trusted sealer of the newest ARC set when the chain passed, else ""."""
    if arc is None or arc.result != "pass" or not arc.sealers:
        return ""
    newest = arc.sealers[-1].lower().rstrip(".")
    return newest if is_trusted_sealer(newest, trusted) else ""


def _unverified_trusted_sealer(arc: Any, trusted: list[str]) -> str:
    """The newest ARC set's sealer when it is trusted and its key could not be looked up (DNS error), else "":
    the chain may pass once DNS answers (:attr:`milterd.checks.arc.ArcResult.unverified_sealer`)."""
    sealer: str = getattr(arc, "unverified_sealer", "") if arc is not None and arc.result == "fail" else ""
    return sealer if sealer and is_trusted_sealer(sealer, trusted) else ""


CHECKS = (Dmarc,)

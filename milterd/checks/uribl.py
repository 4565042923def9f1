"""URI block lists: the domains of a message's links, looked up at end of message.

The links of the text and HTML parts (``href``/``src``, srcsets, CSS, a refresh and the like, written-out
``http(s)://`` and bare ``www.`` links; :mod:`milterd.content.mimetext`), and the links written in
their paths and queries (a redirector's target: ``google.com/url?q=https://…``), are reduced to
their registrable domains with the Public Suffix List (``publicsuffixlist``:
``www.a.example.co.uk`` → ``example.co.uk``), the well-known ones of
``[checks.uribl] skip_domains`` dropped, and at most ``max_domains`` of them
(:func:`link_targets` says which: those of clickable links before those of
image sources) looked up in every ``[[uribl]]`` zone at once, through
milterd's resolver::

    [[uribl]]
    name = "DBL"                      # symbols URIBL_DBL, URIBL_DBL_<CODE>
    zone = "dbl.spamhaus.org"
    score = 2.0                       # an answer no code below names
    action = "score"                  # or "reject": 550 5.7.1 naming the domain
    refused = ["127.255.255.*"]       # answers that mean "query refused", not "listed"
    codes = [
      { name = "PHISH", answers = ["127.0.1.4"], score = 5.0 },
      { name = "PH", mask = 8, score = 5.0 },   # bit 8 of the last octet (SURBL, URIBL)
    ]

Answers and patterns work as for ``[[dnsbl]]``; ``mask`` matches answers in
127.0.0.0/24 whose last octet has those bits.  Links to an IP address are
looked up in the ``[[dnsbl]]`` zones (or zone codes) named in ``[checks.uribl]
ip_lists``, whose operators allow it (symbol ``URIBL_IP_<NAME>``).
"""

from __future__ import annotations

import ipaddress
import logging
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Collection, Iterable, Mapping
from urllib.parse import unquote, urlsplit

from publicsuffixlist import PublicSuffixList
from pydantic import Field, field_validator

from ..content.mimetext import UNREAD_REASONS
from ..dns import Answer, a_label, dnsbl_name, fold_case, uts46_mapped
from ..domains import MAX_EMBEDDED as MAX_EMBEDDED
from ..domains import MAX_EMBEDDING, embedded_authorities
from ..domains import public_suffixes as public_suffixes
from ..domains import registrable as registrable
from ..message.model import Action, Envelope, Hit, Session, SpoolError
from ..message.reply import Reply
from ..options import CheckSwitches, ConfigError, domain_names
from ..text import escape
from . import Hits, Symbol
from .configured import ConfiguredCheck
from .dnsbl import Zone, parse_zones
from .dnslists import Code, DnsList, ListKind, hide_access_key, listed_symbols, listing_answers, parse_list_table, parse_tables, sort_outcomes

if TYPE_CHECKING:
    from ..services import Services


class UriblChecks(CheckSwitches):
    """The domains of a message's links looked up in URI block lists ([[uribl]] in rules/; Spamhaus DBL, SURBL and URIBL shipped)."""

    max_domains: int = Field(20, ge=0, le=1000, description="Most distinct registrable domains of a message's links looked up, and apart most IP addresses; of more, that many are drawn at random, those of links a reader follows (a link's href, a form's action, a link in the text) first and those only embedded (image sources and the like) for the places left, so neither links put before a listed one nor image sources can push it out.")
    skip_domains: list[str] = Field(
        ["google.com", "gmail.com", "youtube.com", "goo.gl", "microsoft.com", "office.com", "outlook.com", "live.com", "windows.net", "apple.com", "icloud.com", "amazon.com", "amazonaws.com", "facebook.com", "instagram.com", "whatsapp.com", "linkedin.com", "twitter.com", "x.com", "yahoo.com", "wikipedia.org", "github.com", "mozilla.org", "w3.org", "schema.org", "debian.org", "apache.org", "python.org", "paypal.com"],
        description="Registrable domains never looked up (well known, never listed: asking would only cost queries).",
    )
    ip_lists: list[str] = Field(["SPAMHAUS_SBL"], description="Links to a public IP address (http://<a global IPv4 or IPv6 address>/; private, loopback, link-local and documentation addresses are never looked up) are looked up in these [[dnsbl]] zones or zone codes (name without DNSBL_: \"SPAMHAUS_SBL\"), whose operators allow it; a listing scores URIBL_IP_<NAME> with the zone's or code's score (never a reject).")

    @field_validator("skip_domains")
    @classmethod
    def _skipped(cls, value: list[str]) -> list[str]:
        # Compared whole with a link's registrable domain: "*.example.org" or "http://x" skipped nothing, silently.
        return domain_names(value, "write each registrable domain as it is (example.org)")


log = logging.getLogger(__name__)

TEMPFAIL = "URIBL_TEMPFAIL"
REFUSED = "URIBL_REFUSED"
UNREAD = "URIBL_UNREAD"

# A label may start with "-": browsers go to http://-x.evil.test/, whose registrable domain is evil.test.
_HOST = re.compile(r"^[a-z0-9_-]([a-z0-9_-]{0,62}\.)*[a-z0-9-]{1,63}$")
# A special scheme's authority (WHATWG URL standard, "special authority ignore slashes state"):
# browsers skip any run of "/" and "\\" after "http:" and end the host at a "\\" as at a "/".
_SPECIAL_SCHEME = re.compile(r"(?i)(?:(https?|ftp|wss?):([/\\]*)|([/\\]{2,}))")
_IPV4_PART = {10: re.compile(r"[0-9]+"), 16: re.compile(r"[0-9a-f]*"), 8: re.compile(r"[0-7]*")}
_C0_OR_SPACE = "".join(map(chr, range(0x21)))
#: A link :func:`_special_authority` leaves as it is: a special scheme, two slashes, then a host
#: start, and no backslash, blank or C0 control anywhere.
_ORDINARY = re.compile(r"(?i)(?:https?|ftp|wss?)://[^/\\\x00-\x20][^\\\x00-\x20]*\Z")
_DOTS = ".\u3002\uff0e\uff61"  # the full stops IDNA maps to "."
#: The code points UTS #46 maps to nothing ("ignored": a soft hyphen, zero-width space, variation
#: selectors, …): a browser drops them from a host before anything else (``evil.test.&shy;`` is evil.test).
_IGNORED = dict.fromkeys(map(ord, "\u00ad\u034f\u180b\u180c\u180d\u180f\u200b\u2060\u2064\ufeff"
                          + "".join(map(chr, [*range(0xFE00, 0xFE10), *range(0x1BCA0, 0x1BCA4), *range(0xE0100, 0xE01F0)]))))
#: A link of a scheme with an authority: the scheme, "//", then the authority (up to "/", "?" or "#", as urlsplit reads it).
_AUTHORITY = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*:)?//([^/?#]*)")
KIND = ListKind(
    "uribl", "URIBL_",
    frozenset({"name", "zone", "reply_zone", "score", "action", "codes", "refused", "description"}),
    frozenset({"name", "answers", "mask", "score", "action", "description"}),
    2.0, "DBL", "dbl.spamhaus.org", "PHISH",
    "\"127.0.1.2\", \"127.0.1.4-127.0.1.6\", \"127.0.1.0/24\" or \"127.0.*.2\"",
    "A link's domain is listed in",
    codes_shape="{ name, answers or mask, score }",
)
#: At most this many characters of the links of one message are read for embedded links (about 0.2 s of
#: CPU at worst: decoding and searching cost up to 0.2 µs a character), shared among its links as fairly as
#: they allow (:func:`_link_hosts`): a link is read whole unless it is longer than its share.
EMBEDDING_BUDGET = 1024 * 1024
#: The message text looked at for links (as the custom rules read it).
_MAX_TEXT = 1024 * 1024
#: Chooses the targets of a message with more than max_domains: from os.urandom, so a sender cannot
#: try variants of a message offline until the choice leaves out its listed domain (no state: thread-safe).
_CHOOSER = random.SystemRandom()


@dataclass(frozen=True)
class UriZone(DnsList):
    """One URI block list (a domain list such as Spamhaus DBL), or a DNSBL asked for address links."""

    addresses: bool = False  # a [[dnsbl]] zone asked for IP-address links

    def symbols(self) -> tuple[Symbol, ...]:
        """The symbols this list can emit."""
        base = () if self.addresses and self.codes else (Symbol(self.symbol, self.score, self.description),)
        return base + tuple(Symbol(c.symbol, c.score, c.description) for c in self.codes)


@dataclass(frozen=True)
class Listed:
    """A domain (or address) a list named, with the symbols of its answers."""

    zone: UriZone
    target: str
    symbols: tuple[tuple[str, bool], ...]
    answers: tuple[str, ...]


# --- rule files -------------------------------------------------------------

def parse_uri_zones(services: "Services") -> list[UriZone]:
    """Every ``[[uribl]]`` of the rule files, validated; ConfigError on the first bad one."""
    return parse_tables(services.ruleset, "uribl", parse_uri_zone, lambda zone: {s.name for s in zone.symbols()}, set(), "list", services.builtin)


def parse_uri_zone(file: Any, position: int, entry: Any) -> UriZone:
    """One ``[[uribl]]`` table; ConfigError naming the file, the list and the key otherwise."""
    return UriZone(**vars(parse_list_table(KIND, file, position, entry)[1]))


def address_lists(names: Iterable[str], zones: list[Zone], disabled: Iterable[str], file: Any, local_files: Mapping[str, Any] | None = None) -> list[UriZone]:
    """The ``[[dnsbl]]`` zones (``SPAMHAUS``) or zone codes (``SPAMHAUS_SBL``) asked for address links.

    They take the zone's or code's score, never its reject.  A name of a zone
    the rule files switched off is left out; an unknown one is a ConfigError
    naming the local rule file of the zone that lacks the code (*local_files*:
    symbol of a zone of the local rules directory → its file), else *file*
    (milter.conf) and the names there are.
    """
    off = {key.split(" ", 1)[1] for key in disabled if key.startswith("dnsbl ")}
    found: list[UriZone] = []
    for wanted in names:
        symbol = f"DNSBL_{wanted}"
        zone = next((z for z in zones if z.kind == "dnsbl" and (z.symbol == symbol or any(c.symbol == symbol for c in z.codes))), None)
        if zone is None:
            if any(wanted == name or wanted.startswith(name + "_") for name in off):
                continue
            raise _unknown_ip_list(wanted, zones, file, local_files or {})
        codes = tuple(
            Code(f"URIBL_IP_{wanted}", c.answers, c.score, False, f"A link's address is listed in {hide_access_key(zone.zone, zone.zone)} ({c.symbol})")
            for c in zone.codes if c.symbol == symbol
        )
        # Scored only: a zone that rejects clients it lists need not reject mail that links to them.
        found.append(UriZone(f"URIBL_IP_{wanted}", zone.zone, zone.score, False, codes, zone.refused, f"A link's address is listed in {hide_access_key(zone.zone, zone.zone)}", addresses=True))
    return found


def _unknown_ip_list(wanted: str, zones: list[Zone], file: Any, local_files: Mapping[str, Any]) -> ConfigError:
    """The error for an ``ip_lists`` name no ``[[dnsbl]]`` has: the local rule file whose zone lacks
    that code (a zone replacing a shipped one keeps none of its codes), else *file* and the names there are."""
    symbol = f"DNSBL_{wanted}"
    blocklists = [z for z in zones if z.kind == "dnsbl"]
    owner = max((z for z in blocklists if symbol.startswith(z.symbol + "_")), key=lambda z: len(z.symbol), default=None)
    if owner is not None and owner.symbol in local_files:
        codes = ", ".join(c.symbol.removeprefix(owner.symbol + "_") for c in owner.codes) or "none"
        return ConfigError(
            local_files[owner.symbol], f"dnsbl {owner.symbol.removeprefix('DNSBL_')}.codes",
            f"has no code {symbol.removeprefix(owner.symbol + '_')}, which [checks.uribl] ip_lists ({file}; default [\"SPAMHAUS_SBL\"]) "
            f"names; codes here: {codes}.  A [[dnsbl]] that replaces a shipped one keeps none of its keys: give its codes too, or change ip_lists",
        )
    known = ", ".join(s.removeprefix("DNSBL_") for z in blocklists for s in (z.symbol, *(c.symbol for c in z.codes))) or "none"
    return ConfigError(
        file, "[checks.uribl] ip_lists",
        f"no [[dnsbl]] zone or zone code is named {wanted}; the rule files (`milterd config show` lists them) name: {known} (names drop the DNSBL_ prefix)",
    )


# --- links ------------------------------------------------------------------

def link_host(uri: str) -> str | None:
    """The host of a link, lower-cased, IDNA-encoded, without a trailing dot; None when it has none."""
    text = uri.strip()
    if text.lower().startswith("www."):
        text = "http://" + text
    text = _special_authority(text)
    try:
        parts = urlsplit(text)
        netloc, host = parts.netloc, parts.hostname
    except ValueError:
        # urlsplit refuses an authority with an unpaired "[" or "]", or with a character NFKC makes a
        # delimiter ("／", "＠") in its userinfo; a browser's host is what follows its last "@" all the same.
        netloc, host = _authority(text)
    if not host:
        return None
    if not host.isascii():
        # hostname lower-cases with str.lower(), which writes a final Σ as ς: the host as written, folded letter by letter.
        host = netloc.rpartition("@")[2].partition(":")[0] or host
    host = _host_text(host)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if _maybe_address(host):
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
    host = _idna(host)
    return host if host is not None and _HOST.match(host) else None


def _host_text(host: str) -> str:
    """*host* (of a link's authority) as a browser reads it: percent-decoded, lower-cased, without its trailing dot."""
    host = unquote(host)
    if not host.isascii():
        # UTS #46 drops its ignored code points first: "evil.test.<soft hyphen>" is "evil.test.", so evil.test.
        host = host.translate(_IGNORED)
    return fold_case(host.strip()).rstrip(_DOTS)


def link_form(uri: str) -> str:
    """*uri* as SpamAssassin's uri rules also see it: scheme and host lower-cased, the host as
    :func:`_host_text` reads it and UTS #46 maps it, an empty port dropped, an http(s)/ftp/ws(s) link's backslashes as "/" and its "//" added where
    left out (:func:`_special_authority`), "http:" before a link that starts with "//", and a "/" between
    the host and a "?", a "#" or the end: ``HTTPS:Evil.TO%70.?x`` is ``https://evil.top/?x``.
    A link with no authority (``mailto:``, a relative path) is left as it is."""
    text = _special_authority(uri.strip())
    match = _AUTHORITY.match(text)
    if match is None:
        return uri
    scheme = text[: match.start(1) - 2].lower() or "http:"
    userinfo, at, address = match.group(1).rpartition("@")
    # An IPv6 address's colons are no port's: "[::1]:8080" ends its host at "]:".
    host, colon, port = address.partition("]:" if address.startswith("[") else ":")
    host = _host_text(host)
    if not host.isascii():
        host = uts46_mapped(host) or host  # as a browser goes there: "evil。top", "ｅｖｉｌ．ｔｏｐ" are evil.top
    if not port:
        colon = "]" if colon == "]:" else ""  # an empty port is the default one: "evil.top:/x" is evil.top/x
    path = text[match.end():]
    if not path or path[0] in "?#":
        path = "/" + path
    return f"{scheme}//{userinfo}{at}{host}{colon}{port}{path}"


def _special_authority(text: str) -> str:
    """*text* with an http(s)/ftp/ws(s) authority written as browsers read it: ``http:\\\\a\\b`` → ``http://a/b``.

    Browsers (WHATWG URL standard, special schemes) strip C0 controls and
    spaces around a URL, drop its tabs and newlines, skip any slashes and
    backslashes after the scheme and end the authority at a backslash;
    ``urlsplit`` does neither of the last two (``http://evil\\@good`` is
    ``evil`` to a browser, ``good`` to it; ``https:///evil/`` has no host to
    it, evil to a browser).  Other text is left as it is.
    """
    if _ORDINARY.match(text):
        return text  # most links: nothing for a browser to read otherwise (and no copy made)
    cleaned = text.strip(_C0_OR_SPACE).translate({9: None, 10: None, 13: None})
    match = _SPECIAL_SCHEME.match(cleaned)
    if match is None:
        return text
    rest = cleaned[match.end():]
    scheme = f"{match.group(1)}:" if match.group(1) else ""  # "\\\\host" is "//host" under an http page
    return f"{scheme}//" + rest.replace("\\", "/")


def _authority(text: str) -> tuple[str, str | None]:
    """The authority of *text* (a link :func:`_special_authority` read) and its host, as a browser reads
    them where ``urlsplit`` raises: the host follows the authority's last "@" and ends at a ":" (a port of
    digits) or is an IPv6 address in brackets; ("", None) for none, or where a browser refuses the URL
    (a "[" or "]" elsewhere, a port that is no number, brackets round no IPv6 address)."""
    match = _AUTHORITY.match(text)
    if match is None:
        return "", None
    netloc = match.group(1)
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        end = host.find("]")
        host, port = host[: end + 1], host[end + 1:]
        if end < 0 or (port and not port.startswith(":")) or not _ipv6(host[1:-1]):
            return netloc, None
        port = port[1:]
    else:
        host, _, port = host.partition(":")
        if "[" in host or "]" in host:
            return netloc, None
    if port and not (port.isascii() and port.isdigit() and len(port.lstrip("0")) <= 5 and int(port) < 65536):
        return netloc, None
    return netloc, host or None


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _maybe_address(host: str) -> bool:
    """False for what ``ipaddress.ip_address`` surely refuses: an IPv6 address has a colon, an IPv4 one only digits and dots."""
    return ":" in host or host.replace(".", "").isdigit()


def _idna(host: str) -> str | None:
    """*host* as the DNS is asked about it (IDNA2008 A-labels, :func:`milterd.dns.a_label`: ``faß.example``
    is ``xn--fa-hia.example``, where a browser goes, not IDNA2003's ``fass.example``); None where IDNA
    refuses it: every label but the last one 1 to 63 characters, the last one at most 63.
    """
    name = host if host.isascii() else a_label(host)
    if name is None:
        return None
    labels = name.split(".")
    if len(labels[-1]) >= 64 or not all(0 < len(label) < 64 for label in labels[:-1]):
        return None
    return name


def link_targets(
    uris: Iterable[str], skip: frozenset[str], limit: int, psl: PublicSuffixList | None = None, rng: random.Random | None = None,
    embedded: Collection[str] = (),
) -> tuple[list[str], list[str]]:
    """The registrable domains and the IP addresses of *uris*, at most *limit* of each, in order of appearance.

    Each link gives its host and those of the links embedded in its path and
    query (:func:`embedded_hosts`: a redirector's target, found also where
    the redirector is in *skip*, as google.com is).  Hosts that are a public
    suffix themselves, have no registrable domain, or whose registrable
    domain is in *skip*, are left out before any choice, so they take none of
    the *limit* places; a repeated link, and the subdomains of one domain,
    take one place in all.  Registrable domains come from *psl*, or by
    default from :func:`registrable`.

    Where more than *limit* distinct domains (or addresses) are found, *limit*
    of them are drawn at random by *rng*: the first ones in order would let a
    sender put *limit* unlisted links before a listed one and have it never
    asked about.  The order of the links and how often each repeats do not
    count, but their kind does: the domains of links a reader follows are
    drawn first, and those found only in the links of *embedded*
    (:attr:`milterd.content.mimetext.MessageText.embedded`: image sources and
    the like) fill the places left, so padding with images cannot push a
    clickable link out (SpamAssassin's URIDNSBL puts anchors and forms before
    images too).  Addresses have their own *limit*: public IPv4 addresses are
    free to anyone, so they must not take the domains' places.  At most
    2 × *limit* targets are asked of each list, however many links there are.

    What padding costs here: each of N registrable domains of followed links
    is looked up with probability *limit*/N, so hiding a listed one from 95%
    of lookups takes N = 20 × *limit* other registrable domains (400 for 20;
    any existing domain outside *skip* serves) in one message, and every
    further listed domain is one more chance to be drawn; beside *limit* of
    them, a domain only embedded is not looked up at all.  Cheaper padding
    works before this choice, in what *uris* are: those
    :func:`milterd.content.mimetext.extract` keeps, the first link of each
    of at most ``MAX_HOSTS`` (1,000) hosts, among the first
    ``MAX_LINKS_SCANNED`` (20,000) distinct links written and
    ``MAX_LINKS_LOOKED`` (50,000) in all.  Of more hosts, every registrable
    domain keeps one before any keeps two, and IP addresses keep their own
    share, so 20,000 copies of one link before a listed one, or 19,000
    subdomains of one domain (a wildcard DNS record) beside it, do not hide
    it; 1,000 other registrable domains (or 20,000 distinct links, 50,000
    in all, before it) still can, and ``URIBL_UNREAD`` (score 0) shows
    such mail.  *rng* defaults to one seeded from the targets found (the
    same links, the same choice); the check passes an unpredictable one, so a
    sender cannot try variants of a message until the choice leaves its
    domain out.
    """
    uris = list(dict.fromkeys(uris))  # a repeated link adds nothing
    hosts = _link_hosts(uris)
    domains, addresses = _targets(uris, hosts, skip, psl)
    if len(domains) <= limit and len(addresses) <= limit:
        return list(domains), list(addresses)
    chooser = rng if rng is not None else random.Random("\n".join(sorted(domains) + sorted(addresses)))
    if not embedded:
        return _sample(list(domains), limit, chooser), _sample(list(addresses), limit, chooser)
    followed_domains, followed_addresses = _targets([uri for uri in uris if uri not in embedded], hosts, skip, psl)
    return (
        _sample_first(list(domains), followed_domains, limit, chooser),
        _sample_first(list(addresses), followed_addresses, limit, chooser),
    )


def _link_hosts(uris: list[str]) -> dict[str, list[str | None]]:
    """Each of *uris* (distinct) → its host (:func:`link_host`) and the hosts of the links embedded in it (:func:`embedded_hosts`).

    Together at most ``EMBEDDING_BUDGET`` characters are read for embedded links, shortest links first,
    each up to an equal share of what is left: many long links cannot leave a short one unread.
    """
    room: dict[str, int] = {}
    left = EMBEDDING_BUDGET
    by_length = sorted(uris, key=len)
    for index, uri in enumerate(by_length):
        room[uri] = min(len(uri), MAX_EMBEDDING, left // (len(by_length) - index))
        left -= room[uri]
    return {uri: [link_host(uri), *embedded_hosts(uri, room[uri])] for uri in uris}


def _targets(uris: Iterable[str], hosts: Mapping[str, list[str | None]], skip: frozenset[str], psl: PublicSuffixList | None) -> tuple[dict[str, None], dict[str, None]]:
    """The distinct registrable domains and public addresses of *uris* (their *hosts*: :func:`_link_hosts`), in order (:func:`link_targets`)."""
    domains: dict[str, None] = {}
    addresses: dict[str, None] = {}
    for uri in uris:
        for host in hosts[uri]:
            if host is None:
                continue
            address = link_address(host)
            if address is not None:
                if address and _public_address(address):
                    addresses[address] = None
                continue
            domain = registrable(host) if psl is None else psl.privatesuffix(host)
            if domain and domain not in skip:
                domains[domain] = None
    return domains, addresses


def embedded_hosts(uri: str, most: int = MAX_EMBEDDING) -> list[str]:
    """The hosts (:func:`link_host`) of the links written in *uri*'s path and query: where a redirector sends the reader.

    ``https://www.google.com/url?q=https://evil.test/`` and ``https://www.google.com/amp/s/evil.test/``
    give ``["evil.test"]``.  The path and query (not the fragment; their first *most* characters) are
    read as written, percent-decoded and decoded twice (``https%253A%252F%252F``), for an ``http(s)://``
    link anywhere in them or a host right after ``/amp/s/``: so a redirector's target is found, and the
    target of a redirector that one names in turn (SafeLinks wrapping Google's ``/url``), encoded once
    more or not.  At most ``MAX_EMBEDDED`` distinct authorities are looked at, the first found in that order.
    """
    text = uri.strip()
    if text.lower().startswith("www."):
        text = "http://" + text
    text = _special_authority(text)
    match = _AUTHORITY.match(text)
    if match is None:
        return []
    form = text[match.end(): match.end() + most].partition("#")[0]
    hosts = [link_host("http://" + authority) for authority in embedded_authorities(form)]
    return [host for host in hosts if host is not None]


def _sample(found: list[str], limit: int, rng: random.Random) -> list[str]:
    """*limit* of *found* drawn by *rng* (all when there are no more), in their order in *found*.

    Drawn from them sorted: which are drawn does not depend on their order in the message.
    """
    if len(found) <= limit:
        return found
    chosen = set(rng.sample(sorted(found), limit))
    return [target for target in found if target in chosen]


def _sample_first(found: list[str], first: Collection[str], limit: int, rng: random.Random) -> list[str]:
    """*limit* of *found*: drawn among *first* (a part of them), then the places they leave drawn among the others."""
    if len(found) <= limit:
        return found
    if len(first) >= limit:
        return _sample([target for target in found if target in first], limit, rng)
    others = [target for target in found if target not in first]
    chosen = set(first) | set(_sample(others, limit - len(first), rng))
    return [target for target in found if target in chosen]


def link_address(host: str) -> str | None:
    """The IP address a browser connects to for *host* (a :func:`link_host`); None for a domain name, "" for neither.

    As the WHATWG URL standard's host parser reads it: a host whose last
    label is a number is an IPv4 address of one to four decimal, ``0x`` hex
    or ``0`` octal parts (``3232235777``, ``0x7f.1``, ``010.0.0.1``), or
    no host at all (``1.2.3.4.5``, ``a.b.123``); an IPv4-mapped IPv6
    address is the IPv4 one.
    """
    if ":" in host:
        address = ipaddress.IPv6Address(host)
        return str(address.ipv4_mapped or address)
    if not host[host.rfind(".") + 1:][:1].isdigit():
        return None  # every number a last label can be (decimal, 0x hex, 0 octal) starts with a digit
    parts = host.split(".")
    last = parts[-1]
    if not (last.isascii() and last.isdigit()) and _ipv4_part(last) is None:
        return None
    numbers = [_ipv4_part(part) for part in parts]
    if len(numbers) > 4 or None in numbers:
        return ""
    *first, final = [n for n in numbers if n is not None]
    if any(n > 255 for n in first) or final >= 256 ** (5 - len(numbers)):
        return ""
    return str(ipaddress.IPv4Address(final + sum(n << 8 * (3 - i) for i, n in enumerate(first))))


def _ipv4_part(part: str) -> int | None:
    """The WHATWG "IPv4 number" *part* (lower-cased) is: decimal, hex after ``0x``, octal after ``0``; None if none."""
    radix, digits = 10, part
    if part.startswith("0x"):
        radix, digits = 16, part[2:]
    elif len(part) > 1 and part.startswith("0"):
        radix, digits = 8, part[1:]
    if not part or not _IPV4_PART[radix].fullmatch(digits):
        return None
    return int(digits, radix) if digits else 0


def _public_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return False


def query_name(target: str, zone: UriZone) -> str:
    """The name to ask *zone* for a domain, or for an address (reversed)."""
    if zone.addresses:
        return dnsbl_name(target, zone.zone) or ""
    return f"{target}.{zone.zone}"


def classify(zone: UriZone, target: str, answer: Answer) -> Listed | str | None:
    """A list's A answer about *target* → :class:`Listed`, ``"error"``/``"refused"``, or None (not listed)."""
    answers = listing_answers(answer, zone.refused)
    if not isinstance(answers, tuple):
        return answers
    # An address list asked for some of its codes only says nothing for the others.
    fallback = None if zone.addresses and zone.codes else (zone.symbol, zone.reject)
    found = listed_symbols(answers, zone.codes, fallback)
    return Listed(zone, target, found, answers) if found else None


def listing_hits(listings: list[Listed], failed: list[str], refused: list[str]) -> list[Hit]:
    """One hit per symbol (each listed domain in its detail); a reject names the first domain."""
    hits: list[Hit] = []
    if failed:
        hits.append(Hit(TEMPFAIL, detail=", ".join(dict.fromkeys(failed))[:200]))
    if refused:
        hits.append(Hit(REFUSED, detail=", ".join(dict.fromkeys(refused))[:200]))
    targets: dict[str, list[str]] = {}
    rejects: dict[str, Listed] = {}
    for listed in listings:
        for symbol, reject in listed.symbols:
            targets.setdefault(symbol, []).append(f"{listed.target} ({','.join(listed.answers)})")
            if reject and symbol not in rejects:
                rejects[symbol] = listed
    for symbol, found in targets.items():
        detail = ", ".join(dict.fromkeys(found))[:200]
        listed_by = rejects.get(symbol)
        if listed_by is not None:
            reply = Reply.reject(f"Message rejected: it links to {escape(listed_by.target, ascii_only=True)}, listed in {listed_by.zone.shown_zone}")
            hits.append(Hit(symbol, detail=detail, action=Action.REJECT, reply=reply))
        else:
            hits.append(Hit(symbol, detail=detail))
    return hits


#: The DNS deadline (``Resolver.stage_deadline``) of the link lookups, started when they are asked: the end of
#: message's own was started by the DKIM check's key lookups (names the sender chose), and time this check then
#: waited for a thread of the pipeline's pool was charged to it: a listed link went unasked, URIBL_TEMPFAIL.
URIBL_STAGE = "eom-uribl"


class UriBlockLists(ConfiguredCheck[UriblChecks]):
    """The registrable domains of a message's links, looked up in URI block lists."""

    name: ClassVar[str] = "uribl"
    description: ClassVar[str] = "URI block lists: the domains of a message's links ([[uribl]] in rules/, [checks.uribl])"
    rule_sections: ClassVar[tuple[str, ...]] = ("uribl",)
    order: ClassVar[int] = 160
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol(TEMPFAIL, 0.0, "A URI block list could not be asked (timeout, SERVFAIL): counted as not listed"),
        Symbol(REFUSED, 0.0, "A URI block list refused the query (public resolver, over quota, key needed): counted as not listed"),
        Symbol(UNREAD, 0.0, "Some of the message was not read for links (past the link reader's bounds, named in the details): "
                            "its links there were not looked up; score it to act on such mail"),
    )

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        options = self.options
        self.zones = parse_uri_zones(services)
        config_file = services.config.path or "milter.conf"
        zones = parse_zones(services)
        local = services.config.rules_dir
        local_files = {f"DNSBL_{entry['name']}": path for path, _, entry in services.ruleset.tables("dnsbl") if path.parent == local}  # valid: parsed above
        self.zones += address_lists(options.ip_lists, zones, services.ruleset.disabled, config_file, local_files)
        self.skip = frozenset(d.lower().strip(".") for d in options.skip_domains)
        services.list_zones.update(zone.zone for zone in self.zones)
        public_suffixes()  # loaded before the first message, not during it

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        return super().enabled(services) and cls.options_of(services).max_domains > 0

    def dynamic_symbols(self) -> tuple[Symbol, ...]:
        return tuple(s for zone in self.zones for s in zone.symbols())

    def eom_waits(self, envelope: Envelope) -> bool:
        """Only when some lookup of the message's links is not in the resolver's cache: the
        usual message, whose link domains were seen lately, runs in the pipeline's own thread."""
        queries = self._queries(envelope)
        if queries is None:
            return False
        resolver = self.services.resolver
        return not all(resolver.cached(query_name(target, zone), "A") for zone, target in queries)

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        queries = self._queries(envelope)
        unread: str = envelope.check_state(self.name).get("unread", "")
        hits: list[Hit] = [Hit(UNREAD, detail=f"not read: {UNREAD_REASONS.get(unread, unread)}")] if unread else []
        if not queries:
            return hits
        resolver = self.services.resolver
        deadline = resolver.stage_deadline(envelope.dns_deadlines, URIBL_STAGE)
        answers = resolver.query_many([(query_name(target, zone), "A") for zone, target in queries], deadline)
        return listing_hits(*sort_outcomes((zone.zone, classify(zone, target, answer)) for (zone, target), answer in zip(queries, answers, strict=False))) + hits

    def _queries(self, envelope: Envelope) -> list[tuple[UriZone, str]] | None:
        """(list, domain or address) for each lookup of the message's links, worked out once per
        message (eom_waits asks first); None when the links cannot be read."""
        state = envelope.check_state(self.name)
        if "queries" not in state:
            state["queries"] = self._read_queries(envelope)
        queries: list[tuple[UriZone, str]] | None = state["queries"]
        return queries

    def _read_queries(self, envelope: Envelope) -> list[tuple[UriZone, str]] | None:
        if not self.zones:
            return []
        try:
            found = envelope.text(_MAX_TEXT)  # shared with the custom rules when their max_text is the same
            envelope.check_state(self.name)["unread"] = found.unread
            domains, addresses = link_targets(found.uris, self.skip, self.options.max_domains, rng=_CHOOSER, embedded=found.embedded)
        except SpoolError:
            raise  # the spool unreadable: the pipeline answers 451
        except Exception as exc:  # noqa: BLE001 - a message the link extraction fails on: no URI hit, said in URIBL_UNREAD
            log.warning("uribl: cannot read the message's links", exc_info=True)
            envelope.check_state(self.name)["unread"] = f"the links could not be read ({type(exc).__name__})"
            return None
        queries: list[tuple[UriZone, str]] = []
        for zone in self.zones:
            queries += [(zone, target) for target in (addresses if zone.addresses else domains)]
        return queries


CHECKS = (UriBlockLists,)

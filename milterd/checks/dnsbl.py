"""DNS block lists and allow lists, looked up at connect.

Zones are declared in rule files, one ``[[dnsbl]]`` (or ``[[dnswl]]``) table
each::

    [[dnsbl]]
    name = "SPAMHAUS"                 # symbols DNSBL_SPAMHAUS, DNSBL_SPAMHAUS_<CODE>
    zone = "zen.spamhaus.org"
    score = 3.0                       # an answer no code below names
    action = "score"                  # or "reject": 554 5.7.1 at MAIL FROM
    ipv4 = true                       # look IPv4 clients up (reversed octets)
    ipv6 = true                       # look IPv6 clients up (nibbles)
    refused = ["127.255.255.*"]       # answers that mean "query refused", not "listed"
    codes = [
      { name = "SBL", answers = ["127.0.0.2", "127.0.0.9"], score = 4.0, action = "reject" },
      { name = "PBL", answers = ["127.0.0.10-127.0.0.11"], score = 1.5 },
    ]

An answer pattern is an address, a range ``A-B``, a network ``A/N`` or a
pattern with ``*`` octets (``127.0.*.3``).  Answers outside 127.0.0.0/8 are
ignored (a hijacked or wildcarded zone).  ``[[dnswl]]`` takes the same keys
but no action; its symbols start with ``DNSWL_`` (greylisting skips clients
they name) and score negative by default.

Every zone of a client is queried concurrently as soon as it connects; the
answers are collected at MAIL FROM, once SMTP AUTH is known, so an
authenticated client is exempt (``[checks.dnsbl] skip_authenticated``).
With ``[milter] delay_reject = false`` they are collected at connect.

A client at a private address (:data:`PRIVATE_NETWORKS`: RFC 1918, shared
address space, link-local, unique local and the like) is asked of no zone
(``[checks.dnsbl] skip_private``): no public list can list it, and the query
would tell the list's operator an address of the local network.  Loopback and
the documentation networks are not in that list (test points and tests use
them).  The skip is logged once per connection.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pydantic import Field

from ..dns import Answer, dnsbl_name, unscoped
from ..message.model import Action, Envelope, Hit, Session
from ..message.reply import Reply
from ..options import CheckSwitches
from . import Hits, Symbol
from .configured import ConfiguredCheck
from .dnslists import Code as Code
from .dnslists import DnsList, ListKind, boolean, listed_symbols, listing_answers, parse_list_table, parse_tables, sort_outcomes
from .dnslists import answer_matches as answer_matches

if TYPE_CHECKING:
    from ..services import Services

log = logging.getLogger("milterd")


class DnsblChecks(CheckSwitches):
    """DNS block and allow lists at connect; the zones are [[dnsbl]] and [[dnswl]] in rules/."""

    skip_private: bool = Field(
        True,
        description=(
            "Ask no [[dnsbl]] or [[dnswl]] zone about a client at a private address (10/8, 172.16/12, 192.168/16,"
            " 100.64/10, 169.254/16, 198.18/15, fc00::/7, fe80::/10, fec0::/10, also IPv4-mapped) and log that it was"
            " skipped: no public list can list one, and each query would tell the list's operator an address of your"
            " network. Loopback and the documentation networks are still looked up; false asks the zones anyway"
            " (a list of your own that knows these networks)."
        ),
    )


#: The client networks no public DNS list can list, and that a query would disclose to its operator.
#: Named one by one, not ``is_global``/``is_private``: loopback (127.0.0.2 is every list's test
#: point) and the documentation networks (192.0.2.0/24 and its kin, in examples and tests) are
#: still looked up.
PRIVATE_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918 private use
        "100.64.0.0/10",  # RFC 6598 shared address space (carrier-grade NAT)
        "169.254.0.0/16",  # RFC 3927 link-local
        "198.18.0.0/15",  # RFC 2544 benchmarking (lab networks)
        "fc00::/7",  # RFC 4193 unique local
        "fe80::/10",  # RFC 4291 link-local
        "fec0::/10",  # RFC 3879 site-local (deprecated, still configurable)
    )
)
_PRIVATE4 = tuple(n for n in PRIVATE_NETWORKS if isinstance(n, ipaddress.IPv4Network))
_PRIVATE6 = tuple(n for n in PRIVATE_NETWORKS if isinstance(n, ipaddress.IPv6Network))


def private_network(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network of :data:`PRIVATE_NETWORKS` holding *ip*, else None.

    An IPv4-mapped IPv6 address counts as its IPv4 address (it is looked up as
    one), a scoped one (``fe80::1%eth0``) as the address without its zone.
    """
    ip = unscoped(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return next((n for n in _PRIVATE6 if ip in n), None)
        ip = ip.ipv4_mapped
    return next((n for n in _PRIVATE4 if ip in n), None)


_STATE = "dnsbl"

_KEYS = frozenset({"name", "zone", "reply_zone", "score", "action", "ipv4", "ipv6", "codes", "refused", "description"})
_CODE_KEYS = frozenset({"name", "answers", "score", "action", "description"})
_ANSWERS = "\"127.0.0.2\", \"127.0.0.4-127.0.0.7\", \"127.0.0.0/30\" or \"127.0.*.3\""
KINDS = {
    "dnsbl": ListKind("dnsbl", "DNSBL_", _KEYS, _CODE_KEYS, 2.0, "SPAMHAUS", "zen.spamhaus.org", "SBL", _ANSWERS, "Client listed in"),
    "dnswl": ListKind(
        "dnswl", "DNSWL_", _KEYS - {"action"}, _CODE_KEYS - {"action"}, -2.0, "SPAMHAUS", "zen.spamhaus.org", "SBL", _ANSWERS, "Client listed in",
        unknown_action=" (a DNSWL cannot reject)",
    ),
}


@dataclass(frozen=True)
class Zone(DnsList):
    """One DNS list of client addresses."""

    kind: str = "dnsbl"  # or "dnswl"
    ipv4: bool = True
    ipv6: bool = True


def parse_zones(services: "Services") -> list[Zone]:
    """Every ``[[dnsbl]]`` and ``[[dnswl]]`` of rules/, validated; ConfigError on the first bad one."""
    seen: set[str] = set()
    zones: list[Zone] = []
    for kind in KINDS:
        zones += parse_tables(services.ruleset, kind, functools.partial(parse_zone, kind), _symbols, seen, "zone", services.builtin)
    return zones


def _symbols(zone: Zone) -> set[str]:
    return {zone.symbol, *(c.symbol for c in zone.codes)}


def parse_zone(kind: str, file: Any, position: int, entry: Any) -> Zone:
    """One zone table; ConfigError naming the file, the zone and the key otherwise."""
    where, table = parse_list_table(KINDS[kind], file, position, entry)
    ipv4 = boolean(file, f"{where}.ipv4", entry.get("ipv4", True))
    ipv6 = boolean(file, f"{where}.ipv6", entry.get("ipv6", True))
    return Zone(**vars(table), kind=kind, ipv4=ipv4, ipv6=ipv6)


@dataclass(frozen=True)
class Listing:
    """What one zone said about a client."""

    zone: Zone
    symbols: tuple[tuple[str, bool], ...]  # (symbol, reject) for each list that matched
    answers: tuple[str, ...]


def classify(zone: Zone, answer: Answer) -> Listing | str | None:
    """A zone's A answer → a :class:`Listing`, ``"error"``/``"refused"``, or None (not listed)."""
    answers = listing_answers(answer, zone.refused)
    if not isinstance(answers, tuple):
        return answers
    return Listing(zone, listed_symbols(answers, zone.codes, (zone.symbol, zone.reject)), answers)


def reject_reply(ip: str, zone: str, reason: str) -> Reply:
    """The SMTP reply for a client a zone set to reject lists."""
    reason = " ".join(reason.split())[:300] or "listed"
    return Reply("554", "5.7.1", f"Service unavailable; client [{ip}] blocked using {zone}; {reason}")


class DnsLists(ConfiguredCheck[DnsblChecks]):
    """DNSBL and DNSWL lookups of the client address."""

    name: ClassVar[str] = "dnsbl"
    description: ClassVar[str] = "DNS block lists and allow lists of the client address ([[dnsbl]], [[dnswl]] in rules/)"
    rule_sections: ClassVar[tuple[str, ...]] = ("dnsbl", "dnswl")
    order: ClassVar[int] = 10
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("DNSBL_TEMPFAIL", 0.0, "A DNS list could not be asked (timeout, SERVFAIL): counted as not listed"),
        Symbol("DNSBL_REFUSED", 0.0, "A DNS list refused the query (public resolver, over quota, key needed): counted as not listed"),
        Symbol("DNSBL_SKIPPED_PRIVATE", 0.0, "The client's address is private ([checks.dnsbl] skip_private): no DNS list was asked"),
    )

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        self.zones = parse_zones(services)
        services.list_zones.update(zone.zone for zone in self.zones)
        self.skip_private = self.options.skip_private

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        return super().enabled(services) and bool(services.ruleset.section("dnsbl") or services.ruleset.section("dnswl"))

    def dynamic_symbols(self) -> tuple[Symbol, ...]:
        found: list[Symbol] = []
        for zone in self.zones:
            found.append(Symbol(zone.symbol, zone.score, zone.description))
            found.extend(Symbol(c.symbol, c.score, c.description) for c in zone.codes)
        return tuple(found)

    def _zones_for(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Zone]:
        v4 = isinstance(ip, ipaddress.IPv4Address) or ip.ipv4_mapped is not None
        return [z for z in self.zones if (z.ipv4 if v4 else z.ipv6)]

    def on_connect(self, session: Session) -> Hits:
        session.check_state(_STATE).clear()
        ip = session.ip
        if ip is None or not self.zones:
            return ()
        if self.skip_private:
            network = private_network(ip)
            if network is not None:
                log.info("client [%s] not looked up in the DNS lists: a private address (in %s; [checks.dnsbl] skip_private)", unscoped(ip), network)
                # In every row too: a proxy or NAT that shows every client as private turns the lists off for all.
                hits = [Hit("DNSBL_SKIPPED_PRIVATE", detail=f"{unscoped(ip)} in {network}")]
                session.check_state(_STATE)["hits"] = hits
                return hits if not self.services.config.milter.delay_reject else ()
        resolver = self.services.resolver
        deadline = resolver.stage_deadline(session.dns_deadlines, "connect")
        queries = [(dnsbl_name(session.client_addr, z.zone) or "", "A") for z in self._zones_for(ip)]
        futures = [resolver.submit(name, rdtype, deadline) for name, rdtype in queries]
        session.check_state(_STATE).update({"zones": self._zones_for(ip), "queries": queries, "futures": futures})
        if not self.services.config.milter.delay_reject:
            return self._hits(session, deadline)
        return ()

    def on_mail(self, session: Session, envelope: Envelope) -> Hits:
        if not session.check_state(_STATE):
            return ()
        return self._hits(session, self.services.resolver.stage_deadline(envelope.dns_deadlines, "mail"))

    def _hits(self, session: Session, deadline: float) -> list[Hit]:
        state = session.check_state(_STATE)
        if "hits" in state:
            return cast("list[Hit]", state["hits"])
        resolver = self.services.resolver
        answers = resolver.collect(state.pop("futures"), state["queries"], deadline)
        listings, failed, refused = sort_outcomes((zone.zone, classify(zone, answer)) for zone, answer in zip(state["zones"], answers, strict=False))
        hits: list[Hit] = []
        if failed:
            hits.append(Hit("DNSBL_TEMPFAIL", detail=", ".join(failed)))
        if refused:
            hits.append(Hit("DNSBL_REFUSED", detail=", ".join(refused)))
        reasons = self._reasons(session.client_addr, listings, deadline)
        for listing in listings:
            reason = reasons.get(listing.zone.zone, "")
            detail = f"{listing.zone.zone} {','.join(listing.answers)}" + (f": {reason}" if reason else "")
            for symbol, reject in listing.symbols:
                if reject and listing.zone.kind == "dnsbl":
                    reply = reject_reply(session.client_addr, listing.zone.shown_zone, reason or f"listed ({','.join(listing.answers)})")
                    hits.append(Hit(symbol, detail=detail[:200], action=Action.REJECT, reply=reply))
                    # The forced hit does not reach the score; log the listing too.
                    hits.append(Hit(symbol, detail=detail[:200]))
                else:
                    hits.append(Hit(symbol, detail=detail[:200]))
        state["hits"] = hits
        return hits

    def _reasons(self, ip: str, listings: list[Listing], deadline: float) -> dict[str, str]:
        """The TXT record (the zone's reason) of each listing that rejects, asked for concurrently.

        Only those: the reply quotes it.  The wait shares the stage's DNS deadline with the
        sender's and SPF's lookups, so a list slow to answer TXT (or never answering it) for a
        listing that only scores cost them their answers (MAIL_FROM_TEMPFAIL) for a log detail."""
        listings = [listing for listing in listings if listing.zone.kind == "dnsbl" and any(reject for _, reject in listing.symbols)]
        if not listings:
            return {}
        queries = [(dnsbl_name(ip, listing.zone.zone) or "", "TXT") for listing in listings]
        answers = self.services.resolver.query_many(queries, deadline)
        return {listing.zone.zone: (answer.records[0] if answer.ok else "") for listing, answer in zip(listings, answers, strict=False)}


CHECKS = (DnsLists,)

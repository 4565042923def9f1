"""Reverse DNS of the client: no PTR, a PTR that is not forward-confirmed, a generic name.

Postfix has usually done the work: the client name it passes is verified
(forward-confirmed) or ``unknown``.  A verified name is taken as it is
(``[checks.rdns] use_postfix_name``); only for ``unknown`` clients does
milterd ask DNS itself (Postfix may have been told not to look, e.g.
``smtpd_peername_lookup = no``): PTR, then the A/AAAA of each name.  The PTR
query starts at connect; the answer is used at MAIL FROM, once per session.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pydantic import Field

from ..dns import reverse_pointer
from ..message.model import Envelope, Hit, Session
from ..options import CheckSwitches, ConfigError
from ..patterns import AdminPattern, PatternError
from . import Hits, Symbol
from .configured import ConfiguredCheck

if TYPE_CHECKING:
    from ..services import Services


class RdnsChecks(CheckSwitches):
    """Reverse DNS of the client: no PTR, not forward-confirmed, generic names."""

    use_postfix_name: bool = Field(True, description="Take a client name Postfix verified as forward-confirmed; look up only clients it calls \"unknown\".")
    generic_patterns: list[str] = Field(
        [r"\d{1,3}[-.x]\d{1,3}[-.x]\d{1,3}[-.x]\d{1,3}", r"(?i)(^|[-.\d])(dyn|dynamic|dhcp|dialup|dial-up|ppp|pppoe|pool|dsl|adsl|xdsl|cable|broadband|customer|cpe)[-.\d]"],
        description="Regular expressions (searched) that make a client name look generic or dynamic.",
    )


_STATE = "rdns"


def verified_by_postfix(session: Session) -> str:
    """The client name Postfix verified, or "" when it says ``unknown`` (or nothing)."""
    name = (session.client_name or "").strip().rstrip(".")
    if not name or name.lower() == "unknown" or name.startswith("["):
        return ""
    return name


def looks_generic(name: str, ip: str, patterns: list[AdminPattern] | tuple[AdminPattern, ...]) -> bool:
    """Whether *name* looks like an ISP's generic or dynamic name (or embeds the address)."""
    return _looks_generic(name, ip, tuple(patterns))


# A pure judgement of its arguments (compiled patterns hash and compare by their source and
# flags), asked once per session, mostly for the same few clients' names: remembered per process.
@functools.lru_cache(maxsize=1024)
def _looks_generic(name: str, ip: str, patterns: tuple[AdminPattern, ...]) -> bool:
    lowered = name.lower()
    if _embeds_address(lowered, ip):
        return True
    return any(p.search(lowered) for p in patterns)


#: Words of ISPs' names for their customers' addresses: with two of the address's octets in the name
#: (host10-2.isp.example), those octets are the address, not an ESP's numbering of its outbound hosts.
_ADDRESS_WORDS = re.compile(
    r"(?<![a-z])(?:host|ip|client|user|static|dyn|dynamic|dhcp|dial|dialup|ppp|pppoe|pool|dsl|adsl|vdsl|xdsl"
    r"|cable|broadband|customer|cust|cpe|res|home|nat|ftth|fiber|fibre|mobile|wireless)(?![a-z])"
)


def _embeds_address(name: str, ip: str) -> bool:
    """Whether the lower-case *name* holds the IPv4 *ip*'s octets as ISPs name their customers' addresses:
    the last three in either order (2-0-10.example.net for 192.0.2.10), or the last two either way at the
    start of the name (10-2.pool.example.net) or beside a word such as host or dsl (host10-2.example.net).

    Two octets after any other word are an ESP's host numbering, not its address:
    a8-30.smtp-out.amazonses.com is 54.240.8.30, mail135-2.atl141.mcsv.net is 198.2.135.2.
    """
    found = _octet_patterns(ip)
    if found is None:
        return False
    three, two_first, two = found
    return bool(three.search(name) or two_first.search(name) or (two.search(name) and _ADDRESS_WORDS.search(name)))


@functools.lru_cache(maxsize=1024)
def _octet_patterns(ip: str) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]] | None:
    """For an IPv4 *ip*, patterns finding its last three octets, its last two at the start of a name
    (after nothing but digits and separators), and its last two anywhere, each in either order; None
    for anything else."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if not isinstance(address, ipaddress.IPv4Address):
        return None
    _, b, c, d = str(address).split(".")
    two = rf"(?<!\d)(?:{c}\D{d}|{d}\D{c})(?!\d)"
    three = rf"(?<!\d)(?:{b}\D{c}\D{d}|{d}\D{c}\D{b})(?!\d)"
    return re.compile(three), re.compile(rf"^[^a-z]*?{two}"), re.compile(two)


class ReverseDns(ConfiguredCheck[RdnsChecks]):
    """PTR and forward-confirmed reverse DNS (FCrDNS) of the client."""

    name: ClassVar[str] = "rdns"
    description: ClassVar[str] = "Reverse DNS of the client: missing, not forward-confirmed, generic"
    order: ClassVar[int] = 20
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("RDNS_NONE", 1.5, "The client address has no PTR record"),
        Symbol("RDNS_NOT_FCRDNS", 1.0, "No PTR name of the client resolves back to its address (not forward-confirmed)"),
        Symbol("RDNS_DYNAMIC", 1.0, "The client name looks generic or dynamic (address in the name, dsl, pool, dyn …)"),
        Symbol("RDNS_TEMPFAIL", 0.0, "Reverse DNS of the client could not be looked up (DNS error)"),
    )

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        self.patterns = tuple(AdminPattern(p) for p in self.options.generic_patterns)

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        if not super().enabled(services):
            return False

        for position, pattern in enumerate(services.config.checks.rdns.generic_patterns):
            if not pattern:
                raise ConfigError(services.config.path or "milter.conf", f"[checks.rdns] generic_patterns[{position}]", "an empty pattern matches every name")
            try:
                AdminPattern(pattern)
            except PatternError as exc:
                raise ConfigError(services.config.path or "milter.conf", f"[checks.rdns] generic_patterns[{position}]", f"bad regular expression: {exc}") from None
        return True

    def on_connect(self, session: Session) -> Hits:
        session.check_state(_STATE).clear()
        if session.ip is None:
            return ()
        if self.options.use_postfix_name and verified_by_postfix(session):
            return ()
        resolver = self.services.resolver
        deadline = resolver.stage_deadline(session.dns_deadlines, "connect")
        session.check_state(_STATE).update({"ptr": resolver.submit(reverse_pointer(session.ip), "PTR", deadline)})
        return ()

    def on_mail(self, session: Session, envelope: Envelope) -> Hits:
        if session.ip is None:
            return ()
        state = session.check_state(_STATE)
        if "hits" not in state:
            state["hits"] = self._judge(session, state, self.services.resolver.stage_deadline(envelope.dns_deadlines, "mail"))
        return cast("list[Hit]", state["hits"])

    def _judge(self, session: Session, state: dict[str, Any], deadline: float) -> list[Hit]:
        ip = session.client_addr
        name = verified_by_postfix(session) if self.options.use_postfix_name else ""
        if not name:
            resolver = self.services.resolver
            query = (reverse_pointer(session.ip) if session.ip else ip, "PTR")
            future = state.pop("ptr", None) or resolver.submit(*query, deadline)
            ptr = resolver.collect([future], [query], deadline)[0]
            if ptr.failed:
                return [Hit("RDNS_TEMPFAIL", detail=ptr.error)]
            if not ptr.ok:
                return [Hit("RDNS_NONE", detail=ip)]
            names = list(ptr.records[:10])
            forwards = resolver.query_many([(n, t) for n in names for t in ("A", "AAAA")], deadline)
            confirmed = [n for i, n in enumerate(names) if _has_address(ip, forwards[2 * i].records + forwards[2 * i + 1].records)]
            if not confirmed:
                if any(f.failed for f in forwards):
                    return [Hit("RDNS_TEMPFAIL", detail=f"forward lookup of {names[0]}")]
                return [Hit("RDNS_NOT_FCRDNS", detail=f"{ip} -> {names[0]}")]
            name = confirmed[0]
        if looks_generic(name, ip, self.patterns):
            return [Hit("RDNS_DYNAMIC", detail=name)]
        return []


# Pure functions of their arguments (an address, the text of DNS answers), asked once per
# session for the same few clients: remembered per process instead of parsed again each time.
@functools.lru_cache(maxsize=1024)
def _has_address(ip: str, records: tuple[str, ...]) -> bool:
    try:
        wanted = ipaddress.ip_address(ip)
        return any(ipaddress.ip_address(r) == wanted for r in records)
    except ValueError:
        return False


CHECKS = (ReverseDns,)

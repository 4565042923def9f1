"""The HELO/EHLO name: syntax, address literals, DNS, names that claim to be ours.

Judged at MAIL FROM (once per session), when SMTP AUTH is known, so that
authenticated clients (often behind NAT, saying anything) are exempt; the
name's DNS lookup starts as soon as the client says HELO.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pydantic import Field, field_validator

from ..addresses import as_judged
from ..message.model import Envelope, Hit, Session
from ..options import CheckSwitches, domain_names
from . import Hits, Symbol
from .configured import ConfiguredCheck

if TYPE_CHECKING:
    from ..services import Services


class HeloChecks(CheckSwitches):
    """The HELO/EHLO name: syntax, address literals, DNS, names that claim to be ours."""

    resolve: bool = Field(True, description="Look the HELO name up in DNS (HELO_NO_RESOLVE when it has no address).")
    our_names: list[str] = Field([], description="Names that are ours besides hostname: a client claiming one in HELO scores HELO_CLAIMS_OURS.")
    our_addresses: list[str] = Field([], description="Our addresses: a client claiming one in HELO scores HELO_CLAIMS_OURS (Postfix's daemon_addr counts too).")

    # An entry that can never match (a network, "[192.0.2.1]", "*.example.org") was taken silently: no HELO_CLAIMS_OURS.
    @field_validator("our_names")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return domain_names(value, "one host name per entry, no wildcard")

    @field_validator("our_addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address (one address per entry, not a network, no brackets)") from None
        return value


_STATE = "helo"
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class HeloShape:
    """What a HELO argument is, before any DNS."""

    kind: str  # "missing", "literal", "bare_ip", "bad_literal", "not_fqdn", "fqdn"
    address: str = ""


@functools.lru_cache(maxsize=4096)  # asked 3–4 times per session for the same name
def helo_shape(helo: str) -> HeloShape:
    """Classify a HELO argument: empty, address literal, bare IP, not a FQDN, or a FQDN."""
    helo = helo.strip()
    if not helo:
        return HeloShape("missing")
    if helo.startswith("[") and helo.endswith("]"):
        inner = helo[1:-1]
        if inner.lower().startswith("ipv6:"):
            inner = inner[5:]
        try:
            return HeloShape("literal", str(ipaddress.ip_address(inner)))
        except ValueError:
            return HeloShape("bad_literal")
    try:
        return HeloShape("bare_ip", str(ipaddress.ip_address(helo)))
    except ValueError:
        pass
    name = helo.removesuffix(".")  # the root's one dot; "mx.example.." is no name (SPF finds none either)
    labels = name.split(".")
    # Over 253 characters no DNS name (RFC 1035): padded with labels, one scored HELO_TEMPFAIL 0 (a lookup error).
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return HeloShape("not_fqdn")
    return HeloShape("fqdn")


@functools.lru_cache(maxsize=1024)  # pure; asked once or twice per session for the same few addresses
def same_address(a: str, b: str) -> bool:
    """Whether two textual addresses are the same (an IPv6 one standing for an IPv4 address as that address:
    IPv4-mapped, NAT64's well-known prefix; :func:`~milterd.addresses.embedded_ipv4`)."""
    try:
        x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    return as_judged(x) == as_judged(y)


class Helo(ConfiguredCheck[HeloChecks]):
    """The client's HELO/EHLO argument."""

    name: ClassVar[str] = "helo"
    description: ClassVar[str] = "HELO/EHLO name: not a FQDN, bare IP, wrong literal, unresolvable, claims to be ours"
    order: ClassVar[int] = 30
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("HELO_MISSING", 1.0, "The client sent MAIL FROM without HELO/EHLO"),
        Symbol("HELO_BARE_IP", 2.0, "HELO is an IP address without brackets (not a name nor an address literal)"),
        Symbol("HELO_LITERAL_MISMATCH", 1.5, "HELO is an address literal that is not the client's address"),
        Symbol("HELO_NOT_FQDN", 1.5, "HELO is not a fully qualified domain name"),
        Symbol("HELO_NO_RESOLVE", 1.0, "The HELO name has no address in DNS"),
        Symbol("HELO_CLAIMS_OURS", 3.0, "HELO claims to be this host or one of its addresses"),
        Symbol("HELO_TEMPFAIL", 0.0, "The HELO name could not be looked up (DNS error)"),
    )

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        names = [services.config.hostname, *self.options.our_names]
        self.our_names = {n.lower().rstrip(".") for n in names if n}
        self.our_addresses = [a for a in self.options.our_addresses if a]

    def on_helo(self, session: Session) -> Hits:
        session.check_state(_STATE).clear()
        if self.options.resolve and helo_shape(session.helo).kind == "fqdn" and not self._claims_ours(session):
            resolver = self.services.resolver
            deadline = resolver.stage_deadline(session.dns_deadlines, "helo")
            name = session.helo.strip().rstrip(".")
            session.check_state(_STATE).update({"queries": [(name, "A"), (name, "AAAA")], "futures": [resolver.submit(name, t, deadline) for t in ("A", "AAAA")]})
        return ()

    def on_mail(self, session: Session, envelope: Envelope) -> Hits:
        state = session.check_state(_STATE)
        if "hits" not in state:
            state["hits"] = self._judge(session, state, envelope)
        return cast("list[Hit]", state["hits"])

    def _claims_ours(self, session: Session) -> bool:
        helo = session.helo.strip().rstrip(".").lower()
        if helo in self.our_names:
            return not self._from_us(session)  # a local submission rightly gives our name
        shape = helo_shape(session.helo)
        if shape.address:
            ours = self.our_addresses + [session.macros.get("{daemon_addr}", "")]
            return any(same_address(shape.address, a) for a in ours if a) and not same_address(shape.address, session.client_addr)
        return False

    def _from_us(self, session: Session) -> bool:
        """Whether the client is this host: loopback, a unix socket, or one of our addresses (Postfix's daemon_addr included)."""
        ip = session.ip
        if ip is None:
            return session.family == "unix"
        if ip.is_loopback:
            return True
        ours = self.our_addresses + [session.macros.get("{daemon_addr}", "")]
        return any(same_address(session.client_addr, a) for a in ours if a)

    def _judge(self, session: Session, state: dict[str, Any], envelope: Envelope) -> list[Hit]:
        helo = session.helo.strip()
        shape = helo_shape(helo)
        hits: list[Hit] = []
        if self._claims_ours(session):
            hits.append(Hit("HELO_CLAIMS_OURS", detail=helo[:100]))
        if shape.kind == "missing":
            hits.append(Hit("HELO_MISSING"))
        elif shape.kind == "bare_ip":
            hits.append(Hit("HELO_BARE_IP", detail=helo))
        elif shape.kind == "literal":
            if session.client_addr and not same_address(shape.address, session.client_addr):
                hits.append(Hit("HELO_LITERAL_MISMATCH", detail=f"{helo} from {session.client_addr}"))
        elif shape.kind in ("not_fqdn", "bad_literal"):
            hits.append(Hit("HELO_NOT_FQDN", detail=helo[:100]))
        elif self.options.resolve and not hits:
            resolver = self.services.resolver
            deadline = resolver.stage_deadline(envelope.dns_deadlines, "mail")
            name = helo.rstrip(".")
            queries = state.pop("queries", [(name, "A"), (name, "AAAA")])
            futures = state.pop("futures", None) or [resolver.submit(n, t, deadline) for n, t in queries]
            a, aaaa = resolver.collect(futures, queries, deadline)
            if not (a.ok or aaaa.ok):
                if a.failed or aaaa.failed:
                    hits.append(Hit("HELO_TEMPFAIL", detail=a.error or aaaa.error))
                else:
                    hits.append(Hit("HELO_NO_RESOLVE", detail=helo[:100]))
        return hits


CHECKS = (Helo,)

"""The MAIL FROM address: syntax, IP-literal domains, domains without a dot or without mail.

The null sender (bounces, ``MAIL FROM:<>``) is always allowed.  A domain
"can receive mail" when it has an MX other than the null MX (RFC 7505) or,
lacking MX records, an address (RFC 5321 §5.1 implicit MX).
"""

from __future__ import annotations

import encodings.idna
import functools
import ipaddress
import re
from typing import ClassVar

from pydantic import Field

from ..dns import Answer, a_label, fold_case
from ..message.model import Envelope, Hit, Session
from ..options import CheckSwitches
from . import Hits, Symbol
from .configured import ConfiguredCheck


class SenderChecks(CheckSwitches):
    """The MAIL FROM address: syntax, IP literals, a domain that cannot receive mail."""

    resolve: bool = Field(True, description="Check that the MAIL FROM domain has an MX or an address (MAIL_FROM_NO_MX).")


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
# A dot-atom, except that repeated dots and dots at the end are let through ("a..b", "abc."): the
# addresses of Japanese mobile carriers, RFC-invalid but in use for decades and accepted by Postfix.
_LOCAL = re.compile(rf'^(?:{_ATOM}(?:\.+{_ATOM})*\.*|"(?:[^"\\\r\n]|\\.)*")$')
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_\-\u0080-\U0010ffff]{1,63}(?<!-)$")


def split_address(address: str) -> tuple[str, str] | None:
    """``local@domain`` → (local, domain), the last @ separating them; None without an @."""
    local, at, domain = address.rpartition("@")
    if not at:
        return None
    return local, domain


def dns_name(domain: str) -> str | None:
    """*domain* (without a trailing dot) as a DNS query names it, U-labels as IDNA2008 A-labels (as the
    resolver asks, :func:`milterd.dns.cache_key`); None when it cannot be put in a query at all: a label
    empty or over 63 octets once encoded, a character IDNA refuses (an undecodable byte among them),
    over 253 octets."""
    if not domain.isascii():
        domain = a_label(domain) or ""
        if not domain:
            return None
    try:
        name = b".".join(encodings.idna.ToASCII(label) for label in domain.split("."))
    except UnicodeError:
        return None
    return name.decode("ascii") if len(name) <= 253 else None


#: The longest local part that is an address: RFC 5321's 64 octets is a floor a server must take (§4.5.3.1.1, and
#: §4.5.3.1 asks receivers not to enforce it); a forwarder's SRS rewriting (SRS0=HHHH=TT=domain=local) passes it
#: for ordinary mail, which scored MAIL_FROM_INVALID.  Its whole reverse-path, 256 octets, bounds it here.
MAX_LOCAL_PART = 256


@functools.lru_cache(maxsize=1024)  # pure; the same senders write again and again
def address_problem(address: str) -> str:
    """What is wrong with a MAIL FROM address: "" (fine), "invalid", "ip_literal" or "no_dot".

    A local part with repeated dots or a dot at its end ("a..b@docomo.ne.jp") is fine; a leading dot is not.
    """
    parts = split_address(address)
    if parts is None:
        return "invalid"
    local, domain = parts
    if not local or len(local) > MAX_LOCAL_PART or not _LOCAL.match(local):
        return "invalid"
    if domain.startswith("[") and domain.endswith("]"):
        return "ip_literal"
    domain = domain.removesuffix(".")  # the root's one dot; "example.org.." is no domain (SPF finds none either)
    if not domain or len(domain) > 253 or not all(_LABEL.match(label) for label in domain.split(".")):
        return "invalid"
    name = dns_name(domain)
    if name is None:  # _LABEL counts characters; an IDNA label can still be too long in octets
        return "invalid"
    if name.rstrip(".").rpartition(".")[2].isdigit():
        # No top-level domain is all digits (Postfix's valid_hostname refuses such a name): an address without
        # its brackets (alice@192.0.2.1, full-width digits too once IDNA maps them) is an IP literal all the
        # same, anything else no domain at all.
        return "ip_literal" if _is_ipv4(name.rstrip(".")) else "invalid"
    if "." not in domain:
        return "no_dot"
    return ""


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


_STATE = "sender"


class Sender(ConfiguredCheck[SenderChecks]):
    """The envelope sender."""

    name: ClassVar[str] = "sender"
    description: ClassVar[str] = "MAIL FROM: syntax, IP literal, no dot, domain that cannot receive mail"
    order: ClassVar[int] = 40
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("MAIL_FROM_INVALID", 2.0, "MAIL FROM is not a valid address"),
        Symbol("MAIL_FROM_IP_LITERAL", 2.0, "MAIL FROM has an IP-literal domain (user@[192.0.2.1], or user@192.0.2.1 without its brackets)"),
        Symbol("MAIL_FROM_NO_DOT", 2.0, "MAIL FROM's domain has no dot (user@example)"),
        Symbol("MAIL_FROM_NO_MX", 2.5, "MAIL FROM's domain has neither MX nor address, or a null MX: it cannot take bounces"),
        Symbol("MAIL_FROM_TEMPFAIL", 0.0, "MAIL FROM's domain could not be looked up (DNS error)"),
    )

    def before_mail(self, session: Session, envelope: Envelope) -> None:
        # The MX question goes out now, not when the checks before this one (HELO, reverse DNS) are done waiting:
        # a client whose HELO name's or PTR's nameserver never answers spent the stage's deadline on them, and the
        # sender domain's MX was never asked (MAIL_FROM_TEMPFAIL instead of MAIL_FROM_NO_MX).
        envelope.check_state(_STATE).clear()
        domain = self._domain(envelope.sender.strip())
        if domain:
            resolver = self.services.resolver
            envelope.check_state(_STATE)["mx"] = (domain, resolver.submit(domain, "MX", resolver.stage_deadline(envelope.dns_deadlines, "mail")))

    def _domain(self, sender: str) -> str:
        """The domain of *sender* to look up, or "" (none, not an address to look up, or resolve = false)."""
        if not sender or address_problem(sender) or not self.options.resolve:
            return ""
        return fold_case(sender.rpartition("@")[2].rstrip("."))

    def on_mail(self, session: Session, envelope: Envelope) -> Hits:
        sender = envelope.sender.strip()
        if not sender:
            return ()
        problem = address_problem(sender)
        if problem == "invalid":
            return [Hit("MAIL_FROM_INVALID", detail=sender[:100])]
        if problem == "ip_literal":
            return [Hit("MAIL_FROM_IP_LITERAL", detail=sender[:100])]
        if problem == "no_dot":
            return [Hit("MAIL_FROM_NO_DOT", detail=sender[:100])]
        domain = self._domain(sender)
        if not domain:
            return ()
        resolver = self.services.resolver
        deadline = resolver.stage_deadline(envelope.dns_deadlines, "mail")
        started = envelope.check_state(_STATE).pop("mx", None)
        if started is not None and started[0] == domain:
            mx = resolver.collect([started[1]], [(domain, "MX")], deadline)[0]
        else:
            mx = resolver.mx(domain, deadline)
        return self._mail_domain(domain, mx, deadline)

    def _mail_domain(self, domain: str, mx: Answer, deadline: float) -> list[Hit]:
        resolver = self.services.resolver
        if mx.failed:
            return [Hit("MAIL_FROM_TEMPFAIL", detail=f"{domain}: {mx.error}")]
        if mx.ok:
            hosts = [record.split(" ", 1)[1] for record in mx.records if " " in record]
            if hosts and all(h in (".", "") for h in hosts):
                return [Hit("MAIL_FROM_NO_MX", detail=f"{domain}: null MX")]
            return []
        if mx.status == "nxdomain":
            return [Hit("MAIL_FROM_NO_MX", detail=f"{domain}: no such domain")]
        addresses = resolver.addresses(domain, deadline)
        if addresses.failed:
            return [Hit("MAIL_FROM_TEMPFAIL", detail=f"{domain}: {addresses.error}")]
        if not addresses.ok:
            return [Hit("MAIL_FROM_NO_MX", detail=f"{domain}: no MX, no address")]
        return []


CHECKS = (Sender,)

"""Our own domains and SMTP AUTH: the milter's side of "authenticate before you send as us".

* A MAIL FROM (or From header) in ``[milter] local_domains`` from a client
  that neither authenticated nor is in ``trusted_networks`` is a spoofed
  local sender: ``LOCAL_SENDER_SPOOF`` / ``LOCAL_FROM_SPOOF``, scored or
  rejected (``[checks.local_domains] action``).
* An authenticated client sending as an envelope sender its login does not
  own, by a login map like Postfix's ``smtpd_sender_login_maps``
  (``sender_login_maps`` file or inline ``sender_logins``), is
  ``SENDER_LOGIN_MISMATCH``, rejected by default with ``553 5.7.1``.
  An address is looked up whole, then without its extension (with
  ``recipient_delimiter`` set), then as ``@domain``; an address the map
  gives no owner is not owned by anyone (as ``reject_sender_login_mismatch``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterable, Literal

from pydantic import Field

from ..content.headertext import shown_addresses
from ..dns import comparable_name, domain_name
from ..files import read_error, read_regular
from ..message.model import Action, Envelope, Hit, Session
from ..message.policy import without_extension
from ..message.reply import Reply
from ..options import ConfigError, Section
from . import Check, Hits, Symbol
from .dmarc import envelope_from_domains

if TYPE_CHECKING:
    from ..services import Services


class LocalDomainChecks(Section):
    """Senders in [milter] local_domains from unauthenticated clients; authenticated senders and their logins."""

    enabled: bool = Field(True, description="Check senders in [milter] local_domains and authenticated senders.")
    action: Literal["score", "reject"] = Field("score", description="A local domain's address as MAIL FROM or From from an unauthenticated, untrusted client: score, or reject at MAIL FROM / end of headers.")
    check_from_header: bool = Field(True, description="Also check the From header (LOCAL_FROM_SPOOF).")
    sender_login_maps: str = Field("", description="File of \"address-or-@domain login,login\" lines (as Postfix's smtpd_sender_login_maps), relative to this file; empty is off.")
    sender_logins: dict[str, list[str]] = Field({}, description="The same map inline: { \"alice@example.org\" = [\"alice\"], \"@example.org\" = [\"admin\"] }.")
    login_mismatch_action: Literal["score", "reject"] = Field("reject", description="An authenticated client sending as an address its login does not own: score, or reject with 553 5.7.1.")
    recipient_delimiter: str = Field("", description="The characters that separate a user name from an address extension, each one a delimiter (\"+\" makes alice+lists@example.org alice@example.org with the extension lists); set it to Postfix's recipient_delimiter. A sender the login map does not list is then looked up without its extension, before its @domain, as Postfix's smtpd_sender_login_maps does; a recipient is one of [milter] spam_lovers with or without it. Empty (the default, as Postfix's): addresses have no extension.")


def sender_domain(sender: str) -> str | None:
    """The domain MAIL FROM *sender* has once Postfix has rewritten it, as domains compare, or None for an address
    without one (``ceo``): Postfix appends ``@$myorigin`` (``append_at_myorigin``), one of this site's domains.

    As Postfix reads it: quotes and a source route (``<"@relay:ceo">``, ``<@relay:ceo>``) are dropped, ``site!user`` is
    ``user@site`` (``swap_bangpath``) and ``user%site`` without a domain ``user@site`` (``allow_percent_hack``, once
    ``@$myorigin`` is appended).  "" for the null sender and MAILER-DAEMON."""
    address = sender.strip().strip("<>").strip()
    for _ in range(4):  # "@relay:\"ceo\"" and "\"@relay:ceo\"": quotes within a route and a route within quotes
        before = address
        if address.startswith("@") and ":" in address:
            address = address.rpartition(":")[2].strip()
        address = address.replace('"', "")
        if address == before:
            break
    if not address or address.lower() == "mailer-daemon":
        return ""
    if "@" in address:
        return domain_of(address)
    if "!" in address:
        return comparable_name(address.split("!", 1)[0].strip())
    if "%" in address:
        return comparable_name(address.rpartition("%")[2].strip())
    return None


def domain_of(address: str) -> str:
    """The domain of an address as domains compare ("" for none): :func:`~milterd.dns.comparable_name`
    (``Bücher.Example.`` and ``xn--bcher-kva.example`` alike, ``example.ΤΕΣΤΣ`` as ``example.τεστσ``)."""
    return comparable_name(address.rpartition("@")[2].strip()) if "@" in address else ""




def load_login_map(path: Path, where: str | Path | None = None) -> dict[str, set[str]]:
    """Read a ``KEY login[, login …]`` file (``#`` comments); ConfigError naming the line otherwise.

    A file that cannot be read is a ConfigError naming *where*'s ``sender_login_maps`` key when
    *where* (milter.conf) is given, else the file itself.
    """
    try:
        data = read_regular(path)
    except (OSError, ValueError) as exc:
        if where is not None:
            raise ConfigError(where, "[checks.local_domains] sender_login_maps", f"cannot read {path}: {read_error(exc)}") from None
        raise ConfigError(path, "", f"cannot read the sender login map: {read_error(exc)}") from None
    table: dict[str, set[str]] = {}
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(path, "", "the sender login map is not UTF-8") from None
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 1)
        logins = {p.strip() for p in parts[1].replace(",", " ").split()} if len(parts) == 2 else set()
        if not logins or "@" not in parts[0]:
            raise ConfigError(path, f"line {number}", "expected \"address-or-@domain login[, login …]\"")
        table.setdefault(map_key(parts[0]), set()).update(logins)
    return table


def map_key(address: str) -> str:
    """A login map's key (``local@domain`` or ``@domain``) as it is looked up: the local part lower-cased, the domain
    as domains compare (``@bücher.de`` and ``@xn--bcher-kva.de`` alike: a login owning one was refused the other)."""
    local, _, domain = address.strip().rpartition("@")
    return f"{local.lower()}@{comparable_name(domain)}"


_QUOTED_PAIR = re.compile(r"\\(.)")


def owners(table: dict[str, set[str]], address: str, delimiters: str = "") -> set[str]:
    """The logins that own *address* (its domain without a trailing dot): the whole address first, then,
    with *delimiters* (Postfix's recipient_delimiter), the address without its extension, then ``@domain``."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return table.get(domain, set())
    if len(local) > 1 and local[0] == local[-1] == '"':
        local = _QUOTED_PAIR.sub(r"\1", local[1:-1])  # "alice"@example.org is alice@, as Postfix looks it up
    domain = comparable_name(domain)
    found = table.get(f"{local}@{domain}")
    user = without_extension(local, delimiters) if found is None else None
    if user is not None:
        found = table.get(f"{user}@{domain}")
    return found if found is not None else table.get("@" + domain, set())


class LocalSpoof(Check):
    """Local domains used by clients that did not authenticate."""

    name: ClassVar[str] = "local_domains"
    description: ClassVar[str] = "MAIL FROM or From in a local domain from an unauthenticated, untrusted client"
    order: ClassVar[int] = 45
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("LOCAL_SENDER_SPOOF", 3.0, "MAIL FROM in a local domain from a client that neither authenticated nor is trusted"),
        Symbol("LOCAL_FROM_SPOOF", 2.0, "From header in a local domain from a client that neither authenticated nor is trusted"),
    )

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        # Compared with MAIL FROM's domain (domain_of): the same domain however either is written.
        self.domains = {comparable_name(d) for d in services.config.milter.local_domains}
        # As from_domains gives them: case folded as DNS names are (a capital final Sigma is σ, not
        # str.lower()'s ς), A-labels; a name IDNA refuses is no From domain from_domains gives.
        self.a_label_domains = {name for d in services.config.milter.local_domains if (name := domain_name(d))}
        self.options = services.config.checks.local_domains

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        return services.config.checks.local_domains.enabled and bool(services.config.milter.local_domains)

    def _hit(self, symbol: str, detail: str, reply: Reply) -> list[Hit]:
        if self.options.action == "reject":
            return [Hit(symbol, detail=detail, action=Action.REJECT, reply=reply), Hit(symbol, detail=detail)]
        return [Hit(symbol, detail=detail)]

    def on_mail(self, session: Session, envelope: Envelope) -> Hits:
        domain = sender_domain(envelope.sender)
        if domain is None or domain in self.domains:
            return self._hit("LOCAL_SENDER_SPOOF", envelope.sender[:100], Reply("553", "5.7.1", f"<{envelope.sender}>: Sender address rejected: not logged in"))
        return ()

    def on_eoh(self, session: Session, envelope: Envelope) -> Hits:
        if not self.options.check_from_header:
            return ()

        # Read leniently, as DMARC reads From: a value the strict parser refuses ("CEO <<ceo@example.org>")
        # still shows the reader a local address, and so does one with a byte that is not UTF-8 (ceo@example\xad.org).
        for domain in envelope_from_domains(envelope):
            if domain in self.a_label_domains:
                return self._hit("LOCAL_FROM_SPOOF", domain[:100], Reply.reject("From address in a local domain: please authenticate"))
        return ()


class SenderLogin(Check):
    """Authenticated senders must own their envelope sender."""

    name: ClassVar[str] = "sender_login"
    description: ClassVar[str] = "An authenticated client sends as an address its login does not own (sender login map)"
    applies_to_trusted: ClassVar[bool] = True
    applies_to_authenticated: ClassVar[bool] = True
    order: ClassVar[int] = 46
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("SENDER_LOGIN_MISMATCH", 5.0, "An authenticated client sends as an envelope sender its login does not own"),
    )

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        options = services.config.checks.local_domains
        self.action = options.login_mismatch_action
        self.delimiters = options.recipient_delimiter
        self.table = login_table(services)

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        options = services.config.checks.local_domains
        return options.enabled and bool(options.sender_login_maps or options.sender_logins)

    def on_mail(self, session: Session, envelope: Envelope) -> Hits:
        if not session.authenticated or not envelope.sender:
            return ()
        if owned_by(self.table, session.auth_user, envelope.sender, self.delimiters):
            return ()
        detail = f"{session.auth_user} as {envelope.sender}"[:160]
        if self.action == "reject":
            reply = Reply("553", "5.7.1", f"<{envelope.sender}>: Sender address rejected: not owned by user {session.auth_user}")
            return [Hit("SENDER_LOGIN_MISMATCH", detail=detail, action=Action.REJECT, reply=reply), Hit("SENDER_LOGIN_MISMATCH", detail=detail)]
        return [Hit("SENDER_LOGIN_MISMATCH", detail=detail)]


def login_table(services: "Services") -> dict[str, set[str]]:
    """The sender login map of ``[checks.local_domains]`` (``sender_login_maps`` and ``sender_logins``): address or
    ``@domain`` → the logins that own it."""
    options = services.config.checks.local_domains
    table: dict[str, set[str]] = {}
    if options.sender_login_maps:
        table = load_login_map(services.config.directory / options.sender_login_maps, services.config.path or "milter.conf")
    for key, logins in options.sender_logins.items():
        if "@" not in key:
            raise ConfigError(services.config.path or "milter.conf", f"[checks.local_domains] sender_logins.{key}", "keys are addresses or @domain")
        table.setdefault(map_key(key), set()).update(logins)
    return table


def owned_by(table: dict[str, set[str]], login: str, address: str, delimiters: str = "") -> bool:
    """Whether *login* owns *address* in the login map *table* (logins compare without regard to case, as in
    Postfix: strcasecmp_utf8)."""
    login = login.casefold()
    return any(login == owner.casefold() for owner in owners(table, address, delimiters))


def unowned_from(table: dict[str, set[str]], login: str, from_values: Iterable[str], delimiters: str = "") -> str:
    """The first address of the From fields *from_values* (as a client may show them) that *login* does not own, or ""."""
    for value in from_values:
        for address in shown_addresses(value):
            if "@" in address and not owned_by(table, login, address, delimiters):
                return address
    return ""


CHECKS = (LocalSpoof, SenderLogin)

"""Greylisting state, shared by every MX host through the SQL store.

A triplet is (client network, envelope sender, recipient).  The pure functions
here build it (:func:`client_network`, :func:`normalise_sender`), match the
whitelists (:class:`Whitelist`) and judge a triplet's stored state
(:func:`judge`); the store functions read and write the ``greylist``,
``greylist_clients`` and ``greylist_whitelist`` tables.

Several workers and several MX hosts may see the first attempt of one triplet
at the same moment: the row is created with the dialect's insert-or-update on
the triplet's unique key, so they all end up on one row and none of them fails.
A triplet that has passed and was renewed recently is only read, so that mail
from known senders costs one indexed SELECT per recipient, not a write.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal

from sqlalchemy import Engine, and_, delete, func, select, update
from sqlalchemy.engine import Connection

from . import maintenance
from .store import as_utc, schema, utcnow

if TYPE_CHECKING:
    from .config import GreylistSection
    from .services import Services

#: Client names (verified by Postfix: forward-confirmed reverse DNS) of large
#: providers whose outgoing mail leaves from big pools of addresses: a retry
#: usually comes from another network than the first attempt, so each retry
#: would be a new triplet and delivery could wait for hours.  Used unless
#: ``[greylist] whitelist_providers = false``; add your own with
#: ``whitelist_clients`` or ``milterd greylist whitelist add client NAME``.
PROVIDER_CLIENTS: tuple[str, ...] = (
    ".google.com",                 # Gmail, Google Workspace (mail-*.google.com)
    ".outlook.com",                # Microsoft 365, Outlook.com, Hotmail (*.outbound.protection.outlook.com)
    ".yahoo.com", ".yahoo.net",    # Yahoo, AOL
    ".icloud.com", ".apple.com",   # iCloud Mail
    ".amazonses.com",              # Amazon SES (*.smtp-out.amazonses.com)
    ".sendgrid.net",               # Twilio SendGrid
    ".mcsv.net", ".rsgsv.net", ".mandrillapp.com",  # Mailchimp, Mandrill
    ".mailgun.net",                # Mailgun
    ".sparkpostmail.com",          # SparkPost
    ".mtasv.net",                  # Postmark
    ".exacttarget.com",            # Salesforce Marketing Cloud
    ".facebookmail.com", ".facebook.com",  # Meta
    ".linkedin.com",               # LinkedIn
    ".gmx.net", ".web.de",         # GMX, WEB.DE
    ".messagingengine.com",        # Fastmail
    ".protonmail.ch",              # Proton Mail
    ".zoho.com", ".zohomail.com",  # Zoho
    ".mail.ru",                    # Mail.ru
    ".yandex.net",                 # Yandex
)

#: A passed triplet's expiry is written back at most this often (seconds):
#: "renewed on use" without a write for every message of a busy sender.
RENEW_INTERVAL = 3600.0

WHITELIST_KINDS = ("client", "sender", "recipient")

Kind = Literal["new", "early", "pass", "known", "expired"]


# --- the triplet ------------------------------------------------------------
def client_network(address: str, netmask_v4: int = 24, netmask_v6: int = 64) -> str:
    """The client's network as stored in a triplet: ``192.0.2.0/24``, ``2001:db8::/64``.

    An IPv4-mapped IPv6 address counts as IPv4; an address that does not parse
    (a unix-socket client) is kept as it is, lower-cased.
    """
    text = address.strip().lower().removeprefix("ipv6:")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = netmask_v4 if ip.version == 4 else netmask_v6
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


_BATV = re.compile(r"^(?:prvs|msprvs1)=[^=@]+=(?P<rest>.+@.+)$")
_BTV1 = re.compile(r"^btv1==[^=@]+==(?P<rest>.+@.+)$")
_SRS0 = re.compile(r"^srs0[=+-][^=@]+=[^=@]+=(?P<domain>[^=@]+)=(?P<local>[^@]+)@[^@]+$")
_SRS1 = re.compile(r"^srs1[=+-][^=@]+=[^=@]+==+[^=@]+=[^=@]+=(?P<domain>[^=@]+)=(?P<local>[^@]+)@[^@]+$")


def normalise_sender(sender: str) -> str:
    """The envelope sender as a triplet holds it: lower-cased, without the parts
    that change from one attempt to the next.

    ``prvs=1234abcd=alice@example.org`` (BATV), ``SRS0=HHH=TT=example.org=alice@fwd.example``
    and ``SRS1=…==HHH=TT=example.org=alice@fwd2.example`` (SRS) and
    ``alice+list-42@example.org`` (a plus tag) all become ``alice@example.org``.
    The null sender stays empty.
    """
    address = sender.strip().strip("<>").lower()
    if "@" not in address:
        return address
    for pattern in (_BATV, _BTV1):
        match = pattern.match(address)
        if match:
            address = match.group("rest")
            break
    match = _SRS1.match(address) or _SRS0.match(address)
    if match:
        address = f"{match.group('local')}@{match.group('domain')}"
    local, _, domain = address.rpartition("@")
    if "+" in local[1:]:
        local = local[: local.index("+", 1)]
    return f"{local}@{domain}"


@dataclass(frozen=True)
class Triplet:
    """One (client network, sender, recipient) as stored."""

    network: str
    sender: str
    recipient: str

    def __str__(self) -> str:
        return f"client={self.network} from=<{self.sender}> to=<{self.recipient}>"


def make_triplet(client_addr: str, sender: str, recipient: str, config: "GreylistSection") -> Triplet:
    """The triplet of one recipient of a transaction."""
    return Triplet(
        client_network(client_addr, config.netmask_v4, config.netmask_v6)[:64],
        normalise_sender(sender)[:512],
        recipient.strip().strip("<>")[:512],
    )


# --- whitelists ---------------------------------------------------------------
@dataclass(frozen=True)
class Pattern:
    """One whitelist entry, compiled.

    For clients: an address or network (``192.0.2.0/24``), a name
    (``mx.example.org``), a name suffix (``.example.org``: the domain and every
    name below it) or ``/regex/`` on the name.  For senders and recipients: an
    address (``alice@example.org``), a domain (``@example.org`` or
    ``example.org``), a domain with its subdomains (``.example.org``) or
    ``/regex/`` on the address.
    """

    kind: str
    text: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    regex: re.Pattern[str] | None = None

    def matches(self, value: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None) -> bool:
        """Whether *value* (a client name or an address) or *ip* matches."""
        if self.network is not None:
            return ip is not None and ip.version == self.network.version and ip in self.network
        value = value.lower()
        if self.regex is not None:
            return self.regex.search(value) is not None
        text = self.text
        if self.kind == "client":
            if text.startswith("."):
                return value.endswith(text) or value == text[1:]
            return value == text
        domain = value.rpartition("@")[2]
        if text.startswith("@"):
            return domain == text[1:]
        if text.startswith("."):
            return domain == text[1:] or domain.endswith(text)
        if "@" in text:
            return value == text
        return domain == text


def compile_pattern(kind: str, text: str) -> Pattern:
    """Compile one whitelist entry; ValueError with the reason when it is unusable."""
    if kind not in WHITELIST_KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(WHITELIST_KINDS)}")
    text = text.strip()
    if not text:
        raise ValueError("an empty entry")
    if len(text) > 2 and text.startswith("/") and text.endswith("/"):
        try:
            return Pattern(kind, text, regex=re.compile(text[1:-1], re.IGNORECASE))
        except re.error as exc:
            raise ValueError(f"bad regular expression {text!r}: {exc}") from None
    if kind == "client":
        try:
            return Pattern(kind, text, network=ipaddress.ip_network(text, strict=False))
        except ValueError:
            pass
        if "/" in text or " " in text or "@" in text:
            raise ValueError(f"{text!r} is neither a network nor a host name")
    elif " " in text:
        raise ValueError(f"{text!r} is not an address or domain")
    return Pattern(kind, text.lower())


@dataclass
class Whitelist:
    """The client, sender and recipient entries that skip greylisting."""

    clients: list[Pattern] = field(default_factory=list)
    senders: list[Pattern] = field(default_factory=list)
    recipients: list[Pattern] = field(default_factory=list)

    @classmethod
    def build(cls, entries: Iterable[tuple[str, str]]) -> "Whitelist":
        """A whitelist of ``(kind, text)`` entries; ValueError on the first bad one."""
        whitelist = cls()
        for kind, text in entries:
            pattern = compile_pattern(kind, text)
            {"client": whitelist.clients, "sender": whitelist.senders, "recipient": whitelist.recipients}[kind].append(pattern)
        return whitelist

    def extend(self, other: "Whitelist") -> "Whitelist":
        """A whitelist with the entries of both."""
        return Whitelist(self.clients + other.clients, self.senders + other.senders, self.recipients + other.recipients)

    def client(self, address: str, name: str) -> str | None:
        """The entry that whitelists this client, or None."""
        try:
            ip: Any = ipaddress.ip_address(address.removeprefix("IPv6:"))
        except ValueError:
            ip = None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        verified = name if name and name != "unknown" else ""
        for pattern in self.clients:
            if pattern.network is not None or verified:
                if pattern.matches(verified, ip):
                    return pattern.text
        return None

    def sender(self, sender: str) -> str | None:
        """The entry that whitelists this (normalised) sender, or None."""
        return _first(self.senders, sender) if sender else None

    def recipient(self, recipient: str) -> str | None:
        """The entry that whitelists this recipient, or None."""
        return _first(self.recipients, recipient)


def _first(patterns: list[Pattern], value: str) -> str | None:
    for pattern in patterns:
        if pattern.matches(value):
            return pattern.text
    return None


def config_entries(config: "GreylistSection") -> list[tuple[str, str]]:
    """The whitelist entries of milter.conf (with the shipped provider list when on)."""
    entries = [("client", c) for c in (PROVIDER_CLIENTS if config.whitelist_providers else ())]
    entries += [("client", c) for c in config.whitelist_clients]
    entries += [("sender", s) for s in config.whitelist_senders]
    entries += [("recipient", r) for r in config.whitelist_recipients]
    return entries


def is_postmaster_bounce(sender: str, recipient: str) -> bool:
    """The null sender to a postmaster address (RFC 5321 requires accepting it)."""
    local = recipient.strip("<>").rpartition("@")[0] or recipient.strip("<>")
    return sender == "" and local.lower() == "postmaster"


# --- judging a triplet ------------------------------------------------------
@dataclass(frozen=True)
class State:
    """A triplet's stored state."""

    first_seen: dt.datetime
    last_seen: dt.datetime
    passed_at: dt.datetime | None
    expires_at: dt.datetime
    attempts: int = 1
    passes: int = 0


@dataclass(frozen=True)
class Judgement:
    """What to do with a triplet now: ``wait`` seconds are left when greylisted."""

    kind: Kind
    wait: float = 0.0
    first_seen: dt.datetime | None = None

    @property
    def greylisted(self) -> bool:
        """Whether the recipient must come back later."""
        return self.kind in ("new", "early", "expired")


def judge(state: State | None, now: dt.datetime, delay: float, retry_window: float) -> Judgement:
    """Judge a triplet from its stored state (None: never seen).

    ``new``: first attempt; ``early``: retried before ``delay``; ``pass``: a
    retry after ``delay`` and within ``retry_window``; ``known``: passed before
    and not expired; ``expired``: passed too long ago, or the retry window was
    missed, so it starts again as a first attempt.
    """
    if state is None:
        return Judgement("new", delay, now)
    if state.expires_at < now:
        return Judgement("expired", delay, now)
    if state.passed_at is not None:
        return Judgement("known", 0.0, state.first_seen)
    waited = (now - state.first_seen).total_seconds()
    if waited < delay:
        return Judgement("early", max(1.0, delay - waited), state.first_seen)
    return Judgement("pass", 0.0, state.first_seen)


# --- the store --------------------------------------------------------------
def _upsert(connection: Connection) -> Any:
    dialect = connection.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert
    raise NotImplementedError(f"greylisting needs SQLite or PostgreSQL, not {dialect}")


def _state(row: Any) -> State:
    return State(
        first_seen=as_utc(row.first_seen),  # type: ignore[arg-type]
        last_seen=as_utc(row.last_seen),  # type: ignore[arg-type]
        passed_at=as_utc(row.passed_at),
        expires_at=as_utc(row.expires_at),  # type: ignore[arg-type]
        attempts=row.attempts,
        passes=row.passes,
    )


def _seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=value)


def check_triplet(engine: Engine, triplet: Triplet, config: "GreylistSection", now: dt.datetime | None = None) -> Judgement:
    """Judge *triplet* and record the attempt; the decision of one RCPT.

    A known triplet renewed less than :data:`RENEW_INTERVAL` ago is only read.
    Otherwise the attempt is written in one transaction: the row is created or
    its counters bumped with an insert-or-update on the unique key (so that
    concurrent first attempts from several workers or hosts share one row), then
    a pass, a renewal or a restart after expiry is written.
    """
    now = now or utcnow()
    table = schema.greylist
    key = and_(table.c.network == triplet.network, table.c.sender == triplet.sender, table.c.recipient == triplet.recipient)
    with engine.connect() as connection:
        row = connection.execute(select(table).where(key)).first()
    if row is not None:
        state = _state(row)
        verdict = judge(state, now, config.delay, config.retry_window)
        if verdict.kind == "known" and (now - state.last_seen).total_seconds() < RENEW_INTERVAL:
            return verdict
    with engine.begin() as connection:
        dialect_insert = _upsert(connection)
        statement = dialect_insert(table).values(
            network=triplet.network, sender=triplet.sender, recipient=triplet.recipient,
            first_seen=now, last_seen=now, passed_at=None, expires_at=now + _seconds(config.retry_window),
            attempts=1, passes=0,
        )
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.network, table.c.sender, table.c.recipient],
            set_={"attempts": table.c.attempts + 1, "last_seen": now},
        ).returning(table)
        row = connection.execute(statement).one()
        state = _state(row)
        # attempts == 1: this call created the row (the update path adds one).
        verdict = Judgement("new", config.delay, now) if state.attempts == 1 else judge(state, now, config.delay, config.retry_window)
        values: dict[str, Any] | None = None
        if verdict.kind == "expired":
            values = {"first_seen": now, "passed_at": None, "expires_at": now + _seconds(config.retry_window), "attempts": 1, "passes": 0}
        elif verdict.kind in ("pass", "known"):
            values = {"expires_at": now + _seconds(config.expire), "passes": table.c.passes + 1}
            if verdict.kind == "pass":
                values["passed_at"] = now
        if values is not None:
            connection.execute(update(table).where(table.c.id == row.id).values(**values))
        if verdict.kind in ("pass", "known") and config.auto_whitelist_after > 0:
            _count_client(connection, dialect_insert, triplet.network, now)
    return verdict


def _count_client(connection: Connection, dialect_insert: Any, network: str, now: dt.datetime) -> None:
    table = schema.greylist_clients
    statement = dialect_insert(table).values(network=network, passes=1, last_seen=now)
    connection.execute(statement.on_conflict_do_update(index_elements=[table.c.network], set_={"passes": table.c.passes + 1, "last_seen": now}))


def touch_client(engine: Engine, network: str, now: dt.datetime | None = None) -> None:
    """Keep an auto-whitelisted client from expiring (written at most every RENEW_INTERVAL)."""
    now = now or utcnow()
    table = schema.greylist_clients
    with engine.begin() as connection:
        connection.execute(
            update(table).where(table.c.network == network, table.c.last_seen < now - _seconds(RENEW_INTERVAL)).values(last_seen=now)
        )


def client_state(engine: Engine, network: str) -> tuple[int, dt.datetime | None]:
    """The passes and last use of a client network (0, None when unknown)."""
    table = schema.greylist_clients
    with engine.connect() as connection:
        row = connection.execute(select(table.c.passes, table.c.last_seen).where(table.c.network == network)).first()
    return (int(row.passes), as_utc(row.last_seen)) if row else (0, None)


def purge(engine: Engine, expire: float, now: dt.datetime | None = None) -> tuple[int, int]:
    """Delete expired triplets and clients unseen for *expire*; return both counts."""
    now = now or utcnow()
    with engine.begin() as connection:
        triplets = connection.execute(delete(schema.greylist).where(schema.greylist.c.expires_at < now)).rowcount
        clients = connection.execute(
            delete(schema.greylist_clients).where(schema.greylist_clients.c.last_seen < now - _seconds(expire))
        ).rowcount
    return int(triplets or 0), int(clients or 0)


def list_triplets(
    engine: Engine, network: str | None = None, sender: str | None = None, recipient: str | None = None,
    passed: bool | None = None, limit: int | None = 100,
) -> list[dict[str, Any]]:
    """Stored triplets, newest first, as dictionaries."""
    table = schema.greylist
    query = select(table)
    if network:
        query = query.where(table.c.network == network)
    if sender is not None:
        query = query.where(table.c.sender == sender)
    if recipient:
        query = query.where(table.c.recipient == recipient)
    if passed is not None:
        query = query.where(table.c.passed_at.is_not(None) if passed else table.c.passed_at.is_(None))
    query = query.order_by(table.c.last_seen.desc(), table.c.id.desc())
    if limit:
        query = query.limit(limit)
    with engine.connect() as connection:
        rows = [dict(r._mapping) for r in connection.execute(query)]
    for row in rows:
        for name in ("first_seen", "last_seen", "passed_at", "expires_at"):
            row[name] = as_utc(row[name])
    return rows


def stats(engine: Engine, auto_whitelist_after: int, now: dt.datetime | None = None) -> dict[str, int]:
    """Counts for ``milterd greylist stats``."""
    now = now or utcnow()
    table, clients = schema.greylist, schema.greylist_clients
    with engine.connect() as connection:
        total = connection.execute(select(func.count()).select_from(table)).scalar() or 0
        passed = connection.execute(select(func.count()).select_from(table).where(table.c.passed_at.is_not(None))).scalar() or 0
        expired = connection.execute(select(func.count()).select_from(table).where(table.c.expires_at < now)).scalar() or 0
        attempts = connection.execute(select(func.coalesce(func.sum(table.c.attempts), 0))).scalar() or 0
        known_clients = connection.execute(select(func.count()).select_from(clients)).scalar() or 0
        auto = 0
        if auto_whitelist_after > 0:
            auto = connection.execute(select(func.count()).select_from(clients).where(clients.c.passes >= auto_whitelist_after)).scalar() or 0
        manual = connection.execute(select(func.count()).select_from(schema.greylist_whitelist)).scalar() or 0
    return {
        "triplets": int(total),
        "passed": int(passed),
        "waiting": int(total - passed),
        "expired": int(expired),
        "attempts": int(attempts),
        "clients": int(known_clients),
        "auto_whitelisted_clients": int(auto),
        "whitelist_entries": int(manual),
    }


# --- the whitelist table ----------------------------------------------------
def whitelist_rows(engine: Engine) -> list[dict[str, Any]]:
    """The entries of the ``greylist_whitelist`` table."""
    table = schema.greylist_whitelist
    with engine.connect() as connection:
        rows = [dict(r._mapping) for r in connection.execute(select(table).order_by(table.c.kind, table.c.value))]
    for row in rows:
        row["created_at"] = as_utc(row["created_at"])
    return rows


def whitelist_add(engine: Engine, kind: str, value: str, comment: str = "") -> bool:
    """Add an entry (checked first: ValueError); False when it was already there."""
    compile_pattern(kind, value)
    value = value.strip() if value.strip().startswith("/") else value.strip().lower()
    table = schema.greylist_whitelist
    with engine.begin() as connection:
        statement = _upsert(connection)(table).values(kind=kind, value=value, comment=comment, created_at=utcnow())
        statement = statement.on_conflict_do_nothing(index_elements=[table.c.kind, table.c.value]).returning(table.c.id)
        return connection.execute(statement).first() is not None


def whitelist_remove(engine: Engine, kind: str, value: str) -> bool:
    """Remove an entry; False when there was none."""
    table = schema.greylist_whitelist
    value = value.strip() if value.strip().startswith("/") else value.strip().lower()
    with engine.begin() as connection:
        result = connection.execute(delete(table).where(table.c.kind == kind, table.c.value == value))
    return bool(result.rowcount)


def stored_whitelist(engine: Engine) -> Whitelist:
    """The table's entries as a :class:`Whitelist` (unusable rows are skipped)."""
    entries = []
    for row in whitelist_rows(engine):
        try:
            compile_pattern(row["kind"], row["value"])
        except ValueError:
            continue
        entries.append((row["kind"], row["value"]))
    return Whitelist.build(entries)


def remove_triplets(engine: Engine, network: str | None = None, sender: str | None = None, recipient: str | None = None) -> int:
    """Delete the triplets matching every filter given; return how many."""
    table = schema.greylist
    conditions = []
    if network:
        conditions.append(table.c.network == network)
    if sender is not None:
        conditions.append(table.c.sender == sender)
    if recipient:
        conditions.append(table.c.recipient == recipient)
    if not conditions:
        return 0
    with engine.begin() as connection:
        return int(connection.execute(delete(table).where(*conditions)).rowcount or 0)



# --- housekeeping -----------------------------------------------------------
def purge_job(services: "Services") -> str:
    """The maintenance job: purge expired triplets and stale clients."""
    triplets, clients = purge(services.store.engine, services.config.greylist.expire)
    if triplets or clients:
        return f"purged {triplets} expired triplet(s), {clients} client(s)"
    return ""


maintenance.register(
    maintenance.Job(
        "greylist-purge",
        lambda s: s.config.greylist.purge_interval if s.config.greylist.enabled else 0,
        purge_job,
    )
)

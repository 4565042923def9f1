"""Greylisting's decisions: pure functions, no SQL.

A triplet is (client network, envelope sender, recipient).  The functions here
build it (:func:`client_network`, :func:`triplet_sender`), match the
whitelists (:class:`Whitelist`), judge a triplet's stored state
(:func:`judge`) and plan what an attempt changes in it (:func:`plan`).  The
tables live behind :class:`milterd.store.greylist.GreylistStore`.

The check decides every RCPT from a read and keeps the planned
writes (:class:`Write`) in the envelope; they are applied together, in one
transaction per message, when the transaction ends (:meth:`GreylistStore.record`).
A triplet that has passed and was renewed recently is only read, so that mail
from known senders costs an indexed SELECT, not a write.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal

from .addresses import as_judged, embedded_ipv4, unmapped_network
from .dns import domain_name, fold_case
from .message.policy import routed
from .patterns import IGNORECASE, AdminPattern, PatternError
from .text import storable

if TYPE_CHECKING:
    from .config import GreylistSection
    from .services import Services
    from .store.greylist import GreylistStore

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

#: A client network's successful retries add to its auto-whitelist count at
#: most once in so many seconds (as postgrey's ``--auto-whitelist-clients``):
#: a spammer retrying a burst of messages in one go counts once, not N times.
CLIENT_COUNT_INTERVAL = 3600.0

#: The shortest ``[greylist] expire`` the check accepts (seconds).  Renewals and
#: client counts are written at most hourly, so under twice that a triplet in
#: steady use still expires between two writes, and successive counts of a
#: client network fall more than ``expire`` apart and restart from zero.
MIN_EXPIRE = 2 * max(RENEW_INTERVAL, CLIENT_COUNT_INTERVAL)

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
    ip = as_judged(ip)
    prefix = netmask_v4 if ip.version == 4 else netmask_v6
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))



_BATV = re.compile(r"^(?:prvs|msprvs1)=[^=@]+=(?P<rest>.+@.+)$")
_BTV1 = re.compile(r"^btv1==[^=@]+==(?P<rest>.+@.+)$")
_SRS0 = re.compile(r"^srs0[=+-][^=@]+=[^=@]+=(?P<domain>[^=@]+)=(?P<local>[^@]+)@[^@]+$")
# SRS1 keeps the separator that followed "SRS0" (=, + or -): ``SRS1=HHH=fwd=+HHH=TT=…``.
_SRS1 = re.compile(r"^srs1[=+-][^=@]+=[^=@]+=[=+-][^=@]+=[^=@]+=(?P<domain>[^=@]+)=(?P<local>[^@]+)@[^@]+$")


def normalise_sender(sender: str, srs: bool = True) -> str:
    """The envelope sender as a triplet holds it: lower-cased, without the parts
    that change from one attempt to the next.

    ``prvs=1234abcd=alice@example.org`` (BATV), ``SRS0=HHH=TT=example.org=alice@fwd.example``
    and ``SRS1=…==HHH=TT=example.org=alice@fwd2.example`` (SRS) and
    ``alice+list-42@example.org`` (a plus tag) all become ``alice@example.org``.
    The null sender stays empty.  With *srs* False an SRS address keeps its forwarder's domain: the
    address SRS names is anyone's claim (its hash is the forwarder's to check), so a sender whitelist
    entry is not matched by it (``SRS0=x=y=partner.example=spam@attacker.example`` is no partner's).
    """
    address = fold_case(sender.strip().strip("<>"))  # letter by letter: str.lower makes a final Σ a ς, another domain
    if "@" not in address:
        return address
    # BATV, then SRS, then BATV again: a forwarder rewrites a BATV-tagged sender with SRS
    # (SRS0=HHH=TT=example.org=prvs=0123abcd=alice@fwd.example) and may tag its own rewrite.
    address = _without_batv(address)
    match = (_SRS1.match(address) or _SRS0.match(address)) if srs else None
    if match:
        address = _without_batv(f"{match.group('local')}@{match.group('domain')}")
    local, _, domain = address.rpartition("@")
    if "+" in local[1:]:
        local = local[: local.index("+", 1)]
    return f"{local}@{domain}"


def _without_batv(address: str) -> str:
    """*address* without a BATV tag (``prvs=1234abcd=alice@example.org`` → ``alice@example.org``)."""
    for pattern in (_BATV, _BTV1):
        match = pattern.match(address)
        if match:
            return match.group("rest")
    return address


#: A number standing alone in a local part (between non-word characters), as VERP
#: and bounce-tracking senders put a message or list id there: ``bounce-4711-bob=x``.
_STANDALONE_NUMBER = re.compile(r"\b[0-9]+\b", re.ASCII)


def triplet_sender(sender: str) -> str:
    """The sender a triplet holds: :func:`normalise_sender`, with each number
    standing alone in the local part replaced by ``#`` (as postgrey does), so
    that ``bounce-4711-bob=example.org@list.example`` and its next message's
    ``bounce-4712-…`` are one triplet, and the list's mail is not greylisted
    again at each message.  Whitelists match :func:`normalise_sender`'s
    address, as the administrator wrote it.
    """
    address = normalise_sender(sender)
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    return f"{_STANDALONE_NUMBER.sub('#', local)}@{domain}"


@dataclass(frozen=True)
class Triplet:
    """One (client network, sender, recipient) as stored."""

    network: str
    sender: str
    recipient: str

    def __str__(self) -> str:
        return f"client={self.network} from=<{self.sender}> to=<{self.recipient}>"


#: Most UTF-8 bytes of a triplet's sender and of its recipient (RFC 5321's path is 256 octets): PostgreSQL's
#: unique index over the three takes at most 2,704 bytes a row, and 512 characters of CJK text are 1,536 bytes
#: (a sender and a recipient so written failed every write of the message, and the worker held greylisting off).
MAX_ADDRESS_BYTES = 512


def make_triplet(client_addr: str, sender: str, recipient: str, config: "GreylistSection") -> Triplet:
    """The triplet of one recipient of a transaction."""
    return Triplet(
        storable(client_network(client_addr, config.netmask_v4, config.netmask_v6))[:64],
        _first_bytes(storable(triplet_sender(sender)), MAX_ADDRESS_BYTES),
        _first_bytes(storable(recipient.strip().strip("<>")), MAX_ADDRESS_BYTES),
    )


def _first_bytes(text: str, size: int) -> str:
    """The longest start of *text* whose UTF-8 form is at most *size* bytes."""
    if len(text) <= size // 4 or (text.isascii() and len(text) <= size):
        return text
    return text.encode("utf-8")[:size].decode("utf-8", "ignore")


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
    regex: AdminPattern | None = None

    def matches(self, value: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None) -> bool:
        """Whether *value* (a client name or an address) or *ip* matches."""
        if self.network is not None:
            return ip is not None and ip.version == self.network.version and ip in self.network
        if self.regex is not None:
            return self.regex.search(fold_case(value)) is not None
        value = fold_case(_ascii_domain(value))  # letter by letter, as normalise_sender folds the sender
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
            # The sender was normalised (normalise_sender): so is a sender entry, or a tagged one never matches.
            return value == (normalise_sender(text) if self.kind == "sender" else text)
        return domain == text


def compile_pattern(kind: str, text: str) -> Pattern:
    """Compile one whitelist entry; ValueError with the reason when it is unusable."""
    if kind not in WHITELIST_KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(WHITELIST_KINDS)}")
    written, text = text.strip(), entry_text(kind, text)
    if not text:
        raise ValueError("an empty entry")
    if len(text) > 2 and text.startswith("/") and text.endswith("/"):
        try:
            return Pattern(kind, text, regex=AdminPattern(text[1:-1], IGNORECASE))
        except PatternError as exc:
            raise ValueError(f"bad regular expression {text!r}: {exc}") from None
    if "*" in (text if kind == "client" else text.rpartition("@")[2]) or text.startswith("*@"):
        # postgrey's and milter-greylist's lists have globs; here they matched nothing, silently.  (A "*" within a
        # local part is an address's own: vip*@example.org.)
        suffix = "a name suffix (.example.org)" if kind == "client" else "a domain (@example.org) or a domain and its subdomains (.example.org)"
        raise ValueError(f"{text!r}: '*' is no wildcard here; write {suffix} or a /regex/")
    if kind == "client":
        try:
            network = ipaddress.ip_network(text, strict=False)
            return Pattern(kind, text, network=unmapped_network(network))  # as clients are matched (Whitelist.client)
        except ValueError:
            pass
        if _NUMERIC_NAME.fullmatch(text):
            raise ValueError(_numeric_reason(text, written))
        if "/" in text or " " in text or "@" in text or ":" in text:
            raise ValueError(f"{text!r} is neither a network nor a host name")
    elif " " in text:
        raise ValueError(f"{text!r} is not an address or domain")
    return Pattern(kind, entry_value(kind, text))


#: A client entry of digits and dots that is no address: no host name is all digits (no top-level domain is).
_NUMERIC_NAME = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def _numeric_reason(text: str, written: str) -> str:
    """Why the client entry *written* (*text* without its trailing dot: digits and dots, no address) is refused:
    postgrey's partial address (``198.51.100.``) is named as the network it meant."""
    octets = text.split(".")
    if len(octets) < 4 and all(int(octet) < 256 for octet in octets):
        network = ".".join(octets + ["0"] * (4 - len(octets))) + f"/{8 * len(octets)}"
        return f"{written!r} is a partial address, which matches no client: write the network {network}"
    return f"{written!r} is neither a network nor a host name"


def entry_text(kind: str, text: str) -> str:
    """A whitelist entry as written, without the angle brackets of a sender or recipient written as in SMTP
    (``<vip@example.org>``, which matched no recipient) and the trailing dot of a name (``mx.example.org.``,
    which no client name Postfix verified has)."""
    text = text.strip()
    if kind in ("sender", "recipient") and text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if len(text) > 2 and text.startswith("/") and text.endswith("/"):
        return text
    return text.rstrip(".") if not text.endswith("..") else text


def entry_value(kind: str, text: str) -> str:
    """A whitelist entry in the one form it is stored and matched in: a ``/regex/`` as written, anything
    else case-folded letter by letter (:func:`~milterd.dns.fold_case`, as senders are), without SMTP's angle
    brackets around an address, its domain in A-labels."""
    text = entry_text(kind, text)
    if len(text) > 2 and text.startswith("/") and text.endswith("/"):
        return text
    return fold_case(_ascii_domain(text))


def _ascii_domain(text: str) -> str:
    """*text* (a client name, an address or a domain entry) with its domain's U-labels as A-labels, as Postfix
    passes verified client names and as DNS knows the domain: ``@bücher.example`` matches mail from
    ``xn--bcher-kva.example`` and the other way round.  The domain's case is folded by
    :func:`~milterd.dns.domain_name` (``str.lower`` makes a final Σ a ς: another domain)."""
    if text.isascii():
        return text
    head, at, domain = text.rpartition("@")
    prefix = "." if not at and domain.startswith(".") else ""
    folded = domain_name(domain[len(prefix):])
    return f"{head}{at}{prefix}{folded}" if folded else text


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
        # An IPv4 client seen through IPv6 matches an entry of either form: ::ffff:192.0.2.1 or 192.0.2.0/24,
        # 64:ff9b::/96 (an IPv6-only MX's entry copied from its logs) or the IPv4 network behind it.
        embedded = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        forms = [ip] if embedded is None else [ip, embedded]
        verified = name if name and name != "unknown" else ""
        for pattern in self.clients:
            if pattern.network is not None or verified:
                if any(pattern.matches(verified, form) for form in forms):
                    return pattern.text
        return None

    def sender(self, sender: str) -> str | None:
        """The entry that whitelists this (normalised) sender, or None."""
        return _first(self.senders, sender) if sender else None

    def recipient(self, recipient: str) -> str | None:
        """The entry that whitelists this recipient, or None: none for one whose local part routes the mail
        elsewhere (``ceo%mx.example@help.example``, which Postfix delivers to ceo@mx.example when help.example is
        local), so that ``@help.example`` does not exempt every local mailbox."""
        return None if routed(recipient) else _first(self.recipients, recipient)


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
    and not expired; ``expired``: passed too long ago, the retry window was
    missed, or first seen after *now* (a clock put right since), so it starts
    again as a first attempt.
    """
    if state is None:
        return Judgement("new", delay, now)
    if state.expires_at < now:
        return Judgement("expired", delay, now)
    if state.passed_at is not None:
        return Judgement("known", 0.0, state.first_seen)
    if state.first_seen > now:
        # First seen "later" than now: a clock that ran fast then (or runs slow now, another MX host's). Waiting
        # for it would defer the sender as long as the clock was off (a day fast: a day); it starts again instead.
        return Judgement("expired", delay, now)
    waited = (now - state.first_seen).total_seconds()
    if waited < delay:
        return Judgement("early", max(1.0, delay - waited), state.first_seen)
    return Judgement("pass", 0.0, state.first_seen)


# --- planning the writes -------------------------------------------------------
@dataclass(frozen=True)
class Write:
    """What one attempt changes in a triplet's row, applied with the other writes
    of its message by :meth:`GreylistStore.record`.

    ``kind`` is the judgement that caused it: ``new`` and ``early`` record an
    attempt, ``expired`` starts the triplet again, ``pass`` marks it passed and
    ``known`` renews it; ``expires_at`` is the row's new expiry (for ``early``
    only used when the row has to be created again: a retry keeps the window
    of the first attempt);
    ``count_client`` (a ``pass``: the triplet waited the delay and came back)
    adds one successful retry to the client network's count (auto whitelist):
    at most one a message and one every :data:`CLIENT_COUNT_INTERVAL`; a
    network last seen more than ``client_expire`` seconds before (``[greylist]
    expire``; None: no limit) counts from zero again, as if the purge had removed it.
    """

    triplet: Triplet
    kind: Kind
    at: dt.datetime
    expires_at: dt.datetime
    count_client: bool = False
    client_expire: float | None = None


@dataclass(frozen=True)
class Step:
    """The decision of one attempt and the write it needs (None: nothing to write)."""

    judgement: Judgement
    write: Write | None


def plan(triplet: Triplet, state: State | None, now: dt.datetime, config: "GreylistSection") -> Step:
    """Judge an attempt of *triplet* from its stored *state* and plan its write.

    A known triplet renewed less than :data:`RENEW_INTERVAL` ago needs no write;
    every other attempt is recorded (an attempt, a restart, a pass or a renewal).
    Only a ``pass`` counts for the client's auto whitelist: a renewal is no
    successful retry.
    """
    verdict = judge(state, now, config.delay, config.retry_window)
    if verdict.kind == "known" and state is not None and (now - state.last_seen).total_seconds() < RENEW_INTERVAL:
        return Step(verdict, None)
    passed = verdict.kind in ("pass", "known")
    expires = now + dt.timedelta(seconds=config.expire if passed else config.retry_window)
    if verdict.kind == "pass" and config.auto_whitelist_after > 0:
        return Step(verdict, Write(triplet, verdict.kind, now, expires, count_client=True, client_expire=config.expire))
    return Step(verdict, Write(triplet, verdict.kind, now, expires))


def auto_whitelisted(passes: int, last_seen: dt.datetime | None, now: dt.datetime, config: "GreylistSection") -> bool:
    """Whether a client network with this count and last use skips greylisting:
    enough successful retries, and used within ``expire`` (the purge job, when
    it runs at all, deletes it later)."""
    if config.auto_whitelist_after <= 0 or passes < config.auto_whitelist_after or last_seen is None:
        return False
    return last_seen >= now - dt.timedelta(seconds=config.expire)


def check_triplet(store: "GreylistStore", triplet: Triplet, config: "GreylistSection", now: dt.datetime | None = None) -> Judgement:
    """Judge one attempt of *triplet* and record it at once (a message of one
    recipient; ``milterd`` batches the writes of a whole message instead).
    Without *now*, the store's time (:meth:`GreylistStore.now`).
    StoreError when the store does not answer."""
    now = now or store.now()
    step = plan(triplet, store.state(triplet), now, config)
    if step.write is not None:
        store.record([step.write], now=now)
    return step.judgement


# --- housekeeping -----------------------------------------------------------
def purge_job(services: "Services") -> str:
    """The maintenance job: purge expired triplets and stale clients (by the store's clock)."""
    triplets, clients = services.store.greylist.purge(services.config.greylist.expire)
    if triplets or clients:
        return f"purged {triplets} expired triplet(s), {clients} client(s)"
    return ""

"""milter.conf: its schema, defaults and loading.

Every parameter has a name, a default and one line of documentation (the
``description`` of its field); the shipped ``milter.conf`` repeats them.  A
misspelt key, a value of the wrong type or an unreadable file is refused with
:class:`ConfigError`, which names the file, the key and the reason.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import os
import re
import socket
import tomllib
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .checks.arc import ArcChecks
from .checks.attachments import AttachmentChecks
from .checks.dkim import DkimChecks
from .checks.dmarc import DmarcChecks
from .checks.dnsbl import DnsblChecks
from .checks.headers import HeaderChecks
from .checks.helo import HeloChecks
from .checks.localdomains import LocalDomainChecks
from .checks.rdns import RdnsChecks
from .checks.sender import SenderChecks
from .checks.spf import SpfChecks
from .checks.uribl import UriblChecks
from .content.headertext import is_field_name
from .dns import parse_nameserver
from .endpoints import parse_listen, parse_socket
from .files import MAX_FILE_SIZE as MAX_FILE_SIZE
from .files import read_error, read_regular, resolved
from .greylist import compile_pattern
from .message.policy import spam_verdict_field
from .options import CheckSwitches as CheckSwitches
from .options import ConfigError as ConfigError
from .options import Duration as Duration
from .options import Section, domain_names, finite
from .options import Size as Size
from .reinject import parse_target, report_sender
from .scanners import parse_address
from .text import password_problem
from .units import connect_timeout_seconds


def _threshold(value: object) -> float | bool:
    if value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return finite(value)  # a nan threshold would never fire
    raise ValueError(f"expected a score (a number) or false, got {value!r}")


#: A score threshold, or ``false`` to switch that action off.
Threshold = Annotated[float | bool, BeforeValidator(_threshold)]


def _no_nul(value: str) -> str:
    # No file name can hold a NUL: opening it would only raise ValueError, as a traceback at start.
    if "\0" in value:
        raise ValueError("contains a NUL character (\\0), which no path can hold")
    return value


@functools.lru_cache(maxsize=1)
def _fqdn() -> str:
    # getfqdn() may ask DNS: once per process, not once per message.  A system name that is no host-name token
    # ("My Box": hostname(1) takes it) is made one, as [milter] hostname must be: it is the authserv-id too.
    return _HOST_TOKEN_BREAK.sub("-", socket.getfqdn())[:253] or "localhost"


DEFAULT_PATHS = (Path("milter.conf"), Path("/etc/milterd/milter.conf"))
#: A host name, or any authserv-id written as one token (authresults reads it back so).
_HOST_CHARS = "A-Za-z0-9._-"
_HOST_TOKEN = re.compile(f"[{_HOST_CHARS}]{{1,253}}")
_HOST_TOKEN_BREAK = re.compile(f"[^{_HOST_CHARS}]")


class MilterSection(Section):
    socket: str = Field("inet:127.0.0.1:8895", description="Where Postfix connects: inet:HOST:PORT, inet:PORT@HOST, inet6:PORT@HOST or unix:/path.")
    socket_mode: str = Field("0660", description="Permissions of a unix socket, in octal.")
    socket_owner: str = Field("", description="Owner of a unix socket (user name); empty keeps the process's.")
    socket_group: str = Field("", description="Group of a unix socket; empty keeps the process's.")
    workers: int = Field(0, ge=0, le=256, description="Worker processes; 0 means one per CPU.")
    user: str = Field("", description="User to run as after the socket is open when started as root; empty runs as nobody (with a warning), \"root\" keeps root knowingly.")
    group: str = Field("", description="Group to run as after the socket is open when started as root (with user = \"root\" too); empty uses the user's primary group. A group that does not exist is refused at start, whoever starts milterd.")
    hostname: str = Field("", description="This host's name in the log, Received and report headers; empty uses the system's FQDN.")
    authserv_id: str = Field("", description="The authserv-id of Authentication-Results headers, a host name (one token: letters, digits, '-', '_', '.'; read back as one, a sender's header claiming it is removed); empty uses hostname.")
    trusted_networks: list[str] = Field(["127.0.0.0/8", "::1/128"], description="Client networks that are trusted (like Postfix's mynetworks). An IPv4 client written as IPv6 (::ffff:192.0.2.1, or 64:ff9b::192.0.2.1 at an IPv6-only MX behind NAT64) is matched as the IPv4 address it is, by an entry of either form.")
    local_domains: list[str] = Field([], description="Domains this site receives mail for and sends mail as.")
    skip_trusted: bool = Field(True, description="Do not score mail from trusted_networks (it is logged and passed).")
    skip_authenticated: bool = Field(True, description="Do not score mail from clients that authenticated with SMTP AUTH.")
    spam_lovers: list[str] = Field([], description="Recipients who take their mail unfiltered by score, as amavisd-new's spam_lovers and Rspamd's want_spam: an abuse or phishing-report mailbox, which receives spam and its links on purpose. Each is an address (abuse@example.org), a domain (@example.org, not its subdomains) or a local part at any domain (abuse@), compared without case, in ASCII; a recipient whose local part routes the mail elsewhere (%, !, :, a quoted @: Postfix delivers bob%example.com@reports.example.org to bob@example.com) never matches; one with an address extension (abuse+spamcop@example.org) matches as it is and, once [checks.local_domains] recipient_delimiter names its delimiter, without it (as abuse@example.org), as Postfix delivers it. A message whose every recipient is one is not scored, as mail from trusted_networks is not: its checks run and are logged, but no threshold applies and no X-Spam-* header is added; what a check forces still applies (a virus, a banned attachment, a DMARC reject, greylisting). With one other recipient the message is scored as any other.")
    shutdown_timeout: Duration = Field(30.0, description="On SIGTERM or reload, how long in-flight messages may take before their worker is stopped.")
    worker_timeout: Duration = Field(120.0, description="A worker that gives no sign of life for this long (stuck in a call that never returns, or every end-of-message thread held past twice the end-of-message budget) is killed and replaced, and the supervisor logs it; libmilter would go on accepting connections for it that nobody answers. 0 never kills one.")
    spool_memory: Size = Field(1024 * 1024, description="Bodies up to this size stay in memory; larger ones are spooled to a temporary file.")
    spool_dir: str = Field("", description="Directory for a worker's temporary files: spooled bodies, and the decoded attachments and archive copies of the attachment checks; empty uses the system's temporary directory. Checked at start: the service user must be able to write it (or the system's temporary directory).")
    log_target: Literal["stderr", "syslog"] = Field("stderr", description="Where the per-message summary lines and errors go: stderr, or syslog's mail facility (/dev/log); while syslog does not take them (no daemon behind /dev/log), they go to stderr, said once.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level of messages written to the log; a reload (SIGHUP) applies a change.")
    timeout: Duration = Field(0.0, description="libmilter's I/O timeout towards Postfix; 0 keeps libmilter's default (2 hours).")
    delay_reject: bool = Field(True, description="Apply rejects found at connect or HELO at MAIL FROM, once SMTP AUTH is known (like Postfix's smtpd_delay_reject).")
    on_check_error: Literal["accept", "tempfail"] = Field("accept", description="A check that fails with an internal error (a defect in milterd or a library it uses; the traceback is logged) judges nothing. With accept, the message goes on, judged by the other checks, and its log row carries CHECK_ERROR (0) naming the check. With tempfail, it is answered 451 4.3.0 at that stage instead, so that no message passes a check that could not run (also one whose verdict hook fails: the headers it removes or adds, a signature or an ARC seal, are missing); the client retries, and mail that meets the same defect again waits in the sender's queue until milterd is fixed or the queue lifetime ends (Postfix's default: 5 days). Scanners, the greylist store and the log have their own on_error.")
    max_headers: int = Field(1000, ge=0, description="Most header fields a message may have; one more is refused with 554 5.6.0 at that header, whatever Postfix's own limits; 0 is no limit.")
    max_header_size: Size = Field(56 * 1024, description="Largest single header field (name, value and folding); a larger one is refused with 552 5.3.4 (Postfix cuts a longer one silently: at header_size_limit, and at about 60K when a milter is used, so that the default refuses what Postfix would cut and passes a To of some 400 recipients); 0 is no limit.")
    max_header_section: Size = Field(1024 * 1024, description="Largest header section (all header fields together); reaching past it is refused with 552 5.3.4 at that header; 0 is no limit.")

    @field_validator("hostname", "authserv_id")
    @classmethod
    def _host_token(cls, value: str) -> str:
        # The authserv-id is read back as one token (RFC 8601 §2.2): "My Company MX" was written, read as "my", and
        # a sender's Authentication-Results claiming it were never removed.  The host name is its default.
        if value and not _HOST_TOKEN.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name (letters, digits, '-', '_' and '.', such as mx.example.org)")
        return value

    @field_validator("local_domains")
    @classmethod
    def _local_domains(cls, value: list[str]) -> list[str]:
        return domain_names(value, "write one domain per entry (example.org; a subdomain is an entry of its own)")

    @field_validator("spam_lovers")
    @classmethod
    def _lovers(cls, value: list[str]) -> list[str]:
        for entry in value:
            local, at, domain = entry.partition("@")
            if not at or "@" in domain or not (local or domain) or any(c.isspace() or c in '<>%!:"\\' for c in entry):
                raise ValueError(f"{entry!r} is not an address, @domain or local part@")
            if domain.startswith(".") or domain.endswith(".") or not entry.isascii():
                raise ValueError(f"{entry!r}: write the domain without a leading or trailing dot (one domain, not its subdomains), in ASCII (xn-- for an international one)")
        return value

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"{net!r} is not a network: {exc}") from None
        return value

    @field_validator("socket")
    @classmethod
    def _socket(cls, value: str) -> str:
        _no_nul(value)
        parse_socket(value)  # else only opening it would find out, with a traceback
        return value

    @field_validator("spool_dir")
    @classmethod
    def _spool_dir(cls, value: str) -> str:
        return _no_nul(value)

    @field_validator("socket_mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        try:
            mode = int(value, 8)
        except ValueError:
            mode = -1
        # chmod takes -1 as every bit (a world-writable socket) and a huge one not at all.
        if not 0 <= mode <= 0o7777:
            raise ValueError(f"{value!r} is not an octal mode such as \"0660\"")
        return value


class ActionsSection(Section):
    add_header: Threshold = Field(5.0, description="Score at or above which X-Spam-Flag: YES is added and X-Spam-Status says Yes.")
    rewrite_subject: Threshold = Field(8.0, description="Score at or above which the Subject is prefixed with subject_tag.")
    greylist: Threshold = Field(False, description="Score at or above which the message is greylisted at end of data (score-based greylisting); false is off.")
    quarantine: Threshold = Field(12.0, description="Score at or above which the message is quarantined.")
    reject: Threshold = Field(15.0, description="Score at or above which the message is rejected with 550 5.7.1.")
    subject_tag: str = Field("[SPAM]", description="Prefix put before the Subject at rewrite_subject. One that is not ASCII is written as an RFC 2047 encoded-word (UTF-8) before a Subject that is ASCII, so that mail sent without SMTPUTF8 gets no 8-bit header; before a Subject already in raw UTF-8, as it is.")
    reject_message: str = Field("Message rejected as spam", description="Human text of the 550 reply; the score is appended.")
    headers: bool = Field(True, description="Add X-Spam-Status and X-Spam-Score to every scored message (X-Spam-Flag only at add_header); the sender's own X-Spam-* fields are removed, and the Subject tagged at rewrite_subject, either way.")


class DatabaseSection(Section):
    url: str = Field("sqlite:///milterd.sqlite", description="SQLAlchemy URL of the log, quarantine and greylist store; a relative SQLite path is relative to the working directory of each command, serve's and cron's alike (doctor warns: write an absolute path where commands run elsewhere; an in-memory SQLite database is refused: each worker would have its own).")
    auto_upgrade: bool = Field(True, description="Let serve create or upgrade the schema itself (otherwise run 'milterd db upgrade').")
    busy_timeout: Duration = Field(10.0, description="How long a writer waits for a locked SQLite database before the message is tempfailed. On a database server, also the longest a new connection may take to open (libpq's connect_timeout, at least 2 s) and data sent to it may wait unacknowledged (tcp_user_timeout), unless url sets them; after one timed out, this process asks the server again only once busy_timeout has passed: a server that does not answer fails the store's work at once (each store's on_error) instead of holding the session until Postfix's milter_command_timeout. A statement that waits (a lock another host holds) is not bounded: add ?options=-c%20statement_timeout%3D10s to url where no PgBouncer sits between (it refuses that parameter).")
    pool_size: int = Field(16, ge=1, le=1000, description="Connections each worker (and the supervisor's maintenance process) keeps open to a database server such as PostgreSQL, opened as needed and never more: the SMTP sessions a worker serves at once share them, and one that finds them all busy waits busy_timeout, then its message is tempfailed. This host needs up to pool_size × (workers + 1) + 2 connections (a reload briefly runs one worker more; the supervisor and its maintenance process use one each): milterd doctor shows the total against the server's max_connections. SQLite ignores it (32 per worker).")
    on_error: Literal["tempfail", "accept"] = Field("tempfail", description="The log cannot be written: tempfail (451, the client retries) or accept unlogged; quarantine always tempfails.")
    log_retention: Duration = Field(90 * 86400.0, description="Message log rows older than this are deleted hourly by the supervisor (those of messages still held in the quarantine are kept): rule statistics, whatif and milterd log read what is left; 0 keeps every row (the table then grows by a row a message for ever).")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = _no_nul(value)  # a SQLite URL is a path; no other URL holds a raw NUL either
        problem = password_problem(value) or _in_memory(value) or _dialect_problem(value) or _connect_timeout_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("busy_timeout")
    @classmethod
    def _busy_timeout(cls, value: float) -> float:
        # SQLite takes it in milliseconds as a C int: a larger one wraps to 0, no waiting at all.
        if value * 1000 > 2**31 - 1:
            raise ValueError(f"must be at most 24d (SQLite's limit), got {value:g} seconds")
        return value


def _dialect_problem(url: str) -> str:
    """Why SQLAlchemy cannot take *url* (no URL at all, a dialect it does not know), else "": found here, with the
    file and key, rather than when the store is first opened."""
    # The URL itself is shown only when it cannot hold a password (no "@").
    shown = f"{url!r} " if "@" not in url and "password" not in url.lower() else ""  # nor a password= parameter
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except NoSuchModuleError:  # an ArgumentError too
        return f"SQLAlchemy has no dialect {url.partition(':')[0]!r} (sqlite, postgresql+psycopg)"
    except (ArgumentError, ValueError):  # ValueError: a port that is no number ("postgresql://[::1/db")
        return f"{shown}is not an SQLAlchemy URL (sqlite:///path or postgresql+psycopg://user@host/database)"
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        # The store's statements are written for these two (upserts, locks); another database failed at start.
        return f"milterd stores in SQLite or PostgreSQL, not {parsed.get_backend_name()} (sqlite:///path or postgresql+psycopg://…)"
    try:
        dialect.import_dbapi()
    except ImportError as exc:  # the driver not installed: serve failed at start, without the file and key
        return f"the driver of {parsed.drivername!r} is not installed ({exc}); milterd's is postgresql+psycopg: pip install 'milterd[postgresql]'"
    return ""


def _connect_timeout_problem(url: str) -> str:
    """Why the ``connect_timeout`` of a database server's *url* cannot be used, else "": found here, not as a traceback
    when the store first connects.  The URL itself is not shown (it may hold a password)."""
    parsed = make_url(url)  # after _dialect_problem: it parses
    if parsed.get_backend_name() == "sqlite" or "connect_timeout" not in parsed.query:
        return ""
    if connect_timeout_seconds(parsed.query["connect_timeout"]) is None:
        return "connect_timeout must be a whole number of seconds, 0 or more, given once (0 waits for ever)"
    return ""


def _in_memory(url: str) -> str:
    """Why *url* is refused when it names an in-memory SQLite database (``sqlite://``, ``sqlite:///:memory:``,
    ``mode=memory``), else "": each process and thread would have its own, empty one, every log row failing."""
    scheme, separator, rest = url.strip().partition("://")
    if not separator or not scheme.lower().startswith("sqlite"):
        return ""
    database, _, query = rest.partition("?")
    database = urllib.parse.unquote(database[1:] if database.startswith("/") else database)  # as SQLAlchemy decodes it
    query = urllib.parse.unquote(query).lower()
    if database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in query or "vfs=memdb" in query:
        return "an in-memory SQLite database: each worker would have its own, empty one (no log, no quarantine); name a file"
    return ""


class DnsSection(Section):
    nameservers: list[str] = Field([], description="Resolvers to ask, as \"IP\" or \"IP:PORT\"; empty uses /etc/resolv.conf.")
    timeout: Duration = Field(2.0, gt=0, description="The longest a message waits for DNS answers at one stage (more than 0: no DNS check could ask anything); a timeout counts as not listed. SPF, each From domain's DKIM keys and DMARC record, the links' block lists and the ARC chain's keys have deadlines of this length of their own, so that lookups of names the sender chose cannot spend theirs.")
    cache_size: int = Field(10000, ge=0, description="Answers kept per worker (bounded, expired by TTL).")

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, value: list[str]) -> list[str]:
        for spec in value:
            # Else only the first lookup of each worker would find out, failing every DNS check.
            parse_nameserver(spec)
        return value


class RulesSection(Section):
    dir: str = Field("rules", description="Directory of local rule files (*.toml), relative to this file, read after the shipped ones (milterd/defaults/rules/) to add to or override them; the default \"rules\" may be absent, another directory must exist; empty: none.")


class ChecksSection(Section):
    """``[checks]``: one sub-section per configurable check, each model defined beside its check in ``milterd/checks/``.

    Listed here explicitly (not discovered) so that ``config.checks.NAME.KEY`` stays typed.
    """

    dnsbl: DnsblChecks = DnsblChecks()
    rdns: RdnsChecks = RdnsChecks()
    helo: HeloChecks = HeloChecks()
    sender: SenderChecks = SenderChecks()
    spf: SpfChecks = SpfChecks()
    dkim: DkimChecks = DkimChecks()
    dmarc: DmarcChecks = DmarcChecks()
    arc: ArcChecks = ArcChecks()
    headers: HeaderChecks = HeaderChecks()
    local_domains: LocalDomainChecks = LocalDomainChecks()
    attachments: AttachmentChecks = AttachmentChecks()
    uribl: UriblChecks = UriblChecks()

    @model_validator(mode="after")
    def _dmarc_needs_dkim(self) -> "ChecksSection":
        # DMARC reads the DKIM check's results: without them a genuine signature aligned with the From domain is
        # "no DKIM pass", and a forwarded message of a p=reject domain (SPF not aligned) was rejected.
        dmarc, dkim = self.dmarc, self.dkim
        if not dmarc.enabled:
            return self
        if not dkim.enabled or dkim.max_signatures == 0:
            raise ValueError("[checks.dmarc] needs the DKIM check's results: set [checks.dkim] enabled = true and max_signatures "
                             "above 0, or [checks.dmarc] enabled = false (else signed mail fails DMARC)")
        for key in ("skip_trusted", "skip_authenticated"):
            if getattr(dkim, key) and not getattr(dmarc, key):
                raise ValueError(f"[checks.dmarc] {key} = false needs [checks.dkim] {key} = false too: DMARC would judge "
                                 "that mail without its DKIM results (signed mail fails DMARC)")
        return self


class DkimKey(Section):
    domain: str = Field(description="The domain signed for (d=); mail whose From is in it or in a subdomain is signed.")
    selector: str = Field(description="The selector (s=): the key is published at SELECTOR._domainkey.DOMAIN.")
    key_file: str = Field(description="The private key, without a passphrase (RSA in PEM; ed25519 in base64 as 'milterd dkim keygen' writes it, or in PEM as openssl genpkey does), relative to this file.")


class DkimSigningSection(Section):
    enabled: bool = Field(False, description="DKIM-sign mail from trusted_networks and authenticated clients whose From domain has a key.")
    keys: list[DkimKey] = Field([], description="Keys as { domain = \"example.org\", selector = \"s2026\", key_file = \"dkim/example.org.s2026.key\" }; a domain with an RSA and an ed25519 key gets both signatures.")
    sign_trusted: bool = Field(True, description="Sign mail from clients in trusted_networks.")
    sign_authenticated: bool = Field(True, description="Sign mail from clients that authenticated with SMTP AUTH.")
    headers: list[str] = Field([], description="Header fields to sign; empty signs RFC 6376's recommended set. From is always signed once more than the message has it, whatever this list says, so that no From can be added without breaking the signature.")

    @field_validator("headers")
    @classmethod
    def _signable(cls, value: list[str]) -> list[str]:
        for header in value:
            # A name that is no field name (RFC 5322 §3.6.8) would fail every signature (DKIM_SIGN_ERROR): refused here.
            if not is_field_name(header.strip()):
                raise ValueError(f"{header!r} is not a header field name (printable ASCII, no colon or space)")
        names = [h.strip().lower() for h in value]
        if names and "from" not in names:
            raise ValueError("must include From (RFC 6376 requires it)")
        for name in names:
            # RFC 6376's "should not sign" fields, and those milterd itself adds or removes after signing.
            if (name in ("return-path", "received", "comments", "keywords", "bcc", "resent-bcc", "dkim-signature", "authentication-results")
                    or spam_verdict_field(name) or name.startswith(("x-virus-", "arc-"))):
                raise ValueError(f"{name!r} cannot be signed: it changes on the way")
        return value


class GreylistSection(Section):
    enabled: bool = Field(False, description="Greylist (client network, sender, recipient) triplets, with the state shared through [database].")
    mode: Literal["triplet", "score"] = Field("triplet", description="triplet: every unknown triplet is deferred, at RCPT (postgrey's way) or at DATA (see defer_at); score: only messages scoring at or above [actions] greylist are deferred, at end of data.")
    defer_at: Literal["rcpt", "data"] = Field("rcpt", description="Where mode = triplet answers 451 for an unknown triplet. With rcpt, each such recipient is refused at RCPT TO and the message's other recipients go on; Postfix counts every such reply as an error, so a message to many new recipients meets smtpd_soft_error_limit (replies delayed) and smtpd_hard_error_limit (the client is dropped with 421 4.7.0, after one error when Postfix is under stress), and the recipients after that are not seen, so their triplets wait for a later retry. With data (milter-greylist's delayed greylisting), every recipient is accepted and its triplet recorded, and the message is answered 451 once, at DATA; the price is that a message with one new triplet waits for all of its recipients, even those that passed before or are whitelisted.")
    delay: Duration = Field(300.0, description="How long a new triplet must wait before a retry is accepted.")
    retry_window: Duration = Field(2 * 86400.0, description="How long after the first attempt a retry still counts.")
    expire: Duration = Field(35 * 86400.0, description="How long a passed triplet is remembered (renewed on use).")
    auto_whitelist_after: int = Field(5, ge=0, description="Client networks with this many successful retries (a triplet passing after the delay for the first time, in a message then accepted as ham; at most one a message and one an hour) skip greylisting while in use; 0 is off.")
    netmask_v4: int = Field(24, ge=0, le=32, description="IPv4 clients are grouped by this prefix length.")
    netmask_v6: int = Field(64, ge=0, le=128, description="IPv6 clients are grouped by this prefix length.")
    whitelist_providers: bool = Field(True, description="Skip the sending pools of large providers (Google, Microsoft, Yahoo, Amazon SES, …; listed in milterd/greylist.py), whose retries come from other addresses.")
    whitelist_clients: list[str] = Field([], description="Client networks, verified names or name suffixes (\".example.com\") that are never greylisted; \"/regex/\" matches the name.")
    whitelist_senders: list[str] = Field([], description="Sender addresses, domains (\"@example.com\") or domains with subdomains (\".example.com\") that are never greylisted.")
    whitelist_recipients: list[str] = Field([], description="Recipient addresses or domains (same forms) that are never greylisted.")
    purge_interval: Duration = Field(3600.0, description="How often expired triplets are purged (by the supervisor, outside the workers).")
    on_error: Literal["accept", "tempfail"] = Field("accept", description="The greylist store cannot be read, or a message's attempts cannot be recorded (the database down, locked past [database] busy_timeout, out of connections). With accept (postgrey's and Rspamd's way), the recipients greylisting would judge are not greylisted and go on with GREYLIST_ERROR, and a worker whose writes were refused greylists nobody for a minute, since it could not remember the triplets it defers. With tempfail, they are answered 451 4.3.0 instead, that minute included: at RCPT TO (mode = triplet), once for the whole message at DATA (defer_at = data, or when the attempts of recipients accepted at RCPT cannot be recorded), or at end of data (mode = score, a message whose score greylists), so that no sender skips greylisting while the store is away. Clients and recipients greylisting skips (trusted, authenticated, DNSWL-listed, whitelisted in milter.conf) are not affected.")

    @field_validator("whitelist_clients", "whitelist_senders", "whitelist_recipients")
    @classmethod
    def _whitelist(cls, value: list[str], info: Any) -> list[str]:
        kind = str(info.field_name).removeprefix("whitelist_").rstrip("s")
        for entry in value:
            try:
                compile_pattern(kind, entry)
            except (OverflowError, RecursionError) as exc:  # re's other refusals than re.error
                raise ValueError(f"bad regular expression {entry[:40]!r}: {exc}") from None
        return value


class _ScannerSection(Section):
    @field_validator("address", check_fields=False)
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value


class ClamavSection(_ScannerSection):
    enabled: bool = Field(False, description="Scan messages with clamd.")
    address: str = Field("tcp:127.0.0.1:3310", description="clamd's socket: tcp:HOST:PORT or unix:/path.")
    timeout: Duration = Field(30.0, gt=0, description="How long sending a message to clamd may take in all, and then again its answer; slower is on_error.")
    max_size: Size = Field(25 * 1024 * 1024, ge=1024, description="Larger messages are not scanned whole: their first max_size bytes are (a virus there is found; clamd unable to judge them, on_error decides). Keep it at or under clamd's StreamMaxLength. At least 1K (0, or 25 meant as megabytes, had the headers alone scanned).")
    on_error: Literal["tempfail", "accept"] = Field("tempfail", description="clamd down, slow or in error: tempfail (451) or accept with a symbol.")
    action: Literal["reject", "quarantine", "discard"] = Field("reject", description="What to do with a virus.")
    headers: bool = Field(True, description="Add X-Virus-Scanned and X-Virus-Status to scanned mail (incoming ones are removed first).")
    scan_trusted: bool = Field(True, description="Also scan mail from trusted_networks and from clients that authenticated with SMTP AUTH (on, as clamav-milter scans all mail: a stolen password or a local web application must not send malware out unscanned).")


class SpamdSection(_ScannerSection):
    enabled: bool = Field(False, description="Scan messages with SpamAssassin's spamd.")
    address: str = Field("tcp:127.0.0.1:783", description="spamd's socket: tcp:HOST:PORT or unix:/path.")
    timeout: Duration = Field(60.0, gt=0, description="Longest wait for spamd.")
    max_size: Size = Field(512 * 1024, ge=1024, description="Larger messages are not sent (as spamc's default). At least 1K (0 had spamd never asked).")
    on_error: Literal["tempfail", "accept"] = Field("accept", description="spamd down or slow: accept with a symbol, or tempfail (451).")
    user: str = Field("", description="spamd user for per-user preferences; \"@recipient\" uses the first recipient; empty sends none.")
    scan_trusted: bool = Field(False, description="Also scan mail from trusted_networks and authenticated clients (scored only where [milter] skip_trusted/skip_authenticated allow).")
    after_clamav: bool = Field(False, description="Wait for clamd's verdict and skip spamd for a virus (saves spamd's time; end of data then takes clamd's time plus spamd's instead of the longer of the two).")
    cache_size: int = Field(1000, ge=0, description="spamd results kept per worker, by a digest of the message, its client, HELO and recipients, so that a retried message (after a 4xx) is not scanned again; 0 is off.")
    cache_ttl: Duration = Field(900.0, description="How long a kept spamd result is reused; a retry after this is scanned again (DNS-based rules may have changed); 0 is off.")


class LearnerSection(Section):
    """milterd's own classifier (BAYES_* symbols), taught with `milterd learn` and the quarantine."""

    enabled: bool = Field(True, description="Run milterd's own classifier (BAYES_* symbols), with its token counts in [database] shared by every worker and MX host; it stays silent until min_spam and min_ham messages are learned (milterd learn).")
    min_spam: int = Field(200, ge=1, description="Spam messages that must be learned before the classifier scores anything (SpamAssassin's bayes_min_spam_num).")
    min_ham: int = Field(200, ge=1, description="Ham messages that must be learned before the classifier scores anything (SpamAssassin's bayes_min_ham_num).")
    max_size: Size = Field(256 * 1024, ge=1024, le=512 * 1024, description="Bytes of a message the classifier reads (headers and the start of the body; at least 1K, at most 512K, what its tokenizer reads); the rest is not looked at.")
    cache_size: int = Field(200000, ge=0, description="Token counts each worker keeps in memory, so that most lookups never reach the database; 0 is off.")
    cache_ttl: Duration = Field(60.0, description="How long a worker reuses a cached count: what another worker or MX host learns is used within this time.")
    autolearn_spam: Threshold = Field(False, description="Learn as spam every message scoring at or above this (the classifier's own BAYES_* score and the CLAMAV_* and ATTACH_* points left out; with [spamd] on, only one spamd judged); false is off. Auto-learning drifts: keep it well above [actions] reject.")
    autolearn_ham: Threshold = Field(False, description="Learn as ham every accepted message scoring at or below this (the classifier's own BAYES_* score and the CLAMAV_* and ATTACH_* points left out; only one spamd judged); false is off. Keep it well below 0.")
    token_expiry: Duration = Field(180 * 86400.0, description="Tokens not learned for this long and seen in at most expiry_rare messages are deleted by the maintenance job.")
    expiry_rare: int = Field(1, ge=0, description="Tokens seen in at most this many learned messages count as rare for token_expiry.")
    max_tokens: int = Field(2000000, ge=0, description="Bound of the model: beyond this many tokens the least recently learned are deleted by the maintenance job; 0 is no bound.")
    max_learned: int = Field(1000000, ge=0, description="Bound of the learned-message digests, one kept per message learned (what makes learning a message twice count once, and lets milterd learn move or forget it): beyond this many, the maintenance job deletes those learned or moved longest ago, leaving the counts as they are; 0 is no bound. A message whose digest was dropped counts again if learned again, and can no longer be forgotten or moved to the other label.")
    expiry_interval: Duration = Field(86400.0, description="How often the supervisor runs the expiry job (tokens, and learned-message digests beyond max_learned); 0 is never.")
    skip_spamd_above: Threshold = Field(False, description="Tiers: with the classifier trained, a message whose score before spamd (the cheap checks and BAYES_*) is at or above this is not sent to spamd (SPAMD_SKIPPED_CONFIDENT in the log); false is off. spamd then runs after the classifier instead of beside it.")
    skip_spamd_below: Threshold = Field(False, description="Tiers: likewise, a message scoring at or below this before spamd is not sent to spamd; false is off. Measure the cost in detection first (bench/learner_eval.py, milterd rules whatif).")

    @model_validator(mode="after")
    def _bounds_in_order(self) -> "LearnerSection":
        # Crossed bounds take every message: autolearn_spam = -5 with autolearn_ham = 10 learned nearly all mail
        # as spam; skip_spamd_above = -100 with skip_spamd_below = 100 never asked spamd.
        for high, low in (("autolearn_spam", "autolearn_ham"), ("skip_spamd_above", "skip_spamd_below")):
            above, below = getattr(self, high), getattr(self, low)
            if above is not False and below is not False and above <= below:
                raise ValueError(f"{high} ({above:g}) must be above {low} ({below:g}): between them, every message is taken")
        return self


class QuarantineSection(Section):
    mode: Literal["discard", "hold"] = Field("discard", description="After storing: discard (sender sees success) or hold in Postfix's hold queue.")
    release_smtp: str = Field("unix:/var/spool/postfix/public/milterd-reinject", description="Postfix's re-injection smtpd (one without milters) where released mail, digests and notices go: \"unix:/path\" for an smtpd on a unix socket in master.cf (least privilege: only users the socket's directory lets in can reach it), or HOST:PORT for TCP (then restrict that smtpd to SMTP AUTH with release_user, or at least to loopback).")
    release_user: str = Field("", description="SMTP AUTH user for release_smtp; empty sends no AUTH.")
    release_password_file: str = Field("", description="File whose first line is the SMTP AUTH password of release_user (keep it readable only by the users who release); the password is never in milter.conf and never printed.")
    release_smtp_tls: Literal["may", "encrypt", "verify"] = Field("may", description="TLS towards a HOST:PORT release_smtp, as Postfix's smtp_tls_security_level: \"may\" starts TLS where the server offers STARTTLS (to a loopback address only when SMTP AUTH is to be sent), without verifying the certificate (anyone on the path can read released mail, or pose as the server); \"encrypt\" requires STARTTLS, without verifying the certificate (this stops those who only listen); \"verify\" requires STARTTLS and a certificate that verifies against the system's CAs (or release_smtp_tls_ca_file), for the host name of release_smtp. With \"encrypt\" or \"verify\", a server without STARTTLS or a certificate that does not verify makes the release, digest or notice fail, before anything is sent (the message stays in the quarantine); never a fallback to clear text. The SMTP AUTH password (release_user) goes to a host off loopback only with \"verify\": with \"may\" or \"encrypt\" such a release fails before anything is sent. A unix: release_smtp never leaves this host and takes only \"may\".")
    release_smtp_tls_ca_file: str = Field("", description="With release_smtp_tls = \"verify\": a PEM (or DER) file of the CA certificates that may sign release_smtp's certificate, used instead of the system's CAs (as Postfix's smtp_tls_CAfile); empty: the system's CAs. Refused with another release_smtp_tls.")

    @field_validator("release_smtp")
    @classmethod
    def _release_target(cls, value: str) -> str:
        parse_target(value)
        return value

    # "encrypt"/"verify" on a unix socket, or a CA file that would not be used: a protection that is not
    # there.  Checked field by field (the fields before each are validated first), so that the error
    # names its key as every other does.
    @field_validator("release_smtp_tls")
    @classmethod
    def _release_tls(cls, value: Literal["may", "encrypt", "verify"], info: ValidationInfo) -> str:
        if "release_smtp" in info.data:
            parse_target(info.data["release_smtp"], tls=value)
        return value

    @field_validator("release_smtp_tls_ca_file")
    @classmethod
    def _release_ca_file(cls, value: str, info: ValidationInfo) -> str:
        if "release_smtp" in info.data and "release_smtp_tls" in info.data:
            parse_target(info.data["release_smtp"], tls=info.data["release_smtp_tls"], ca_file=value)
        return value

    retention: Duration = Field(30 * 86400.0, description="Quarantined mail older than this is purged on a schedule; 0 keeps it.")
    postfix_config: str = Field("", description="Postfix's config_directory for 'postconf -c DIR' and 'postsuper -c DIR' when releasing held mail (-H, or -r once it was held for half of the shorter of maximal_queue_lifetime and bounce_queue_lifetime); empty: Postfix's default.")
    report_from: str = Field("", description="From: of digests and virus notices, and the digest's envelope sender (notices go from the null sender); empty: postmaster@ this host's name.")
    notify_virus_recipients: bool = Field(False, description="'quarantine digest' also tells each recipient of a message quarantined as a virus.")

    @field_validator("release_password_file", "postfix_config")
    @classmethod
    def _paths(cls, value: str) -> str:
        return _no_nul(value)  # a path with a NUL opens nothing: said at load, not a traceback at release or in doctor

    @field_validator("report_from")
    @classmethod
    def _report_from(cls, value: str) -> str:
        if value:
            report_sender(value)
        return value


class MetricsSection(Section):
    listen: str = Field("", description="HOST:PORT of the Prometheus endpoint (e.g. \"127.0.0.1:9899\"); empty is off.")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            parse_listen(value)
        return value


class Config(Section):
    """The whole of milter.conf; ``path`` is where it was read from (None: embedded defaults)."""

    milter: MilterSection = MilterSection()
    actions: ActionsSection = ActionsSection()
    database: DatabaseSection = DatabaseSection()
    dns: DnsSection = DnsSection()
    rules: RulesSection = RulesSection()
    checks: ChecksSection = ChecksSection()
    dkim_signing: DkimSigningSection = DkimSigningSection()
    greylist: GreylistSection = GreylistSection()
    clamav: ClamavSection = ClamavSection()
    spamd: SpamdSection = SpamdSection()
    quarantine: QuarantineSection = QuarantineSection()
    learner: LearnerSection = LearnerSection()
    metrics: MetricsSection = MetricsSection()
    path: Path | None = Field(None, exclude=True)

    @property
    def hostname(self) -> str:
        """This MTA host's name."""
        return self.milter.hostname or _fqdn()

    @property
    def directory(self) -> Path:
        """The directory the relative paths of this file are read against (the rules, key files, login map):
        this file's, or the working directory's for the embedded defaults."""
        return self.path.parent if self.path else Path.cwd()

    @property
    def rules_dir(self) -> Path | None:
        """The local rules directory, resolved against this file's directory; None when there is none.

        ConfigError when a directory other than the default ``rules`` does not exist, when
        it is not a directory, and when it is a symbolic link to nothing (even ``rules``).
        """
        if not self.rules.dir:
            return None
        given = self.directory / self.rules.dir
        try:
            dangling = given.is_symlink() and not given.exists()
            directory = resolved(given)
            exists = directory.exists()
            is_dir = directory.is_dir()
        except OSError as exc:  # a name too long, a loop of links (resolved: ELOOP)
            raise ConfigError(self.path or "milter.conf", "[rules] dir", f"unusable: {exc.strerror or exc}") from None
        except ValueError as exc:  # a NUL in the name
            raise ConfigError(self.path or "milter.conf", "[rules] dir", f"unusable: {exc}") from None
        if dangling:
            # Not "absent": the local rules were meant to be somewhere, and would silently not load.
            raise ConfigError(self.path or "milter.conf", "[rules] dir", f"{given} is a symbolic link to {directory}, which does not exist")
        if not exists and self.rules.dir != RulesSection.model_fields["dir"].default:
            raise ConfigError(self.path or "milter.conf", "[rules] dir", f"{directory} does not exist")
        if exists and not is_dir:
            raise ConfigError(self.path or "milter.conf", "[rules] dir", f"{directory} is not a directory")
        return directory

    @model_validator(mode="after")
    def _greylist_threshold_needs_greylisting(self) -> "Config":
        # Without the greylist check nothing would ever let the retry through.
        if self.actions.greylist is not False and not (self.greylist.enabled and self.greylist.mode == "score"):
            raise ValueError("[actions] greylist needs [greylist] enabled = true and mode = \"score\" (else a deferred message is deferred for ever)")
        return self

    def with_changes(self, changes: dict[str, Any]) -> "Config":
        """A copy with dotted keys changed (``{"actions.reject": 12}``, ``{"checks.dmarc.enabled": False}``), validated again."""
        data = self.model_dump(exclude={"path"})
        for dotted, value in changes.items():
            *sections, key = dotted.split(".")
            table: Any = data
            for section in sections:
                table = table.get(section) if isinstance(table, dict) else None
            if not sections or not isinstance(table, dict) or not key:
                raise ConfigError(self.path or "milter.conf", dotted, "unknown key")
            table[key] = value
        return _validate(data, self.path or Path("milter.conf"))


def find_config(explicit: str | os.PathLike[str] | None) -> Path | None:
    """The file to read: the one given, else ./milter.conf, else /etc/milterd/milter.conf, else None.

    A candidate that is there but no file one can read (a dangling link, a directory, one in a directory this
    user cannot search) is taken, so that reading it refuses it with the reason: skipped, milterd ran on the
    embedded defaults (no local_domains, other thresholds) while the administrator's file was meant.
    """
    if explicit is not None:
        return Path(explicit)
    for candidate in DEFAULT_PATHS:
        try:
            candidate.lstat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:  # EACCES on the way: read_toml names the reason
            pass
        return candidate
    return None


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate milter.conf (see :func:`find_config`); embedded defaults when there is none."""
    path = find_config(explicit)
    if path is None:
        return Config()
    return _validate(read_toml(path), path)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's content; ConfigError naming the file when it is unreadable or invalid."""
    try:
        data = read_regular(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise ConfigError(path, "", f"cannot read: {read_error(exc)}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        if data.startswith(b"\xef\xbb\xbf"):
            raise ConfigError(path, "", "not valid TOML: it starts with a byte order mark (save it as UTF-8 without BOM)") from None
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: not UTF-8 (byte {exc.start + 1})") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    except RecursionError:  # arrays or inline tables nested thousands deep
        raise ConfigError(path, "", "not valid TOML: arrays or tables nested too deep") from None


#: Keys naming a file relative to milter.conf's directory whose value is kept as
#: the absolute path (the others are joined to it where they are read): the
#: Public Suffix List's path is also the key its loaded copy is shared under.
_ANCHORED_PATHS = (("checks", "dmarc", "public_suffix_list"),)


def _anchor_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """*data* with the relative paths of :data:`_ANCHORED_PATHS` made absolute against *base* (a copy where one changed)."""
    for *sections, key in _ANCHORED_PATHS:
        table: Any = data
        for section in sections:
            table = table.get(section) if isinstance(table, dict) else None
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, str) and value and "\0" not in value and not Path(value).is_absolute():
            data = copy.deepcopy(data)
            target = data
            for section in sections:
                target = target[section]
            target[key] = str(base / value)
    return data


def _validate(data: dict[str, Any], path: Path) -> Config:
    data = _anchor_paths(data, path.resolve().parent)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(path, format_location(error["loc"]), _reason(error)) from None
    return config.model_copy(update={"path": path.resolve()})


def format_location(loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location as ``[section] key`` (or ``[section] key[2]``, ``[section] keys[0].key``), a
    check's as its table is written: ``[checks.helo] our_names``."""
    table = f"checks.{loc[1]}" if len(loc) >= 3 and loc[0] == "checks" and isinstance(loc[1], str) else None
    key = ""
    for part in loc[2:] if table else loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    if table:
        return f"[{table}] {key}"
    section, _, rest = key.partition(".")
    if rest and not section.endswith("]"):
        return f"[{section}] {rest}"
    return key


def _reason(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (misspelt?)"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")

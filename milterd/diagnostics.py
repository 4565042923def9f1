"""The diagnostics behind ``milterd doctor`` (commands/doctor.py): is this installation ready to take mail?

Each probe returns :class:`Finding` objects (``ok``, ``warn``, ``fail`` or
``skip``, and one line of detail): the configuration builds, every configured
backend answers (the database and its schema version, clamd PING/VERSION,
spamd PING, the resolver with the DNSBL test entry 127.0.0.2, each nameserver
alone where there are several, the smtpd
that quarantine releases go to), what the classifier's model holds (messages
learned, tokens, the oldest and newest learn; a warning while it is on but
abstains below ``min_spam``/``min_ham``), and Postfix's
settings read with ``postconf`` fit milterd's (the milter is in
``smtpd_milters``; ``milter_default_action`` is not ``accept`` while a scanner,
the log or greylisting fails closed; the milter timeouts are longer than the scanners'), master.cf's services
with their ``-o`` overrides (the smtpd behind ``release_smtp`` calls no milter; each receiving smtpd calls
milterd, fails closed, and reaches its unix socket from its chroot; ``mail_owner`` may connect to it), and each
DKIM signing key is published in DNS as it is; no private file (the SQLite
store, a DKIM key, the release password) is open to every local user.  The
Postfix rules are pure functions of the settings, tested without Postfix.
"""

from __future__ import annotations

import datetime as dt
import functools
import grp
import ipaddress
import os
import pwd
import re
import shutil
import smtplib
import socket
import stat
import subprocess
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Protocol, Sequence, TypeVar

from .addresses import as_judged
from .checks.dnslists import hide_access_key, listing_answers
from .config import Config, ConfigError, load_config
from .dkimsign import SigningKey, load_keys, public_record, record_matches, record_problems
from .dns import Answer, Resolver, dnsbl_name, probe_nameserver, server_name
from .endpoints import parse_socket, unix_path_too_long
from .files import resolved
from .learner.classifier import Counts, trained
from .message.policy import unreachable_thresholds
from .milter.supervisor import socket_id, store_owners
from .reinject import Target, parse_target, probe, probe_tls, smtp_error, unverified_auth
from .ruleset import origins
from .scanners.clamd import ClamdClient
from .scanners.spamd import SpamdClient
from .services import build
from .store import Store, unknown_schema, unversioned_tables
from .store.engine import relative_sqlite, sqlite_file
from .store.learner import LearnerStore, ModelSummary, model_may_exist
from .store.ownership import socket_directory_problems, store_file_problems
from .text import cut, has_password, redact, redact_url
from .units import parse_duration

Status = Literal["ok", "warn", "fail", "skip"]

#: The Postfix parameters doctor reads.
POSTFIX_PARAMETERS = (
    "smtpd_milters", "non_smtpd_milters", "milter_default_action", "milter_protocol",
    "milter_connect_timeout", "milter_command_timeout", "milter_content_timeout",
    "queue_directory",  # where a relative unix: milter address is
    "receive_override_options",  # no_milters: milters off
    "mail_owner",  # the account smtpd connects to a unix socket milter as
    "message_size_limit",  # above [clamav] max_size: the tail of larger mail is not scanned
)

#: The settings of a master.cf ``-o`` override that change how smtpd calls milterd.
MILTER_OVERRIDES = frozenset(POSTFIX_PARAMETERS) - {"queue_directory", "mail_owner"}


@dataclass(frozen=True)
class Finding:
    """One result: what was checked, how it went, one line of detail."""

    name: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def diagnose(config_path: str | None, postfix_config: str | None = None, use_postconf: bool = True) -> list[Finding]:
    """Every finding, in order: configuration, backends, Postfix."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return [Finding("configuration", "fail", str(exc))]
    findings: list[Finding] = []
    services = None
    try:
        services = build(config)
        findings.append(Finding("configuration", "ok", f"{config.path or 'embedded defaults'}: {len(services.checks)} checks enabled"))
        findings += [Finding("actions", "warn", problem) for problem in unreachable_thresholds(config.actions)]
        findings += rule_origins(services)
    except ConfigError as exc:
        findings.append(Finding("configuration", "fail", str(exc)))
    except Exception as exc:  # noqa: BLE001 - a check's setup may raise anything: doctor reports it and goes on
        findings.append(Finding("configuration", "fail", f"{exc.__class__.__name__}: {exc}"))
    findings += probe_database(config)
    findings += probe_connections(config)
    findings.append(probe_learner(config))
    findings += probe_scanners(config)
    findings += probe_dns(config, services)
    findings += probe_nameservers(config)
    findings += probe_dkim_keys(config)
    findings += probe_private_files(config)
    findings += probe_store_files(config)
    findings += probe_socket_directory(config)
    findings += probe_socket_exposure(config)
    findings += probe_serve_places(config)
    findings.append(probe_release_smtp(config))
    if use_postconf:
        settings, why = read_postconf(postfix_config)
        if settings is None:
            findings.append(Finding("postfix", "skip", why))
        else:
            master, why = read_master(postfix_config)
            if master is None:
                findings.append(Finding("postfix master.cf", "skip", f"{why}: its services not checked"))
            findings += judge_postfix(config, settings, services=master)
            findings += probe_socket_access(config, settings)
    if services is not None:
        services.close()

    # No finding prints the database password, whatever a driver's message quotes.
    return [Finding(f.name, f.status, redact(f.detail, config.database.url)) for f in findings]


def _guarded(name: str, probe: Callable[[], Finding]) -> Finding:
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 - a probe that breaks is a failed probe
        words = str(getattr(exc, "orig", None) or exc).splitlines()  # one line: not SQLAlchemy's statement and link after it
        return Finding(name, "fail", f"{exc.__class__.__name__}: {words[0] if words else ''}")


def probe_database(config: Config) -> list[Finding]:
    """The store answers, and its schema is the one this milterd needs."""
    def probe() -> Finding:
        url = _safe_url(config.database.url)
        file = sqlite_file(config.database.url)
        if file is not None:
            try:
                resolved(file)
            except OSError as exc:  # a loop of links: serve refuses it
                return Finding("database", "fail", f"{url}: {exc.strerror or exc}")
        relative = relative_sqlite(config.database.url)
        where = f" (relative to the working directory: {relative})" if relative is not None else ""
        if file is not None and not file.exists():
            # Connecting would create an empty file: report instead.
            status: Status = "warn" if config.database.auto_upgrade else "fail"
            return Finding("database", status, f"{url}{where}: no such file yet ({'serve will create it' if status == 'warn' else 'run milterd db upgrade'})")
        store = Store(config.database)
        try:
            store.ping()
            current, head = store.schema_version(), store.head_version()
            unknown = current is not None and not store.known_version(current)
            tables = store.has_tables() if unknown else None  # before close(): it would open a connection again
            unversioned = store.unversioned(current)
            missing = store.missing_privileges() if current == head else []
        finally:
            store.close()
        if missing:
            return Finding("database", "fail", f"{url}: schema at {current}, but this login may not write it: it lacks {'; '.join(missing)} "
                           "(serve refuses to start)")
        if current == head and relative is not None:
            return Finding("database", "warn", f"{url}: schema at {current}, relative to the working directory ({relative}): a command run "
                           "elsewhere (from cron, say) opens another store; write an absolute path")
        if current == head:
            return Finding("database", "ok", f"{url}: schema at {current}")
        if current is not None and unknown:
            return Finding("database", "fail", f"{url}: {unknown_schema(current, head, tables)}")
        if unversioned:
            return Finding("database", "fail", unversioned_tables(config.database.url))
        if config.database.auto_upgrade:
            return Finding("database", "warn", f"{url}: schema at {current or 'nothing'}, serve will upgrade it to {head} (auto_upgrade)")
        return Finding("database", "fail", f"{url}: schema at {current or 'nothing'}, this milterd needs {head}: run 'milterd db upgrade'")

    return [_guarded("database", probe)]


#: The share of the server's connections (less those reserved for superusers)
#: one milterd host may take at its peak; the rest is for administrators, the
#: CLI and other clients.  Several MX hosts on one database must fit together.
SAFE_CONNECTION_SHARE = 0.8


def connection_budget(pool_size: int, workers: int) -> tuple[int, int]:
    """Connections one host opens at most: (serving, during a reload).

    Each worker's pool holds up to *pool_size*; the supervisor and its
    maintenance process use one each; a reload briefly runs one worker more.
    """
    serving = pool_size * workers + 2
    return serving, serving + pool_size


def judge_connections(pool_size: int, workers: int, max_connections: int, reserved: int) -> Finding:
    """The connection budget against the server's ``max_connections`` (pure)."""
    serving, peak = connection_budget(pool_size, workers)
    usable = max(0, max_connections - reserved)
    detail = (f"up to {serving} connections ([database] pool_size {pool_size} × {workers} workers + 2), "
              f"{peak} during a reload; the server allows {usable} (max_connections {max_connections} − {reserved} reserved)")
    if peak > usable:
        return Finding("database connections", "fail", f"{detail}: lower pool_size or workers, or raise max_connections")
    if peak > usable * SAFE_CONNECTION_SHARE:
        return Finding("database connections", "warn", f"{detail}: more than {SAFE_CONNECTION_SHARE:.0%} of them; lower pool_size or raise max_connections")
    return Finding("database connections", "ok", detail)


def probe_connections(config: Config) -> list[Finding]:
    """On a database server: the pools' total against its ``max_connections`` (nothing for SQLite)."""
    if config.database.url.startswith("sqlite"):
        return []

    def probe() -> Finding:
        store = Store(config.database)
        try:
            limits = store.connection_limits()
        finally:
            store.close()
        if limits is None:
            return Finding("database connections", "skip", "not PostgreSQL: the server's limit is not known")
        return judge_connections(config.database.pool_size, config.milter.workers or os.cpu_count() or 1, *limits)

    return [_guarded("database connections", probe)]


def _safe_url(url: str) -> str:
    # Never print a password: postgresql+psycopg://user:secret@host/db → user:***@host

    return redact_url(url)


def probe_scanners(config: Config) -> list[Finding]:
    """clamd PING and VERSION, spamd PING, when enabled."""
    clamav, spamd = config.clamav, config.spamd
    return [
        _probe_scanner("clamd", "[clamav]", clamav.enabled, clamav.address, lambda: ClamdClient(clamav.address, timeout=min(clamav.timeout, 10.0)), ClamdClient.version),
        _probe_scanner("spamd", "[spamd]", spamd.enabled, spamd.address, lambda: SpamdClient(spamd.address, timeout=min(spamd.timeout, 10.0)), lambda _: "PONG"),
    ]


class _Pingable(Protocol):
    def ping(self) -> bool: ...


_Scanner = TypeVar("_Scanner", bound=_Pingable)


def _probe_scanner(name: str, section: str, enabled: bool, address: str, client: Callable[[], _Scanner], shown: Callable[[_Scanner], str]) -> Finding:
    """A scanner's PING, and what *shown* says of it after the PONG."""
    if not enabled:
        return Finding(name, "skip", f"{section} enabled = false")

    def probe() -> Finding:
        scanner = client()
        if not scanner.ping():
            return Finding(name, "fail", f"{address}: no PONG")
        return Finding(name, "ok", f"{address}: {shown(scanner)}")

    return _guarded(name, probe)


def judge_model(summary: ModelSummary, min_spam: int, min_ham: int, tiers: str = "") -> Finding:
    """The classifier's model against ``[learner] min_spam``/``min_ham`` (pure): ok when it scores, a warning while it
    abstains, and a warning when its counts are inflated (:attr:`ModelSummary.inflated`)."""
    when = ""
    if summary.oldest is not None and summary.newest is not None:
        oldest, newest = summary.oldest.astimezone(dt.timezone.utc), summary.newest.astimezone(dt.timezone.utc)
        when = f", learned {oldest:%Y-%m-%d %H:%M} to {newest:%Y-%m-%d %H:%M} UTC"
    detail = f"{summary.spam} spam and {summary.ham} ham learned, {summary.tokens} tokens{when}"
    if summary.inflated:
        return Finding("classifier", "warn", f"{detail}: more counted than the {summary.spam_messages} spam and {summary.ham_messages} ham"
                                             " recorded as learned: messages learned again were counted twice (a PostgreSQL defect fixed on 2026-12-02),"
                                             " which skews BAYES_*: empty the model with milterd learn --clear and learn again")
    if not trained(Counts(summary.spam, summary.ham), min_spam, min_ham):
        return Finding("classifier", "warn", f"{detail}: abstains (no BAYES_* symbol) until {min_spam} spam and {min_ham} ham are learned"
                                             f" ([learner] min_spam/min_ham): milterd learn --spam/--ham, or [learner] enabled = false")
    return Finding("classifier", "ok", f"{detail}: scores (BAYES_*){tiers}")


def probe_learner(config: Config) -> Finding:
    """What the classifier's model holds, when the classifier is on."""
    learner = config.learner
    if not learner.enabled:
        return Finding("classifier", "skip", "[learner] enabled = false")
    bounds = [f"at or {side} {float(bound):g}" for side, bound in (("above", learner.skip_spamd_above), ("below", learner.skip_spamd_below)) if bound is not False]
    tiers = f"; tiers on: spamd skipped for a score {' or '.join(bounds)} before spamd" if bounds else ""

    def probe() -> Finding:
        if not model_may_exist(config.database.url):  # inside the guard: a URL the driver refuses is a failed probe, not a traceback
            return Finding("classifier", "warn", f"{_safe_url(config.database.url)}: no store yet, no model: abstains until {learner.min_spam} spam"
                                                 f" and {learner.min_ham} ham are learned (milterd learn)")
        store = Store(config.database)
        try:
            if store.schema_version() != store.head_version():
                # An older schema (an empty file, a store before the classifier) has no model tables: the database
                # finding says what serve or db upgrade will do; a raw "no such table" here failed doctor as well.
                return Finding("classifier", "skip", f"{_safe_url(config.database.url)}: the store's schema is not current (see database): the model is read once it is")
            summary = LearnerStore(store.engine).summary()
        finally:
            store.close()
        return judge_model(summary, learner.min_spam, learner.min_ham, tiers)

    return _guarded("classifier", probe)


def probe_release_smtp(config: Config) -> Finding:
    """The milter-less smtpd that quarantine releases go to answers with a 220 banner (a warning if not).

    With ``release_smtp_tls`` = "encrypt" or "verify" (a TCP target), it must also start TLS as a release
    would (with "verify", with a certificate that verifies for release_smtp's host); with "may", a target
    off loopback is a warning: released mail would cross the network without verified TLS.  With
    ``release_user`` set, a target off loopback without "verify" fails: no release would send the password.
    """
    name = "quarantine release_smtp"
    section = config.quarantine
    try:
        target = parse_target(section.release_smtp, tls=section.release_smtp_tls, ca_file=section.release_smtp_tls_ca_file)
        if section.release_user and not target.local and target.tls != "verify":
            return Finding(name, "fail", f"{unverified_auth(target)}: 'milterd quarantine release' would fail")
        if not target.path and target.tls != "may":
            session = probe_tls(target, config.hostname, timeout=5)
            return Finding(name, "ok", f"{section.release_smtp}: {session} (release_smtp_tls = \"{target.tls}\")")
        banner = probe(target, timeout=5)
    except (OSError, ValueError, smtplib.SMTPException) as exc:
        why = smtp_error(exc) if isinstance(exc, smtplib.SMTPException) else exc
        return Finding(name, "warn", f"{section.release_smtp}: {why}: 'milterd quarantine release' would fail")
    if not banner.startswith("220"):
        return Finding(name, "warn", f"{section.release_smtp}: unexpected banner {banner[:60]!r}")
    if not target.local:
        return Finding(
            name, "warn",
            f"{section.release_smtp}: {banner[:60]}; with release_smtp_tls = \"may\" released mail crosses the network "
            f"without verified TLS (in clear where it offers no STARTTLS): set release_smtp_tls = \"verify\"",
        )
    return Finding(name, "ok", f"{section.release_smtp}: {banner[:60]}")


def rule_origins(services: Any) -> list[Finding]:
    """Where each DNS list, custom rule and weight in effect came from: shipped or local rule files."""
    findings = []
    weights: dict[Path, list[str]] = defaultdict(list)
    for origin in origins(services.ruleset):
        if origin.kind == "weight":
            weights[origin.file].append(f"{origin.name}={origin.detail}")
        elif origin.detail == "disabled":
            findings.append(Finding(f"rules {origin.kind} {origin.name}", "ok", f"disabled by {origin.file}"))
        else:
            findings.append(Finding(f"rules {origin.kind} {origin.name}", "ok", f"{origin.detail} from {origin.file} ({origin.layer})"))
    for path, names in weights.items():
        findings.append(Finding(f"rules weights {path.name}", "ok", f"{len(names)} from {path}: {' '.join(names)}"))
    return findings


def dnsbl_zones(services: Any) -> list[str]:
    """The DNSBL zones declared in rules/ (``[[dnsbl]] zone = …``)."""
    return [zone for zone, _refused in dnsbl_lists(services)]


def dnsbl_lists(services: Any) -> list[tuple[str, list[str]]]:
    """Each DNSBL zone declared in rules/ with its ``refused`` answer patterns."""
    if services is None:
        return []
    lists = []
    for source in services.ruleset.section("dnsbl"):
        entries = source.value if isinstance(source.value, list) else [source.value]
        for entry in entries:
            if isinstance(entry, dict) and entry.get("zone"):
                refused = entry.get("refused", [])
                lists.append((str(entry["zone"]).rstrip("."), [str(p) for p in refused] if isinstance(refused, list) else []))
    return lists


def judge_dnsbl(zone: str, name: str, answer: Answer, refused: Sequence[str] = (), control: Answer | None = None) -> Finding:
    """The answer for a zone's test entry, read as the check reads it (pure): only answers in
    127.0.0.0/8 that are not a *refused* code mean "listed".  *control* is the answer for 127.0.0.1,
    which RFC 5782 §5 says a list must never list: one that does lists every address."""
    label = f"dns {zone}"
    if answer.failed:
        return Finding(label, "fail", f"{name}: the resolver did not answer ({answer.error or 'error'})")
    if control is not None and not control.failed and isinstance(listing_answers(control, refused), tuple):
        return Finding(label, "fail", f"{control.name} → {', '.join(control.records)}: the list answers for 127.0.0.1, which a list never lists "
                                      "(RFC 5782): it lists every address (a list shut down, or a wildcard), and every client would count as listed")
    listed = listing_answers(answer, refused)
    records = ", ".join(answer.records)
    if isinstance(listed, tuple):
        return Finding(label, "ok", f"{name} → {records}")
    if listed == "refused":
        return Finding(label, "warn", f"{name} → {records}: a refused code (refused = {list(refused)}): the list refuses this resolver"
                                      " (a public resolver, over quota, a key needed) and every client counts as not listed (DNSBL_REFUSED)")
    if answer.ok:
        return Finding(label, "warn", f"{name} → {records}: not in 127.0.0.0/8, which milterd ignores (a resolver rewriting NXDOMAIN,"
                                      " or a wildcard zone): every client counts as not listed")
    return Finding(label, "warn", f"{name}: {answer.status}: the zone does not list its test entry (wrong zone name, or the list refuses this resolver?)")


def probe_dns(config: Config, services: Any) -> list[Finding]:
    """Each DNSBL zone must list its test entry 127.0.0.2, and not 127.0.0.1 (RFC 5782); the resolver must answer."""
    if not config.checks.dnsbl.enabled:  # a site that switched the lists off (its resolver refused by them) is not warned per zone
        return [Finding("dns", "skip", "[checks.dnsbl] enabled = false")]
    lists = dnsbl_lists(services)
    if not lists:
        return [Finding("dns", "skip", "no DNSBL zones in rules/")]

    resolver = Resolver(config.dns)
    findings = []
    try:
        for zone, refused in lists:
            name = dnsbl_name("127.0.0.2", zone) or ""
            answer = resolver.query(name, "A")
            control = None if answer.failed else resolver.query(dnsbl_name("127.0.0.1", zone) or "", "A")  # no second wait for a dead resolver
            found = judge_dnsbl(zone, name, answer, refused, control)
            findings.append(Finding(hide_access_key(found.name, zone), found.status, hide_access_key(found.detail, zone)))
    finally:
        resolver.close()
    return findings


def probe_nameservers(config: Config) -> list[Finding]:
    """Each nameserver, asked alone, where there are several: milterd asks the next one when one is down,
    so the DNS lists' probe answers, and only this shows that each stage now waits for the dead one."""
    resolver = Resolver(config.dns)
    try:
        servers = resolver.udp_nameservers
    finally:
        resolver.close()
    if len(servers) < 2:
        return []
    findings = []
    for server in servers:
        state = probe_nameserver(server, config.dns.timeout)
        label = f"dns nameserver {server_name(server)}"
        if state == "answers":
            findings.append(Finding(label, "ok", "answers"))
        else:
            findings.append(Finding(label, "fail", f"{state} (within {config.dns.timeout:g}s): while it is down, a DNS stage whose "
                                    "questions it gets first waits for it before asking the next nameserver"))
    return findings


def judge_dkim_key(key: SigningKey, answer: Answer) -> Finding:
    """Whether the TXT record published for *key* carries its public half."""
    name = f"{key.selector}._domainkey.{key.domain}"
    label = f"dkim {name}"
    if answer.failed:
        return Finding(label, "fail", f"the resolver did not answer ({answer.error or 'error'})")
    if not answer.ok:
        return Finding(label, "fail", f"not published ({answer.status}): publish TXT \"{public_record(key.algorithm, key.private)}\"")
    if len(answer.records) > 1:
        # RFC 6376 §3.6.2.2: a selector's TXT records must be unique; with several, the result is undefined
        # (dkimpy reads the first one DNS returns, in an order that changes), so one matching is not enough.
        return Finding(label, "fail", f"{len(answer.records)} TXT records where verifiers take one (RFC 6376 §3.6.2.2): publish only "
                                      f"TXT \"{public_record(key.algorithm, key.private)}\"")
    matching = [text for text in answer.records if record_matches(key.algorithm, key.private, text)]
    if any(not record_problems(key.algorithm, text) for text in matching):
        return Finding(label, "ok", f"the published {key.algorithm} key matches the private key")
    if matching:
        problems = "; ".join(record_problems(key.algorithm, matching[0]))
        return Finding(label, "fail", f"the published key is this private key's, but verifiers will not use the record: {problems}: "
                                      f"publish TXT \"{public_record(key.algorithm, key.private)}\"")
    return Finding(label, "fail", f"the published key is not this private key's: publish TXT \"{public_record(key.algorithm, key.private)}\"")


def probe_dkim_keys(config: Config) -> list[Finding]:
    """Each signing key of [dkim_signing] must be published in DNS as it is."""
    if not config.dkim_signing.enabled or not config.dkim_signing.keys:
        return [Finding("dkim", "skip", "[dkim_signing] enabled = false or no keys")]
    try:
        keys = load_keys(config.dkim_signing, config.path)
    except ConfigError as exc:
        return [Finding("dkim", "fail", str(exc))]
    resolver = Resolver(config.dns)

    def published(key: SigningKey) -> Finding:
        return judge_dkim_key(key, resolver.txt(f"{key.selector}._domainkey.{key.domain}"))

    try:
        return [_guarded(f"dkim {key.selector}._domainkey.{key.domain}", functools.partial(published, key)) for key in keys]
    finally:
        resolver.close()


def private_files(config: Config) -> list[tuple[str, Path]]:
    """The files whose content is private, each with what it is: the DKIM private keys, the ARC sealing key, the
    release password file, milter.conf when its database URL holds a password.  Not the SQLite store's, which
    ``serve`` refuses unless private (:func:`probe_store_files`)."""
    files: list[tuple[str, Path]] = []
    if config.path is not None and has_password(config.database.url):
        files.append(("the configuration, which holds [database] url's password,", config.path))
    base = config.directory  # as load_keys and the ARC sealer read them
    if config.dkim_signing.enabled:
        files += [(f"the DKIM private key of {key.selector}._domainkey.{key.domain}", base / key.key_file) for key in config.dkim_signing.keys]
    arc = config.checks.arc
    if arc.enabled and arc.seal and arc.seal_key_file:
        files.append((f"the ARC sealing key of {arc.seal_selector}._domainkey.{arc.seal_domain}", base / arc.seal_key_file))
    if config.quarantine.release_password_file:
        files.append(("[quarantine] release_password_file", Path(config.quarantine.release_password_file)))
    return files


def judge_file_mode(what: str, path: Path, mode: int) -> Finding | None:
    """A warning when *path* (holding *what*) is readable or writable by every local user (pure); else None."""
    if not mode & 0o006:
        return None
    return Finding(f"permissions {path}", "warn", f"{what} is mode {stat.S_IMODE(mode):04o}, open to every local user: chmod o-rw {path}")


def probe_serve_places(config: Config) -> list[Finding]:
    """A failure for each place ``serve`` refuses to start with that doctor would not otherwise see: the spool
    directory missing, a unix socket path too long or taken by another kind of file, its owner or group unknown
    (read for a unix socket only), a SQLite store below a file that is no directory."""
    findings = []
    store = sqlite_file(config.database.url)
    if store is not None:
        ancestor = Path(os.path.abspath(store)).parent
        while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not os.path.isdir(ancestor):  # the database finding said "serve will create it"
            findings.append(Finding("[database] url", "fail", f"{ancestor} is not a directory (serve refuses to start)"))
    spool = config.milter.spool_dir
    if spool and not os.path.isdir(spool):
        findings.append(Finding("[milter] spool_dir", "fail", f"{spool}: no such directory (serve refuses to start)"))
    spec = parse_socket(config.milter.socket)
    if spec.family == "unix":
        too_long = unix_path_too_long(spec.path)
        if too_long:
            findings.append(Finding("[milter] socket", "fail", too_long))
        elif os.path.lexists(spec.path) and not stat.S_ISSOCK(os.lstat(spec.path).st_mode):
            findings.append(Finding("[milter] socket", "fail", f"{spec.path} exists and is not a socket (serve refuses to start)"))
        for key in ("socket_owner", "socket_group"):  # read for a unix socket only, as serve does
            try:
                socket_id(config, key)
            except ConfigError as error:
                findings.append(Finding(error.key, "fail", f"{error.reason} (serve refuses to start)"))
    return findings


def probe_store_files(config: Config) -> list[Finding]:
    """A failure for each of the SQLite store's files, and its directory, that ``serve`` started by this user
    refuses (:func:`~milterd.milter.supervisor.store_owners`): another account's, open to others, in a
    directory others may write."""
    store = sqlite_file(config.database.url)
    if store is None:
        return []
    try:
        owners = store_owners(config, handed_over=False)
    except ConfigError:  # an unknown user or group: the configuration's finding says so
        return []
    return [Finding("[database] url", "fail", f"{problem} (serve refuses to start)") for problem in store_file_problems(store, owners)]


def probe_socket_exposure(config: Config) -> list[Finding]:
    """A warning when clients other than Postfix may open ``[milter] socket``: a TCP socket (every local user, and
    every host that reaches a non-loopback address), or a unix socket whose socket_mode lets others write it.
    libmilter reads a macro packet that names a macro without a value past its end (``smfi_getsymval`` steps two
    entries at a time): one such packet crashes a worker, and the sessions it serves get milter_default_action."""
    try:
        spec = parse_socket(config.milter.socket)
    except ConfigError:  # the configuration's own finding says why
        return []
    if spec.family == "unix":
        if not int(config.milter.socket_mode, 8) & 0o002:
            return []
        who = f"every local user (socket_mode {config.milter.socket_mode})"
    else:
        host = spec.host.strip("[]")
        try:
            loopback = as_judged(ipaddress.ip_address(host)).is_loopback
        except ValueError:
            loopback = host == "localhost"
        reaches = f"port {spec.port} of this host" if host in ("", "0.0.0.0", "::", "*") else host
        who = "every local user" if loopback else f"every local user and every host that reaches {reaches}"
    return [Finding("[milter] socket", "warn", f"{who} may open {config.milter.socket}: a client other than Postfix can crash a worker with one "
                                               "malformed macro packet (a libmilter defect; the supervisor starts another, the sessions that worker "
                                               "served get milter_default_action). On one host, prefer a unix socket only Postfix may open "
                                               '(socket_mode = "0660", socket_group = "postfix")')]


def probe_socket_directory(config: Config) -> list[Finding]:
    """A failure for each directory of ``[milter] socket`` (a unix socket) that lets another account replace the
    socket with its own, which ``serve`` refuses (:func:`~milterd.store.ownership.socket_directory_problems`)."""
    try:
        spec = parse_socket(config.milter.socket)
        owners = store_owners(config, handed_over=False)
    except ConfigError:  # the configuration's own finding says why
        return []
    if spec.family != "unix":
        return []
    return [Finding("[milter] socket", "fail", f"{problem} (serve refuses to start)") for problem in socket_directory_problems(Path(spec.path), owners)]


def probe_private_files(config: Config) -> list[Finding]:
    """A warning for each private file (:func:`private_files`) that other local users can read or write."""
    findings = []
    for what, path in private_files(config):
        try:
            mode = path.stat().st_mode
        except (OSError, ValueError):  # missing or unreadable (ValueError: a NUL in a key file's path): other probes say so
            continue
        finding = judge_file_mode(what, path, mode)
        if finding is not None:
            findings.append(finding)
    return findings


def _postconf(postfix_config: str | None, *args: str) -> tuple[str | None, str]:
    """What ``postconf [-c DIR] ARGS`` prints, or None and why not."""
    postconf = shutil.which("postconf") or ("/usr/sbin/postconf" if Path("/usr/sbin/postconf").exists() else None)
    if postconf is None:
        return None, "postconf not found: Postfix's settings not checked"
    command = [postconf, *args[:1]] + (["-c", postfix_config] if postfix_config else []) + list(args[1:])
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"postconf failed: {exc}"
    if result.returncode != 0:
        return None, f"postconf failed: {result.stderr.strip()[:200]}"
    return result.stdout, ""


def read_postconf(postfix_config: str | None) -> tuple[dict[str, str] | None, str]:
    """Postfix's settings from ``postconf [-c DIR]``, or None and why not."""
    # -x: values as Postfix uses them ($name expanded: "smtpd_milters = $milterd_milter" named no milter).
    text, why = _postconf(postfix_config, "-x", *POSTFIX_PARAMETERS)
    return (None, why) if text is None else (parse_postconf(text), "")


@dataclass(frozen=True)
class MasterService:
    """One service of master.cf (``postconf -M``) with its ``-o`` overrides (``postconf -P``)."""

    name: str  # 127.0.0.1:25, smtp, milterd-reinject…
    type: str  # inet, unix, pass…
    private: str
    chroot: str
    command: str
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}/{self.type}"

    @property
    def chrooted(self) -> bool:
        """Chroot column y: "-" is Postfix's built-in default, n (Debian's master.cf says y or n outright)."""
        return self.chroot == "y"

    @property
    def receives(self) -> bool:
        """An smtpd that takes mail from the network (inet, or pass behind postscreen)."""
        return self.command == "smtpd" and self.type in ("inet", "pass")

    def effective(self, settings: dict[str, str]) -> dict[str, str]:
        """main.cf's *settings* with this service's ``-o`` overrides; ``receive_override_options = no_milters``
        empties the milters."""
        merged = {**settings, **self.overrides}
        if "no_milters" in re.split(r"[,\s]+", merged.get("receive_override_options", "")):
            merged["smtpd_milters"] = merged["non_smtpd_milters"] = ""
        return merged

    def milter_overrides(self) -> str:
        """This service's ``-o`` overrides that change how it calls milters, as master.cf has them."""
        return " ".join(f"-o {name}={value}" for name, value in self.overrides.items() if name in MILTER_OVERRIDES)


def read_master(postfix_config: str | None) -> tuple[list[MasterService] | None, str]:
    """master.cf's services (``postconf -M``) with their ``-o`` overrides (``postconf -Px``: expanded), or None and why not."""
    services, why = _postconf(postfix_config, "-M")
    if services is None:
        return None, why
    overrides, why = _postconf(postfix_config, "-Px")
    if overrides is None:
        return None, why
    return parse_master(services, overrides), ""


def parse_master(services: str, overrides: str) -> list[MasterService]:
    """``postconf -M`` lines and ``postconf -P`` lines (``NAME/TYPE/PARAMETER = VALUE``) as services."""
    options: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for line in overrides.splitlines():
        key, sep, value = line.partition("=")
        parts = key.strip().rsplit("/", 2)
        if sep and len(parts) == 3:
            options[(parts[0], parts[1])][parts[2]] = value.strip()
    found = []
    for line in services.splitlines():
        words = line.split()
        if len(words) >= 8 and not words[0].startswith("#"):
            name, kind, private, _, chroot, _, _, command = words[:8]
            found.append(MasterService(name, kind, private, chroot, command, dict(options.get((name, kind), {}))))
    return found


def parse_postconf(text: str) -> dict[str, str]:
    """``name = value`` lines (postconf's output) as a dictionary."""
    settings = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            settings[name.strip()] = value.strip()
    return settings


def milter_entries(value: str) -> list[str]:
    """The milter addresses of an ``smtpd_milters`` value (``{ inet:… , default_action=accept }`` included)."""
    return [address for address, _ in milter_settings(value)]


def milter_settings(value: str) -> list[tuple[str, dict[str, str]]]:
    """Each milter of an ``smtpd_milters`` value with its own settings, those of a ``{ inet:…, default_action=accept,
    command_timeout=5s }`` entry (Postfix 3.0), which Postfix uses for that milter instead of ``milter_*``."""
    entries, depth, current = [], 0, ""
    for char in value:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if depth == 0 and char in ", \t\n":
            if current.strip():
                entries.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        entries.append(current.strip())
    settings = []
    for entry in entries:
        address = (entry.strip("{} \t").split(",")[0].split() or [""])[0]
        words = re.split(r"[,\s]+", re.sub(r"\s*=\s*", "=", entry.strip("{} \t")))
        settings.append((address, dict(word.split("=", 1) for word in words if "=" in word)))
    return settings


#: The names of this host's loopback address a Postfix setting or milterd's socket may use.
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def same_socket(milterd_socket: str, postfix_entry: str, queue_directory: str = "/var/spool/postfix", chroot: bool = False) -> bool:
    """Whether Postfix's *postfix_entry* reaches milterd's ``[milter] socket``; a relative
    ``unix:`` path is relative to Postfix's *queue_directory*, chrooted or not; with *chroot*
    (an smtpd chrooted there) an absolute one is too."""
    try:
        ours = parse_socket(milterd_socket)
    except ValueError:
        return False
    kind, _, rest = postfix_entry.partition(":")
    if ours.family == "unix":
        if kind not in ("unix", "local"):
            return False
        path = rest if rest.startswith("/") and not chroot else f"{queue_directory.rstrip('/')}/{rest.lstrip('/')}"  # relative: to the chroot
        return Path(path).resolve() == Path(ours.path).resolve()
    try:
        theirs = parse_socket(postfix_entry)
    except ValueError:
        return False
    if theirs.port != ours.port:
        return False
    wildcard = {"0.0.0.0", "::", ""}
    return theirs.host == ours.host or ours.host in wildcard or (theirs.host in _LOOPBACK and ours.host in _LOOPBACK)


def judge_postfix(config: Config, settings: dict[str, str], queue_directory: str = "/var/spool/postfix",
                  services: Sequence[MasterService] | None = None) -> list[Finding]:
    """Postfix's settings against milterd's configuration: the risky combinations (*queue_directory*:
    Postfix's, unless *settings* has its ``queue_directory``).  With master.cf's *services*, also the smtpd
    that quarantine releases go to (:func:`judge_release_service`) and each smtpd that receives mail with its
    ``-o`` overrides: a finding of its own where they change one (a failure for ``milter_default_action``
    accept or quarantine), a failure where it runs chrooted and cannot reach milterd's unix socket."""
    queue_directory = settings.get("queue_directory") or queue_directory
    findings = _judge_milters(config, settings, queue_directory)
    if services is None:
        return findings
    release, service = judge_release_service(config, settings, services, queue_directory)
    seen = {f.name: (f.status, f.detail) for f in findings}
    calling, not_calling = [], []
    for svc in services:
        if not svc.receives or svc is service:
            continue
        effective = svc.effective(settings)
        chroot = judge_chroot(config, svc, effective, queue_directory)
        own = [f for f in _judge_milters(config, effective, queue_directory, svc.chrooted) if f.name != "postfix smtpd_milters" or chroot is None]
        # Its milter_* settings matter where it calls milterd (or tries to, chrooted); milters switched off there
        # on purpose (-o smtpd_milters=…, receive_override_options: amavis's return port) are no finding.
        deliberate = ("smtpd_milters" in svc.overrides or "receive_override_options" in svc.overrides) and _loopback_only(svc)
        calls = chroot is not None or next(f for f in own if f.name == "postfix smtpd_milters").status == "ok"
        if chroot is not None:
            findings.append(chroot)
        elif calls:
            calling.append(svc)
            reinjection = _reinjection_problem(config, settings, services, svc)
            if reinjection is not None:
                findings.append(reinjection)
        elif not deliberate:
            not_calling.append(svc)
        for f in own:
            if f.status in ("ok", "skip") or seen.get(f.name) == (f.status, f.detail):
                continue
            parameter = f.name.removeprefix("postfix ")
            if (parameter != "smtpd_milters" and not calls) or (parameter == "smtpd_milters" and deliberate):
                continue
            status: Status = "fail" if parameter == "milter_default_action" else f.status
            detail = f.detail if parameter != "smtpd_milters" else f"{config.milter.socket} is not in its smtpd_milters ({effective.get('smtpd_milters') or 'empty'}): mail it receives is not scanned"
            findings.append(Finding(f"postfix {svc.label} {parameter}", status, f"master.cf {svc.label} {svc.milter_overrides() or '(main.cf)'}: {detail}"))
    if calling and seen.get("postfix smtpd_milters", ("",))[0] == "warn":
        # main.cf leaves milterd out, but master.cf sets it per service: main.cf's value counts only for the others.
        index = next(i for i, f in enumerate(findings) if f.name == "postfix smtpd_milters")
        names = ", ".join(svc.label for svc in calling)
        findings[index] = (Finding("postfix smtpd_milters", "warn", f"{config.milter.socket} is not in main.cf's smtpd_milters, which "
                                   f"{', '.join(svc.label for svc in not_calling)} use: mail they receive is not scanned (master.cf sets it for {names})")
                           if not_calling else Finding("postfix smtpd_milters", "ok", f"master.cf sets {config.milter.socket} for {names}"))
    findings.append(release)
    return findings


def _reinjection_problem(config: Config, settings: dict[str, str], services: Sequence[MasterService], svc: MasterService) -> Finding | None:
    """A failure when *svc*, an smtpd that calls milterd, is where a content filter gives mail back (``-o
    content_filter=`` while main.cf or another smtpd sends mail to one): each message is then judged twice, the
    second time from the filter's address, trusted as a rule, so the first verdict's headers are removed as forged
    and outside mail is DKIM-signed as local.  None otherwise."""
    if "content_filter" not in svc.overrides or svc.overrides["content_filter"].strip() or not _loopback_only(svc):
        return None  # a filter's return port listens on loopback: submission's -o content_filter= skips the filter
    filters = {value for value in [settings.get("content_filter", "")] + [other.effective(settings).get("content_filter", "")
               for other in services if other.receives and other is not svc] if value.strip()}
    if not filters:
        return None
    return Finding(f"postfix {svc.label} content_filter", "fail",
                   f"master.cf {svc.label} takes mail back from the content filter ({', '.join(sorted(filters))}: -o content_filter=) "
                   f"and calls {config.milter.socket} again: each message is judged twice, the second time from the filter's "
                   "address (trusted: the first verdict's X-Spam-* and Authentication-Results removed as forged, outside mail "
                   f"DKIM-signed as local); add -o smtpd_milters= -o non_smtpd_milters= to {svc.label}")


#: The Postfix parameters milterd's doctor reads.
MILTER_PARAMETERS = (
    "smtpd_milters", "non_smtpd_milters", "milter_protocol", "milter_default_action",
    "milter_connect_timeout", "milter_command_timeout", "milter_content_timeout",
)
#: What ``milter_default_action`` may be (Postfix's milter(8)); anything else is a configuration error to it.
MILTER_DEFAULT_ACTIONS = frozenset({"accept", "reject", "tempfail", "quarantine"})


def _commented(settings: dict[str, str]) -> list[Finding]:
    """A failure for each milter parameter whose value holds a ``#``: main.cf has no end-of-line comments, so a
    comment pasted after a value is part of it (``non_smtpd_milters = $smtpd_milters # optional`` made Postfix's
    cleanup answer 4.3.5 "Server configuration problem" for every message submitted with sendmail(1))."""
    return [
        Finding(f"postfix {name} comment", "fail", f"{cut(settings[name], 80)!r} holds a '#': main.cf has no end-of-line comments, "
                "so Postfix reads the comment as part of the value; put it on a line of its own")
        for name in MILTER_PARAMETERS if "#" in settings.get(name, "")
    ]


def _judge_milters(config: Config, settings: dict[str, str], queue_directory: str, chroot: bool = False) -> list[Finding]:
    """:func:`judge_postfix` for one set of settings (main.cf's, or one service's with its overrides)."""
    findings = _commented(settings)
    overridden: dict[str, str] = {}
    milters = milter_settings(settings.get("smtpd_milters", ""))
    ours = [own for entry, own in milters if same_socket(config.milter.socket, entry, queue_directory, chroot)]
    if ours:
        findings.append(Finding("postfix smtpd_milters", "ok", f"includes {config.milter.socket}"))
        # milterd's own { …, default_action=… } entry overrides the milter_* parameters for it.
        overridden = {f"milter_{name}": value for name, value in ours[0].items() if name in ("default_action", "content_timeout", "command_timeout", "protocol")}
        settings = {**settings, **overridden}
    else:
        findings.append(Finding("postfix smtpd_milters", "warn", f"{config.milter.socket} is not in smtpd_milters ({settings.get('smtpd_milters') or 'empty'}): Postfix does not call milterd"))
    fails_closed = [name for name, section in (("clamav", config.clamav), ("spamd", config.spamd)) if section.enabled and section.on_error == "tempfail"]
    if config.database.on_error == "tempfail":
        fails_closed.append("database")
    if config.greylist.enabled and config.greylist.on_error == "tempfail":
        fails_closed.append("greylist")
    if config.milter.on_check_error == "tempfail":
        fails_closed.append("a check that raises (on_check_error)")
    default_action = settings.get("milter_default_action", "tempfail")
    if default_action == "accept" and fails_closed:
        findings.append(Finding("postfix milter_default_action", "warn", f"accept while {', '.join(fails_closed)} fail closed (on_error = tempfail): when milterd itself is down, mail passes unscanned and unlogged"))
    elif default_action in ("accept", "quarantine"):
        findings.append(Finding("postfix milter_default_action", "warn", f"{default_action}: when milterd is down, mail passes unscanned and unlogged"))
    elif default_action not in MILTER_DEFAULT_ACTIONS:
        if "#" not in default_action:  # said above
            findings.append(Finding("postfix milter_default_action", "fail", f"{cut(default_action, 80)!r} is none of Postfix's ({', '.join(sorted(MILTER_DEFAULT_ACTIONS))}): "
                                    "when milterd is down, Postfix logs a warning and answers 451 4.3.5 Server configuration problem"))
    else:
        findings.append(Finding("postfix milter_default_action", "ok", default_action))
    needed = scanner_budget(config)
    content = _seconds(settings.get("milter_content_timeout", "300s"))
    if content is not None and needed > 0 and content <= needed:
        findings.append(Finding("postfix milter_content_timeout", "warn", f"{content:g}s is not longer than the scanners' and DNS timeouts ({needed:g}s): Postfix gives up before milterd answers"))
    elif content is not None:
        findings.append(Finding("postfix milter_content_timeout", "ok", f"{content:g}s (scanners and DNS need up to {needed:g}s)"))
    command = _seconds(settings.get("milter_command_timeout", "30s"))
    stage_needs = command_budget(config)
    if command is not None and command <= stage_needs:
        findings.append(Finding("postfix milter_command_timeout", "warn",
                                f"{command:g}s is not longer than one SMTP command may take ({stage_needs:g}s: {command_budget_why(config)}): "
                                "Postfix gives up on milterd and applies milter_default_action"))
    protocol = settings.get("milter_protocol", "6")
    if protocol and protocol != "6":
        findings.append(Finding("postfix milter_protocol", "warn", f"{protocol}: milterd expects 6"))
    size = judge_message_size(config, settings.get("message_size_limit", ""))
    if size is not None:
        findings.append(size)
    return [Finding(f.name, f.status, f"{f.detail} (set in milterd's smtpd_milters entry)")
                    if f.name.split()[-1] in overridden else f for f in findings]


#: Postfix's default message_size_limit (bytes).
POSTFIX_MESSAGE_SIZE_LIMIT = 10240000


def judge_message_size(config: Config, limit: str) -> Finding | None:
    """Postfix's ``message_size_limit`` (*limit*; '' is its default) against ``[clamav] max_size``: a message
    larger than max_size is delivered with only its start scanned by clamd (CLAMAV_SKIPPED_SIZE, 0 points).
    None when clamd is off or the limit is not a number."""
    if not config.clamav.enabled:
        return None
    try:
        accepted = int(limit) if limit.strip() else POSTFIX_MESSAGE_SIZE_LIMIT
    except ValueError:
        return None
    largest = config.clamav.max_size
    if accepted == 0 or accepted > largest:
        shown = "0 (no limit)" if accepted == 0 else f"{accepted} bytes"
        return Finding("postfix message_size_limit", "warn", f"{shown} is above [clamav] max_size ({largest} bytes): a larger message is "
                       f"delivered with only its first {largest} bytes scanned by clamd (CLAMAV_SKIPPED_SIZE)")
    return Finding("postfix message_size_limit", "ok", f"{accepted} bytes, within [clamav] max_size ({largest} bytes): clamd scans every message whole")


def _loopback_only(svc: MasterService) -> bool:
    """Whether *svc* listens on a loopback address only: a content filter's return port (amavis's 127.0.0.1:10025),
    whose mail was scanned on its way in, not a port the world sends to."""
    address = _inet_address(svc.name) if svc.type == "inet" else None
    return address is not None and address[0] in _LOOPBACK


def _inet_address(name: str) -> tuple[str, int] | None:
    """The host ("" for every inet_interfaces address) and port of an inet service's name: ``HOST:PORT``, ``PORT`` or ``smtp``."""
    host, sep, port = name.rpartition(":")
    try:
        number = int(port) if port.isdigit() else socket.getservbyname(port, "tcp")
    except OSError:
        return None
    return (host.strip("[]") if sep else ""), number


def release_service(target: Target, services: Sequence[MasterService], queue_directory: str) -> MasterService | None:
    """The service of master.cf that *target* (``[quarantine] release_smtp``) reaches: an inet one by host and
    port, a unix one by its socket (``public/NAME`` or ``private/NAME`` under *queue_directory*)."""
    for svc in services:
        if target.path and svc.type == "unix":
            places = (Path(queue_directory) / sub / svc.name for sub in ("public", "private"))
            if any(place.resolve() == Path(target.path).resolve() for place in places):
                return svc
        elif not target.path and svc.type == "inet":
            address = _inet_address(svc.name)
            if address is None or address[1] != target.port:
                continue
            if address[0] in ("", "0.0.0.0", "::", "*", target.host.strip("[]")) or (address[0] in _LOOPBACK and target.host.strip("[]") in _LOOPBACK):
                return svc
    return None


def judge_release_service(config: Config, settings: dict[str, str], services: Sequence[MasterService],
                          queue_directory: str) -> tuple[Finding, MasterService | None]:
    """The master.cf service behind ``[quarantine] release_smtp``: it must call no milter (its ``smtpd_milters`` and
    ``non_smtpd_milters``, main.cf's unless overridden), or a released message is scanned again, quarantined again
    by milterd, while ``milterd quarantine release`` reports it delivered."""
    name, release = "postfix release_smtp service", config.quarantine.release_smtp
    try:
        target = parse_target(release)
    except ValueError:
        return Finding(name, "skip", f"{release}: see quarantine release_smtp"), None
    svc = release_service(target, services, queue_directory)
    if svc is None:
        return Finding(name, "warn", f"{release}: no service of master.cf listens there: doctor cannot tell whether released mail "
                                     "passes milters again (it must not: -o smtpd_milters= -o non_smtpd_milters=, see Quarantine)"), None
    if svc.command != "smtpd":
        return Finding(name, "warn", f"{release} is master.cf's {svc.label}, which runs {svc.command}, not smtpd: releases need a milter-less smtpd"), svc
    effective = svc.effective(settings)
    milters = {key: effective.get(key, "") for key in ("smtpd_milters", "non_smtpd_milters") if milter_entries(effective.get(key, ""))}
    if not milters:
        return Finding(name, "ok", f"{release} is master.cf's {svc.label}, which calls no milter"), svc
    ours = any(same_socket(config.milter.socket, entry, queue_directory, svc.chrooted) for value in milters.values() for entry in milter_entries(value))
    where = ", ".join(f"{key} = {value} ({'-o' if key in svc.overrides else 'main.cf'})" for key, value in milters.items())
    again = "milterd scans a released message again and may quarantine it again" if ours else "a released message passes these milters again"
    # Another milter there (a signer on re-injection) may be wanted: only milterd's own return is a failure.
    return Finding(name, "fail" if ours else "warn", f"{release} is master.cf's {svc.label}, which calls milters ({where}): {again}, while 'milterd quarantine "
                                 f"release' reports it delivered: add -o smtpd_milters= -o non_smtpd_milters= to {svc.label}"), svc


def judge_chroot(config: Config, svc: MasterService, effective: dict[str, str], queue_directory: str) -> Finding | None:
    """A failure when *svc* runs chrooted in *queue_directory* and names milterd's unix socket by an absolute path
    that only reaches it outside the chroot: smtpd looks for it below *queue_directory*."""
    if not svc.chrooted:
        return None
    for entry, own in milter_settings(effective.get("smtpd_milters", "")):
        kind, _, rest = entry.partition(":")
        if kind in ("unix", "local") and rest.startswith("/") and same_socket(config.milter.socket, entry, queue_directory) \
                and not same_socket(config.milter.socket, entry, queue_directory, chroot=True):
            # The entry's own { …, default_action=… } is what Postfix applies to this milter, else milter_default_action.
            action = own.get("default_action") or effective.get("milter_default_action", "tempfail")
            outcome = {"accept": "passes unscanned", "reject": "is refused", "quarantine": "is held in Postfix's queue"}.get(action, "is deferred")
            inside = f"{queue_directory.rstrip('/')}{rest}"
            return Finding(f"postfix {svc.label} chroot", "fail",
                           f"master.cf runs {svc.label} chrooted (chroot y) in {queue_directory}: it looks for {entry} at {inside}, "
                           f"where milterd is not, so mail it receives {outcome} (milter_default_action = {action}): put [milter] socket "
                           f"below {queue_directory} and name it relative to it in smtpd_milters (unix:milterd/milterd.sock), or set chroot n")
    return None


def _permits(account: str, mode: int, uid: int, gid: int, bits: tuple[int, int, int]) -> bool | None:
    """Whether *account* has the (owner, group, other) *bits* of a file of *mode*, *uid*, *gid*; None when it is unknown."""
    try:
        user = pwd.getpwnam(account)
    except KeyError:
        return None
    if user.pw_uid == 0:
        return True
    if user.pw_uid == uid:
        return bool(mode & bits[0])
    if gid == user.pw_gid or any(account in group.gr_mem for group in grp.getgrall() if group.gr_gid == gid):
        return bool(mode & bits[1])
    return bool(mode & bits[2])


def judge_socket_access(socket_path: str, mode: int, uid: int, gid: int, account: str) -> Finding | None:
    """A warning when Postfix's *account* (``mail_owner``) cannot write milterd's unix socket of *mode*, *uid*, *gid* (pure
    but for the account's lookup); None when it can or the account is unknown."""
    if _permits(account, mode, uid, gid, (stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH)) is not False:
        return None
    owner = _account_name(pwd.getpwuid, uid)
    group = _account_name(grp.getgrgid, gid)
    return Finding("postfix milter socket access", "warn",
                   f"{socket_path} is {owner}:{group} mode {stat.S_IMODE(mode):04o}: Postfix's smtpd runs as {account} (mail_owner) and "
                   f"cannot connect, so every message meets milter_default_action: set [milter] socket_group to a group of {account}, "
                   f"or socket_owner = \"{account}\"")


def _account_name(lookup: Callable[[int], Any], number: int) -> str:
    try:
        return str(lookup(number)[0])
    except KeyError:
        return str(number)


def probe_socket_access(config: Config, settings: dict[str, str]) -> list[Finding]:
    """:func:`judge_socket_access` for milterd's unix socket: the live socket's owner and mode, else those
    ``serve`` will give it (``socket_owner``, ``socket_group``, ``socket_mode``; nothing when neither account is set)."""
    try:
        spec = parse_socket(config.milter.socket)
    except ValueError:
        return []
    if spec.family != "unix":
        return []
    try:
        info = os.stat(spec.path)
        mode, uid, gid = info.st_mode, info.st_uid, info.st_gid
    except OSError:
        try:
            uid, gid = socket_id(config, "socket_owner"), socket_id(config, "socket_group")
            mode = int(config.milter.socket_mode, 8)
        except (ConfigError, ValueError):  # probe_serve_places reports it
            return []
        if uid == -1 and gid == -1:  # the account serve runs as: not known here
            return []
        uid = os.geteuid() if uid == -1 else uid
        gid = os.getegid() if gid == -1 else gid
    account = settings.get("mail_owner") or "postfix"
    finding = judge_socket_access(spec.path, mode, uid, gid, account)
    if finding is not None:
        return [finding]
    for directory in Path(spec.path).parents:  # connecting needs search (x) on each directory above
        try:
            info = os.stat(directory)
        except OSError:
            continue
        if _permits(account, info.st_mode, info.st_uid, info.st_gid, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)) is False:
            return [Finding("postfix milter socket access", "warn", f"{directory} (mode {stat.S_IMODE(info.st_mode):04o}) is closed to {account} "
                                                                   f"(mail_owner): Postfix's smtpd cannot reach {spec.path}, so every message meets milter_default_action")]
    return []


def scanner_budget(config: Config) -> float:
    """The longest end of message can take on timeouts: the scanners run concurrently, DNS checks too."""
    timeouts = [config.dns.timeout]
    if config.clamav.enabled:
        timeouts.append(config.clamav.timeout)
    if config.spamd.enabled:
        timeouts.append(config.spamd.timeout)
    return max(timeouts) + config.database.busy_timeout


def command_budget(config: Config) -> float:
    """The longest one SMTP command before end of data may keep milterd busy on timeouts: MAIL FROM, which first
    logs the transaction refused before it (a store write, ``[database] busy_timeout``), then waits for its DNS
    lookups (the stage's deadline, then SPF's own: ``[dns] timeout`` twice, one after the other).  (RCPT TO's
    greylist store, with greylisting by triplet, waits ``busy_timeout`` alone.)"""
    return config.database.busy_timeout + 2 * config.dns.timeout


def command_budget_why(config: Config) -> str:
    """What :func:`command_budget` is made of, as doctor says it."""
    return (f"MAIL FROM logs the transaction refused before it, [database] busy_timeout {config.database.busy_timeout:g}s, "
            f"then its DNS lookups and SPF's, [dns] timeout {config.dns.timeout:g}s each")


def _seconds(value: str) -> float | None:
    try:
        return float(parse_duration(value.strip()))
    except (ValueError, TypeError):
        return None


def worst(findings: Iterable[Finding]) -> Status:
    """The overall status: fail if any failed, else warn if any warned, else ok."""
    statuses = {f.status for f in findings}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"

"""``milterd doctor``: check the configuration, every backend and Postfix's settings."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import sys
from typing import Iterable, Sequence

from ..checks.dnsbl import DnsLists
from ..config import Config, ConfigError, load_config
from ..diagnostics import Finding, diagnose, worst
from ..milter.supervisor import reload_blockers
from ..services import build
from ..store import Store, StoreError, utcnow
from ..store.engine import sqlite_file
from ..text import escape, redact
from . import config_parent


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``doctor``."""
    doctor = sub.add_parser("doctor", parents=[config_parent()], help="check the configuration, the backends and Postfix's settings")
    doctor.add_argument("--postfix-config", metavar="DIR", help="Postfix's configuration directory (postconf -c DIR; default: Postfix's own)")
    doctor.add_argument("--no-postfix", action="store_true", help="do not read Postfix's settings")
    doctor.add_argument("--json", action="store_true", help="print {status, findings: [{name, status, detail}]} for monitoring")
    doctor.add_argument("--strict", action="store_true", help="warnings count as failures in the exit status")
    doctor.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    """Print the findings; exit 1 on any failure (or warning, with --strict)."""
    findings = diagnose(args.config, args.postfix_config, use_postconf=not args.no_postfix) + private_client_findings(args.config) + reload_findings(args.config)
    status = worst(findings)
    try:
        if args.json:
            print(json.dumps({"status": status, "findings": [f.as_dict() for f in findings]}, indent=2))
        else:
            # A detail quotes what a backend said (a banner, clamd's VERSION, a resolver's error): escaped for the terminal.
            rows = [(f.status.upper(), escape(f.name), escape(f.detail)) for f in findings]
            width = max(len(name) for _status, name, _detail in rows)
            for status_text, name, detail in rows:
                print(f"{status_text:4}  {name:{width}}  {detail}")
            print(f"doctor: {status}")
        if sys.stdout is not None:  # None: started with its standard output closed (print then writes nothing)
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (doctor | head): the findings are judged all the same, and the exit status is their
        # verdict (cli.main's 0 for a closed pipe told a monitoring script 'healthy').  Python's own flush at
        # exit must not fail again on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # no file descriptor behind stdout
            pass
        finally:
            os.close(devnull)
    return 1 if status == "fail" or (args.strict and status == "warn") else 0


def reload_findings(config_path: str | None) -> list[Finding]:
    """A warning for each file that ``serve`` reads as root at start but ``[milter] user`` cannot read at a reload."""
    try:
        config = load_config(config_path)
    except ConfigError:  # diagnose reported it
        return []
    try:
        blockers = reload_blockers(config)
    except ConfigError as error:  # an unknown [milter] user or group, which serve refuses: a failure, the rest still said
        return [Finding(error.key or "milter.conf", "fail", str(error))]
    return [Finding(f"reload {error.key or 'milter.conf'}", "warn", str(error)) for error in blockers]


#: The symbol of a message whose client the DNS lists were not asked about: a private address ([checks.dnsbl] skip_private).
SKIPPED_PRIVATE = "DNSBL_SKIPPED_PRIVATE"
#: The part of the message log read to judge skip_private: the newest PRIVATE_SAMPLE rows of clients that did not
#: authenticate, of the last PRIVATE_WINDOW.  The newest rows, not a whole period: the question is how Postfix sees its
#: clients now, and once the NAT or proxy is fixed the next thousand messages (hours on a busy host) clear the warning,
#: where a week of rows would keep it for a week.  The window keeps a quiet host from being judged on the rows of an
#: older setup (months back), and the bound keeps the query cheap on any log: the newest rows of an ix_messages_time
#: range, never more than a thousand counted, whatever a busy host logs in a week.
PRIVATE_WINDOW = dt.timedelta(days=7)
PRIVATE_SAMPLE = 1000
#: Fewer messages (after trusted_networks are left out) than this are too few to judge: no finding.
PRIVATE_MIN_MESSAGES = 50
#: The share of those messages skipped as private from which doctor warns.  Below it most clients are looked up: a
#: site whose own unauthenticated hosts send from private addresses besides mail from outside is not warned about.
PRIVATE_WARN_SHARE = 0.9


def judge_private_clients(counts: Iterable[tuple[str, int, int]], trusted_networks: Sequence[str],
                          window: dt.timedelta = PRIVATE_WINDOW) -> Finding | None:
    """Whether the DNS lists were skipped for (nearly) every client as private (pure).

    *counts* is :meth:`Store.symbol_counts_by_client` for :data:`SKIPPED_PRIVATE`: per client address
    (of clients that did not authenticate), the messages logged and how many of them were skipped.  The
    addresses in *trusted_networks*, and those that are no IP address (a unix-socket client), are left
    out: the DNS lists are not asked about them anyway.  None when fewer than
    :data:`PRIVATE_MIN_MESSAGES` messages are left; a warning when :data:`PRIVATE_WARN_SHARE` of them
    or more were skipped, else ok.
    """
    trusted = [ipaddress.ip_network(net, strict=False) for net in trusted_networks]
    total = skipped = 0
    private: dict[str, int] = {}
    for addr, rows, hits in counts:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        if any(ip in net for net in trusted):
            continue
        total += rows
        skipped += hits
        if hits:
            private[addr] = private.get(addr, 0) + hits
    if total < PRIVATE_MIN_MESSAGES:
        return None
    share = skipped / total
    # Rounded down: 99.6% is not "100%" ("all" says that).
    part = "all" if skipped == total else "none" if not skipped else f"{int(share * 100)}% ({skipped:,})"
    period = f"the last {window.days} days" if window.days != 1 else "the last day"
    messages = f"{part} of the last {total:,} messages from clients neither trusted nor authenticated (within {period})"
    if share < PRIVATE_WARN_SHARE:
        return Finding("dnsbl skip_private", "ok", f"{messages} came from a private address, which no DNS list is asked about ({SKIPPED_PRIVATE})")
    busiest = sorted(private.items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(addr for addr, _count in busiest[:3]) + (f" and {len(busiest) - 3:,} more" if len(busiest) > 3 else "")
    return Finding(
        "dnsbl skip_private", "warn",
        f"DNS lists skipped for {messages}: the client address was private ({shown}; {SKIPPED_PRIVATE}, [checks.dnsbl] skip_private)."
        " If Postfix sees a NAT gateway, a proxy or a relay instead of the real clients, no DNS list can help, as none lists"
        " a private address: let Postfix see the real client address (smtpd_upstream_proxy_protocol or"
        " postscreen_upstream_proxy_protocol = haproxy behind a proxy, XCLIENT from a relay listed in smtpd_authorized_xclient_hosts, no source NAT in front of it)."
        " If they are your own hosts, list their networks in [milter] trusted_networks (never a proxy's or a NAT gateway's"
        " address: every client would be trusted and not scored). skip_private = false helps only with a list of your own"
        " that knows these networks",
    )


def private_client_findings(config_path: str | None) -> list[Finding]:
    """:func:`judge_private_clients` on the message log, while the DNS lists would skip private clients.

    Nothing when the configuration does not load (diagnose reported it), the DNS lists are off, have no
    zone or do not skip private clients, there is no store yet, or the database does not answer (the
    database finding says so).
    """
    try:
        config = load_config(config_path)
    except ConfigError:
        return []
    options = config.checks.dnsbl
    if not (options.enabled and options.skip_private):
        return []
    file = sqlite_file(config.database.url)
    try:
        if file is not None and not file.exists():
            return []  # connecting would create it
    except OSError:
        return []  # its name too long: the database finding says why
    if not _dns_list_zones(config):
        return []
    try:
        store = Store(config.database)
    except StoreError:
        return []  # an unusable URL: the database finding says why
    try:
        try:
            if not store.has_schema():
                return []
        except StoreError:
            return []
        since = utcnow() - PRIVATE_WINDOW
        finding = None
        # The sample is taken before trusted_networks are left out (SQL does not match networks): where
        # trusted clients crowd it below PRIVATE_MIN_MESSAGES, a larger one is read (each a bounded query).
        for sample in (PRIVATE_SAMPLE, PRIVATE_SAMPLE * 10, PRIVATE_SAMPLE * 100):
            try:
                counts = store.symbol_counts_by_client(SKIPPED_PRIVATE, since, sample)
            except StoreError as exc:
                return [Finding("dnsbl skip_private", "warn", redact(str(exc), config.database.url))]
            finding = judge_private_clients(counts, config.milter.trusted_networks)
            if finding is not None or sum(rows for _addr, rows, _hits in counts) < sample:
                break
    finally:
        store.close()
    return [] if finding is None else [finding]


def _dns_list_zones(config: Config) -> bool:
    """Whether the DNS list check runs with at least one [[dnsbl]] or [[dnswl]] zone."""
    try:
        services = build(config)
    except Exception:  # noqa: BLE001 - diagnose reported it
        return False
    try:
        return any(isinstance(check, DnsLists) and check.zones for check in services.checks)
    finally:
        services.close()

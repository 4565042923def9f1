"""The quarantine: messages stored whole in the SQL store, and what is done with them.

The milter writes a row (``Pipeline.eom``) in the same transaction as the log
row.  This module reads them back for people (list, show), releases them by
SMTP to ``[quarantine] release_smtp`` (a Postfix smtpd without milters) or,
for held mail, with ``postsuper -H``; deletes and purges them; and reports
them to the postmaster.  Any host sharing the database can do all of it.

A release first *claims* the row (sets ``released_at`` only where it is still
empty) so that two administrators on two MX hosts cannot both send it; a
release that reached no recipient gives the claim back, so the message stays
releasable.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import getpass
import os
import re
import smtplib
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Iterable

from sqlalchemy import delete, select, update
from sqlalchemy.exc import SQLAlchemyError

from . import maintenance
from .config import Config
from .store import Store, as_utc, schema, utcnow

#: Fields of ``quarantine list --json``; scripts rely on these names.
JSON_FIELDS = (
    "id", "time", "queue_id", "sender", "recipients", "subject", "score", "reason", "symbols", "size",
    "released_at", "released_by", "release_count", "mode", "mta_host", "client_addr", "client_name", "helo",
    "learned_ham", "message_log_id",
)

RELEASE_HEADER = "X-Milterd-Released"

_VIRUS_SYMBOL = re.compile(r"(^|_)VIRUS($|_)")  # CLAMAV_VIRUS


class QuarantineError(Exception):
    """A quarantine operation failed (unknown id, refused release, store down)."""


@dataclass
class ReleaseReport:
    """What one release did: per recipient the server's reply, and whether it was delivered."""

    id: int
    method: str = "smtp"
    delivered: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    error: str = ""
    notes: list[str] = field(default_factory=list)
    learned_ham: bool = False

    @property
    def ok(self) -> bool:
        """True when every recipient accepted the message and nothing else failed."""
        return not self.error and not self.refused and bool(self.delivered)

    @property
    def partial(self) -> bool:
        """True when some recipients got it and others did not."""
        return bool(self.delivered) and bool(self.refused)

    def as_json(self, who: str, when: dt.datetime) -> dict[str, Any]:
        """The record kept in ``release_result`` (one entry per attempt)."""
        return {
            "time": when.isoformat(), "by": who, "method": self.method, "ok": self.ok,
            "delivered": self.delivered, "refused": self.refused, "error": self.error,
        }


# --- pure helpers -------------------------------------------------------------
def release_header(who: str, when: dt.datetime) -> bytes:
    """The ``X-Milterd-Released: <who> <when>`` line (CRLF included) put on top of a release."""
    who = re.sub(r"[\x00-\x20\x7f]+", "_", who) or "unknown"
    return f"{RELEASE_HEADER}: {who} {email.utils.format_datetime(when)}\r\n".encode()


def parse_hostport(text: str, default_port: int = 25) -> tuple[str, int]:
    """``"127.0.0.1:10027"``, ``"[::1]:10027"`` or ``"host"`` → (host, port); ValueError otherwise."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or str(default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def is_virus(row: dict[str, Any]) -> bool:
    """Whether a quarantined message was stored because of a virus (``CLAMAV_VIRUS``, or the reason says so)."""
    return any(_VIRUS_SYMBOL.search(name) for name in (row.get("symbols") or {})) or "virus" in (row.get("reason") or "").lower()


def matches(row: dict[str, Any], sender: str | None = None, recipient: str | None = None, reason: str | None = None) -> bool:
    """The ``list`` filters: sender and recipient match whole addresses (case-insensitive), reason a substring."""
    if sender is not None and (row.get("sender") or "").lower() != sender.lower():
        return False
    if recipient is not None and recipient.lower() not in [r.lower() for r in row.get("recipients") or []]:
        return False
    if reason and reason.lower() not in (row.get("reason") or "").lower():
        return False
    return True


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    """A quarantine row as the JSON object ``list --json`` prints (times as ISO 8601)."""
    out = {key: row.get(key) for key in JSON_FIELDS}
    for key in ("time", "released_at"):
        out[key] = row[key].isoformat() if row.get(key) else None
    return out


def release_command(config: Config, row_id: int) -> str:
    """The command an administrator runs to release one message."""
    conf = f" -c {config.path}" if config.path else ""
    return f"milterd{conf} quarantine release {row_id}"


def default_who(config: Config) -> str:
    """Who releases: the invoking user (through sudo too) at this host."""
    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in a container
        user = str(os.getuid())
    return f"{user}@{config.hostname}"


def format_digest(rows: list[dict[str, Any]], config: Config, since: dt.datetime, now: dt.datetime) -> str:
    """The text of the postmaster's digest: counts by reason, then one block per message."""
    lines = [
        f"Quarantine on {config.hostname}: {len(rows)} message{'s' if len(rows) != 1 else ''}",
        f"from {since:%Y-%m-%d %H:%M} to {now:%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    if not rows:
        lines.append("Nothing was quarantined.")
        return "\n".join(lines) + "\n"
    lines.append("By reason:")
    for reason, count in Counter(row["reason"] or "(none)" for row in rows).most_common():
        lines.append(f"  {count:5}  {reason}")
    lines.append("")
    for row in rows:
        released = f"  released {row['released_at']:%Y-%m-%d %H:%M} by {row['released_by']}\n" if row.get("released_at") else ""
        lines.append(
            f"#{row['id']}  {row['time']:%Y-%m-%d %H:%M:%S}  score {row['score']:.1f}  {row['reason']}\n"
            f"  from:    <{row['sender']}>\n"
            f"  to:      {', '.join('<' + r + '>' for r in row['recipients'] or [])}\n"
            f"  subject: {row['subject']}\n"
            f"{released}"
            f"  release: {release_command(config, row['id'])}\n"
        )
    return "\n".join(lines)


# --- the store --------------------------------------------------------------------
class Quarantine:
    """The quarantine table of one store, and the actions on it."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.table = schema.quarantine

    def rows(self, since: dt.datetime | None = None, sender: str | None = None, recipient: str | None = None, reason: str | None = None, limit: int | None = None, older_than: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Quarantined messages (without their raw form), newest first."""
        table = self.table
        query = select(*[c for c in table.c if c.name != "raw"]).order_by(table.c.id.desc())
        if since is not None:
            query = query.where(table.c.time >= since)
        if older_than is not None:
            query = query.where(table.c.time < older_than)
        if sender is not None:
            query = query.where(table.c.sender == sender)
        found = [_fix(row) for row in self._fetch(query)]
        found = [row for row in found if matches(row, None, recipient, reason)]
        return found[:limit] if limit else found

    def get(self, row_id: int) -> dict[str, Any]:
        """One quarantined message with its raw form; QuarantineError when there is none."""
        rows = self._fetch(select(self.table).where(self.table.c.id == row_id))
        if not rows:
            raise QuarantineError(f"no quarantined message with id {row_id}")
        return _fix(rows[0])

    def delete(self, ids: Iterable[int]) -> int:
        """Delete these messages; return how many there were."""
        ids = list(ids)
        return self._write(delete(self.table).where(self.table.c.id.in_(ids))) if ids else 0

    def purge(self, older_than: dt.datetime) -> int:
        """Delete every message stored before *older_than*; return how many."""
        return self._write(delete(self.table).where(self.table.c.time < older_than))

    # --- release --------------------------------------------------------------
    def release(self, row_id: int, to: list[str] | None = None, force: bool = False, who: str | None = None, ham: bool = False, smtp: bool = False) -> ReleaseReport:
        """Release one message (see the module docstring); the report says what happened.

        Raises QuarantineError when it cannot even be tried (unknown id,
        already released without *force*, store down).
        """
        who = who or default_who(self.config)
        row = self.get(row_id)
        previous = (row["released_at"], row["released_by"])
        now = utcnow()
        self._claim(row, who, now, force)
        try:
            if row["mode"] == "hold" and not to and not smtp:
                report = self._postsuper(row)
            else:
                report = self._smtp(row, to or list(row["recipients"] or []), who, now)
        except Exception as exc:  # noqa: BLE001 - whatever happened, record it and give the claim back
            report = ReleaseReport(row_id, error=f"{exc.__class__.__name__}: {exc}")
        if ham and report.delivered:
            self._learn_ham(row, report)
        self._record(row, report, who, now, previous)
        return report

    def _claim(self, row: dict[str, Any], who: str, now: dt.datetime, force: bool) -> None:
        table = self.table
        statement = update(table).where(table.c.id == row["id"]).values(released_at=now, released_by=who)
        if not force:
            statement = statement.where(table.c.released_at.is_(None))
        if self._write(statement) == 0:
            current = self.get(row["id"])
            raise QuarantineError(
                f"message {row['id']} was already released at {current['released_at']:%Y-%m-%d %H:%M:%S} UTC "
                f"by {current['released_by']}; use --force to release it again"
            )

    def _record(self, row: dict[str, Any], report: ReleaseReport, who: str, now: dt.datetime, previous: tuple[Any, Any]) -> None:
        table = self.table
        history = list(row.get("release_result") or []) if isinstance(row.get("release_result"), list) else []
        history.append(report.as_json(who, now))
        values: dict[str, Any] = {"release_result": history}
        if report.delivered:
            values["release_count"] = table.c.release_count + 1
        else:  # nothing went out: give the claim back, the message stays releasable
            values["released_at"], values["released_by"] = previous
        if report.learned_ham:
            values["learned_ham"] = True
        self._write(update(table).where(table.c.id == row["id"]).values(**values))

    def _smtp(self, row: dict[str, Any], recipients: list[str], who: str, now: dt.datetime) -> ReleaseReport:
        report = ReleaseReport(row["id"])
        if not recipients:
            report.error = "no recipients"
            return report
        message = release_header(who, now) + row["raw"]
        host, port = parse_hostport(self.config.quarantine.release_smtp)
        try:
            report.delivered, report.refused = send(host, port, row["sender"] or "", recipients, message, self.config.hostname)
        except (OSError, smtplib.SMTPException) as exc:
            report.error = f"{self.config.quarantine.release_smtp}: {_smtp_error(exc)}"
            report.refused = {r: report.error for r in recipients}
        return report

    def _postsuper(self, row: dict[str, Any]) -> ReleaseReport:
        report = ReleaseReport(row["id"], method="postsuper")
        if row["mta_host"] != self.config.hostname:
            report.error = f"held in Postfix's queue on {row['mta_host']}: run 'postsuper -H {row['queue_id']}' there (or release --smtp to re-inject the stored copy)"
            return report
        command = ["postsuper"] + (["-c", self.config.quarantine.postfix_config] if self.config.quarantine.postfix_config else []) + ["-H", row["queue_id"]]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        released = re.search(r"Released[^:\n]*: (\d+) message", result.stderr + result.stdout)
        if result.returncode != 0 or not released or released.group(1) == "0":
            report.error = f"postsuper -H {row['queue_id']}: {(result.stderr or result.stdout).strip() or 'not in the hold queue'} (release --smtp re-injects the stored copy)"
            return report
        report.delivered = {r: f"released from the hold queue ({row['queue_id']})" for r in row["recipients"] or []}
        return report

    def _learn_ham(self, row: dict[str, Any], report: ReleaseReport) -> None:
        """Mark the log row as a false positive and, with spamd enabled, teach it (TELL)."""
        if row.get("message_log_id") is not None:
            try:
                self._write(update(schema.messages).where(schema.messages.c.id == row["message_log_id"]).values(released_as_ham=True))
                report.notes.append("log row marked released_as_ham")
            except QuarantineError as exc:
                report.error = report.error or f"cannot mark the log row: {exc}"
        if not self.config.spamd.enabled:
            report.notes.append("spamd is not enabled: not learned")
            return
        try:
            from .scanners.spamd import SpamdClient

            spamd = self.config.spamd
            SpamdClient(spamd.address, timeout=spamd.timeout).tell(row["raw"], "ham")
            report.learned_ham = True
            report.notes.append("spamd learned it as ham")
        except Exception as exc:  # noqa: BLE001 - ScannerError, or no scanners module
            report.error = report.error or f"spamd could not learn it as ham: {exc}"

    # --- reports -------------------------------------------------------------------
    def digest(self, to: list[str], since: dt.datetime, sender: str | None = None) -> str:
        """Send the postmaster's digest of what was quarantined since *since*; return its summary line."""
        now = utcnow()
        rows = list(reversed(self.rows(since=since)))
        text = format_digest(rows, self.config, since, now)
        subject = f"milterd quarantine digest for {self.config.hostname}: {len(rows)} message{'s' if len(rows) != 1 else ''}"
        self._send_text(sender or self.report_from, to, subject, text)
        return f"{len(rows)} messages reported to {', '.join(to)}"

    def notify_virus_recipients(self, since: dt.datetime) -> int:
        """Tell each recipient of a message quarantined as a virus since *since*; return how many notices were sent."""
        sent = 0
        for row in self.rows(since=since):
            if not is_virus(row) or row.get("released_at"):
                continue
            text = (
                f"A message to you was stopped because it carries a virus; it was not delivered.\n\n"
                f"  date:    {row['time']:%Y-%m-%d %H:%M} UTC\n"
                f"  from:    <{row['sender']}>\n"
                f"  subject: {row['subject']}\n"
                f"  found:   {row['reason']}\n\n"
                f"If you expected this message, ask {self.report_from} (quarantine id {row['id']}).\n"
            )
            for recipient in row["recipients"] or []:
                self._send_text(self.report_from, [recipient], f"Quarantined: {row['subject']}"[:200], text)
                sent += 1
        return sent

    @property
    def report_from(self) -> str:
        """The sender of digests and notices."""
        return self.config.quarantine.report_from or f"postmaster@{self.config.hostname}"

    def _send_text(self, sender: str, to: list[str], subject: str, text: str) -> None:
        message = EmailMessage()
        message["From"] = sender
        message["To"] = ", ".join(to)
        message["Subject"] = subject
        message["Date"] = email.utils.formatdate(localtime=False)
        message["Message-ID"] = email.utils.make_msgid(domain=self.config.hostname)
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(text)
        host, port = parse_hostport(self.config.quarantine.release_smtp)
        try:
            _delivered, refused = send(host, port, sender, to, message.as_bytes(policy=message.policy.clone(linesep="\r\n")), self.config.hostname)
        except (OSError, smtplib.SMTPException) as exc:
            raise QuarantineError(f"cannot send to {self.config.quarantine.release_smtp}: {_smtp_error(exc)}") from None
        if refused:
            raise QuarantineError("refused: " + "; ".join(f"<{r}>: {reply}" for r, reply in refused.items()))

    # --- plumbing ------------------------------------------------------------------
    def _fetch(self, query: Any) -> list[dict[str, Any]]:
        try:
            with self.store.engine.connect() as connection:
                return [dict(row._mapping) for row in connection.execute(query)]
        except SQLAlchemyError as exc:
            raise QuarantineError(f"cannot read the quarantine: {_db_error(exc)}") from None

    def _write(self, statement: Any) -> int:
        try:
            with self.store.engine.begin() as connection:
                return int(connection.execute(statement).rowcount or 0)
        except SQLAlchemyError as exc:
            raise QuarantineError(f"cannot write the quarantine: {_db_error(exc)}") from None


def send(host: str, port: int, sender: str, recipients: list[str], message: bytes, helo: str, timeout: float = 60.0) -> tuple[dict[str, str], dict[str, str]]:
    """Send *message* by SMTP; return (delivered, refused), each recipient → the server's reply.

    Recipients refused at RCPT are reported one by one; a refusal at MAIL or
    DATA refuses them all.  Connection errors raise OSError/SMTPException.
    """
    delivered: dict[str, str] = {}
    refused: dict[str, str] = {}
    with smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout) as client:
        client.ehlo_or_helo_if_needed()
        options = []
        if client.has_extn("8bitmime") and any(b > 127 for b in message):
            options.append("BODY=8BITMIME")
        if client.has_extn("smtputf8") and not (sender + "".join(recipients)).isascii():
            options.append("SMTPUTF8")
        reply: bytes | str
        code, reply = client.mail(sender, options)
        if code != 250:
            client.rset()
            return {}, {r: _reply(code, reply) for r in recipients}
        accepted = []
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            if code in (250, 251):
                accepted.append(recipient)
            else:
                refused[recipient] = _reply(code, reply)
        if not accepted:
            client.rset()
            return {}, refused
        try:
            code, reply = client.data(message)
        except smtplib.SMTPDataError as exc:
            code, reply = exc.smtp_code, exc.smtp_error
        for recipient in accepted:
            (delivered if code == 250 else refused)[recipient] = _reply(code, reply)
    return delivered, refused


def _reply(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {' '.join(text.split())}"


def _smtp_error(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__


def _db_error(exc: SQLAlchemyError) -> str:
    return f"{exc.__class__.__name__}: {getattr(exc, 'orig', None) or exc}"


def _fix(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("time", "released_at"):
        row[key] = as_utc(row.get(key))
    if "raw" in row and row["raw"] is not None:
        row["raw"] = bytes(row["raw"])  # PostgreSQL returns memoryview
    return row


# --- housekeeping -------------------------------------------------------------------
def _retention_job(services: Any) -> str:
    retention = services.config.quarantine.retention
    if not retention:
        return ""
    count = Quarantine(services.store, services.config).purge(utcnow() - dt.timedelta(seconds=retention))
    return f"purged {count} quarantined message{'s' if count != 1 else ''}" if count else ""


maintenance.register(maintenance.Job("quarantine-retention", lambda s: 3600 if s.config.quarantine.retention else 0, _retention_job))

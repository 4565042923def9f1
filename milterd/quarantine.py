"""The quarantine: messages stored whole in the SQL store, and what is done with them.

The milter writes a row and the message in chunks (``Pipeline.eom``, through
``store.quarantine``) in the same transaction as the log row.  This module
reads them back for people (list, show), releases them by SMTP to
``[quarantine] release_smtp`` (a Postfix smtpd without milters, on a unix
socket or with SMTP AUTH; see ``reinject``), streaming the message from the
store, or, for held mail, with ``postsuper -H`` (``postsuper -r`` once it was held for
half of Postfix's queue lifetime, see :func:`hold_release`); deletes and purges them; and
reports them to the postmaster.  Any host sharing the database can do all of
it.  The SQL is in ``store.quarantine``; its errors arrive as StoreError.

A release first *claims* the row (sets ``released_at`` only where it is still
empty) so that two administrators on two MX hosts cannot both send it; a
release that reached no recipient gives the claim back, so the message stays
releasable.  One whose outcome is unknown (the connection lost, or a timeout,
after the final dot, before the server's reply) or could not be recorded
keeps its claim: only ``release --force`` sends it again, once the
administrator has checked the server's log (``release_state`` tells them apart).
A claim holds no lock while the message is read and sent: the retention purge
leaves a message claimed in the last day alone (``store.quarantine.RELEASE_GRACE``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import itertools
import os
import pwd
import re
import smtplib
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from email.header import Header
from email.message import EmailMessage
from typing import Any, Iterable, Iterator, Literal, Mapping

from . import reinject
from .authresults import claiming_field, field_name, without_fields
from .checks.clamav import VIRUS_HEADERS
from .config import Config
from .files import read_error
from .learner.tokenizer import MAX_INPUT, MessageDigest, hashed_tokens
from .message.policy import RELEASE_HEADER, spam_verdict_field
from .scanners.spamd import SpamdClient
from .store import SENDER_LIMIT, Store, StoreError, utcnow
from .store.learner import Label, LearnerStore
from .store.quarantine import QuarantineStore
from .text import cut, escape, unstored
from .units import format_duration

#: Fields of ``quarantine list --json``; scripts rely on these names.
JSON_FIELDS = (
    "id", "time", "queue_id", "sender", "recipients", "subject", "score", "reason", "symbols", "size",
    "released_at", "released_by", "release_count", "mode", "mta_host", "client_addr", "client_name", "helo",
    "learned_ham", "message_log_id",
)

#: A row's release state (see :func:`release_state`): not claimed, delivered, claimed with the
#: outcome unknown (no reply after the message was sent), claimed with no outcome recorded.
ReleaseState = Literal["", "released", "unknown", "unrecorded"]

_QUEUED_AS = re.compile(r"\bqueued as ([0-9A-Za-z]+)")

_VIRUS_SYMBOL = re.compile(r"(^|_)VIRUS($|_)")  # CLAMAV_VIRUS

#: The Postfix parameters whose shorter value bounds how long a message released from the hold queue
#: with ``postsuper -H`` may stay queued: it keeps its arrival time, and a deferral after that lifetime bounces it.
QUEUE_LIFETIMES = ("maximal_queue_lifetime", "bounce_queue_lifetime")

#: A Postfix time value (postconf(5)): a number and an optional unit.
_POSTFIX_TIME = re.compile(r"(\d+)([smhdw]?)", re.ASCII)
_POSTFIX_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

#: Attempts a row's release history (``release_result``) keeps in full, besides its first one and every one
#: that delivered the message (or may have): the last ones. Those between are counted in their place
#: (``{"left_out": N}``): 30 failed ``release --force`` of a 3,000-recipient message made a 6.4 MB row.
HISTORY_LAST = 10
#: Refused recipients an attempt's record names per reply, and in all; the others are counted
#: (``refused_more``: per reply named; ``refused_other``: of replies not named). Delivered and
#: unknown recipients are all named: who may have received the message is never left out.
REFUSED_NAMED_PER_REPLY = 20
REFUSED_NAMED = 100


class QuarantineError(Exception):
    """A quarantine operation failed (unknown id, refused release, store down)."""


@dataclass
class ReleaseReport:
    """What one release did: per recipient the server's reply, and whether it was delivered."""

    id: int
    method: str = "smtp"
    delivered: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    #: Recipients the server accepted at RCPT whose delivery is unknown: the connection
    #: was lost (or timed out, or was interrupted) after the message was sent.
    unknown: dict[str, str] = field(default_factory=dict)
    error: str = ""
    #: Why the outcome could not be recorded in the store (the claim then stays).
    record_error: str = ""
    notes: list[str] = field(default_factory=list)
    learned_ham: bool = False
    #: The command that released a held message (``postsuper -H QUEUEID`` or ``postsuper -r QUEUEID hold``).
    command: str = ""

    @property
    def ok(self) -> bool:
        """True when every recipient accepted the message, it was recorded and nothing else failed."""
        return not self.error and not self.record_error and not self.refused and not self.unknown and bool(self.delivered)

    @property
    def partial(self) -> bool:
        """True when some recipients got it and others did not."""
        return bool(self.delivered) and bool(self.refused)

    def as_json(self, who: str, when: dt.datetime) -> dict[str, Any]:
        """The record kept in ``release_result`` (one entry per attempt): every recipient delivered or of
        unknown outcome, the refused ones named up to ``REFUSED_NAMED_PER_REPLY`` per reply (the others counted)."""
        refused, more, other = named_refusals(self.refused)
        record: dict[str, Any] = {
            "time": when.isoformat(), "by": who, "method": self.method, "ok": self.ok,
            "delivered": self.delivered, "refused": refused, "unknown": self.unknown, "error": self.error,
        }
        if more:
            record["refused_more"] = more
        if other:
            record["refused_other"] = other
        if self.command:
            record["command"] = self.command
        return record


def named_refusals(refused: Mapping[str, str]) -> tuple[dict[str, str], dict[str, int], int]:
    """The refused recipients an attempt's record names (at most ``REFUSED_NAMED_PER_REPLY`` of each reply,
    ``REFUSED_NAMED`` in all), how many more each named reply refused, and how many of replies not named."""
    named: dict[str, str] = {}
    per_reply: Counter[str] = Counter()
    more: Counter[str] = Counter()
    other = 0
    for recipient, reply in refused.items():
        if per_reply[reply] < REFUSED_NAMED_PER_REPLY and len(named) < REFUSED_NAMED:
            named[recipient] = reply
            per_reply[reply] += 1
        elif reply in per_reply:
            more[reply] += 1
        else:
            other += 1
    return named, dict(more), other


def is_left_out(entry: object) -> bool:
    """Whether *entry* of a release history counts attempts left out (``{"left_out": N}``), not an attempt."""
    return isinstance(entry, dict) and "left_out" in entry and "time" not in entry


def bound_history(history: list[Any]) -> list[Any]:
    """*history* (``release_result``, oldest first) as kept: the first attempt, the last ``HISTORY_LAST``
    and every one that delivered the message or whose outcome is unknown, in order; each run of the
    others replaced by ``{"left_out": N}``.

    Only those that sent the message can hold a row's claim (a release that sent nothing gives it
    back), so :func:`claim_attempt`, and with it :func:`release_state`, read the same as before.
    """
    attempts = [i for i, entry in enumerate(history) if not is_left_out(entry)]
    keep = set(attempts[:1]) | set(attempts[-HISTORY_LAST:])
    keep |= {i for i in attempts if isinstance(history[i], dict) and (history[i].get("delivered") or history[i].get("unknown"))}
    bounded: list[Any] = []
    left_out = 0
    for i, entry in enumerate(history):
        if i in keep:
            if left_out:
                bounded.append({"left_out": left_out})
                left_out = 0
            bounded.append(entry)
        elif is_left_out(entry):
            count = entry.get("left_out")
            left_out += count if isinstance(count, int) and count > 0 else 0
        else:
            left_out += 1
    if left_out:
        bounded.append({"left_out": left_out})
    return bounded


def postfix_time(value: str, default_unit: str = "d") -> int:
    """Seconds of a Postfix time value (``5d``, ``12h``, ``3600s``; *default_unit* when it has none);
    ValueError when *value* is not one."""
    found = _POSTFIX_TIME.fullmatch(value.strip())
    if not found:
        raise ValueError(f"not a Postfix time value: {value!r}")
    return int(found.group(1)) * _POSTFIX_UNITS[found.group(2) or default_unit]


def hold_release(queue_id: str, held: dt.timedelta, lifetimes: str | None, why: str = "") -> tuple[list[str], str]:
    """The ``postsuper`` arguments that release *queue_id* from the hold queue, and a note for the report.

    *lifetimes* is what ``postconf -h`` printed of ``QUEUE_LIFETIMES`` (None: it failed, for *why*).
    ``-H`` keeps the message's arrival time: one held for half of the shorter lifetime or longer would
    be bounced at its first deferral (postsuper(1) says to use ``-r`` then). ``-r QUEUEID hold`` requeues
    it into a new queue file with a new arrival time (not through smtpd_milters again). When the
    lifetimes are not known, ``-r``: the safe side for an old message (a new one only gets a new queue file).
    """
    requeue = ["-r", queue_id, "hold"]
    if lifetimes is None:
        return requeue, f"{why or 'postconf failed'}: Postfix's queue lifetimes are not known, so it was requeued (postsuper -r)"
    values = lifetimes.split("\n")
    values = values[:-1] if values and not values[-1] else values
    try:
        if len(values) != len(QUEUE_LIFETIMES):
            raise ValueError(f"expected {len(QUEUE_LIFETIMES)} lines")
        seconds = [postfix_time(value) for value in values]
    except ValueError as exc:
        shown = cut(escape(lifetimes.strip()[:201]), 200)
        return requeue, f"postconf printed '{shown}' for {' and '.join(QUEUE_LIFETIMES)} ({escape(str(exc))}): lifetimes not known, so it was requeued (postsuper -r)"
    shortest = min(seconds)
    name = QUEUE_LIFETIMES[seconds.index(shortest)]
    if held.total_seconds() >= shortest / 2:
        return requeue, (
            f"held {format_duration(int(held.total_seconds()))}, at least half of {name} ({format_duration(shortest)}): "
            f"requeued (postsuper -r), so that a deferral does not bounce it at once; it has a new queue id"
        )
    return ["-H", queue_id], ""


# --- pure helpers -------------------------------------------------------------
@dataclass(frozen=True)
class ReleasePlan:
    """How a release goes out, decided before any I/O: ``postsuper`` of the
    held queue file (``-H`` or ``-r``, see :func:`hold_release`), or the stored copy by SMTP to these recipients; or why it
    cannot be tried from here."""

    method: Literal["smtp", "postsuper"]
    recipients: tuple[str, ...] = ()
    error: str = ""


def plan_release(row: dict[str, Any], hostname: str, to: list[str] | None = None, smtp: bool = False) -> ReleasePlan:
    """The plan for releasing quarantine *row* from host *hostname*.

    A held message (mode ``hold``) is released from Postfix's hold queue on the
    MX that holds it, unless new recipients (*to*) or *smtp* ask for the stored
    copy; that copy goes to *to*, else to the original recipients.
    """
    if row["mode"] == "hold" and not to and not smtp:
        if row["mta_host"] != hostname:
            return ReleasePlan("postsuper", error=f"held in Postfix's queue on {row['mta_host']}: run 'postsuper -H {row['queue_id']}' there ('postsuper -r {row['queue_id']} hold' once it was held for half of Postfix's maximal_queue_lifetime or bounce_queue_lifetime: -H keeps its arrival time), or release --smtp to re-inject the stored copy")
        return ReleasePlan("postsuper", tuple(row["recipients"] or []))
    recipients = tuple(to or row["recipients"] or [])
    if not recipients:
        return ReleasePlan("smtp", error="no recipients")
    return ReleasePlan("smtp", recipients)


def claim_attempt(row: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded attempt of the release that holds *row*'s claim (``released_at`` and ``released_by``), or None.

    None for a row not claimed, and for a claim whose outcome was never
    recorded: the releasing process was killed (or the store failed) between
    its claim and its record, or that release is still under way.
    """
    claimed_at = row.get("released_at")
    if claimed_at is None:
        return None
    for attempt in reversed(row.get("release_result") or []):
        if not isinstance(attempt, dict) or attempt.get("by") != row.get("released_by"):
            continue
        try:
            when = dt.datetime.fromisoformat(str(attempt.get("time")))
        except ValueError:
            continue
        if (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)) == claimed_at:
            return attempt
    return None


def claim_refusals(row: dict[str, Any]) -> int:
    """How many of a claimed *row*'s recipients were refused the message and have not had it since (a partial
    release: the others got it, so the row reads as released).

    Those any attempt refused by name and none delivered to (a forced resend to one who already had it does not
    make the row whole; an address given with ``--to`` that is not one of the message's is not counted), or, when
    more, the claim's attempt's own refusals: those it names and has not delivered since, with those it only counts
    (its record names at most a few of each reply)."""
    attempt = claim_attempt(row)
    if attempt is None:
        return 0
    history = [entry for entry in row.get("release_result") or [] if isinstance(entry, dict) and not is_left_out(entry)]
    delivered = {recipient for entry in history for recipient in _named(entry.get("delivered"))}
    recipients = set(row.get("recipients") or [])
    named = {recipient for entry in history for recipient in _named(entry.get("refused"))} & recipients - delivered
    more = attempt.get("refused_more")
    counted = sum(int(n) for n in more.values()) if isinstance(more, dict) else 0
    own = set(_named(attempt.get("refused"))) - delivered
    return max(len(named), len(own) + counted + int(attempt.get("refused_other") or 0))


def _named(recipients: object) -> list[str]:
    """The recipients an attempt's ``delivered`` or ``refused`` names (a mapping to replies; anything else, as a
    record some other version wrote, names none)."""
    return [str(recipient) for recipient in recipients] if isinstance(recipients, dict) else []


def release_state(row: dict[str, Any]) -> ReleaseState:
    """Whether *row* is released: ``""`` (not claimed), ``"released"`` (its claim's attempt delivered),
    ``"unknown"`` (its claim's attempt lost the connection after sending) or ``"unrecorded"`` (claimed,
    no outcome recorded). Only ``""`` is releasable without ``--force``."""
    if not row.get("released_at"):
        return ""
    attempt = claim_attempt(row)
    if attempt is not None and attempt.get("delivered"):
        return "released"
    if attempt is not None and attempt.get("unknown"):
        return "unknown"
    return "unrecorded"


def claim_text(row: dict[str, Any]) -> str:
    """What ``show`` says of *row*'s claim (an empty string when it has none)."""
    state = release_state(row)
    if not state:
        return ""
    when, who = f"{row['released_at']:%Y-%m-%d %H:%M:%S} UTC", row["released_by"]
    if state == "released":
        refused = claim_refusals(row)
        partly = f"; {refused} recipient(s) refused it (release --force --to ADDR to try them again)" if refused else ""
        return f"{when} by {who} ({row['release_count']} time(s)){partly}"
    earlier = f"; delivered {row['release_count']} time(s) before" if row.get("release_count") else ""
    if state == "unknown":
        return (
            f"claimed by {who} at {when}, outcome unknown: the connection was lost after the message was sent; "
            f"check the server's log before release --force sends it again{earlier}"
        )
    return f"claimed by {who} at {when}, outcome not recorded (release --force to send again){earlier}"


def queue_ids(replies: Iterable[str]) -> list[str]:
    """The queue ids in the servers' replies (Postfix: ``250 2.0.0 Ok: queued as 4AbC``), each once."""
    return list(dict.fromkeys(m.group(1) for reply in replies for m in _QUEUED_AS.finditer(reply)))


def release_header(who: str, when: dt.datetime) -> bytes:
    """The ``X-Milterd-Released: <who> <when>`` line (CRLF included) put on top of a release."""
    who = re.sub(r"[\x00-\x20\x7f]+", "_", who) or "unknown"
    return f"{RELEASE_HEADER}: {who} {email.utils.format_datetime(when)}\r\n".encode()


def header_section(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The header lines of a message given in pieces (up to the blank line, which is left out).

    Stops reading at the blank line, so a large body is never read.
    """
    pending = b""  # the last 3 bytes, held back: a CRLF CRLF may be split across pieces
    for chunk in chunks:
        data = pending + chunk
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            yield data[:end + 2]
            return
        if len(data) > 3:
            yield data[:-3]
        pending = data[-3:]
    yield pending


def is_virus(row: dict[str, Any]) -> bool:
    """Whether a quarantined message was stored because of a virus (a ``CLAMAV_VIRUS`` symbol).

    Never by its reason: that text holds what the sender wrote (an attachment named
    ``Antivirus-Update.exe``, a From domain), and a notice would tell the recipients of
    such a message that it carried a virus."""
    return any(_VIRUS_SYMBOL.search(name) for name in (row.get("symbols") or {}))


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
    out["release_state"] = release_state(row) or None
    return out


def release_command(config: Config, row_id: int) -> str:
    """The command an administrator runs to release one message."""
    conf = f" -c {config.path}" if config.path else ""
    return f"milterd{conf} quarantine release {row_id}"


def calling_user(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The user who really runs this command, for the release audit trail.

    Through sudo (root with SUDO_USER set) the user who ran sudo, else the
    login name of the real uid; never $USER or $LOGNAME, which anyone can set.
    """
    environ = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    if uid == 0 and environ.get("SUDO_USER"):
        return environ["SUDO_USER"]
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (a container's arbitrary uid)
        return f"uid{uid}"


def default_who(config: Config) -> str:
    """Who releases, for the audit trail: the real calling user at this host."""
    return f"{calling_user()}@{config.hostname}"


#: Messages a digest lists at most, the newest of its period (amavisd's and MailScanner's reports are
#: bounded too): after a spam wave a digest of every message would be a mail of many megabytes, over
#: Postfix's message_size_limit (10 MB by default) or past anyone's reading.  Its counts still cover
#: the whole period, and its last line says how many more there are and how to list them.
DIGEST_MAX_ENTRIES = 500
#: Reasons the digest counts by, the most frequent (a reason holds the message's score: a spam wave
#: has thousands); the others are summed on one line.
DIGEST_MAX_REASONS = 20
#: Characters of one field (subject, sender, reason, who released) in a digest, escaped: the sender
#: writes them, and a 10 kB Subject must not make a 10 kB line.
DIGEST_FIELD_WIDTH = 200
#: Characters of a digest entry's recipients, at most (with ``(+N more)`` after them).
DIGEST_RECIPIENTS_WIDTH = 300
#: Rows the virus notices' pass reads per query (``quarantine digest --notify-virus-recipients``):
#: it goes through the whole period, which after a virus wave holds thousands of rows.
NOTICE_PAGE = 500


def _field(value: object, width: int = DIGEST_FIELD_WIDTH) -> str:
    """A field of the sender's text for a digest: escaped, and at most *width* characters."""
    text = "" if value is None else value if isinstance(value, str) else str(value)
    # Cut first (an escaped character is never shorter), so that a 10 MB field is never escaped whole.
    return cut(escape(text[: width + 1]), width)


def _recipients_field(recipients: list[str] | None) -> str:
    """The ``to:`` of a digest entry: the recipients as they fit in ``DIGEST_RECIPIENTS_WIDTH``, then ``(+N more)``."""
    recipients = recipients or []
    shown: list[str] = []
    width = 0
    for recipient in recipients:
        item = "<" + _field(recipient) + ">"
        if shown and width + len(item) + 2 > DIGEST_RECIPIENTS_WIDTH:
            break
        shown.append(item)
        width += len(item) + 2
    more = len(recipients) - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more else "")


def list_command(config: Config, since: dt.datetime) -> str:
    """The command that lists every message quarantined since *since* (those a digest left out)."""
    conf = f" -c {config.path}" if config.path else ""
    return f"milterd{conf} quarantine list --since {since.astimezone(dt.timezone.utc):%Y-%m-%dT%H:%M:%S}"


def format_digest(
    rows: list[dict[str, Any]], config: Config, since: dt.datetime, now: dt.datetime,
    total: int | None = None, reasons: list[tuple[str, int]] | None = None,
) -> str:
    """The text of the postmaster's digest: counts by reason, then one block per message, oldest first.

    *rows* are the period's messages oldest first, or its newest ones when *total* (the
    period's count) is larger; *reasons* the period's counts by reason, most frequent first
    (counted from *rows* when None).  At most ``DIGEST_MAX_ENTRIES`` of them are listed, the
    newest, and ``DIGEST_MAX_REASONS`` reasons; the last line then says how many more
    there are and the command that lists them.  Every field is escaped and cut
    (``DIGEST_FIELD_WIDTH``): the digest's size has a bound whatever the senders wrote.
    """
    listed = rows[-DIGEST_MAX_ENTRIES:] if len(rows) > DIGEST_MAX_ENTRIES else rows
    total = len(rows) if total is None else max(total, len(listed))
    if reasons is None:
        reasons = Counter(row["reason"] or "" for row in rows).most_common()
    lines = [
        f"Quarantine on {config.hostname}: {total} message{'s' if total != 1 else ''}",
        f"from {since:%Y-%m-%d %H:%M} to {now:%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    if not total:
        lines.append("Nothing was quarantined.")
        return "\n".join(lines) + "\n"
    lines.append("By reason:")
    for reason, count in reasons[:DIGEST_MAX_REASONS]:
        lines.append(f"  {count:5}  {_field(reason or '(none)')}")
    others = reasons[DIGEST_MAX_REASONS:]
    counted = sum(count for _reason, count in reasons[:DIGEST_MAX_REASONS])
    if others or counted < total:
        lines.append(f"  {total - counted:5}  (other reasons)")
    lines.append("")
    more = total - len(listed)
    if more:
        lines.append(f"The {len(listed)} newest are listed below; {more} older ones are not (see the end).")
        lines.append("")
    for row in listed:
        state, released = release_state(row), ""
        if state == "released":
            refused = claim_refusals(row)
            partly = f" ({refused} recipient(s) refused it)" if refused else ""
            released = f"  released {row['released_at']:%Y-%m-%d %H:%M} by {_field(row['released_by'])}{partly}\n"
        elif state:
            released = f"  {_field(claim_text(row), 2 * DIGEST_FIELD_WIDTH)}\n"
        lines.append(
            f"#{row['id']}  {row['time']:%Y-%m-%d %H:%M:%S}  score {row['score']:.1f}  {_field(row['reason'])}\n"
            f"  from:    <{_field(row['sender'])}>\n"
            f"  to:      {_recipients_field(row['recipients'])}\n"
            f"  subject: {_field(row['subject'])}\n"
            f"{released}"
            # Only a message not claimed is released without --force: a claimed one's command would be refused.
            + (f"  release: {release_command(config, row['id'])}\n" if not state else "")
        )
    if more:
        lines.append(
            f"{more} more message{'s' if more != 1 else ''} of this period, older than those above, "
            f"{'are' if more != 1 else 'is'} not listed; to see every message since {since:%Y-%m-%d %H:%M} UTC "
            f"(newest first; --sender, --recipient or --reason narrow it):\n"
            f"  {list_command(config, since)}\n"
        )
    return "\n".join(lines)


def virus_notice(row: dict[str, Any], report_from: str) -> tuple[str, str]:
    """The Subject and text of the notice to a recipient of a message quarantined as a virus.

    The quarantined message's Subject, sender and reason are the sender's text:
    escaped, so that a CR/LF in them cannot add a header or forge lines, and cut
    as a digest's fields are (``DIGEST_FIELD_WIDTH``): a 10 kB Subject makes no 10 kB line.
    """
    subject = _field(row["subject"])
    text = (
        f"A message to you was stopped because it carries a virus; it was not delivered.\n\n"
        f"  date:    {row['time']:%Y-%m-%d %H:%M} UTC\n"
        f"  from:    <{_field(row['sender'])}>\n"
        f"  subject: {subject}\n"
        f"  found:   {_field(row['reason'])}\n\n"
        f"If you expected this message, ask {report_from} (quarantine id {row['id']}).\n"
    )
    return f"Quarantined: {subject}"[:200], text


def subject_field(subject: str) -> str:
    """The Subject field's body for a notice or digest: *subject* escaped, in RFC 2047 encoded words when needed.

    Plain ASCII text goes as it is.  Non-ASCII text, or text holding ``=?``
    (the sender's own encoded words, stored decoded once already), is encoded
    whole here: given to the email package as it is, those would be decoded
    again, and a ``=0D=0A`` in them would start a new header line.
    """
    text = escape(subject)
    if text.isascii() and "=?" not in text:
        return text
    return Header(text, "utf-8", header_name="Subject").encode(linesep="\r\n")


def to_field(recipients: list[str]) -> str:
    """The To field's body: the addresses as they are, or ``undisclosed-recipients:;`` (RFC 5322 §3.6.3)
    when one of them is not plain printable ASCII (the email package would decode encoded words even
    inside a quoted local part; the envelope delivers the notice anyway)."""
    if all(r.isascii() and r.isprintable() and "=?" not in r for r in recipients):
        return ", ".join(recipients)
    return "undisclosed-recipients:;"


def notice_message(sender: str, to: list[str], subject: str, text: str, hostname: str) -> bytes:
    """A notice or digest as sent: headers (none of them shaped by the sender's text), then *text*, CRLF line ends."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to_field(to)
    # set_raw: the encoded words go out as built here, neither decoded nor folded again by the email package.
    message.set_raw("Subject", subject_field(subject))
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain=hostname)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


# --- the store --------------------------------------------------------------------
class Quarantine:
    """The quarantine table of one store, and the actions on it."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.repo = QuarantineStore(store.engine)

    def rows(
        self, since: dt.datetime | None = None, sender: str | None = None, recipient: str | None = None, reason: str | None = None, limit: int | None = None,
        older_than: dt.datetime | None = None, below_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Quarantined messages (without the message itself), newest first; with *below_id*, only those of a smaller id."""
        found = [
            row
            for row in self.repo.rows(since=since, older_than=older_than, sender=sender, limit=(limit or None) if recipient is None and not reason else None, below_id=below_id)
            if matches(row, None, recipient, reason)
        ]
        return found[:limit] if limit else found

    def get(self, row_id: int) -> dict[str, Any]:
        """One quarantined message's row (without the message); QuarantineError when there is none."""
        row = self.repo.get(row_id)
        if row is None:
            raise QuarantineError(f"no quarantined message with id {row_id}")
        return row

    def message_chunks(self, row: dict[str, Any]) -> Iterator[bytes]:
        """The stored message of *row* as received, piece by piece (StoreError when it cannot be read whole)."""
        return self.repo.message_chunks(row["id"], row["size"])

    def message_bytes(self, row: dict[str, Any]) -> bytes:
        """The stored message whole in memory, for bounded uses (spamd's TELL)."""
        return b"".join(self.message_chunks(row))

    def delete(self, ids: Iterable[int]) -> int:
        """Delete these messages; return how many there were."""
        return self.repo.delete(ids)

    def purge(self, older_than: dt.datetime) -> int:
        """Delete every message stored before *older_than*; return how many.

        A message a release claimed in the last day is kept for a later purge: that
        release may still be reading it (``store.quarantine.RELEASE_GRACE``).
        """
        return self.repo.purge(older_than)

    def purge_candidates(self, older_than: dt.datetime) -> list[dict[str, Any]]:
        """The messages :meth:`purge` would delete now (``purge --dry-run``), newest first."""
        return self.repo.purge_candidates(older_than)

    # --- release --------------------------------------------------------------
    def release(self, row_id: int, to: list[str] | None = None, force: bool = False, who: str | None = None, ham: bool = False, smtp: bool = False) -> ReleaseReport:
        """Release one message (see the module docstring); the report says what happened.

        Raises QuarantineError when it cannot even be tried (unknown id,
        already released without *force*, store down).
        """
        who = who or default_who(self.config)
        row = self.get(row_id)
        now = utcnow()
        plan = plan_release(row, self.config.hostname, to, smtp)
        progress = reinject.Progress()
        previous = self._claim(row, who, now, force)
        try:
            if plan.error:
                report = ReleaseReport(row_id, method=plan.method, error=plan.error)
            elif plan.method == "postsuper":
                report = self._postsuper(row, plan.recipients, now)
            else:
                report = self._smtp(row, list(plan.recipients), who, now, progress)
        except Exception as exc:  # noqa: BLE001 - whatever happened, record it (the claim is given back unless the message may have gone out)
            report = self._failed(row_id, plan.method, list(plan.recipients), progress, f"{exc.__class__.__name__}: {exc}")
        except BaseException:
            # Ctrl-C (or a SystemExit) while sending. Before the final dot nothing went out: the
            # claim is given back, else the message would read as released for good. After it, the
            # server may have queued it: the claim stays, the outcome recorded as unknown.
            interrupted = self._failed(row_id, plan.method, list(plan.recipients), progress, "interrupted")
            with contextlib.suppress(StoreError):
                self._record(row, interrupted, who, now, previous)
            raise
        # Recorded before anything is taught: teaching (spamd's TELL may take its whole timeout)
        # can fail or be interrupted, and must neither leave a delivery unrecorded, which reads as
        # "outcome not recorded, release --force to send again", nor give the claim back.
        try:
            self._record(row, report, who, now, previous)
        except StoreError as exc:
            # What went out must be said all the same: a plain retry is refused by the claim, which stays.
            report.record_error = self._not_recorded(row, report, exc)
        if ham and report.delivered:
            try:
                self._learn_ham(row, report)
            except Exception as exc:  # noqa: BLE001 - the release stands; the administrator is told
                report.error = report.error or f"it was released, but not learned as ham: {exc.__class__.__name__}: {exc}"
            if report.learned_ham:
                try:
                    self.repo.mark_learned_ham(row_id)
                except StoreError as exc:
                    report.error = report.error or f"it was learned as ham, but that could not be recorded: {exc}"
        return report

    def _claim(self, row: dict[str, Any], who: str, now: dt.datetime, force: bool) -> tuple[Any, Any]:
        """Claim *row* for this release; return the claim it replaced (``released_at``, ``released_by``),
        which a release that sends nothing gives back.

        A forced claim replaces only the claim it read: when another release claimed the row
        meanwhile, it reads that one and tries again, so that giving back never restores a claim
        older than the one it took (a delivered message would read as never released).
        """
        for _ in range(5):
            previous = (row["released_at"], row["released_by"])
            if self.repo.claim(row["id"], who, now, force, previous):
                return previous if force else (None, None)
            if not force:
                break
            row = self.get(row["id"])
        else:
            raise QuarantineError(f"message {row['id']} is being claimed by other releases: try again")
        current = self.get(row["id"])
        if current["released_at"] is None:  # a release that sent nothing gave its claim back meanwhile
            raise QuarantineError(f"message {row['id']} was being released by another release, which gave it back: try again")
        when = f"{current['released_at']:%Y-%m-%d %H:%M:%S} UTC"
        state = release_state(current)
        if state == "unknown":
            raise QuarantineError(
                f"message {row['id']} was claimed at {when} by {current['released_by']}, and the outcome is unknown "
                f"(the connection was lost after the message was sent): check the server's log, then use --force to release it again"
            )
        if state == "unrecorded":
            raise QuarantineError(
                f"message {row['id']} was claimed at {when} by {current['released_by']}, and its outcome was not recorded: "
                f"use --force to release it again (unless that release is still running)"
            )
        raise QuarantineError(f"message {row['id']} was already released at {when} by {current['released_by']}; use --force to release it again")

    def _record(self, row: dict[str, Any], report: ReleaseReport, who: str, now: dt.datetime, previous: tuple[Any, Any]) -> None:
        # Nothing went out: the claim is given back, the message stays releasable. What may
        # have gone out (an unknown outcome) keeps it, as a delivery does, but is not counted.
        # learned_ham is recorded on its own, once the message was taught (see release).
        self.repo.record_release(
            row["id"], report.as_json(who, now), bool(report.delivered), (now, who), previous, False,
            keep_claim=bool(report.delivered or report.unknown), bound=bound_history,
        )

    def _smtp(self, row: dict[str, Any], recipients: list[str], who: str, now: dt.datetime, progress: reinject.Progress) -> ReleaseReport:
        if len(row["sender"] or "") >= SENDER_LIMIT:
            # Sent from a shortened address, bounces would go nowhere (or to someone else).
            why = f"{reinject.UNSENDABLE}the sender's address is {SENDER_LIMIT} characters, the most the store keeps: it may have been cut"
            return ReleaseReport(row["id"], method="smtp", error=why, refused={r: why for r in recipients})
        report = ReleaseReport(row["id"])
        header = release_header(who, now)
        message = itertools.chain([header], self._delivered_chunks(row))
        try:
            report.delivered, report.refused = reinject.send(
                self._target(), row["sender"] or "", recipients, message, self.config.hostname, auth=self._auth(), progress=progress,
                size=len(header) + int(row["size"] or 0),
            )
        except (OSError, smtplib.SMTPException, StoreError) as exc:
            return self._failed(row["id"], "smtp", recipients, progress, f"{self.config.quarantine.release_smtp}: {reinject.smtp_error(exc)}")
        return report

    def _delivered_chunks(self, row: dict[str, Any]) -> Iterable[bytes]:
        """The stored message as a release sends it: without the header fields the milter's edits take out of
        delivered mail, which a release does not go through: the Authentication-Results claiming our
        authserv-id (a forger's ``dmarc=pass`` in our name; ``[checks.spf] remove_forged``), a sender's own
        X-Spam-* fields and X-Milterd-Released (a forged or an earlier release's), X-Virus-* fields (``[clamav] headers``, clamd enabled).
        The id is the one configured, else this host's name and that of the MX host that quarantined the
        message (they share the store)."""
        chunks = self.message_chunks(row)
        config = self.config
        ids: set[str] = set()
        if config.checks.spf.remove_forged:
            configured = config.milter.authserv_id
            ids = {(configured or name).rstrip(".") for name in (config.hostname, row.get("mta_host") or "") if configured or name}
        names: set[bytes] = set()
        if config.clamav.enabled and config.clamav.headers:
            names |= {name.lower().encode() for name in VIRUS_HEADERS}

        def removed(field: bytes) -> bool:
            name = field_name(field)
            return name in names or spam_verdict_field(name.decode("latin-1")) or any(claiming_field(field, i) for i in ids)

        return without_fields(chunks, removed)

    @staticmethod
    def _failed(row_id: int, method: str, recipients: list[str], progress: reinject.Progress, why: str) -> ReleaseReport:
        """The report of a release that failed for *why*: the recipients of the transactions the server took
        delivered, those of the one whose final dot was sent unanswered of unknown outcome, the others (*recipients*,
        those refused, those left for a later transaction) refused: nothing went out to them."""
        unknown = {r: f"no reply after the message was sent ({why})" for r in progress.in_flight} if progress.data_sent else {}
        delivered = dict(progress.delivered)
        if not delivered and not unknown:
            return ReleaseReport(row_id, method=method, error=why, refused={r: why for r in recipients})
        # A recipient refused with 452 was left for a later transaction, which the failure ended: not sent, for *why*.
        refused = {r: (why if reply.startswith("452") else reply) for r, reply in progress.refused.items()}
        refused.update({r: why for r in [*recipients, *progress.in_flight] if r not in refused})  # in_flight: its dot unsent
        refused = {r: reply for r, reply in refused.items() if r not in delivered and r not in unknown}
        if not unknown:
            error = f"the connection failed after {len(delivered)} recipient(s) got the message, before the others did ({why})"
            return ReleaseReport(row_id, method=method, delivered=delivered, refused=refused, error=error)
        lost = "interrupted after the message was sent" if why == "interrupted" else f"the connection was lost after the message was sent ({why})"
        return ReleaseReport(
            row_id, method=method, delivered=delivered, refused=refused, unknown=unknown,
            error=(
                f"outcome unknown: {lost}; check the server's log (queue id not known) before releasing again: "
                f"the message stays claimed, only release --force sends it again"
            ),
        )

    def _not_recorded(self, row: dict[str, Any], report: ReleaseReport, exc: StoreError) -> str:
        """What an administrator must know when a release's outcome could not be stored: who received it."""
        if report.delivered:
            ids = [row["queue_id"]] if report.method == "postsuper" and row.get("queue_id") else queue_ids(report.delivered.values())
            where = f"queue id {', '.join(ids)}" if ids else "queue id not known"
            return (
                f"delivered to {', '.join(report.delivered)} ({where}) but not recorded: {exc}; "
                f"the message stays claimed: do not release it again"
            )
        if report.unknown:
            return f"outcome unknown and not recorded: {exc}; the message stays claimed: check the server's log before release --force"
        return f"nothing was released, but the claim could not be given back: {exc}; release --force sends it once the store is back"

    def _target(self) -> reinject.Target:
        """release_smtp, with the TLS policy it is sent to with (release_smtp_tls, release_smtp_tls_ca_file)."""
        section = self.config.quarantine
        try:
            return reinject.parse_target(section.release_smtp, tls=section.release_smtp_tls, ca_file=section.release_smtp_tls_ca_file)
        except ValueError as exc:
            raise QuarantineError(f"[quarantine] release_smtp: {exc}") from None

    def _auth(self) -> tuple[str, str] | None:
        """SMTP AUTH credentials (release_user, the first line of release_password_file), or None."""
        section = self.config.quarantine
        if not section.release_user:
            return None
        try:
            return section.release_user, reinject.read_password(section.release_password_file)
        except (OSError, ValueError) as exc:
            raise QuarantineError(f"[quarantine] release_password_file: cannot read {section.release_password_file}: {read_error(exc)}") from None

    def _postsuper(self, row: dict[str, Any], recipients: tuple[str, ...], now: dt.datetime) -> ReleaseReport:
        """Release a held message from Postfix's hold queue: ``postsuper -H``, or ``-r`` (see :func:`hold_release`)."""
        report = ReleaseReport(row["id"], method="postsuper")
        lifetimes, why = self._queue_lifetimes()
        arguments, note = hold_release(row["queue_id"], now - row["time"], lifetimes, why)
        if note:
            report.notes.append(note)
        report.command = " ".join(["postsuper", *arguments])
        result = subprocess.run(["postsuper", *self._postfix_config(), *arguments], capture_output=True, text=True, timeout=60)
        released = re.search(r"(?:Released|Requeued)[^:\n]*: (\d+) message", result.stderr + result.stdout)
        if result.returncode != 0 or not released or released.group(1) == "0":
            report.error = f"{report.command}: {(result.stderr or result.stdout).strip() or 'not in the hold queue'} (release --smtp re-injects the stored copy)"
            return report
        done = "released from the hold queue" if arguments[0] == "-H" else "requeued from the hold queue (a new queue id)"
        if arguments[0] == "-r":
            # A requeued message waits in the maildrop until pickup looks again (up to a minute): wake it, as postdrop does.
            try:
                kicked = subprocess.run(["postkick", *self._postfix_config(), "public", "pickup", "W"], capture_output=True, text=True, timeout=30).returncode == 0
            except (OSError, subprocess.SubprocessError):
                kicked = False
            if not kicked:
                report.notes.append("postkick public pickup W failed: Postfix's pickup takes the requeued message within a minute")
        report.delivered = {r: f"{done} ({row['queue_id']})" for r in recipients}
        return report

    def _postfix_config(self) -> list[str]:
        """``-c DIR`` for Postfix's commands when ``[quarantine] postfix_config`` is set."""
        directory = self.config.quarantine.postfix_config
        return ["-c", directory] if directory else []

    def _queue_lifetimes(self) -> tuple[str | None, str]:
        """What ``postconf -h`` prints of ``QUEUE_LIFETIMES``, or None and why not."""
        command = ["postconf", *self._postfix_config(), "-h", *QUEUE_LIFETIMES]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"postconf failed: {exc}"
        if result.returncode != 0:
            return None, f"postconf failed: {cut(escape(result.stderr.strip()[:201]), 200) or f'status {result.returncode}'}"
        return result.stdout, ""

    def learn(self, row: dict[str, Any], label: Label) -> str:
        """Teach milterd's classifier that *row*'s message is *label*; say what happened.

        StoreError when the store refuses it.
        """
        if not self.config.learner.enabled:
            return "[learner] is off: milterd's classifier did not learn it"
        # One pass over the stored pieces, never the whole message in memory (it may be tens of
        # MB): the digest (the same as message_digest's, which keeps "learn once" across the
        # CLI, auto-learn and here) is hashed as they come; only the start that is tokenised
        # (max_size, and at most what tokenize reads) is kept.
        digest, start, max_size = MessageDigest(), bytearray(), min(self.config.learner.max_size, MAX_INPUT)
        for chunk in self.message_chunks(row):
            digest.update(chunk)
            if len(start) < max_size:
                start += chunk[: max_size - len(start)]
        outcome = LearnerStore(self.store.engine).learn(digest.hexdigest(), hashed_tokens(bytes(start)), label)
        return f"milterd's classifier: {label} {outcome}"

    def confirm(self, row_id: int) -> tuple[list[str], str]:
        """Confirm a quarantined message as spam: milterd's classifier learns it (and spamd, when enabled).

        Returns what was done and what failed ("" for nothing: spamd's failure, the classifier having
        learned it); QuarantineError for an unknown id, StoreError when the store refuses it.
        """
        row = self.get(row_id)
        notes = [self.learn(row, "spam")]
        self.repo.mark_spam(row_id, row.get("message_log_id"))  # released as ham before: no longer a false positive
        spamd = self.config.spamd
        if spamd.enabled and row["size"] > spamd.max_size:
            notes.append(f"larger than [spamd] max_size ({row['size']} bytes): not learned")
        elif spamd.enabled:
            try:
                SpamdClient(spamd.address, timeout=spamd.timeout, user=self._spamd_user(row)).tell(self.message_bytes(row), "spam")
                notes.append("spamd learned it as spam")
            except Exception as exc:  # noqa: BLE001 - ScannerError: the classifier has learned it anyway
                return notes, f"spamd could not learn it as spam: {exc}"
        return notes, ""

    def _spamd_user(self, row: dict[str, Any]) -> str:
        """The ``User:`` the scan sent spamd for this message (``[spamd] user``; ``"@recipient"``: its first
        recipient), so that a per-user Bayes learns in the database that scores the user's mail."""
        setting = self.config.spamd.user
        if setting == "@recipient":
            recipients = row.get("recipients") or []
            return unstored(str(recipients[0])) if recipients else ""
        return setting

    def _learn_ham(self, row: dict[str, Any], report: ReleaseReport) -> None:
        """Mark the log row as a false positive and teach milterd's classifier and, with spamd enabled, spamd (TELL)."""
        if row.get("message_log_id") is not None:
            try:
                self.repo.mark_ham(row["message_log_id"])
                report.notes.append("log row marked released_as_ham")
            except StoreError as exc:
                report.error = report.error or f"cannot mark the log row: {exc}"
        try:
            report.notes.append(self.learn(row, "ham"))
            report.learned_ham = report.learned_ham or self.config.learner.enabled
        except StoreError as exc:
            report.error = report.error or f"milterd's classifier could not learn it as ham: {exc}"
        if not self.config.spamd.enabled:
            report.notes.append("spamd is not enabled: not learned")
            return
        try:
            spamd = self.config.spamd
            if row["size"] > spamd.max_size:
                report.notes.append(f"larger than [spamd] max_size ({row['size']} bytes): not learned")
                return
            SpamdClient(spamd.address, timeout=spamd.timeout, user=self._spamd_user(row)).tell(self.message_bytes(row), "ham")
            report.learned_ham = True
            report.notes.append("spamd learned it as ham")
        except Exception as exc:  # noqa: BLE001 - ScannerError, or no scanners module
            report.error = report.error or f"spamd could not learn it as ham: {exc}"

    # --- reports -------------------------------------------------------------------
    def digest(self, to: list[str], since: dt.datetime, sender: str | None = None) -> str:
        """Send the postmaster's digest of what was quarantined since *since*; return its summary line.

        It lists the newest ``DIGEST_MAX_ENTRIES`` messages at most (see :func:`format_digest`);
        neither the mail nor this process grows with the period's count."""
        now = utcnow()
        # Bounded in the SQL, whatever the period holds: the counts are the database's, and only the
        # newest DIGEST_MAX_ENTRIES rows are read; all three of the same window, up to *now*.
        total, reasons, last = self.repo.reason_counts(since=since, older_than=now, limit=DIGEST_MAX_REASONS)
        # The rows counted, not one committed meanwhile (which would push a counted one out unnamed).
        rows = [] if last is None else self.repo.rows(since=since, older_than=now, limit=DIGEST_MAX_ENTRIES, below_id=last + 1)[::-1]
        text = format_digest(rows, self.config, since, now, total=total, reasons=reasons)
        total = max(total, len(rows))  # one of a lower id committed after the count (a PostgreSQL sequence's order)
        subject = f"milterd quarantine digest for {self.config.hostname}: {total} message{'s' if total != 1 else ''}"
        sender = sender or self.report_from
        # "Quarantine <postmaster@mx.test>" is the From:; the envelope's sender is the address in it.
        try:
            mail_from = reinject.report_sender(sender)
        except ValueError as exc:
            raise QuarantineError(f"the digest's sender: {exc}") from None
        self._send_text(sender, mail_from, to, subject, text)
        listed = f" ({len(rows)} newest listed)" if len(rows) < total else ""
        return f"{total} messages reported to {', '.join(to)}{listed}"

    def notify_virus_recipients(self, since: dt.datetime, failed: list[str] | None = None) -> int:
        """Tell each recipient of a message quarantined as a virus since *since*; return how many notices were sent.

        Each notice is sent on its own: one refused or failed (``<recipient>: why``,
        appended to *failed*) does not stop the others.  Without *failed*, a
        QuarantineError naming them all follows once every notice was tried.

        A recipient is told at most once per message, even by digests that run at the
        same moment on hosts sharing the store: each notice is claimed in the row
        (``notified``) before it is sent, and a run that finds it claimed already skips
        it.  A notice that fails is given back, and a later run, whatever its window,
        tries it again; one that cannot be claimed is not sent (and named in *failed*).
        A crash between the claim and the sending loses that notice: it stays recorded
        as sent.  Notices go out from the null sender (``MAIL FROM:<>``, RFC 3834
        3.3): one that bounces makes no bounce back; their From: is ``report_from``.
        """
        sent = 0
        problems: list[str] = []
        for row in self._rows_in_pages(since):
            if not is_virus(row) or row.get("released_at"):
                continue
            told = {r.lower() for r in row.get("notified") or []}
            # One notice per mailbox: Bob@example.com and bob@example.com are told once.
            waiting = [r for r in {r.lower(): r for r in reversed(row["recipients"] or [])}.values() if r.lower() not in told][::-1]
            if not waiting:
                continue
            subject, text = virus_notice(row, self.report_from)
            for recipient in waiting:
                if self._notify(row["id"], recipient, subject, text, problems):
                    sent += 1
        if failed is not None:
            failed.extend(problems)
        elif problems:
            raise QuarantineError(f"{sent} virus notices sent, {len(problems)} not: " + "; ".join(problems))
        return sent

    def _rows_in_pages(self, since: dt.datetime) -> Iterator[dict[str, Any]]:
        """The rows quarantined since *since*, newest first, read ``NOTICE_PAGE`` at a time: after a
        virus wave the notices' pass holds one page, not the period (as the digest, see :meth:`digest`).

        Paged by id, in the order of :meth:`rows`; a row stored during the pass may be left to the
        next run, as when the period was read at once (each notice is claimed in its row anyway)."""
        below_id: int | None = None
        while True:
            page = self.rows(since=since, limit=NOTICE_PAGE, below_id=below_id)
            yield from page
            if len(page) < NOTICE_PAGE:
                return
            below_id = page[-1]["id"]

    def _notify(self, row_id: int, recipient: str, subject: str, text: str, problems: list[str]) -> bool:
        """Claim, then send, one virus notice; True when it was sent, else why not appended to *problems* (if anything went wrong)."""
        try:
            if not self.repo.claim_notice(row_id, recipient):
                return False  # another run, here or on another host, has told or is telling it
        except StoreError as exc:
            problems.append(f"<{recipient}>: not sent: cannot record it ({exc})")
            return False
        try:
            self._send_text(self.report_from, "", [recipient], subject, text)
        except QuarantineError as exc:
            try:
                self.repo.release_notice(row_id, recipient)
            except StoreError as store_exc:
                problems.append(f"<{recipient}>: not sent ({exc}), but it stays recorded as sent ({store_exc}): it will not be tried again")
                return False
            problems.append(f"<{recipient}>: {exc}")
            return False
        return True

    @property
    def report_from(self) -> str:
        """The sender of digests and notices."""
        return self.config.quarantine.report_from or f"postmaster@{self.config.hostname}"

    def _send_text(self, sender: str, mail_from: str, to: list[str], subject: str, text: str) -> None:
        """Mail *text* to *to*, From: *sender*, the envelope's sender *mail_from* ("": the null sender)."""
        try:
            message = notice_message(sender, to, subject, text, self.config.hostname)
        except ValueError as exc:  # the email package's refusal of a header (a line break in a name): this mail only
            raise QuarantineError(f"cannot write the message: {exc}") from None
        try:
            _delivered, refused = reinject.send(self._target(), mail_from, to, [message], self.config.hostname, auth=self._auth())
        except (OSError, smtplib.SMTPException) as exc:
            raise QuarantineError(f"cannot send to {self.config.quarantine.release_smtp}: {reinject.smtp_error(exc)}") from None
        except UnicodeEncodeError as exc:  # smtplib: a non-ASCII address to a server without SMTPUTF8, or one that is not UTF-8
            raise QuarantineError(f"cannot send to {self.config.quarantine.release_smtp}: an address it cannot take ({exc.reason})") from None
        if refused:
            raise QuarantineError("refused: " + "; ".join(f"<{r}>: {reply}" for r, reply in refused.items()))


# --- housekeeping -------------------------------------------------------------------
def retention_job(services: Any) -> str:
    """The maintenance job: purge quarantined mail older than ``[quarantine] retention``."""
    retention = services.config.quarantine.retention
    if not retention:
        return ""
    count = Quarantine(services.store, services.config).purge(utcnow() - dt.timedelta(seconds=retention))
    return f"purged {count} quarantined message{'s' if count != 1 else ''}" if count else ""


"""``milterd quarantine list|show|release|delete|purge|digest``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import sys
from typing import Any, Callable

from .. import reinject
from ..config import load_config
from ..logs import MAX_LOG_RECIPIENTS
from ..quarantine import Quarantine, QuarantineError, as_json, calling_user, claim_refusals, claim_text, header_section, is_left_out, release_command, release_state
from ..store import StoreError, utcnow
from ..text import cut, escape
from ..tuning import json_safe
from ..units import ago, parse_duration
from . import address_arg, config_parent, count_arg, open_store, since_arg, text_arg, whole_number_arg


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``quarantine`` and its sub-commands."""
    parser = sub.add_parser("quarantine", parents=[config_parent()], help="list, show, release and report quarantined mail")
    actions = parser.add_subparsers(dest="quarantine_action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", parents=[config_parent()], help="quarantined messages, newest first")
    listing.add_argument("--since", type=since_arg, metavar="AGE", help="only messages newer than AGE (24h, 7d) or an ISO date")
    listing.add_argument("--sender", type=address_arg, metavar="ADDR", help="only this envelope sender")
    listing.add_argument("--recipient", type=address_arg, metavar="ADDR", help="only messages to this recipient")
    listing.add_argument("--reason", type=text_arg, metavar="TEXT", help="only reasons containing TEXT")
    listing.add_argument("--limit", type=count_arg, default=0, metavar="N", help="at most N messages (default: all)")
    listing.add_argument("--json", action="store_true", help="a JSON array, one object per message")
    listing.set_defaults(func=_run(run_list))

    show = actions.add_parser("show", parents=[config_parent()], help="one message: a summary, its headers or the raw message")
    show.add_argument("id", type=_row_id)
    form = show.add_mutually_exclusive_group()
    form.add_argument("--raw", action="store_true", help="the message as received, byte for byte")
    form.add_argument("--headers", action="store_true", help="its header section")
    show.set_defaults(func=_run(run_show))

    release = actions.add_parser("release", parents=[config_parent()], help="deliver messages after all")
    release.add_argument("ids", type=_row_id, nargs="+", metavar="ID")
    release.add_argument("--to", action="append", type=_address, metavar="ADDR", help="deliver to this recipient instead of the original ones; repeat for more")
    release.add_argument("--force", action="store_true", help="release again a message already released")
    release.add_argument("--ham", action="store_true", help="a false positive: mark it in the log and teach milterd's classifier (and spamd, when enabled) it is ham")
    release.add_argument("--smtp", action="store_true", help="for held mail: re-inject the stored copy instead of running postsuper (-H, or -r for mail held long)")
    release.add_argument("--by", type=text_arg, metavar="WHO", help="who releases (default: your login at this host; through sudo, the user who ran sudo)")
    release.set_defaults(func=_run(run_release))

    confirm = actions.add_parser("confirm", parents=[config_parent()], help="confirm messages as spam: milterd's classifier (and spamd, when enabled) learns them")
    confirm.add_argument("ids", type=_row_id, nargs="+", metavar="ID")
    confirm.set_defaults(func=_run(run_confirm))

    remove = actions.add_parser("delete", parents=[config_parent()], help="delete messages from the quarantine")
    remove.add_argument("ids", type=_row_id, nargs="+", metavar="ID")
    remove.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    remove.set_defaults(func=_run(run_delete))

    purge = actions.add_parser("purge", parents=[config_parent()], help="delete messages older than an age")
    purge.add_argument("--older-than", required=True, type=_duration, metavar="AGE", help="e.g. 30d")
    purge.add_argument("--dry-run", action="store_true", help="print what would be purged, delete nothing")
    purge.set_defaults(func=_run(run_purge))

    digest = actions.add_parser("digest", parents=[config_parent()], help="mail a summary of the quarantine to the postmaster")
    digest.add_argument("--to", action="append", required=True, type=_address, metavar="ADDR", help="where the digest goes; repeat for more")
    digest.add_argument("--since", type=since_arg, default=None, metavar="AGE", help="the period it covers (default 24h)")
    digest.add_argument("--from", dest="sender", type=_sender, metavar="ADDR", help="its sender (default: [quarantine] report_from)")
    digest.add_argument("--notify-virus-recipients", action="store_true", default=None, help="also tell the recipients of virus-quarantined mail ([quarantine] notify_virus_recipients)")
    digest.set_defaults(func=_run(run_digest))




#: The largest id a row can have (a signed 64-bit integer, SQLite's and PostgreSQL's BIGINT).
MAX_ID = 2**63 - 1


#: argparse type of a quarantine id (a larger one made SQLite raise OverflowError).
_row_id = whole_number_arg(1, MAX_ID, "a quarantine id")


#: What a bare address given on the command line may not hold: a second address, a display name or a comment
#: (smtplib would rewrite "a@x, b@y" to a@x and send to it, while the report names the whole string).
_NOT_IN_ADDRESS = re.compile(r"[\s,;<>()\"\x00-\x1f\x7f]")


def _address(value: str) -> str:
    """argparse type of ``--to``: one bare address, ``user@domain``, sent and recorded as given."""
    text_arg(value)
    if "@" not in value.strip("@") or _NOT_IN_ADDRESS.search(value):
        raise argparse.ArgumentTypeError(f"{escape(value)!s}: expected one bare address such as user@example.org")
    return value


def _sender(value: str) -> str:
    """argparse type of ``digest --from``: ``user@domain`` or ``Name <user@domain>``, one address."""
    try:
        reinject.report_sender(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(escape(str(exc))) from None
    return value


def _duration(value: str) -> float:
    """argparse type of ``--older-than``: a duration whose time back from now exists (not before the year 1)."""
    try:
        seconds = parse_duration(value)
        ago(seconds, value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return seconds


def _run(action: Callable[[argparse.Namespace, Quarantine], int]) -> Callable[[argparse.Namespace], int]:
    """Open the store, run *action*, turn store and quarantine errors into a message and status 1."""

    def run(args: argparse.Namespace) -> int:
        config = load_config(args.config)
        try:
            quarantine = Quarantine(open_store(config), config)
            return action(args, quarantine)
        except (QuarantineError, StoreError) as exc:
            print(f"milterd: {escape(str(exc))}", file=sys.stderr)
            return 1

    return run


def run_list(args: argparse.Namespace, quarantine: Quarantine) -> int:
    """Print the quarantined messages that match."""
    rows = quarantine.rows(since=args.since, sender=args.sender, recipient=args.recipient, reason=args.reason, limit=args.limit or None)
    if args.json:
        # ASCII (non-ASCII as \u escapes): UTF-8 whatever the locale (RFC 8259 §8.1), and no raw C1 control or bidi override on a terminal.
        # A NaN or infinite score an older version stored is null (JSON has neither), as in `log --json`.
        json.dump(json_safe([as_json(row) for row in rows]), sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
        return 0
    print(f"{'id':>6}  {'time':19}  {'score':>6}  {'from':28} {'to':28} {'released':10} subject")
    for row in rows:
        released = _list_state(row)
        print(
            f"{row['id']:>6}  {row['time']:%Y-%m-%d %H:%M:%S}  {row['score']:6.1f}  {cut(escape(row['sender'] or '<>'), 28):28} "
            f"{cut(escape(','.join(row['recipients'] or [])), 28):28} {released:10} {cut(escape(row['subject']), 50)}"
        )
        print(f"        {escape(row['reason'])}")
    return 0


def run_show(args: argparse.Namespace, quarantine: Quarantine) -> int:
    """Print one message: summary, headers or raw."""
    row = quarantine.get(args.id)
    if args.raw or args.headers:
        sys.stdout.flush()
        chunks = quarantine.message_chunks(row)
        if args.raw:
            for piece in chunks:  # streamed: never whole in memory
                sys.stdout.buffer.write(piece)
        else:
            sys.stdout.buffer.write(shown_headers(b"".join(header_section(chunks))))
        sys.stdout.buffer.flush()
        return 0
    symbols = sorted((row["symbols"] or {}).items(), key=lambda kv: -abs(kv[1]))
    lines = [
        f"id:         {row['id']}",
        f"time:       {row['time']:%Y-%m-%d %H:%M:%S} UTC on {row['mta_host']} (queue id {row['queue_id'] or '-'}, {row['mode']})",
        f"client:     {row['client_name'] or 'unknown'}[{row['client_addr']}] helo={row['helo']}",
        f"from:       <{row['sender']}>",
        f"to:         {', '.join('<' + r + '>' for r in row['recipients'] or [])}",
        f"subject:    {row['subject']}",
        f"size:       {row['size']}",
        f"score:      {row['score']:.1f}  {row['reason']}",
        f"symbols:    {' '.join(f'{name}({score:g})' for name, score in symbols)}",
    ]
    if row["released_at"]:
        lines.append(f"released:   {claim_text(row)}")
    lines.extend(history_lines(row.get("release_result") or []))
    # Subject, addresses, HELO, replies: the sender's text, one line each, control characters escaped.
    print("\n".join(escape(line) for line in lines))
    return 0


#: Recipients ``show`` names on the line of one outcome (one reply), and ``release`` on its line of one error.
SHOWN_RECIPIENTS = 20
RELEASE_NAMED = 5
#: Up to this many recipients of one reply have a line each, as single ones (more: one line for them all).
OWN_LINES = 5


def grouped(replies: dict[str, str]) -> dict[str, list[str]]:
    """*replies* (recipient: reply) as reply: its recipients, in order."""
    groups: dict[str, list[str]] = {}
    for recipient, reply in replies.items():
        groups.setdefault(str(reply), []).append(str(recipient))
    return groups


def named_recipients(recipients: list[str], count: int, limit: int) -> str:
    """The first *limit* of *recipients* in angle brackets, then ``(+N more)`` for the rest of *count*."""
    more = count - min(len(recipients), limit)
    return ", ".join(f"<{r}>" for r in recipients[:limit]) + (f" (+{more:,} more)" if more > 0 else "")


def history_lines(history: list[Any]) -> list[str]:
    """``show``'s lines of a release history: one per attempt, then one per outcome shared by more than
    ``OWN_LINES`` of its recipients (at most ``SHOWN_RECIPIENTS`` named), not one per recipient."""
    lines = []
    for attempt in history:
        if is_left_out(attempt):
            lines.append(f"  ({attempt['left_out']:,} more failed attempt(s), not kept)")
            continue
        if not isinstance(attempt, dict):
            continue
        refused = attempt.get("refused") or attempt.get("refused_more") or attempt.get("refused_other")
        partly = attempt.get("delivered") and refused
        outcome = "ok" if attempt.get("ok") else ("OUTCOME UNKNOWN" if attempt.get("unknown") else "PARTLY DELIVERED" if partly else "FAILED")
        command = f" ({attempt['command']})" if attempt.get("command") else ""
        lines.append(f"  attempt {attempt.get('time', '')} by {attempt.get('by', '')}: {outcome}{command} {attempt.get('error', '')}".rstrip())
        more = attempt.get("refused_more") or {}
        for key in ("delivered", "refused", "unknown"):
            for reply, recipients in grouped(attempt.get(key) or {}).items():
                count = len(recipients) + (int(more.get(reply, 0)) if key == "refused" else 0)
                if count <= OWN_LINES and count == len(recipients):
                    lines.extend(f"    <{recipient}>: {reply}" for recipient in recipients)
                else:
                    lines.append(f"    {count:,} recipients: {named_recipients(recipients, count, SHOWN_RECIPIENTS)}: {reply}")
        if attempt.get("refused_other"):
            lines.append(f"    {int(attempt['refused_other']):,} more recipients refused with other replies (not kept)")
    return lines


def shown_headers(section: bytes) -> bytes:
    """A header section for a person's terminal: CRLF line ends and TABs kept, every other control
    character (ESC, a lone CR, C1) and undecodable byte made a visible escape, as ``show`` does."""
    lines = section.decode("utf-8", "surrogateescape").split("\r\n")
    return "\r\n".join("\t".join(escape(part) for part in line.split("\t")) for line in lines).encode()


def run_release(args: argparse.Namespace, quarantine: Quarantine) -> int:
    """Release each id; one line per recipient (one per error shared by more than OWN_LINES); status 1 when anything failed."""
    who = args.by or f"{calling_user()}@{quarantine.config.hostname}"
    failed = False
    for row_id in args.ids:
        try:
            report = quarantine.release(row_id, to=args.to, force=args.force, who=who, ham=args.ham, smtp=args.smtp)
        except QuarantineError as exc:
            print(f"milterd: {row_id}: {escape(str(exc))}", file=sys.stderr)  # it may name a stored --by
            failed = True
            continue
        for recipient, reply in report.delivered.items():
            print(f"{row_id}: <{escape(recipient)}>: released: {escape(reply)}")
        # One line per reply shared by many, not per recipient: a configuration error or a server down is every recipient's.
        for what, towards, replies in (("NOT released", "to", report.refused), ("OUTCOME UNKNOWN", "for", report.unknown)):
            for reply, recipients in grouped(replies).items():
                if len(recipients) <= OWN_LINES:
                    for recipient in recipients:
                        print(f"{row_id}: <{escape(recipient)}>: {what}: {escape(reply)}", file=sys.stderr)
                else:
                    named = escape(named_recipients(recipients, len(recipients), RELEASE_NAMED))
                    print(f"{row_id}: {what} {towards} {len(recipients):,} recipients: {named}: {escape(reply)}", file=sys.stderr)
        if report.error and report.error not in report.refused.values():  # a connection failure is each recipient's reply
            print(f"milterd: {row_id}: {escape(report.error)}", file=sys.stderr)
        for note in report.notes:
            print(f"{row_id}: {note}")
        if report.record_error:
            print(f"milterd: {row_id}: {escape(report.record_error)}", file=sys.stderr)
        elif not report.delivered and not report.unknown:
            print(f"{row_id}: nothing was released; the message stays in the quarantine", file=sys.stderr)
        elif report.partial:
            # The exact command: a bare --force would send it again to those who received it. A recipient refused
            # here (an address the server cannot be sent) would only be refused again.
            again = [r for r, reply in report.refused.items() if not reply.startswith(reinject.UNSENDABLE)]
            if again:
                retry = " ".join([release_command(quarantine.config, row_id), "--force", *(f"--to {shlex.quote(escape(r))}" for r in again)])
                print(f"{row_id}: partly released; to retry only the refused recipients: {retry}", file=sys.stderr)
            else:
                print(f"{row_id}: partly released; the other recipients cannot be sent it through this server (above)", file=sys.stderr)
        failed = failed or not report.ok
    return 1 if failed else 0


def run_confirm(args: argparse.Namespace, quarantine: Quarantine) -> int:
    """Learn each id as spam; one line per thing learned; status 1 when an id is unknown or spamd did not learn
    it (as ``release --ham``)."""
    failed = False
    for row_id in args.ids:
        try:
            notes, error = quarantine.confirm(row_id)
        except QuarantineError as exc:
            print(f"milterd: {row_id}: {escape(str(exc))}", file=sys.stderr)
            failed = True
            continue
        for note in notes:
            print(f"{row_id}: {note}")
        if error:
            print(f"milterd: {row_id}: {escape(error)}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def run_delete(args: argparse.Namespace, quarantine: Quarantine) -> int:
    """Delete the given ids (--dry-run: print them); status 1 when one of them did not exist."""
    missing = []
    for row_id in args.ids:
        if args.dry_run:
            try:
                print(f"would delete {_summary(quarantine.get(row_id))}")
            except QuarantineError:
                missing.append(row_id)
        elif quarantine.delete([row_id]) == 0:
            missing.append(row_id)
    for row_id in missing:
        print(f"milterd: no quarantined message with id {row_id}", file=sys.stderr)
    found = len(args.ids) - len(missing)
    print(f"would delete {found} (dry run: nothing deleted)" if args.dry_run else f"deleted {found}")
    return 1 if missing else 0


def run_purge(args: argparse.Namespace, quarantine: Quarantine) -> int:
    """Delete what is older than --older-than."""
    cutoff = utcnow() - dt.timedelta(seconds=args.older_than)  # cannot overflow: _duration checked it
    if args.dry_run:
        rows = quarantine.purge_candidates(cutoff)
        for row in rows:
            print(f"would purge {_summary(row)}")
        print(f"would purge {len(rows)} (dry run: nothing deleted)")
        return 0
    count = quarantine.purge(cutoff)
    print(f"purged {count}")
    return 0


def _list_state(row: dict[str, Any]) -> str:
    """The ``released`` column of ``list``: the day it was released, ``partly`` (released, some
    recipients refused it), ``unknown`` or ``unrecorded`` (claimed, no delivery known: see ``show``),
    ``held`` or ``-``."""
    state = release_state(row)
    if state == "released":
        return "partly" if claim_refusals(row) else f"{row['released_at']:%Y-%m-%d}"
    if state:
        return state
    return "held" if row["mode"] == "hold" else "-"


def _summary(row: dict[str, Any]) -> str:
    """One line of a dry run's list: the first MAX_LOG_RECIPIENTS recipients (the rest counted), the subject cut
    (10,000 recipients made a line of 180 KB)."""
    every = row["recipients"] or []
    more = f" (+{len(every) - MAX_LOG_RECIPIENTS} more)" if len(every) > MAX_LOG_RECIPIENTS else ""
    recipients = escape(",".join(every[:MAX_LOG_RECIPIENTS])) + more
    return f"{row['id']}: {row['time']:%Y-%m-%d %H:%M:%S} <{escape(row['sender'])}> -> {recipients} {cut(repr(row['subject']), 200)}"


def run_digest(args: argparse.Namespace, quarantine: Quarantine) -> int:
    """Send the digest and, when asked, the virus notices, each on its own: a digest that fails
    does not hold the notices back.  Status 1 when one of them failed."""
    since = args.since or utcnow() - dt.timedelta(hours=24)
    status = 0
    try:
        print(quarantine.digest(args.to, since, sender=args.sender))
    except QuarantineError as exc:
        print(f"milterd: {escape(str(exc))}", file=sys.stderr)
        status = 1
    notify = args.notify_virus_recipients if args.notify_virus_recipients is not None else quarantine.config.quarantine.notify_virus_recipients
    if notify:
        failed: list[str] = []
        sent = quarantine.notify_virus_recipients(since, failed)
        for problem in failed:
            print(f"milterd: virus notice to {escape(problem)}", file=sys.stderr)
        print(f"{sent} virus notices sent")
        status = 1 if failed else status
    return status


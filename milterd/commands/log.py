"""``milterd log``: the message log for people (a table) and scripts (JSON)."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any, Iterable

from ..config import load_config
from ..message.model import Action
from ..quarantine import claim_text, release_state
from ..text import cut, escape
from ..tuning import json_safe
from . import address_arg, config_parent, count_arg, describe_failure, open_store, since_arg, text_arg

#: The fields of ``milterd log --json``; scripts and tests rely on these names.
JSON_FIELDS = (
    "id", "time", "queue_id", "client_addr", "client_name", "helo", "auth_user", "sender", "recipients",
    "subject", "message_id", "size", "score", "action", "reason", "symbols", "details", "elapsed_ms", "mta_host",
    "quarantine",
)
#: The fields of a log row's ``quarantine`` object in ``milterd log --json`` (null: none stored for it).
QUARANTINE_FIELDS = ("id", "mode", "released_at", "released_by", "release_count", "release")
#: The symbols the table shows under a message, the weightiest first.
SHOWN_SYMBOLS = 8


#: The actions a log row may have.
ACTIONS = tuple(action.label for action in Action)


def action_arg(value: str) -> str:
    """argparse type of ``--action``: one of :data:`ACTIONS` (a misspelt one listed nothing, as if no mail had it)."""
    name = text_arg(value).strip().lower()
    if name not in ACTIONS:
        raise argparse.ArgumentTypeError(f"{value!r} is no action; one of {', '.join(ACTIONS)}")
    return name


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``log``."""
    parser = sub.add_parser("log", parents=[config_parent()], help="show the message log")
    parser.add_argument("--since", type=since_arg, metavar="AGE", help="only messages newer than AGE (1h, 7d) or an ISO date")
    parser.add_argument("--until", type=since_arg, metavar="AGE", help="only messages older than AGE (1d) or before an ISO date")
    parser.add_argument("--queue-id", type=text_arg, metavar="ID", help="only this Postfix queue id")
    parser.add_argument("--sender", type=address_arg, metavar="ADDR", help="only this envelope sender")
    parser.add_argument("--action", type=action_arg, metavar="NAME", help=f"only this action ({', '.join(ACTIONS)})")
    parser.add_argument("--limit", type=count_arg, default=50, metavar="N", help="at most N messages, newest first (default 50; 0: all)")
    parser.add_argument("--json", action="store_true", help="a JSON array, one object per message")
    parser.set_defaults(func=run_log)




def run_log(args: argparse.Namespace) -> int:
    """Print the log rows that match."""
    config = load_config(args.config)
    try:
        # Read in batches and printed as they come: --limit 0 over months of mail in bounded memory.
        store = open_store(config)
        rows = store.each_message(
            since=args.since, queue_id=args.queue_id, sender=args.sender, action=args.action, limit=args.limit or None, until=args.until,
            quarantine=True,
        )
        first = list(itertools.islice(rows, 1))  # no schema yet, database down: said before any output
    except Exception as exc:  # noqa: BLE001 - no schema yet, database down
        print(f"milterd: cannot read the log: {describe_failure(exc)}", file=sys.stderr)
        return 1
    try:
        if args.json:
            _print_json(itertools.chain(first, rows))
        else:
            print_table(itertools.chain(first, rows))
    except BrokenPipeError:
        raise  # the reader left (| head): cli.main ends quietly with 0
    except Exception as exc:  # noqa: BLE001 - the database gone while reading: what was printed stands
        print(f"\nmilterd: cannot read the rest of the log: {describe_failure(exc)}", file=sys.stderr)
        return 1
    return 0


def _quarantine_json(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A quarantine row as the ``quarantine`` object of ``log --json`` (``release``: null, or a :func:`release_state`)."""
    if row is None:
        return None
    out = {key: row.get(key) for key in QUARANTINE_FIELDS}
    out["released_at"] = row["released_at"].isoformat() if row.get("released_at") else None
    out["release"] = release_state(row) or None
    return out


def _quarantine_line(row: dict[str, Any]) -> str | None:
    """The table's line on the message's quarantine copy: its id and whether it was released."""
    stored = row.get("quarantine")
    if stored is None:
        return "quarantine: no longer stored (deleted or purged)" if row["action"] == Action.QUARANTINE.label else None
    state = release_state(stored)
    said = "not released" if not state else ("released " if state == "released" else "") + claim_text(stored)
    return f"quarantine: #{stored['id']} ({escape(str(stored.get('mode') or ''))}), {escape(said)}"


def _print_json(rows: Iterable[dict[str, Any]]) -> None:
    """A JSON array of the rows, written one object at a time."""
    # ASCII (non-ASCII as \u escapes): UTF-8 whatever the locale (RFC 8259 §8.1), a detail keeping a
    # sender's undecodable byte cannot stop the output, and no raw C1 control or bidi override reaches a terminal.
    written = False
    sys.stdout.write("[")
    for row in rows:
        sys.stdout.write(",\n" if written else "\n")
        sys.stdout.write(json.dumps(json_safe(as_json(row)), indent=1))
        written = True
    sys.stdout.write("\n]\n" if written else "]\n")


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    """A log row as the JSON object ``log --json`` prints."""
    out = {key: row.get(key) for key in JSON_FIELDS}
    out["time"] = row["time"].isoformat() if row.get("time") else None
    out["quarantine"] = _quarantine_json(row.get("quarantine"))
    return out


def print_table(rows: Iterable[dict[str, Any]]) -> None:
    """A readable table, one message per line, then its top symbols."""
    print(f"{'time':19}  {'queue id':12}  {'action':15} {'score':>6}  {'from':28} {'to':28} subject")
    for row in rows:
        to = escape(",".join(row["recipients"] or []))  # the sender's text: control characters made visible
        print(
            f"{row['time']:%Y-%m-%d %H:%M:%S}  {escape(row['queue_id'] or '-'):12}  {escape(row['action']):15} {row['score']:6.1f}  "
            f"{cut(escape(row['sender'] or '<>'), 28):28} {cut(to, 28):28} {cut(escape(row['subject']), 40)}"
        )
        symbols = sorted((row["symbols"] or {}).items(), key=lambda kv: -abs(kv[1]))
        if symbols:
            more = f" (+{len(symbols) - SHOWN_SYMBOLS} more: --json lists every one)" if len(symbols) > SHOWN_SYMBOLS else ""
            print("      " + " ".join(f"{escape(name)}({score:g})" for name, score in symbols[:SHOWN_SYMBOLS]) + more)
        if row["reason"] and row["action"] not in ("accept",):
            print(f"      reason: {escape(row['reason'])}")
        if line := _quarantine_line(row):
            print(f"      {line}")

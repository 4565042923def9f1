"""The per-message summary line and where milterd's own log goes.

One line per message, keyed by the Postfix queue id as Postfix's own lines
are, so that ``grep QUEUEID /var/log/mail.log`` shows milterd's verdict
beside Postfix's::

    milterd[4711]: 4Fh3kT0zZ9z: action=add_header score=6.1 symbols=A,B from=<a@example.org> to=<b@example.net> ms=12
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from .store import MessageRecord


def summary_line(record: MessageRecord) -> str:
    """The summary line of one logged message (without the ``milterd[PID]:`` prefix)."""
    symbols = ",".join(sorted(record.symbols)) or "-"
    recipients = ",".join(f"<{r}>" for r in record.recipients) or "<>"
    line = (
        f"{record.queue_id or 'NOQUEUE'}: action={record.action} score={record.score:g} symbols={symbols}"
        f" client={record.client_name or 'unknown'}[{record.client_addr}] from=<{record.sender}> to={recipients}"
        f" ms={record.elapsed_ms:g}"
    )
    if record.reason and record.action not in ("accept", "add_header"):
        line += f" reason=\"{record.reason}\""
    return line.encode("ascii", "backslashreplace").decode("ascii")


def setup_logging(target: str, level: str) -> None:
    """Send milterd's log to stderr or to syslog's mail facility, Postfix-style."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if target == "syslog" and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL)
        handler.setFormatter(logging.Formatter("milterd[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s milterd[%(process)d]: %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)

"""The per-message summary line and where milterd's own log goes.

One line per message, keyed by the Postfix queue id as Postfix's own lines
are, so that ``grep QUEUEID /var/log/mail.log`` shows milterd's verdict
beside Postfix's::

    milterd[4711]: 4Fh3kT0zZ9z: action=add_header score=6.1 symbols=A,B from=<a@example.org> to=<b@example.net> ms=12
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import re
import sys
import threading
import time
from typing import Any, Callable, Hashable

from .store import MessageRecord
from .text import cut, escape, redact, redact_url, url_password


class Repeats:
    """Which occurrences of a repeated event to log in full: the first of each key, and again once
    *interval* seconds have passed since it was last logged in full.

    A check that fails on every message (a bug, a library broken by an upgrade) would
    otherwise write its whole traceback once per message: thousands of lines an hour
    that bury everything else in the log.  Thread-safe; one per process.
    """

    def __init__(self, interval: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def first(self, key: Hashable) -> bool:
        """Whether this occurrence of *key* is to be logged in full (and, if so, it counts as logged now)."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                return False
            self._last[key] = now
            return True


#: Most characters of one value of the summary line (an address, a host name), escaped.
MAX_LOG_FIELD = 256
#: Most characters of the summary line's reason, escaped.
MAX_LOG_REASON = 512
#: Most recipients the summary line names; the others are counted (``(+990 more)``).
MAX_LOG_RECIPIENTS = 10
#: What a sender may put in a value (a quoted local part: ``"a b>"@x``) that would read as the line's own
#: syntax: a space ending a field, ``<>`` and ``"`` delimiting one, ``\\`` starting an escape (escape()
#: writes the other blanks and control characters as ``\\t``, ``\\xNN``…, and everything not ASCII).
_DELIMITERS = re.compile(r'[ "<>\\]')
#: Those of a quoted value (the reason, whose blanks stay).
_QUOTES = re.compile(r'["\\]')


def summary_line(record: MessageRecord) -> str:
    """The summary line of one logged message (without the ``milterd[PID]:`` prefix).

    What the client controls (names, addresses, the reason's quoted text) is
    escaped, the line's own delimiters included (a blank, ``<>``, ``"``), and
    bounded: one message is always one ASCII line of a few KB at most, whose
    fields a sender cannot forge (``… to=<"x from=<ceo@bank.example> action=accept"@…>``)
    nor push past a syslog daemon's line limit (a thousand 2 KB recipients).
    """
    symbols = ",".join(sorted(record.symbols)) or "-"
    queue_id, client_name, client_addr, sender, recipients = record.queue_id, record.client_name, record.client_addr, record.sender, record.recipients
    more = ""
    # Printable ASCII without the delimiters is a property of each character: the values joined have
    # it when each has it, and then (nearly every message) nothing is escaped; one test, not one a value.
    joined = queue_id + client_name + client_addr + sender + "".join(recipients)
    if len(recipients) > MAX_LOG_RECIPIENTS or len(joined) > MAX_LOG_FIELD or not (joined.isascii() and joined.isprintable()) or _DELIMITERS.search(joined):
        if len(recipients) > MAX_LOG_RECIPIENTS:
            more = f" (+{len(recipients) - MAX_LOG_RECIPIENTS} more)"
        queue_id, client_name, client_addr, sender = _field(queue_id), _field(client_name), _field(client_addr), _field(sender)
        recipients = [_field(r) for r in recipients[:MAX_LOG_RECIPIENTS]]
    to = "<" + ">,<".join(recipients) + ">" if recipients else "<>"
    line = (
        f"{queue_id or 'NOQUEUE'}: action={record.action} score={record.score:g} symbols={symbols}"
        f" client={client_name or 'unknown'}[{client_addr}] from=<{sender}> to={to}{more}"
        f" ms={record.elapsed_ms:g}"
    )
    if record.reason and record.action not in ("accept", "add_header"):
        line += f" reason=\"{_field(record.reason, MAX_LOG_REASON, blanks=True)}\""
    return line


def _field(value: str, width: int = MAX_LOG_FIELD, blanks: bool = False) -> str:
    """*value* escaped (ASCII; the line's delimiters too, as ``\\xNN``, but with *blanks* a space) and cut to *width*."""
    delimiters = _QUOTES if blanks else _DELIMITERS
    if not (value.isascii() and value.isprintable()) or delimiters.search(value):
        # The delimiters first, a backslash among them: what escape() then adds is the only backslash left.
        value = escape(delimiters.sub(_hex, value), ascii_only=True)
    return cut(value, width, "...")  # ASCII, as the whole line


def _safe(value: str) -> str:
    if value.isascii() and value.isprintable():
        return value  # nearly every value: no control character, nothing to escape
    return escape(value, ascii_only=True)


def _hex(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


class SafeFormatter(logging.Formatter):
    """A formatter whose lines carry no raw control characters and no database password.

    Every message is escaped (a CR/LF from a client cannot forge a log line);
    the whole output, tracebacks included, has the password of *url* hidden.
    What is escaped is redacted first: escaped, a non-ASCII password
    (``p\\xe4ss``) would no longer be the text :func:`redact` looks for.
    """

    def __init__(self, fmt: str, datefmt: str | None = None, url: str = "") -> None:
        super().__init__(fmt, datefmt)
        # The URLs whose password is hidden: the one at start, and each one a reload brought (hide()).
        self.urls: list[str] = []
        self.hide(url)
        self._time: tuple[int, str, str] = (-1, "", "")

    def hide(self, url: str) -> None:
        """Also hide the password of *url* (a reload's new ``[database] url``); a URL without one (SQLite's) adds nothing."""
        if url and url not in self.urls and (url_password(url) or redact_url(url) != url):
            self.urls.append(url)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        """logging's time stamp, formatted once per second (*datefmt* has no finer field)."""
        if datefmt is None:
            return super().formatTime(record, datefmt)
        second, cached_format, text = self._time
        if second != int(record.created) or cached_format != datefmt:
            text = super().formatTime(record, datefmt)
            self._time = (int(record.created), datefmt, text)
        return text

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        message = record.message
        if not (message.isascii() and message.isprintable()):  # printable ASCII (a summary line) has nothing to escape
            record.message = escape(self._redact(message), ascii_only=True)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        """The traceback with what an exception's message quotes (a header, an address) escaped.

        A message's own CR/LF, or a terminal escape, must not forge a log line nor
        reach a terminal: each message of the chain is escaped where it appears, then
        every line is, keeping the traceback's own line breaks.
        """
        text = self._redact(super().formatException(ei))
        for message in _messages(ei[1]):
            if not (message.isascii() and message.isprintable()):
                message = self._redact(message)  # as it now stands in the redacted text
                text = text.replace(message, escape(message, ascii_only=True))
        return _escape_lines(text)

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        """``stack_info`` with control characters escaped line by line."""
        return _escape_lines(self._redact(super().formatStack(stack_info)))

    def format(self, record: logging.LogRecord) -> str:
        # The parts escaped were redacted before (formatMessage, formatException, formatStack);
        # this pass hides it in the rest (the format's other fields, a traceback another formatter cached).
        return self._redact(super().format(record))

    def _redact(self, text: str) -> str:
        for url in self.urls:  # usually none (SQLite) or one: no redact() per line without a password
            text = redact(text, url)
        return text


def _messages(exc: BaseException | None) -> list[str]:
    """The messages of *exc* and of the exceptions it was raised from or during."""
    messages: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        try:
            messages.append(str(exc))
        except Exception:  # noqa: BLE001 - a broken __str__: traceback prints a placeholder
            pass
        exc = exc.__cause__ or exc.__context__
    return messages


def _escape_lines(text: str) -> str:
    return "\n".join(_safe(line) for line in text.split("\n"))


def hide_database_url(url: str) -> None:
    """Hide *url*'s password in every line of milterd's log from now on (a reload that changed ``[database] url``)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, SafeFormatter):
            handler.formatter.hide(url)


def set_level(level: str) -> None:
    """Make *level* (``[milter] log_level``: debug, info, warning, error) the lowest level milterd logs.

    Set on the root logger, which the workers inherit when they are forked: a reload
    (SIGHUP) applies a new level to the supervisor here, and to the workers it starts.
    The libraries' own loggers keep theirs (see :func:`setup_logging`).
    """
    logging.getLogger().setLevel(level.upper())


#: Where syslog takes log lines (its daemon's socket).
SYSLOG_SOCKET = "/dev/log"


class SyslogHandler(logging.handlers.SysLogHandler):
    """The mail facility of syslog; while syslog does not take the lines (its daemon stopped), they go to stderr
    in stderr's format (*fallback*), said once, instead of a "--- Logging error ---" traceback each (the line
    itself lost).  A line too long for a datagram goes to stderr alone; any other error is logging's own."""

    def __init__(self, address: str, fallback: logging.Formatter) -> None:
        super().__init__(address=address, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        self.fallback = fallback
        self.failing = False
        self._failed = False

    def emit(self, record: logging.LogRecord) -> None:
        self._failed = False
        super().emit(record)  # its own reconnection first; handleError when that fails too
        if self.failing and not self._failed:
            self.failing = False
            sys.stderr.write(f"milterd[{os.getpid()}]: syslog ({self.address}) takes milterd's log again\n")

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):  # a line that cannot be formatted: logging's own report, where it was made
            super().handleError(record)
            return
        self._failed = True
        if error.errno != errno.EMSGSIZE and not self.failing:
            self.failing = True
            sys.stderr.write(f"milterd[{os.getpid()}]: syslog ({self.address}) does not take milterd's log: "
                             f"{error}; writing it here until it does\n")
        try:
            sys.stderr.write(self.fallback.format(record) + "\n")
        except Exception:  # noqa: BLE001 - as logging's own handleError: a log line must never raise
            pass


def setup_logging(target: str, level: str, database_url: str = "") -> None:
    """Send milterd's log to stderr or to syslog's mail facility, Postfix-style.

    *database_url*: its password is hidden in every line (see :class:`SafeFormatter`).
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    stderr_format = SafeFormatter("%(asctime)s milterd[%(process)d]: %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S", url=database_url)
    if target == "syslog":  # no daemon behind /dev/log (or none at all): SyslogHandler says so, and uses stderr
        handler = SyslogHandler(SYSLOG_SOCKET, stderr_format)
        handler.setFormatter(SafeFormatter("milterd[%(process)d]: %(message)s", url=database_url))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(stderr_format)
    root.addHandler(handler)
    set_level(level)
    # What no format above uses, not looked up per record (the logging HOWTO's "Optimization"):
    # the caller's file, line and function (a walk up the stack), the thread and the
    # multiprocessing process name.  The summary line is logged once per message.
    logging._srcfile = None  # noqa: SLF001 - logging's documented switch
    logging.logThreads = False
    logging.logMultiprocessing = False
    # Libraries' own chatter (alembic's steps, SQLAlchemy's "Pool disposed" when a
    # worker forgets its parent's connections) is not the administrator's business.
    for library in ("alembic", "sqlalchemy"):
        logging.getLogger(library).setLevel(logging.WARNING)
